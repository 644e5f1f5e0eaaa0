"""Finding images by words and finding near-duplicates: `faramir search`, `faramir duplicates`.
Thin wrappers over `faramir.store.vectors` and `faramir.store.near_duplicates`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from faramir.cli.common import Bar, handle_errors, note
from faramir.cli.options import (
    Db,
    Device,
    Embedding,
    Keep,
    ListFormat,
    ListFormatOpt,
    Neighbours,
    Nprobes,
    RefineFactor,
    filter_options,
)
from faramir.cli.output import emit, emit_results
from faramir.store.near_duplicates import DEFAULT_SIMILARITY

ROW_COLUMNS = ["id", "path", "confidence", "accepted", "label", "aesthetic_score"]
GROUP_COLUMNS = ["group", "keeper", "similarity", "id", "path", "copies", "confidence", "label",
                 "aesthetic_score", "width", "height", "size"]
TextWeightsDir = Annotated[Optional[Path], typer.Option(
    "--weights-dir", envvar="FARAMIR_WEIGHTS",
    help="Weights directory holding the text tower (default: download into ~/.cache/faramir/weights).",
)]


@handle_errors
@filter_options
def search(
    text: Annotated[str, typer.Argument(help="What to look for, in words.")],
    db: Db = None,
    k: Neighbours = 10,
    filter=None,
    exact: Annotated[bool, typer.Option("--exact", help="Exact search even where an ANN index exists.")] = False,
    nprobes: Nprobes = None,
    refine_factor: RefineFactor = None,
    weights_dir: TextWeightsDir = None,
    device: Device = "auto",
    fmt: ListFormatOpt = ListFormat.table,
):
    """The cached images that best match TEXT (SigLIP's text tower against the cached SigLIP
    embeddings), among those passing the filters; most similar first. No image is read.

    Example: faramir search "a dragon over water" --accepted --k 20

    On a large cache, index the SigLIP embedding once for speed: faramir index --siglip
    """
    from faramir.cli.common import download_progress, warn_generated
    from faramir.store.vectors.text import load_encoder
    from faramir.store.vectors.text import search as run

    with download_progress() as progress:
        encoder = load_encoder(weights_dir, device, progress)
    warn_generated(encoder.info)
    table = run(text, db, k=k, encoder=encoder, exact=exact, nprobes=nprobes, refine_factor=refine_factor,
                filter=filter)
    emit_results(table, fmt, ["similarity", *ROW_COLUMNS])


@handle_errors
@functools.partial(filter_options, confidence_threshold=True)
def duplicates(
    db: Db = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", "-s", min=0.0, max=1.0,
        help="Cosine similarity at or above which two images are near-duplicates.")] = DEFAULT_SIMILARITY,
    embedding: Annotated[Embedding, typer.Option("--embedding", help="siglip (the stock pool) or faramir.")] = Embedding.siglip,
    keep: Annotated[Keep, typer.Option("--keep", help="Keeper of each group: confidence, aesthetic or largest.")] = Keep.confidence,
    filter=None,
    fmt: ListFormatOpt = ListFormat.table,
):
    """Groups of near-duplicate images (embedding cosine ≥ --threshold, joined transitively) and
    exact copies (one content at several paths), each with a keeper. No image is read.

    Example: faramir duplicates --threshold 0.95 --keep aesthetic --format jsonl

    The filters' accept threshold is --confidence-threshold here.
    """
    from faramir.store.near_duplicates.groups import duplicates as run

    with Bar("reading vectors") as bar:
        found = run(db, threshold=threshold, embedding=embedding.value, keep=keep.value, progress=bar, filter=filter)
    rows = found.table.to_pylist()
    for row in rows:
        row["copies"] = len(row["paths"] or ())
        if fmt == ListFormat.table:
            row["keeper"] = "keep" if row["keeper"] else ""
    emit(rows, fmt, GROUP_COLUMNS if fmt == ListFormat.table else [*GROUP_COLUMNS, "paths"])
    copies = sum(r["copies"] - 1 for r in rows)
    note(f"{found.groups} groups, {len(rows)} images ({copies} further paths of the same content) among "
         f"{found.rows} searched; near-duplicates: {found.embedding} cosine ≥ {found.threshold}.")
