"""Labels, finetune and evaluate end to end from the CLI, on a cache ingested with tiny weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.finetune import TRAINED_PREFIXES
from faramir.metrics import mcc
from faramir.weights import FARAMIR_FILE
from tests.conftest import write_images

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_weights):
    from faramir.store.ingestion import ingest_all

    root = tmp_path_factory.mktemp("tuning")
    images = write_images(root / "imgs", 40, size=(48, 40))
    db = root / "db"
    ingest_all([root / "imgs"], db=db, weights_dir=tiny_weights, device="cpu", workers=0, batch_size=8)
    return db, images


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def labelled(cache, tmp_path_factory):
    db, images = cache
    csv = tmp_path_factory.mktemp("labels") / "labels.csv"
    names = ["3d_realism", "2d_bad", "accept", "reject", "text", "2d_anime", "degrated", "ui"]
    lines = ["path,label"] + [f"{p},{names[i % len(names)]}" for i, p in enumerate(images)]
    lines += ["missing.png,accept", f"{images[0]},not_a_label"]
    csv.write_text("\n".join(lines) + "\n")
    result = cli("labels", "import", csv, "--db", db)
    assert result.exit_code == 3, result.output  # two rows skipped: imported, but not all
    return csv


def test_labels_import_reports_what_it_skipped(cache, labelled):
    db, images = cache
    result = cli("labels", "list", "--db", db, "--format", "jsonl")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 40
    by_path = {r["path"]: r for r in rows}
    assert by_path[str(images[6])]["label"] == "degraded" and by_path[str(images[6])]["accept"] is False
    assert by_path[str(images[0])]["label"] == "3d_realism" and by_path[str(images[0])]["accept"] is True
    again = cli("labels", "import", labelled, "--db", db)
    assert "missing.png: no such cached path, and no such file" in again.stderr
    assert "not_a_label" in again.stderr and "40 labels imported, 2 rows skipped." in again.stderr
    assert again.exit_code == 3


def test_finetune_writes_upstream_format_changing_only_the_decision_layers(cache, labelled, tiny_weights, tmp_path):
    db, _ = cache
    out = tmp_path / "tuned.pth"
    threads = torch.get_num_threads()
    result = cli("finetune", "--db", db, "--base", "faramir-v1", "--out", out, "--name", "tuned",
                 "--epochs", "3", "--seed", "1", "--val-fraction", "0.25", "--lr", "0.01", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # --threads is the training's, not the process's from then on
    assert "Scored the cache as head 'tuned'." in result.stderr
    base = torch.load(tiny_weights / FARAMIR_FILE, weights_only=True)
    tuned = torch.load(out, weights_only=True)
    assert list(tuned) == list(base) and len(tuned) == 39
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith(TRAINED_PREFIXES) for k in changed)

    again = tmp_path / "again.pth"
    assert cli("finetune", "--db", db, "--out", again, "--epochs", "3", "--seed", "1",
               "--val-fraction", "0.25", "--lr", "0.01").exit_code == 0
    assert all(torch.equal(tuned[k], v) for k, v in torch.load(again, weights_only=True).items())

    heads = [json.loads(x) for x in cli("heads", "list", "--db", db, "--format", "jsonl").stdout.splitlines()]
    assert {"faramir-v1", "tuned"} <= {h["name"] for h in heads}


def test_evaluate_json_equals_metrics_recomputed_from_top(cache, labelled):
    db, images = cache
    result = cli("evaluate", "--db", db, "--head", "faramir-v1", "--format", "json", "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {"mcc", "precision", "recall", "f1", "accuracy", "confusion", "per_label", "sweep", "best"}
    top = cli("top", "--db", db, "--head", "faramir-v1", "--limit", "1000", "--format", "jsonl")
    by_path = {json.loads(x)["path"]: json.loads(x) for x in top.stdout.splitlines()}
    labels = {r["path"]: r["accept"] for r in map(json.loads, cli(
        "labels", "list", "--db", db, "--format", "jsonl").stdout.splitlines())}
    y_true = np.array([labels[p] for p in sorted(labels)])
    y_pred = np.array([by_path[p]["accepted"] for p in sorted(labels)])
    assert report["n"] == 40
    assert report["mcc"] == pytest.approx(mcc(y_true, y_pred), abs=1e-12)
    assert sum(report["confusion"].values()) == 40


def test_labels_rm(cache, labelled):
    db, images = cache
    result = cli("labels", "rm", images[1], images[2], "--db", db)
    assert result.exit_code == 0 and "2 labels removed." in result.stderr
    assert len(cli("labels", "list", "--db", db, "--format", "jsonl").stdout.splitlines()) == 38
    assert cli("labels", "rm", "--db", db).exit_code != 0  # says what to name


def test_finetune_never_overwrites_its_output_without_force(cache, labelled, tmp_path):
    from faramir.store.errors import TuningError
    from faramir.store.heads.finetune import finetune

    db, _ = cache
    out = tmp_path / "tuned.pth"
    out.write_bytes(b"a curator's earlier checkpoint")
    result = cli("finetune", "--db", db, "--out", out, "--epochs", "1")
    assert result.exit_code == 1 and out.read_bytes() == b"a curator's earlier checkpoint"
    assert result.stderr.strip() == f"Error: {out} exists; choose another --out, or pass --force to overwrite it"
    with pytest.raises(TuningError, match="pass --force to overwrite it"):
        finetune("faramir-v1", out, db=db, epochs=1)
    result = cli("finetune", "--db", db, "--out", out, "--epochs", "1", "--force")
    assert result.exit_code == 0, result.output
    assert len(torch.load(out, weights_only=True)) == 39
