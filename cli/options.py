"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

WeightsDir = typer.Option(
    None, "--weights-dir", envvar="FARAMIR_WEIGHTS",
    help="Directory with the four weight files (default: download into ~/.cache/faramir/weights).",
)
Device = typer.Option("auto", "--device", help="auto, cpu, cuda or mps.")
Precision = typer.Option("fp32", "--precision", help="fp32 (reference) or bf16 (faster, ~1e-2 off).")
BatchSize = typer.Option(8, "--batch-size", min=1, help="Images per model batch.")
Workers = typer.Option(None, "--workers", min=0, help="Decode worker processes (default: spare cores).")
Recursive = typer.Option(False, "-r", "--recursive", help="Descend into sub-folders.")
FileList = typer.Option(None, "--file-list", help="Text file of image paths, relative to the one PATH.")
Threshold = typer.Option(0.5, "--threshold", "-t", min=0.0, max=1.0, help="Accept iff confidence > T.")


def load_model(weights_dir: Optional[Path], device: str, precision: str):
    """Resolve weights (downloading into the default cache if needed) and load the model."""
    from cli.common import fail, stderr, warn_generated
    from faramir.download import resolve_weights_dir
    from faramir.model import PRECISIONS
    from faramir.pipeline import resolve_device
    from faramir.weights import load_model as _load

    if precision not in PRECISIONS:
        fail(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    dev = resolve_device(device)
    from faramir.pipeline import precision_warning

    if (why := precision_warning(dev, precision)) is not None:
        from cli.common import warn

        warn(why)
    with _download_progress() as progress:
        root = resolve_weights_dir(weights_dir, download=True, progress=progress)
    model = _load(root, dev)
    warn_generated(model.info)
    return model


class _download_progress:
    """A progress callback for weight downloads that draws a bar per file on stderr."""

    def __enter__(self):
        from cli.common import progress_bar

        self._bar = progress_bar()
        self._tasks: dict[str, int] = {}
        self._bar.__enter__()
        return self

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._bar.add_task(f"download {name}", total=total, rate="")
        self._bar.update(self._tasks[name], completed=done, total=total)

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)
