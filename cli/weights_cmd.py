"""`faramir weights ...`: prepare, generate and check weight directories."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.app import app
from cli.common import handle_errors, stderr

weights_app = typer.Typer(help="Prepare, generate and check weight directories.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("download")
@handle_errors
def download(to: Path = typer.Option(..., "--to", help="Directory to fill with the four files.")):
    """Download the four weight files into a directory, to carry to an offline machine.

    Example: faramir weights download --to ./faramir-weights
    """
    from cli.options import _download_progress
    from faramir.download import download_weights

    with _download_progress() as progress:
        download_weights(to, progress=progress)
    stderr.print(f"Weights ready in {to}. Use: --weights-dir {to}  (or FARAMIR_WEIGHTS={to})", markup=False)


@weights_app.command("generate")
@handle_errors
def generate(
    to: Path = typer.Option(..., "--to", help="Directory to write the four files into."),
    variant: str = typer.Option("tiny", "--variant", help="tiny (tests, fast) or full (upstream size, 1.7 GB)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
):
    """Write GENERATED weights (seeded random values) in the real formats. Scores from them mean nothing.

    Example: faramir weights generate --to /tmp/fake-weights --variant tiny
    """
    from faramir.config import VARIANTS
    from faramir.fake_weights import generate as gen

    if variant not in VARIANTS:
        raise typer.BadParameter(f"use one of {', '.join(VARIANTS)}", param_hint="--variant")
    gen(to, variant, seed)
    stderr.print(f"GENERATED {variant} weights (seed {seed}) written to {to}: for tests only, "
                 "scores from them mean nothing.", style="bold red", markup=False)


@weights_app.command("check")
@handle_errors
def check(weights_dir: Path = typer.Argument(..., help="Directory holding the four files.")):
    """Load every file with strict key and shape checks and print the fingerprints.

    Example: faramir weights check ./faramir-weights
    """
    from cli.common import warn_generated
    from faramir.weights import load_model

    info = load_model(weights_dir).info
    warn_generated(info)
    print(f"variant\t{info.config.variant}")
    print(f"experts_fingerprint\t{info.experts_fingerprint}")
    print(f"pool_fingerprint\t{info.pool_fingerprint}")
    print(f"head_fingerprint\t{info.head_fingerprint}")
