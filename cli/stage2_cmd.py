"""Stage two: rescore, heads, top, stats, similar, index, export. Each is a thin wrapper over the
function of the same name in store (store.heads, store.query, store.index, store.export)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from cli import options
from cli.app import app
from cli.common import EXIT_PARTIAL, fail, handle_errors, progress_bar, stderr, warn, write_rows

heads_app = typer.Typer(help="List and remove the heads whose scores the cache holds.", no_args_is_help=True)
app.add_typer(heads_app, name="heads")

Db = typer.Option(None, "--db", help="The cache (default: $FARAMIR_DB, else ~/.local/share/faramir/cache.lancedb).",
                  show_default=False)
Head = typer.Option("faramir-v1", "--head", help="Whose scores to read: a head name (see 'faramir heads list').")
Accepted = typer.Option(False, "--accepted", help="Only images accepted at the threshold.")
Rejected = typer.Option(False, "--rejected", help="Only images rejected at the threshold.")
Labels = typer.Option(None, "--label", "-l", help="Only these labels (repeat, or comma-separate).")
MinConfidence = typer.Option(None, "--min-confidence", min=0.0, max=1.0, help="Confidence at least this.")
MaxConfidence = typer.Option(None, "--max-confidence", min=0.0, max=1.0, help="Confidence at most this.")
MinAesthetic = typer.Option(None, "--min-aesthetic", help="Aesthetic score (about 1-10) at least this.")
MaxAesthetic = typer.Option(None, "--max-aesthetic", help="Aesthetic score at most this.")
RowFormat = typer.Option("table", "--format", "-f", help="table, jsonl, csv or tsv (upstream's assess line).")

ROW_COLUMNS = ["id", "path", "confidence", "accepted", "label", "aesthetic_score"]


def _filters(head, threshold, accepted, rejected, labels, min_confidence, max_confidence,
             min_aesthetic, max_aesthetic) -> dict:
    if accepted and rejected:
        raise typer.BadParameter("give --accepted or --rejected, not both")
    split = tuple(x.strip() for item in labels or () for x in item.split(",") if x.strip())
    return {
        "head": head, "threshold": threshold, "accepted": True if accepted else False if rejected else None,
        "labels": split, "min_confidence": min_confidence, "max_confidence": max_confidence,
        "min_aesthetic": min_aesthetic, "max_aesthetic": max_aesthetic,
    }


def _print_rows(table, fmt: str, columns: list[str]) -> int:
    """Result rows on stdout; tsv is upstream's `path, accept|reject, label, confidence` line."""
    rows = table.to_pylist()
    if fmt == "tsv":
        for row in rows:
            sys.stdout.write(f"{row['path']}\t{'accept' if row['accepted'] else 'reject'}\t{row['label']}\t"
                             f"{row['confidence']:.2f}\n")
        sys.stdout.flush()
        return len(rows)
    return write_rows(rows, fmt, columns)


def _check_format(fmt: str, allowed=("table", "jsonl", "csv", "tsv")) -> None:
    if fmt not in allowed:
        raise typer.BadParameter(f"use one of {', '.join(allowed)}", param_hint="--format")


class _Bar:
    """A progress callback `(done, total)` that draws a bar on stderr (on a terminal only)."""

    def __init__(self, description: str):
        self.description = description

    def __enter__(self):
        self.bar = progress_bar()
        self.bar.__enter__()
        self.task = None
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task(self.description, total=total, rate="")
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


# -- heads ------------------------------------------------------------------------------------------


