"""Finding images by text and finding near-duplicates: `faramir search`, `faramir duplicates`.
Thin wrappers over store.search.search and store.duplicates.duplicates."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cli import options
from cli.app import app
from cli.common import handle_errors, stderr, warn_generated, write_rows
from cli.stage2_cmd import (
    ROW_COLUMNS, Accepted, Db, Head, Labels, MaxAesthetic, MaxConfidence, MinAesthetic, MinConfidence,
    Rejected, _Bar, _check_format, _filters,
)

TextWeightsDir = typer.Option(
    None, "--weights-dir", envvar="FARAMIR_WEIGHTS",
    help="Weights directory holding the text tower (default: download into ~/.cache/faramir/weights).",
)


@app.command()
@handle_errors
def search(
    text: str = typer.Argument(..., help="What to look for, in words."),
    db: Optional[str] = Db,
    k: int = typer.Option(10, "--k", "-k", min=1, help="How many images."),
    head: str = Head,
    threshold: float = options.Threshold,
    accepted: bool = Accepted,
    rejected: bool = Rejected,
    labels: Optional[List[str]] = Labels,
    min_confidence: Optional[float] = MinConfidence,
    max_confidence: Optional[float] = MaxConfidence,
    min_aesthetic: Optional[float] = MinAesthetic,
    max_aesthetic: Optional[float] = MaxAesthetic,
    exact: bool = typer.Option(False, "--exact", help="Exact search even where an ANN index exists."),
    nprobes: Optional[int] = typer.Option(None, "--nprobes", min=1, help="IVF partitions to search."),
    refine_factor: Optional[int] = typer.Option(None, "--refine-factor", min=1, help="Re-rank k × this exactly."),
    weights_dir: Optional[Path] = TextWeightsDir,
    device: str = options.Device,
    fmt: str = typer.Option("table", "--format", "-f", help="table, jsonl or csv."),
):
    """The cached images that best match TEXT (SigLIP text tower against the cached SigLIP
    embeddings), among those passing the filters; most similar first. No image is read.

    Example: faramir search "a dragon over water" --accepted --k 20

    For speed on large caches, index the SigLIP embedding once: faramir index --siglip
    """
    from cli.options import _download_progress
    from store.search import load_encoder, search as run

    _check_format(fmt, ("table", "jsonl", "csv"))
    filters = _filters(head, threshold, accepted, rejected, labels, min_confidence, max_confidence,
                       min_aesthetic, max_aesthetic)
    with _download_progress() as progress:
        encoder = load_encoder(weights_dir, device, progress)
    warn_generated(encoder.info)
    table = run(text, db, k=k, encoder=encoder, exact=exact, nprobes=nprobes, refine_factor=refine_factor, **filters)
    write_rows(table.to_pylist(), fmt, ["similarity", *ROW_COLUMNS])


@app.command()
@handle_errors
def duplicates(
    db: Optional[str] = Db,
    threshold: float = typer.Option(0.95, "--threshold", "-s", min=0.0, max=1.0,
                                     help="Cosine similarity at or above which two images are near-duplicates."),
    embedding: str = typer.Option("siglip", "--embedding", help="siglip (the stock pool) or faramir."),
    keep: str = typer.Option("confidence", "--keep", help="Keeper of each group: confidence, aesthetic or largest."),
    head: str = Head,
    confidence_threshold: float = typer.Option(0.5, "--confidence-threshold", min=0.0, max=1.0,
                                               help="Accept iff confidence > T (for --accepted/--rejected/--label)."),
    accepted: bool = Accepted,
    rejected: bool = Rejected,
    labels: Optional[List[str]] = Labels,
    min_confidence: Optional[float] = MinConfidence,
    max_confidence: Optional[float] = MaxConfidence,
    min_aesthetic: Optional[float] = MinAesthetic,
    max_aesthetic: Optional[float] = MaxAesthetic,
    fmt: str = typer.Option("table", "--format", "-f", help="table, jsonl or csv."),
):
    """Groups of near-duplicate images (embedding cosine ≥ --threshold, joined transitively) and
    exact copies (one content at several paths), each with a keeper. No image is read.

    Example: faramir duplicates --threshold 0.95 --keep aesthetic --format jsonl
    """
    from store.duplicates import duplicates as run

    _check_format(fmt, ("table", "jsonl", "csv"))
    filters = _filters(head, confidence_threshold, accepted, rejected, labels, min_confidence,
                       max_confidence, min_aesthetic, max_aesthetic)
    filters["confidence_threshold"] = filters.pop("threshold")
    with _Bar("reading vectors") as bar:
        found = run(db, threshold=threshold, embedding=embedding, keep=keep, progress=bar, **filters)
    rows = found.table.to_pylist()
    for row in rows:
        row["copies"] = len(row["paths"] or ())
        if fmt == "table":
            row["keeper"] = "keep" if row["keeper"] else ""
    columns = ["group", "keeper", "similarity", "id", "path", "copies", "confidence", "label", "aesthetic_score",
               "width", "height", "size"]
    if fmt != "table":
        columns.append("paths")
    write_rows(rows, fmt, columns)
    copies = sum(r["copies"] - 1 for r in rows)
    stderr.print(f"{found.groups} groups, {len(rows)} images ({copies} further paths of the same content) "
                 f"among {found.rows} searched; near-duplicates: {found.embedding} cosine ≥ {found.threshold}.",
                 markup=False)
