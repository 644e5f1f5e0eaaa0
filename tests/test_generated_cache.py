"""A cache built from GENERATED weights says so in every command that reads it, in one line, and
its exports carry the fact; a cache from real weights says nothing."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.synthetic import GENERATED, row_id
from faramir.cli.app import app
from faramir.config import TINY
from faramir.store import schema
from faramir.store.heads import registry
from tests.stage2_helpers import head_file, tiny_cache

runner = CliRunner()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    cache = tiny_cache(root / "db", n=120)
    labels = root / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{row_id(0, i)},{'accept' if i % 3 else 'reject'}\n"
                                             for i in range(60)))
    return cache, root, labels


def _warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "GENERATED" in line]


def commands(cache, root, labels):
    db = ["--db", cache.uri]
    yield ["top", *db]
    yield ["stats", *db]
    yield ["similar", row_id(0, 1), *db, "--k", "3"]
    yield ["heads", "list", *db]
    yield ["failures", *db]
    yield ["index", *db]
    yield ["labels", "import", str(labels), *db]
    yield ["labels", "list", *db]
    yield ["evaluate", *db]
    yield ["finetune", "--out", str(root / "tuned.pth"), "--epochs", "1", *db]
    yield ["rescore", "--head", str(head_file(root / "h.pth", seed=4)), "--name", "other", *db]
    yield ["heads", "rm", "other", *db]
    yield ["export", str(root / "out.csv"), *db]


def test_every_command_reading_a_generated_cache_warns_once_in_one_line(generated):
    cache, root, labels = generated
    for args in commands(cache, root, labels):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        warned = _warnings(result)
        assert len(warned) == 1, (args, result.stderr)
        assert warned[0] == (f"Warning: {cache.uri} was built from GENERATED weights ({GENERATED}); "
                             f"its scores mean nothing"), args


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_exports_carry_the_fact(generated, fmt):
    import faramir.store as store

    cache, root, _ = generated
    dest = root / f"export.{fmt}"
    store.export(dest, cache, limit=5)
    if fmt == "csv":
        rows = list(csv.DictReader(dest.open()))
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in dest.read_text().splitlines()]
    else:
        table = pq.read_table(dest)
        assert table.schema.metadata[b"faramir.weights_generated"].decode() == GENERATED
        rows = table.to_pylist()
    assert len(rows) == 5 and all(r["weights_generated"] == GENERATED for r in rows)


def test_a_cache_from_real_weights_says_nothing(tmp_path):
    import faramir.store as store

    cache = tiny_cache(tmp_path / "db", n=20)
    cache.set_meta(weights_generated="")
    result = runner.invoke(app, ["top", "--db", cache.uri])
    assert result.exit_code == 0 and _warnings(result) == [] and "Warning" not in result.stderr
    store.export(tmp_path / "out.csv", cache)
    assert "weights_generated" not in (tmp_path / "out.csv").read_text().splitlines()[0]
    assert cache.config() == TINY and schema.DEFAULT_HEAD in {h["name"] for h in registry.heads(cache)}
