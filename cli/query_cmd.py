"""Stage two over the cache: top, stats, similar, index, export. Each is a thin wrapper over the
library function of the same name (`faramir.store.top`, `faramir.store.stats`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from faramir.cli.common import EXIT_PARTIAL, Bar, fail, handle_errors, note, say_first
from faramir.cli.options import (
    Db,
    Device,
    Embedding,
    ExportFormat,
    Keep,
    Link,
    Neighbours,
    Nprobes,
    RefineFactor,
    ReportFormat,
    ReportFormatOpt,
    RowFormat,
    RowFormatOpt,
    Sort,
    WeightsDir,
    filter_options,
)
from faramir.cli.output import emit, emit_json, emit_results
from faramir.store import limits
from faramir.store.near_duplicates import DEFAULT_SIMILARITY

ROW_COLUMNS = ["id", "path", "confidence", "accepted", "label", "aesthetic_score"]


@handle_errors
@filter_options
def top(
    db: Db = None,
    filter=None,
    sort: Annotated[Sort, typer.Option(
        "--sort", help="confidence (the aesthetic gradient), aesthetic, or newest (ingest time).")] = Sort.confidence,
    ascending: Annotated[bool, typer.Option("--ascending", help="Lowest first.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="At most this many rows (0: all).")] = 20,
    fmt: RowFormatOpt = RowFormat.table,
):
    """List cached images that pass the filters, ranked by confidence or aesthetic score.

    Example: faramir top --accepted --label 2d_fantasy --limit 100 --format jsonl
    """
    from faramir.store.queries.ranking import top as run

    table = run(db, sort=sort.value, descending=not ascending, limit=limit or None, filter=filter)
    emit_results(table, fmt, ROW_COLUMNS)


@handle_errors
@filter_options
def stats(
    db: Db = None,
    filter=None,
    bins: Annotated[int, typer.Option("--bins", min=1, max=limits.MAX_BINS, help="Histogram bins over [0, 1].")] = 20,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw the histogram and sweep into this PNG.")] = None,
    fmt: ReportFormatOpt = ReportFormat.table,
    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="The same as --format json.")] = False,
):
    """Counts accepted, rejected and per label at a threshold, a confidence histogram and a
    threshold sweep.

    Example: faramir stats --threshold 0.6 --plot confidence.png
    """
    from faramir.cli.plots import plot_stats, refuse_existing
    from faramir.store.queries.counting import stats as run

    refuse_existing(plot)
    result = run(db, bins=bins, filter=filter)
    if plot is not None:
        plot_stats(result, plot)
    if as_json or fmt == ReportFormat.json:
        emit_json(result.to_dict())
        return
    from faramir.cli.reports import print_stats

    print_stats(result)
    if plot is not None:
        note(f"Wrote {plot}.")


@handle_errors
@filter_options
def similar(
    ref: Annotated[str, typer.Argument(help="A cached image's id or path, or an image file (cached once).")],
    db: Db = None,
    k: Neighbours = 10,
    embedding: Annotated[Embedding, typer.Option("--embedding", help="faramir or siglip (the stock pool).")] = Embedding.faramir,
    filter=None,
    exact: Annotated[bool, typer.Option("--exact", help="Exact search even where an ANN index exists.")] = False,
    nprobes: Nprobes = None,
    refine_factor: RefineFactor = None,
    weights_dir: WeightsDir = None,
    device: Device = "auto",
    fmt: RowFormatOpt = RowFormat.table,
):
    """The nearest cached images to REF by cosine distance, among those passing the filters.

    Example: faramir similar ./new.png --accepted --k 20 --format jsonl

    An image file the cache has not seen is ingested first (with --weights-dir and --device).
    """
    from faramir.store.errors import NotCached
    from faramir.store.vectors.nearest import similar as run

    def search():
        return run(ref, db, k=k, embedding=embedding.value, exact=exact, nprobes=nprobes,
                   refine_factor=refine_factor, filter=filter)

    try:
        table = search()
    except NotCached as new:
        from faramir.store.ingestion import ingest_all

        summary = ingest_all([new.path], db=db, weights_dir=weights_dir, device=device, workers=0)
        if summary.failed:
            fail(f"{ref}: could not be cached: {summary.failures[0].reason}")
        table = search()
    emit_results(table, fmt, ["distance", *ROW_COLUMNS])


@handle_errors
def index(
    db: Db = None,
    siglip: Annotated[bool, typer.Option("--siglip", help="Also index the stock SigLIP embedding.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Retrain an existing ANN index.")] = False,
):
    """Build the ANN index on the FARAMIR embedding and scalar indexes on the filter columns.

    Example: faramir index --siglip
    """
    from faramir.store.vectors.indexes import index as run

    note("Building indexes (an ANN index on 1M rows takes a few minutes)...")
    rows = run(db, embeddings=("faramir", "siglip") if siglip else ("faramir",), replace=replace)
    emit(rows, "table", ["column", "type", "indexed_rows", "unindexed_rows", "name"])


@handle_errors
@filter_options
def export(
    dest: Annotated[Path, typer.Argument(help="A .csv/.jsonl/.parquet file, or a folder for the images or shards.")],
    db: Db = None,
    fmt: Annotated[Optional[ExportFormat], typer.Option(
        "--format", "-f", help="csv, jsonl, parquet, files, webdataset (tar shards) or hf (a Hugging Face "
                               "dataset folder); default: from DEST's suffix, else files.")] = None,
    link: Annotated[Link, typer.Option("--link", help="files: copy, hardlink or symlink.")] = Link.copy,
    by_label: Annotated[bool, typer.Option("--by-label", help="files: one subfolder per label.")] = False,
    with_embeddings: Annotated[bool, typer.Option(
        "--with-embeddings", help="jsonl/parquet/webdataset/hf: include the vectors (webdataset: as .npy).")] = False,
    with_logits: Annotated[bool, typer.Option(
        "--with-logits", help="webdataset/hf: include the head's 31 logits (30 classes, then the decision).")] = False,
    shard_size: Annotated[Optional[str], typer.Option(
        "--shard-size", metavar="N|BYTES",
        help="webdataset/hf: images per shard (1000) or bytes (500MB, 1GiB); default 500MB.")] = None,
    filter=None,
    sort: Annotated[Optional[Sort], typer.Option(
        "--sort", help="With --limit: confidence, aesthetic or newest.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="Only the best N (by --sort).")] = None,
    dedupe: Annotated[bool, typer.Option(
        "--dedupe", help="One image per group of near-duplicates (see 'faramir duplicates').")] = False,
    dedupe_threshold: Annotated[float, typer.Option(
        "--dedupe-threshold", min=0.0, max=1.0, help="With --dedupe: SigLIP cosine that makes near-duplicates.")] = DEFAULT_SIMILARITY,
    keep: Annotated[Keep, typer.Option("--keep", help="With --dedupe: confidence, aesthetic or largest.")] = Keep.confidence,
):
    """Export the images that pass the filters as a table, as files or as a training set; never overwrites.

    Example: faramir export ./accepted --accepted --by-label --link hardlink

    In a folder, a taken name gets the image's id appended; only files whose bytes are still the
    cached image's are exported: one that is gone or changed is reported and skipped (exit status 3).

    A training set: faramir export ./train --format webdataset --accepted --shard-size 1GB
    (or --format hf, a folder that datasets.load_dataset reads). Whole shards only; a rerun with
    the same options finishes it, or adds what is new.
    """
    from faramir.store.exports import export as run

    with Bar("export") as bar:
        result = run(dest, db, format=fmt.value if fmt else None, link=link.value, by_label=by_label,
                     with_embeddings=with_embeddings, with_logits=with_logits, shard_size=shard_size,
                     sort=sort.value if sort else None, limit=limit, dedupe=dedupe,
                     dedupe_threshold=dedupe_threshold, keep=keep.value, progress=bar, filter=filter)
    for label, items in (("source file missing", result.missing), ("name taken, skipped", result.clashes),
                         ("no longer holds the cached image, not exported", result.changed)):
        say_first(items, lambda item, label=label: f"{item}: {label}", f"({label})")
    what = "rows" if result.format in ("csv", "jsonl", "parquet") else "images"
    shards = f" in {result.shards} new shard{'s' if result.shards != 1 else ''}" \
        if result.format in ("webdataset", "hf") else ""
    extra = f", {result.present} already there" if result.present else ""
    note(f"Exported {result.written} {what}{shards} to {result.dest}{extra}.")
    if result.skipped:
        raise typer.Exit(EXIT_PARTIAL)
