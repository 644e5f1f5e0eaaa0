"""`faramir assess`: upstream's inference.py, as a drop-in."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from faramir.cli import options
from faramir.cli.common import EXIT_PARTIAL, handle_errors, note, track, warn
from faramir.cli.options import (
    AssessFormat,
    BatchSize,
    Compile,
    Decode,
    DecodeOpt,
    Device,
    FileList,
    Paths,
    Precision,
    PrecisionOpt,
    Recursive,
    Threshold,
    WeightsDir,
    Workers,
)
from faramir.cli.output import assessment_header, assessment_line
from faramir.config import DEFAULT_THRESHOLD


@handle_errors
def assess(
    paths: Paths,
    recursive: Recursive = False,
    file_list: FileList = None,
    threshold: Threshold = DEFAULT_THRESHOLD,
    batch_size: BatchSize = 8,
    workers: Workers = None,
    device: Device = "auto",
    precision: PrecisionOpt = Precision.fp32,
    weights_dir: WeightsDir = None,
    compile: Compile = False,
    decode: DecodeOpt = Decode.faithful,
    fmt: Annotated[AssessFormat, typer.Option("--format", help="tsv (upstream's line), jsonl or csv.")] = AssessFormat.tsv,
):
    """Assess images with FARAMIR and print one line per image, like upstream's inference.py.

    Example: faramir assess ./art -r --format jsonl > scores.jsonl

    Unreadable files are reported on stderr and skipped; the exit status is 3 if any were.
    """
    from faramir.pipeline import Assessment
    from faramir.pipeline import assess as run
    from faramir.sources import discover

    sources = discover(paths, recursive, file_list)
    if not sources:
        warn("no image files found")
        raise typer.Exit(EXIT_PARTIAL)
    model = options.load_model(weights_dir, device, precision.value, batch_size if compile else None)

    if (header := assessment_header(fmt)) is not None:
        print(header)
    failed = 0
    results = run(model, sources, threshold, batch_size, workers, precision.value, decode.value)
    for result in track(results, len(sources), "assess", show=len(sources) > 8):
        if not isinstance(result, Assessment):
            failed += 1
            warn(f"{result.path}: {result.reason}")
            continue
        for message in result.warnings:
            warn(message)
        print(assessment_line(result, fmt), flush=False)
    sys.stdout.flush()
    if failed:
        note(f"{failed} of {len(sources)} files could not be read (listed above).")
        raise typer.Exit(EXIT_PARTIAL)