@app.command()
@handle_errors
def rescore(
    head: Path = typer.Option(..., "--head", help="Head checkpoint: a faramir-v1.pth or a file of norm.* + head.*."),
    name: str = typer.Option(..., "--name", help="Name to keep its scores under (replaces a head of that name)."),
    db: Optional[str] = Db,
    batch_size: int = typer.Option(4096, "--batch-size", min=1, help="Rows per head forward."),
    index: bool = typer.Option(True, "--index/--no-index", help="Index the new score columns afterwards."),
):
    """Score every cached image with a head checkpoint; no image is read, no trunk is run.

    Example: faramir rescore --head finetuned.pth --name curated-v2

    Refused if the checkpoint's attention pool is not the one the cache was built with.
    """
    from store.heads import rescore as run

    with _Bar(f"rescore {name}") as bar:
        record = run(head, name, db=db, batch_size=batch_size, index=index, progress=bar)
    stderr.print(f"Scored {record['rows']} images with head {record['name']} "
                 f"(fingerprint {record['fingerprint'][:12]}, columns {record['prefix']}_*).", markup=False)


@heads_app.command("list")
@handle_errors
def heads_list(
    db: Optional[str] = Db,
    fmt: str = typer.Option("table", "--format", "-f", help="table, jsonl or csv."),
):
    """List the heads whose scores the cache holds.

    Example: faramir heads list --format jsonl
    """
    from store.heads import list_heads

    _check_format(fmt, ("table", "jsonl", "csv"))
    rows = list_heads(db)
    for row in rows:
        if fmt == "table":
            row["fingerprint"] = row["fingerprint"][:12]
            row["created_at"] = row["created_at"].strftime("%Y-%m-%d %H:%M")
    write_rows(rows, fmt, ["name", "rows", "fingerprint", "pool", "created_at", "source", "prefix"])


@heads_app.command("rm")
@handle_errors
def heads_rm(
    name: str = typer.Argument(..., help="The head to remove."),
    db: Optional[str] = Db,
):
    """Remove a head and its scores from the cache.

    Example: faramir heads rm curated-v1
    """
    from store.heads import remove_head

    removed = remove_head(name, db)
    stderr.print(f"Removed head {removed['name']} and its score columns.", markup=False)


# -- queries ------------------------------------------------------------------------------------------


@app.command()
@handle_errors
def top(
    db: Optional[str] = Db,
    head: str = Head,
    threshold: float = options.Threshold,
    accepted: bool = Accepted,
    rejected: bool = Rejected,
    labels: Optional[List[str]] = Labels,
    min_confidence: Optional[float] = MinConfidence,
    max_confidence: Optional[float] = MaxConfidence,
    min_aesthetic: Optional[float] = MinAesthetic,
    max_aesthetic: Optional[float] = MaxAesthetic,
    sort: str = typer.Option("confidence", "--sort", help="confidence (the aesthetic gradient) or aesthetic."),
    ascending: bool = typer.Option(False, "--ascending", help="Lowest first."),
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="At most this many rows (0: all)."),
    fmt: str = RowFormat,
):
    """List cached images that pass the filters, ranked by confidence or aesthetic score.

    Example: faramir top --accepted --label 2d_fantasy --limit 100 --format jsonl
    """
    from store.query import top as run

    _check_format(fmt)
    filters = _filters(head, threshold, accepted, rejected, labels, min_confidence, max_confidence,
                       min_aesthetic, max_aesthetic)
    table = run(db, sort=sort, descending=not ascending, limit=limit or None, **filters)
    _print_rows(table, fmt, ROW_COLUMNS)


