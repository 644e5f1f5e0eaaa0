"""`faramir assess` end to end with tiny generated weights on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from faramir import load_image
from faramir.cli.app import app
from faramir.config import OUTPUT_NAMES
from faramir.fake_weights import generate
from faramir.head import assess_outputs
from faramir.weights import load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("weights"), "tiny", seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (60, 90, 3), np.uint8)).save(root / "a.png")
    Image.fromarray(rng.randint(0, 255, (700, 300, 3), np.uint8)).save(root / "b.jpg", quality=90)
    Image.fromarray(rng.randint(0, 255, (40, 40, 4), np.uint8), "RGBA").save(root / "c.png")
    Image.fromarray(rng.randint(0, 255, (50, 30, 2), np.uint8), "LA").save(root / "d.png")
    (root / "sub").mkdir()
    Image.fromarray(rng.randint(0, 255, (32, 32), np.uint8), "L").save(root / "sub" / "e.webp")
    (root / "notes.txt").write_text("not an image, and not an image extension: never tried")
    return root


def _run(*args):
    result = runner.invoke(app, ["assess", *map(str, args)])
    return result


def test_tsv_is_upstreams_line_and_paths_as_upstream_prints_them(images, tiny_dir):
    result = _run(images, "--weights-dir", tiny_dir, "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(images / n) for n in ("a.png", "b.jpg", "c.png", "d.png")]
    for line in lines:
        path, status, label, confidence = line.split("\t")
        assert status in ("accept", "reject") and label in OUTPUT_NAMES[:30]
        assert len(confidence) == 4 and 0.0 <= float(confidence) <= 1.0  # two decimals
    assert "GENERATED" in result.stderr  # fake weights are always labelled


def test_jsonl_matches_the_model_run_by_hand(images, tiny_dir):
    result = _run(images, "-r", "--format", "jsonl", "--weights-dir", tiny_dir, "--device", "cpu",
                  "--threshold", "0.3", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows][-1] == str(images / "sub" / "e.webp")
    model = load_model(tiny_dir)
    for row in rows:
        xb, xq = (torch.from_numpy(a)[None] for a in load_image(row["path"]))
        feats = model.features(xb, xq)
        logits = model.score(feats)
        accepted, label, confidence = assess_outputs(logits, 0.3)
        assert set(row) >= {"path", "accepted", "label", "confidence", "logits", "aesthetic_score"}
        assert len(row["logits"]) == 31
        assert np.allclose(row["logits"], logits[0].tolist(), atol=1e-5)
        assert row["accepted"] == bool(accepted[0]) and row["label"] == OUTPUT_NAMES[int(label[0])]
        assert row["confidence"] == pytest.approx(float(confidence[0]), abs=1e-6)
        assert row["aesthetic_score"] == pytest.approx(float(feats.aesthetic_score[0]), abs=1e-5)


def test_unreadable_files_are_reported_skipped_and_set_the_exit_status(images, tiny_dir, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"just some text, named .png")
    result = _run(broken, images / "a.png", "--weights-dir", tiny_dir, "--device", "cpu", "--workers", "0")
    assert result.exit_code == 3
    assert result.stdout.startswith(str(images / "a.png") + "\t")
    assert f"{broken}: not an image format Pillow can read; convert it to PNG or JPEG" in result.stderr


def test_file_list_entries_are_relative_to_the_path(images, tiny_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("b.jpg\nsub/e.webp\n\n")
    result = _run(images, "--file-list", listing, "--format", "csv", "--weights-dir", tiny_dir,
                  "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split(",")[:5] == ["path", "accepted", "label", "confidence", "aesthetic_score"]
    assert [line.split(",")[0] for line in lines[1:]] == ["b.jpg", "sub/e.webp"]
    assert len(lines[1].split(",")) == 5 + 31


def test_missing_weights_give_one_clear_line(images, tmp_path):
    result = _run(images / "a.png", "--weights-dir", tmp_path / "nowhere", "--device", "cpu")
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert err.startswith("Error: FARAMIR weights missing in") and len(err.splitlines()) == 1
    assert "faramir-v1.pth" in err and "ARNIQA.pth" in err


def test_every_command_has_help_with_an_example():
    import typer.main

    group = typer.main.get_command(app)

    def walk(cmd, prefix):
        if hasattr(cmd, "commands"):  # a group (typer ships its own click)
            for name, sub in cmd.commands.items():
                yield from walk(sub, prefix + [name])
        else:
            yield prefix, cmd

    commands = list(walk(group, []))
    assert len(commands) >= 4
    for names, cmd in commands:
        assert cmd.help and "Example: faramir " in cmd.help, f"faramir {' '.join(names)} needs help with an example"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for names, _ in commands:
        assert f"`faramir {' '.join(names)}" in readme, f"faramir {' '.join(names)} is missing from the README"
