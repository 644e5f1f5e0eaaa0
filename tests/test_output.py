"""`faramir.cli.output`: what every `--format` prints, whatever the rows hold (newlines and tabs in paths,
names that are not UTF-8, NaN scores, long paths on a narrow terminal)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.cli.output import assessment_line, emit, emit_json, emit_results
from faramir.decision import tsv_line
from faramir.pipeline import Assessment

runner = CliRunner()
ODD = "/art/two\tcolumns\nand two lines\\.png"


def _row(**extra):
    return {"id": "ab" * 32, "path": ODD, "confidence": 0.7310585975646973, "accepted": True,
            "label": "2d_fantasy", "aesthetic_score": 5.123456789, **extra}


def unescape_tsv(field: str) -> str:
    """The inverse of the TSV escape the output uses (backslash, tab, newline, carriage return)."""
    out, chars = [], iter(field)
    for c in chars:
        out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[next(chars)] if c == "\\" else c)
    return "".join(out)


def test_tsv_rows_never_split_and_round_trip():
    out = io.StringIO()
    emit([_row(), _row(path="/plain.png")], "tsv", ["path", "confidence", "label"], out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "path\tconfidence\tlabel" and len(lines) == 3
    fields = lines[1].split("\t")
    assert len(fields) == 3 and unescape_tsv(fields[0]) == ODD
    assert lines[2].split("\t")[0] == "/plain.png"


def test_upstreams_tsv_line_escapes_the_path_only_when_it_must():
    assert tsv_line("/art/a b.png", True, "2d_fantasy", 0.734) == "/art/a b.png\taccept\t2d_fantasy\t0.73"
    line = tsv_line(ODD, False, "2d_bad", 0.25)
    assert "\n" not in line and line.count("\t") == 3
    assert unescape_tsv(line.split("\t")[0]) == ODD
    result = Assessment(ODD, True, "2d_fantasy", 0.5, [0.0] * 31, 5.0)
    assert assessment_line(result, "tsv") == tsv_line(ODD, True, "2d_fantasy", 0.5)


def test_csv_keeps_full_precision_and_parses_back():
    out = io.StringIO()
    emit([_row()], "csv", ["path", "confidence", "aesthetic_score"], out=out)
    (row,) = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["path"] == ODD
    assert float(row["confidence"]) == 0.7310585975646973 and float(row["aesthetic_score"]) == 5.123456789


def test_tables_round_for_reading():
    out = io.StringIO()
    emit([_row(path="/plain.png")], "table", ["path", "confidence"], out=out)
    assert "0.7311" in out.getvalue() and "0.73105" not in out.getvalue()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_json_output_is_always_json(bad):
    out = io.StringIO()
    emit([_row(confidence=bad, logits=[1.0, bad])], "jsonl", ["path"], out=out)
    row = json.loads(out.getvalue(), parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))
    assert row["confidence"] is None and row["logits"] == [1.0, None]

    result = Assessment("/a.png", False, "3d_rig", bad, [bad] * 31, bad)
    row = json.loads(assessment_line(result, "jsonl"), parse_constant=lambda name: pytest.fail(name))
    assert row["confidence"] is None and row["logits"] == [None] * 31 and row["aesthetic_score"] is None


def test_one_json_object_is_json_too(capsys):
    emit_json({"mcc": float("nan"), "sweep": [{"threshold": 0.5, "precision": float("nan")}]})
    value = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(name))
    assert value == {"mcc": None, "sweep": [{"threshold": 0.5, "precision": None}]}


def test_names_that_are_not_utf8_print_in_every_format():
    name = os.fsdecode(b"/art/caf\xe9.png")  # as os.listdir gives it
    for fmt in ("table", "jsonl", "csv", "tsv"):
        buf = io.BytesIO()
        out = io.TextIOWrapper(buf, encoding="utf-8")  # strict, like a UTF-8 terminal
        emit([_row(path=name)], fmt, ["path"], out=out)
        out.flush()
        assert "caf" in buf.getvalue().decode("utf-8")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_an_80_column_table_keeps_the_whole_path_visible(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    path = "/home/curator/collections/2024/fantasy-landscapes/highres/dragon-over-the-mountains-final-v3.png"
    out = _Terminal()
    emit([{"path": path, "reason": "not an image format Pillow can read; convert it to PNG or JPEG",
           "failed_at": "2026-05-01 12:00:00+00:00"}], "table", ["path", "reason", "failed_at"], out=out)
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue()).splitlines()  # without the terminal's colours
    assert max(len(line) for line in lines) <= 80
    body = [line for line in lines[2:] if line.strip()]
    assert "".join(line.split("│")[0].strip() for line in body) == path


def test_similar_tsv_keeps_the_distance(capsys):
    table = pa.table({"distance": [0.0, 0.125], "path": ["/a.png", "/b.png"], "accepted": [True, False],
                      "label": ["2d_fantasy", "2d_bad"], "confidence": [0.75, 0.25]})
    emit_results(table, "tsv", ["distance", "path"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["/a.png\taccept\t2d_fantasy\t0.75\t0.0", "/b.png\treject\t2d_bad\t0.25\t0.125"]


def test_cli_similar_tsv_has_upstreams_columns_then_the_distance(tmp_path):
    from tests.stage2_helpers import tiny_cache

    cache = tiny_cache(tmp_path / "db", n=50)
    first = cache.read("images", ["id"]).column("id")[0].as_py()
    result = runner.invoke(app, ["similar", first, "--db", str(tmp_path / "db"), "--k", "3", "--format", "tsv"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 5 for line in lines)
    distances = [float(line.split("\t")[4]) for line in lines]
    assert distances[0] == 0.0 and distances == sorted(distances) and not any(math.isnan(d) for d in distances)