@app.command()
@handle_errors
def stats(
    db: Optional[str] = Db,
    head: str = Head,
    threshold: float = options.Threshold,
    accepted: bool = Accepted,
    rejected: bool = Rejected,
    labels: Optional[List[str]] = Labels,
    min_confidence: Optional[float] = MinConfidence,
    max_confidence: Optional[float] = MaxConfidence,
    min_aesthetic: Optional[float] = MinAesthetic,
    max_aesthetic: Optional[float] = MaxAesthetic,
    bins: int = typer.Option(20, "--bins", min=1, max=200, help="Histogram bins over [0, 1]."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the histogram and sweep into this PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as one JSON object."),
):
    """Counts accepted, rejected and per label at a threshold, a confidence histogram and a
    threshold sweep.

    Example: faramir stats --threshold 0.6 --plot confidence.png
    """
    from store.query import stats as run

    filters = _filters(head, threshold, accepted, rejected, labels, min_confidence, max_confidence,
                       min_aesthetic, max_aesthetic)
    if plot is not None and plot.exists():
        fail(f"{plot} exists; choose another name or remove it first")
    result = run(db, bins=bins, **filters)
    if plot is not None:
        _plot(result, plot)
    if as_json:
        print(json.dumps(result))
        return
    _print_stats(result)
    if plot is not None:
        stderr.print(f"Wrote {plot}.", markup=False)


def _bar(fraction: float, width: int) -> str:
    """A unicode bar of `fraction` × `width` cells, in eighths."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


def _print_stats(result: dict) -> None:
    out = sys.stdout
    total, t = result["total"], result["threshold"]
    pct = (lambda n: f"{100 * n / total:5.1f}%") if total else (lambda n: "    -")
    out.write(f"head {result['head']}, threshold {t}: {total} images\n")
    out.write(f"  accepted {result['accepted']:>9}  {pct(result['accepted'])}\n")
    out.write(f"  rejected {result['rejected']:>9}  {pct(result['rejected'])}\n\nlabels\n")
    labels = {k: v for k, v in result["labels"].items() if v}
    widest = max((len(k) for k in labels), default=0)
    top_count = max(labels.values(), default=1)
    for name, n in sorted(labels.items(), key=lambda kv: -kv[1]):
        out.write(f"  {name:<{widest}} {n:>9}  {pct(n)} {_bar(n / top_count, 30)}\n")
    out.write("\nconfidence histogram\n")
    counts, edges = result["histogram"]["counts"], result["histogram"]["edges"]
    peak = max(counts, default=0) or 1
    for lo, hi, n in zip(edges[:-1], edges[1:], counts):
        out.write(f"  {lo:.2f}-{hi:.2f} {n:>9} {_bar(n / peak, 40)}\n")
    out.write("\nthreshold sweep (accepted iff confidence > T)\n       T  accepted\n")
    for row in result["sweep"]:
        mark = "  ◀" if row["threshold"] == t else ""
        out.write(f"  {row['threshold']:6.2f} {row['accepted']:>9}  {pct(row['accepted'])}{mark}\n")
    out.flush()


def _plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib: pip install 'faramir[plot]'")
    edges, counts = result["histogram"]["edges"], result["histogram"]["counts"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
             color="#4c72b0", edgecolor="white")
    left.axvline(result["threshold"], color="#c44e52", linestyle="--", label=f"T = {result['threshold']}")
    left.set(title=f"confidence ({result['head']}, {result['total']} images)", xlabel="confidence",
             ylabel="images", xlim=(0, 1))
    left.legend()
    sweep = result["sweep"]
    right.plot([r["threshold"] for r in sweep], [r["accepted"] for r in sweep], marker="o", color="#4c72b0")
    right.axvline(result["threshold"], color="#c44e52", linestyle="--")
    right.set(title="threshold sweep", xlabel="threshold T", ylabel="accepted (confidence > T)", xlim=(0, 1))
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    try:
        import os

        os.link(tmp, path)  # never overwrite a file that appeared meanwhile
    except FileExistsError:
        fail(f"{path} exists; choose another name or remove it first")
    finally:
        tmp.unlink(missing_ok=True)


@app.command()
@handle_errors
def similar(
    ref: str = typer.Argument(..., help="A cached image's id or path, or an image file (cached once)."),
    db: Optional[str] = Db,
    k: int = typer.Option(10, "--k", "-k", min=1, help="How many neighbours."),
    embedding: str = typer.Option("faramir", "--embedding", help="faramir or siglip (the stock pool)."),
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
    weights_dir: Optional[Path] = options.WeightsDir,
    device: str = options.Device,
    fmt: str = RowFormat,
):
    """The nearest cached images to REF by cosine distance, among those passing the filters.

    Example: faramir similar ./new.png --accepted --k 20 --format jsonl
    """
    from store.query import similar as run

    _check_format(fmt)
    filters = _filters(head, threshold, accepted, rejected, labels, min_confidence, max_confidence,
                       min_aesthetic, max_aesthetic)
    table = run(ref, db, k=k, embedding=embedding, exact=exact, nprobes=nprobes, refine_factor=refine_factor,
                weights_dir=weights_dir, device=device, **filters)
    _print_rows(table, fmt, ["distance", *ROW_COLUMNS])


@app.command()
@handle_errors
def index(
    db: Optional[str] = Db,
    siglip: bool = typer.Option(False, "--siglip", help="Also index the stock SigLIP embedding."),
    replace: bool = typer.Option(False, "--replace", help="Retrain an existing ANN index."),
):
    """Build the ANN index on the FARAMIR embedding and scalar indexes on the filter columns.

    Example: faramir index --siglip
    """
    from store.index import index as run

    embeddings = ("faramir", "siglip") if siglip else ("faramir",)
    stderr.print("Building indexes (an ANN index on 1M rows takes a few minutes)...", markup=False)
    rows = run(db, embeddings=embeddings, replace=replace)
    write_rows(rows, "table", ["column", "type", "indexed_rows", "unindexed_rows", "name"])


@app.command()
@handle_errors
def export(
    dest: Path = typer.Argument(..., help="A .csv/.jsonl/.parquet file, or a folder for the images."),
    db: Optional[str] = Db,
    fmt: Optional[str] = typer.Option(None, "--format", "-f",
                                      help="csv, jsonl, parquet or files (default: from DEST's suffix)."),
    link: str = typer.Option("copy", "--link", help="files: copy, hardlink or symlink."),
    by_label: bool = typer.Option(False, "--by-label", help="files: one subfolder per label."),
    with_embeddings: bool = typer.Option(False, "--with-embeddings", help="jsonl/parquet: include the vectors."),
    head: str = Head,
    threshold: float = options.Threshold,
    accepted: bool = Accepted,
    rejected: bool = Rejected,
    labels: Optional[List[str]] = Labels,
    min_confidence: Optional[float] = MinConfidence,
    max_confidence: Optional[float] = MaxConfidence,
    min_aesthetic: Optional[float] = MinAesthetic,
    max_aesthetic: Optional[float] = MaxAesthetic,
    sort: Optional[str] = typer.Option(None, "--sort", help="With --limit: confidence or aesthetic."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=1, help="Only the best N (by --sort)."),
):
    """Export the images that pass the filters as a table or as files; never overwrites.

    Example: faramir export ./accepted --accepted --by-label --link hardlink

    In a folder, a taken name gets the image's id appended; a source file that is gone is reported
    and skipped (exit status 3).
    """
    from store.export import export as run

    filters = _filters(head, threshold, accepted, rejected, labels, min_confidence, max_confidence,
                       min_aesthetic, max_aesthetic)
    with _Bar("export") as bar:
        result = run(dest, db, format=fmt, link=link, by_label=by_label, with_embeddings=with_embeddings,
                     sort=sort, limit=limit, progress=bar, **filters)
    for label, items in (("source file missing", result.missing), ("name taken, skipped", result.clashes)):
        for item in items[:20]:
            warn(f"{item}: {label}")
        if len(items) > 20:
            warn(f"… and {len(items) - 20} more ({label})")
    what = "rows" if result.format != "files" else "images"
    extra = f", {result.present} already there" if result.present else ""
    stderr.print(f"Exported {result.written} {what} to {result.dest}{extra}.", markup=False)
    if result.missing or result.clashes:
        raise typer.Exit(EXIT_PARTIAL)
