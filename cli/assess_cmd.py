"""`faramir assess`: upstream's inference.py, as a drop-in."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from cli import options
from cli.app import app
from cli.common import EXIT_PARTIAL, handle_errors, stderr, track, warn
from faramir.config import OUTPUT_NAMES


@app.command()
@handle_errors
def assess(
    paths: List[str] = typer.Argument(..., help="Image files and/or folders."),
    recursive: bool = options.Recursive,
    file_list: Optional[str] = options.FileList,
    threshold: float = options.Threshold,
    batch_size: int = options.BatchSize,
    workers: Optional[int] = options.Workers,
    device: str = options.Device,
    precision: str = options.Precision,
    weights_dir: Optional[Path] = options.WeightsDir,
    fmt: str = typer.Option("tsv", "--format", help="tsv (upstream's line), jsonl or csv."),
):
    """Assess images with FARAMIR and print one line per image, like upstream's inference.py.

    Example: faramir assess ./art -r --format jsonl > scores.jsonl

    Unreadable files are reported on stderr and skipped; the exit status is 3 if any were.
    """
    from faramir.pipeline import Assessment, assess as run, discover

    if fmt not in ("tsv", "jsonl", "csv"):
        raise typer.BadParameter("use tsv, jsonl or csv", param_hint="--format")
    sources = discover(paths, recursive, file_list)
    if not sources:
        warn("no image files found")
        raise typer.Exit(EXIT_PARTIAL)
    model = options.load_model(weights_dir, device, precision)

    if fmt == "csv":
        print(",".join(["path", "accepted", "label", "confidence", "aesthetic_score", *OUTPUT_NAMES]))
    failed = 0
    results = run(model, sources, threshold, batch_size, workers, precision)
    for result in track(results, len(sources), "assess", show=len(sources) > 8):
        if not isinstance(result, Assessment):
            failed += 1
            warn(f"{result.path}: {result.reason}")
            continue
        for message in result.warnings:
            warn(message)
        if fmt == "tsv":
            line = result.tsv()
        elif fmt == "jsonl":
            line = json.dumps({
                "path": result.path, "accepted": result.accepted, "label": result.label,
                "confidence": result.confidence, "aesthetic_score": result.aesthetic_score,
                "logits": result.logits,
            })
        else:
            import csv, io
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow([
                result.path, result.accepted, result.label, result.confidence,
                result.aesthetic_score, *result.logits,
            ])
            line = buf.getvalue()
        print(line, flush=False)
    sys.stdout.flush()
    if failed:
        stderr.print(f"{failed} of {len(sources)} files could not be read (listed above).", markup=False)
        raise typer.Exit(EXIT_PARTIAL)
