"""`faramir queue` and `faramir map`: what to label next, and the whole collection in 2-D. Each is a
thin wrapper over one library function (`faramir.store.labels.queue.queue`,
`faramir.store.map.layout.map_layout`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from faramir.cli.common import handle_errors
from faramir.cli.options import Db, Embedding, RowFormat, RowFormatOpt, filter_options
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
