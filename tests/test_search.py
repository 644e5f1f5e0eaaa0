"""Text search: one filtered vector query over the cached SigLIP embeddings, equal to exact search
on small tables, with tiny generated text weights; its errors and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("open_clip", reason="the text extra is not installed")

from bench.synthetic import write_cache  # noqa: E402
from faramir.cli.app import app  # noqa: E402
from faramir.config import FULL  # noqa: E402
from faramir.errors import WeightsNotFound  # noqa: E402
from faramir.fake_weights import generate_text  # noqa: E402
from faramir.store.errors import QueryError  # noqa: E402
from faramir.store.filters import Filter  # noqa: E402
from faramir.store.vectors.text import search  # noqa: E402
from faramir.text_weights import TEXT_MODEL_FILE, load_text_encoder  # noqa: E402
from tests.stage2_helpers import tiny_cache  # noqa: E402
from tests.test_query import exact_neighbours  # noqa: E402

runner = CliRunner()
TEXT = "a dragon over water"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("synth") / "db", n=2000)


@pytest.fixture(scope="module")
def encoder(tiny_weights):
    return load_text_encoder(tiny_weights)


@pytest.mark.parametrize("filters", [
    {}, {"accepted": True}, {"accepted": False, "threshold": 0.3},
    {"labels": ["2d_human", "3d_wireframe"]}, {"min_confidence": 0.4, "max_aesthetic": 6.0},
])
def test_search_with_a_filter_equals_exact_filtered_search(synth, encoder, filters):
    got = search(TEXT, synth, k=15, encoder=encoder, **filters)
    vector = encoder.encode([TEXT])[0].astype(np.float64)
    want_ids, want_d = exact_neighbours(synth, vector, 15, "siglip", **filters)
    assert got.column("id").to_pylist() == want_ids
    similarity = got.column("similarity").to_numpy()
    np.testing.assert_allclose(similarity, 1.0 - want_d, atol=1e-6)
    assert (np.diff(similarity) <= 0).all()  # most similar first
    f = Filter.of(**filters)
    for row in got.to_pylist():  # every row passes the filter, judged by upstream's rule
        assert f.accepted is None or row["accepted"] == f.accepted
        assert not f.labels or row["label"] in f.labels
        assert f.min_confidence is None or row["confidence"] >= f.min_confidence
        assert f.max_aesthetic is None or row["aesthetic_score"] <= f.max_aesthetic


def test_different_texts_rank_differently(synth, encoder):
    a = search(TEXT, synth, k=50, encoder=encoder).column("id").to_pylist()
    b = search("white wireframe robot", synth, k=50, encoder=encoder).column("id").to_pylist()
    assert a != b


def test_search_reads_only_the_text_entry(synth, tmp_path):
    generate_text(tmp_path / "w", "tiny", 0)  # no image-side file in this directory
    got = search(TEXT, synth, k=3, weights_dir=tmp_path / "w")
    assert len(got) == 3 and got.column_names[:2] == ["similarity", "id"]


def test_search_errors_are_clear(synth, encoder, tmp_path):
    with pytest.raises(QueryError, match="the search text is empty"):
        search("  ", synth, encoder=encoder)
    with pytest.raises(WeightsNotFound, match=r"text tower missing in .*faramir weights download --text"):
        search(TEXT, synth, weights_dir=tmp_path)
    full = write_cache(tmp_path / "full-db", 4, FULL)  # 1152-d embeddings, a 32-d text tower
    with pytest.raises(QueryError, match=r"makes 32-d vectors but .* holds 1152-d SigLIP embeddings"):
        search(TEXT, full, encoder=encoder)


def test_cli_search_jsonl_and_table(synth, tiny_weights):
    result = runner.invoke(app, ["search", TEXT, "--db", synth.uri, "--weights-dir", str(tiny_weights),
                                 "--accepted", "--k", "5", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 5 and all(r["accepted"] for r in rows)
    assert [r["similarity"] for r in rows] == sorted((r["similarity"] for r in rows), reverse=True)
    assert "GENERATED tiny text tower" in result.stderr
    result = runner.invoke(app, ["search", TEXT, "--db", synth.uri, "--weights-dir", str(tiny_weights)])
    assert result.exit_code == 0 and "similarity" in result.stdout.splitlines()[0]


def test_cli_search_without_text_weights_is_one_line(synth, tmp_path):
    result = runner.invoke(app, ["search", TEXT, "--db", synth.uri, "--weights-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: text tower missing in") and result.stderr.count("\n") == 1
    assert TEXT_MODEL_FILE in result.stderr
