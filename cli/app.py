"""The typer application. Each command parses options, calls one library function, renders."""

from __future__ import annotations

import typer

from store.allocator import keep_freed_memory

# Before any command starts LanceDB's or torch's threads: Lance's batch reads reuse freed memory
# instead of page-faulting every batch in anew (store.allocator; a 1M-row rescore 13.7 -> 9-10 s).
keep_freed_memory()

app = typer.Typer(
    name="faramir",
    help="FARAMIR image assessment with a LanceDB feature cache: ingest once, rescore any time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Commands register themselves on `app` when their module is imported.
from cli import assess_cmd, finetune_cmd, ingest_cmd, stage2_cmd, weights_cmd  # noqa: E402

__all__ = ["app", "assess_cmd", "finetune_cmd", "ingest_cmd", "stage2_cmd", "weights_cmd"]


def main() -> None:
    app()
