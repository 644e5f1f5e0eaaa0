"""The `faramir` command: every command and group, registered in one place.

Each command parses options, calls one library function, renders. Command modules import only
typer and `cli` helpers at the top; each command imports the library it calls when it runs, so
`faramir top` never imports torch (nor LanceDB) and starts in well under a second.
"""

from __future__ import annotations

import typer

from faramir.cli import (
    assess_cmd,
    curate_cmd,
    finetune_cmd,
    heads_cmd,
    ingest_cmd,
    query_cmd,
    search_cmd,
    serve_cmd,
    weights_cmd,
)


def _group(help: str) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True)


app = typer.Typer(
    name="faramir",
    help="FARAMIR image assessment with a LanceDB feature cache: ingest once, rescore any time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Assess without a cache; stage one.
app.command()(assess_cmd.assess)
app.command()(ingest_cmd.ingest)
app.command()(ingest_cmd.failures)

# Stage two.
app.command()(heads_cmd.rescore)
heads = _group("List, compare and remove the heads whose scores the cache holds.")
heads.command("list")(heads_cmd.heads_list)
heads.command("rm")(heads_cmd.heads_rm)
heads.command("diff")(heads_cmd.heads_diff)
app.add_typer(heads, name="heads")
for command in (query_cmd.top, query_cmd.stats, query_cmd.similar, query_cmd.index, query_cmd.export,
                search_cmd.search, search_cmd.duplicates):
    app.command()(command)

# Finetuning.
labels = _group("Curator labels (accept/reject or one of the 30 label names).")
labels.command("import")(finetune_cmd.labels_import)
labels.command("list")(finetune_cmd.labels_list)
labels.command("rm")(finetune_cmd.labels_rm)
app.add_typer(labels, name="labels")
app.command()(finetune_cmd.finetune)
app.command()(finetune_cmd.evaluate)
app.command()(curate_cmd.queue)
app.command("map")(curate_cmd.map)

# The gallery.
app.command()(serve_cmd.serve)

# Weights.
weights = _group("Prepare, generate and check weight directories.")
weights.command("download")(weights_cmd.download)
weights.command("generate")(weights_cmd.generate)
weights.command("check")(weights_cmd.check)
app.add_typer(weights, name="weights")


def main() -> None:
    app()


if __name__ == "__main__":  # python -m faramir.cli.app
    main()
