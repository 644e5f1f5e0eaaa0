"""`faramir queue` and `faramir map`: what to label next, and the whole collection in 2-D. Each is a
thin wrapper over one library function (`faramir.store.labels.queue.queue`,
`faramir.store.map.layout.map_layout`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from faramir.cli.common import handle_errors
from faramir.cli.options import Db, Embedding, RowFormat, RowFormatOpt, Seed, filter_options
from faramir.cli.output import emit_results
from faramir.store import limits

QUEUE_COLUMNS = ["id", "path", "confidence", "accepted", "label", "priority", "uncertainty", "disagreement",
                 "ambiguity"]


@handle_errors
@filter_options
def queue(
    db: Db = None,
    filter=None,
    vs: Annotated[Optional[str], typer.Option(
        "--vs", help="A second head: where it disagrees with --head counts too.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=limits.MAX_QUEUE,
                                       help="How many images to ask labels for.")] = 20,
    embedding: Annotated[Embedding, typer.Option(
        "--embedding", help="The embedding the queue is spread over: faramir or siglip.")] = Embedding.faramir,
    fmt: RowFormatOpt = RowFormat.table,
):
    """The unlabelled images whose labels would teach the head most, spread over the collection:
    close to the threshold, disputed by a second head, or torn between two reasons.

    Example: faramir queue --head tuned --vs faramir-v1 --limit 50 --format jsonl

    Label them (faramir labels import, or the gallery's Label next view), finetune, and ask again.
    """
    from faramir.store.labels.queue import queue as run

    result = run(db, limit=limit, vs=vs, embedding=embedding.value, filter=filter)
    emit_results(result.rows, fmt, QUEUE_COLUMNS)


@handle_errors
def map(
    db: Db = None,
    embedding: Annotated[Embedding, typer.Option(
        "--embedding", help="Lay out by faramir (the head's input) or siglip (the stock pool).")] = Embedding.faramir,
    sample: Annotated[int, typer.Option("--sample", min=2, max=limits.MAX_MAP_SAMPLE,
                                        help="Rows UMAP is fitted on; the rest are placed with the fit.")] = 50_000,
    refit: Annotated[bool, typer.Option("--refit", help="Fit anew even where a layout exists (its places move).")]
    = False,
    seed: Seed = 0,
):
    """Lay the whole cache out in 2-D for the gallery's Map view (UMAP, kept in the cache).

    Example: faramir map --embedding siglip

    The first run fits UMAP on a sample and places every other image with the fit; later runs,
    and every ingest, place only the images without a place, so the map stays put.
    """
    from faramir.cli.common import bars_by_name, note
    from faramir.store.map.layout import map_layout

    with bars_by_name("map: ") as bar:
        info = map_layout(db, embedding=embedding.value, sample=sample, refit=refit, seed=seed, progress=bar)
    if info.fitted:
        note(f"Laid out {info.rows} images by their {info.embedding} embedding: UMAP fitted on {info.sample}, "
             f"the other {info.placed} placed with the fit.")
    else:
        note(f"Placed {info.placed} new images on the {info.embedding} map ({info.rows} in all); "
             f"--refit fits it anew.")
