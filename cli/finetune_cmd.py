"""`faramir labels ...`, `faramir finetune`, `faramir evaluate`: train and judge heads on the cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from cli.app import app
from cli.common import handle_errors, stderr, warn, write_rows

DbOption = typer.Option(None, "--db", envvar="FARAMIR_DB", help="Cache location (default: ~/.local/share/faramir/cache.lancedb).")

labels_app = typer.Typer(help="Curator labels (accept/reject or one of the 30 label names).", no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("import")
@handle_errors
def labels_import(
    file: Path = typer.Argument(..., help="CSV with a header (path,label or id,label) or JSON lines."),
    db: Optional[str] = DbOption,
    source: Optional[str] = typer.Option(None, "--source", help="Tag stored with these labels (default: the file)."),
):
    """Import labels for cached images; rows naming images that are not cached are reported.

    Example: faramir labels import labels.csv --db art.lancedb
    """
    from store.labels import import_labels

    report = import_labels(file, db=db, source=source)
    for s in report.skipped:
        warn(f"{report.file}:{s.line}: {s.ref or '(empty)'}: {s.reason}")
    stderr.print(f"{report.imported} labels imported, {len(report.skipped)} rows skipped.", markup=False)


@labels_app.command("list")
@handle_errors
def labels_list(
    db: Optional[str] = DbOption,
    fmt: str = typer.Option("table", "--format", help="table, jsonl, csv or tsv."),
):
    """List imported labels with the image each one names.

    Example: faramir labels list --format csv > labels.csv
    """
    from store.labels import list_labels

    rows = list_labels(db).to_pylist()
    write_rows(rows, fmt, ["id", "label", "accept", "path", "source", "imported_at"])


@labels_app.command("rm")
@handle_errors
def labels_rm(
    refs: Optional[List[str]] = typer.Argument(None, help="Image ids or paths whose labels to remove."),
    all_: bool = typer.Option(False, "--all", help="Remove every label."),
    source: Optional[str] = typer.Option(None, "--source", help="Remove the labels imported with this tag/file."),
    db: Optional[str] = DbOption,
):
    """Remove labels: of some images, of one import source, or all.

    Example: faramir labels rm --source old-labels.csv
    """
    from store.labels import remove_labels

    if not refs and not all_ and source is None:
        raise typer.BadParameter("name images, or pass --source S or --all")
    n = remove_labels(list(refs or ()), all=all_, source=source, db=db)
    stderr.print(f"{n} labels removed.", markup=False)


@app.command()
@handle_errors
def finetune(
    base: str = typer.Option("faramir-v1", "--base", help="A head in the cache, or a checkpoint file."),
    out: Path = typer.Option(..., "--out", help="Where to write the finetuned checkpoint (upstream's format)."),
    name: Optional[str] = typer.Option(None, "--name", help="Also score the cache with it under this head name."),
    epochs: int = typer.Option(20, "--epochs", min=1),
    lr: float = typer.Option(4e-4, "--lr", min=0.0),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.01, max=0.9),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", min=1, help="Torch threads (1 is fastest for this small head)."),
    db: Optional[str] = DbOption,
):
    """Finetune the decision layers of a head on the labelled cached images (upstream's recipe).

    Trains head.linear_3, head.activation_2 and head.linear_4 only; keeps the epoch with the best
    validation MCC; writes a checkpoint that differs from the base only in those modules.

    Example: faramir finetune --base faramir-v1 --out tuned.pth --name tuned --epochs 20
    """
    import torch

    from cli.common import progress_bar
    from store.tuning import finetune as run

    torch.set_num_threads(threads)
    with progress_bar() as bar:
        task = bar.add_task("finetune", total=epochs + 1, rate="")

        def on_epoch(r):
            loss = "" if r.train_loss is None else f"loss {r.train_loss:.4f} "
            bar.update(task, advance=1, rate=f"{loss}val MCC {r.val_mcc:.3f} (best {r.best_val_mcc:.3f} @ {r.best_epoch})")
            if not stderr.is_terminal:
                stderr.print(f"epoch {r.epoch}: {loss}val loss {r.val_loss:.4f} val MCC {r.val_mcc:.4f}", markup=False)

        outcome = run(base, out, db=db, name=name, epochs=epochs, lr=lr, batch_size=batch_size,
                      val_fraction=val_fraction, seed=seed, on_epoch=on_epoch)
    res = outcome.result
    stderr.print(
        f"Base {outcome.base}: val MCC {res.base_val_mcc:.4f}. Best epoch {res.best_epoch}: val MCC "
        f"{res.best_val_mcc:.4f} ({res.train_rows} train / {res.val_rows} val rows). "
        f"Wrote {outcome.out} ({outcome.keys} keys).", markup=False, soft_wrap=True)
    if outcome.scored_as:
        stderr.print(f"Scored the cache as head {outcome.scored_as!r}.", markup=False)
    else:
        stderr.print(f"Score the cache with it: faramir rescore --head {outcome.out} --name NAME", markup=False)


@app.command()
@handle_errors
def evaluate(
    head: str = typer.Option("faramir-v1", "--head", help="Head name in the cache."),
    threshold: float = typer.Option(0.5, "--threshold", "-t", min=0.0, max=1.0),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw precision/recall and histograms to this PNG."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    db: Optional[str] = DbOption,
):
    """Evaluate a head against the imported labels: MCC, precision, recall, F1, confusion, sweep.

    Example: faramir evaluate --head tuned --format json
    """
    from store.tuning import evaluate as run, plot_evaluation

    result = run(head, db=db, threshold=threshold)
    if plot is not None:
        plot_evaluation(result, plot)
        stderr.print(f"Plot written to {plot}", markup=False)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    if fmt == "json":
        print(json.dumps(public, indent=2, default=float))
        return
    if fmt != "table":
        raise typer.BadParameter("use table or json", param_hint="--format")
    c = result["confusion"]
    print(f"head {head} at threshold {threshold}: {result['n']} labelled images")
    print(f"  MCC {result['mcc']:.4f}  precision {result['precision']:.4f}  recall {result['recall']:.4f}  "
          f"F1 {result['f1']:.4f}  accuracy {result['accuracy']:.4f}")
    print("  confusion          labelled accept  labelled reject")
    print(f"    predicted accept {c['tp']:>15}  {c['fp']:>15}")
    print(f"    predicted reject {c['fn']:>15}  {c['tn']:>15}")
    best = result["best"]
    print(f"  best threshold by MCC: {best['threshold']:.2f} (MCC {best['mcc']:.4f})")
    print()
    write_rows(result["per_label"], "table",
               [k for k in result["per_label"][0].keys()] if result["per_label"] else ["label"])
    print()
    step = [s for s in result["sweep"] if round(s["threshold"] * 100) % 10 == 0]
    write_rows(step, "table", ["threshold", "accepted", "precision", "recall", "f1", "mcc"])
