"""`faramir weights ...`: prepare, generate and check weight directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faramir.cli.common import handle_errors, stderr
from faramir.cli.options import Seed, Variant


@handle_errors
def download(
    to: Annotated[Path, typer.Option("--to", help="Directory to fill with the four files.")],
    text: Annotated[bool, typer.Option(
        "--text", help="Also the SigLIP text tower and its tokenizer (for 'faramir search').")] = False,
):
    """Download the four weight files into a directory, to carry to an offline machine.

    Example: faramir weights download --to ./faramir-weights --text
    """
    from faramir.cli.common import download_progress, note
    from faramir.download import download_weights

    with download_progress() as progress:
        download_weights(to, progress=progress)
        if text:
            from faramir.text_weights import download_text_weights

            download_text_weights(to, progress=progress)
    note(f"Weights ready in {to}. Use: --weights-dir {to}  (or FARAMIR_WEIGHTS={to})")


@handle_errors
def generate(
    to: Annotated[Path, typer.Option("--to", help="Directory to write the four files into.")],
    variant: Annotated[Variant, typer.Option(
        "--variant", help="tiny (tests, fast) or full (upstream size, 1.7 GB).")] = Variant.tiny,
    seed: Seed = 0,
    text: Annotated[bool, typer.Option("--text/--no-text", help="Also the text tower and a generated tokenizer.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Overwrite weight files already in --to.")] = False,
):
    """Write GENERATED weights (seeded random values) in the real formats. Scores from them mean nothing.

    Example: faramir weights generate --to /tmp/fake-weights --variant tiny

    A directory already holding weight files (perhaps the real ones) is refused without --force.
    """
    from faramir.fake_weights import generate as gen

    gen(to, variant.value, seed, text=text, force=force)
    stderr.print(f"GENERATED {variant.value} weights (seed {seed}) written to {to}: for tests only, "
                 "scores from them mean nothing.", style="bold red", markup=False)


@handle_errors
def check(weights_dir: Annotated[Path, typer.Argument(help="Directory holding the four files.")]):
    """Load every file with strict key and shape checks and print the fingerprints.

    Example: faramir weights check ./faramir-weights
    """
    from faramir.cli.common import warn_generated
    from faramir.weights import load_model

    info = load_model(weights_dir).info
    warn_generated(info)
    print(f"variant\t{info.config.variant}")
    print(f"experts_fingerprint\t{info.experts_fingerprint}")
    print(f"pool_fingerprint\t{info.pool_fingerprint}")
    print(f"head_fingerprint\t{info.head_fingerprint}")
    from faramir.text_weights import TEXT_MODEL_FILE, load_text_encoder, missing_text_files

    if not missing_text_files(weights_dir):  # the optional text tower: load it strictly too
        from faramir.digests import cached_file_digest

        text = load_text_encoder(weights_dir).info
        warn_generated(text)
        print(f"text_variant\t{text.config.variant}")
        print(f"text_fingerprint\t{cached_file_digest(weights_dir / TEXT_MODEL_FILE)}")
