"""`faramir labels ...`, `faramir finetune`, `faramir evaluate`: train and judge heads on the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from faramir.cli.common import EXIT_PARTIAL, fail, handle_errors, note, progress_bar, say_first, stderr
from faramir.cli.options import Db, ReportFormat, ReportFormatOpt, RowFormat, RowFormatOpt, Seed, Threshold
from faramir.cli.output import emit, emit_json
from faramir.config import DEFAULT_THRESHOLD
from faramir.store import limits

LABEL_COLUMNS = ["id", "label", "accept", "path", "source", "imported_at"]


@handle_errors
def labels_import(
    file: Annotated[Path, typer.Argument(help="CSV with a header (path,label or id,label) or JSON lines.")],
    db: Db = None,
    source: Annotated[Optional[str], typer.Option(
        "--source", help="Tag stored with these labels (default: the file).")] = None,
):
    """Import labels for cached images; rows naming images that are not cached are reported.

    Example: faramir labels import labels.csv --db art.lancedb

    Exit status 3 when some rows were skipped, 1 when none could be imported.
    """
    from faramir.store.labels.files import import_labels

    report = import_labels(file, db=db, source=source)
    say_first(report.skipped, lambda s: f"{report.file}:{s.line}: {s.ref or '(empty)'}: {s.reason}", "rows skipped")
    if not report.imported:
        fail(f"{report.file}: no label imported ({len(report.skipped)} rows skipped, reasons above); "
             f"give a CSV with a header (path,label or id,label) naming cached images, or JSON lines")
    note(f"{report.imported} labels imported, {len(report.skipped)} rows skipped.")
    if report.skipped:
        raise typer.Exit(EXIT_PARTIAL)


@handle_errors
def labels_list(db: Db = None, fmt: RowFormatOpt = RowFormat.table):
    """List imported labels with the image each one names.

    Example: faramir labels list --format csv > labels.csv
    """
    from faramir.store.labels.table import list_labels

    emit(list_labels(db).to_pylist(), fmt, LABEL_COLUMNS)


@handle_errors
def labels_rm(
    refs: Annotated[Optional[List[str]], typer.Argument(help="Image ids or paths whose labels to remove.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every label.")] = False,
    source: Annotated[Optional[str], typer.Option(
        "--source", help="Remove the labels imported with this tag/file.")] = None,
    db: Db = None,
):
    """Remove labels: of some images, of one import source, or all.

    Example: faramir labels rm --source old-labels.csv
    """
    from faramir.store.labels.table import remove_labels

    if not refs and not all_ and source is None:
        raise typer.BadParameter("name images, or pass --source S or --all")
    n = remove_labels(list(refs or ()), all=all_, source=source, db=db)
    note(f"{n} labels removed.")


@handle_errors
def finetune(
    out: Annotated[Path, typer.Option("--out", help="Where to write the finetuned checkpoint (upstream's format).")],
    base: Annotated[str, typer.Option("--base", help="A head in the cache, or a checkpoint file.")] = "faramir-v1",
    name: Annotated[Optional[str], typer.Option(
        "--name", help="Also score the cache with it under this head name.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, max=limits.MAX_EPOCHS)] = 20,
    lr: Annotated[float, typer.Option("--lr", min=1e-12, max=limits.MAX_LEARNING_RATE)] = 4e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=limits.MAX_HEAD_BATCH)] = 256,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.01, max=0.9)] = 0.2,
    seed: Seed = 0,
    threads: Annotated[int, typer.Option(
        "--threads", min=1, max=limits.MAX_THREADS, help="Torch threads (1 is fastest for this small head).")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    db: Db = None,
):
    """Finetune the decision layers of a head on the labelled cached images (upstream's recipe).

    Trains head.linear_3, head.activation_2 and head.linear_4 only; keeps the epoch with the best
    validation MCC; writes a checkpoint that differs from the base only in those modules. An
    existing --out is never overwritten without --force.

    Example: faramir finetune --base faramir-v1 --out tuned.pth --name tuned --epochs 20
    """
    from faramir.store.heads.finetune import finetune as run

    with progress_bar() as bar:
        task = bar.add_task("finetune", total=epochs + 1, rate="")

        def on_epoch(r):
            loss = "" if r.train_loss is None else f"loss {r.train_loss:.4f} "
            bar.update(task, advance=1, rate=f"{loss}val MCC {r.val_mcc:.3f} (best {r.best_val_mcc:.3f} @ {r.best_epoch})")
            if not stderr.is_terminal:
                note(f"epoch {r.epoch}: {loss}val loss {r.val_loss:.4f} val MCC {r.val_mcc:.4f}")

        outcome = run(base, out, db=db, name=name, epochs=epochs, lr=lr, batch_size=batch_size,
                      val_fraction=val_fraction, seed=seed, on_epoch=on_epoch, force=force, threads=threads)
    res = outcome.result
    note(f"Base {outcome.base}: val MCC {res.base_val_mcc:.4f}. Best epoch {res.best_epoch}: val MCC "
         f"{res.best_val_mcc:.4f} ({res.train_rows} train / {res.val_rows} val rows). "
         f"Wrote {outcome.out} ({outcome.keys} keys).")
    if outcome.scored_as:
        note(f"Scored the cache as head {outcome.scored_as!r}.")
    else:
        note(f"Score the cache with it: faramir rescore --head {outcome.out} --name NAME")


@handle_errors
def evaluate(
    head: Annotated[str, typer.Option("--head", help="Head name in the cache.")] = "faramir-v1",
    threshold: Threshold = DEFAULT_THRESHOLD,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Also draw precision/recall and histograms to this PNG.")] = None,
    fmt: ReportFormatOpt = ReportFormat.table,
    db: Db = None,
):
    """Evaluate a head against the imported labels: MCC, precision, recall, F1, confusion, sweep.

    Example: faramir evaluate --head tuned --format json
    """
    from faramir.store.heads.evaluate import evaluate as run

    result = run(head, db=db, threshold=threshold)
    if plot is not None:
        from faramir.cli.plots import plot_evaluation

        plot_evaluation(result, plot)
        note(f"Plot written to {plot}")
    if fmt == ReportFormat.json:
        emit_json(result.to_dict(), indent=2)
        return
    from faramir.cli.reports import print_evaluation

    print_evaluation(result)
