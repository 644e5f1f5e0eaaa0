"""What must hold of a cache after any crash, race or fault: `check(db, expect)` → violations.

Each violation is one line starting with its kind:

    unreadable  a table cannot be read in full at its latest version, or faramir cannot open it
    duplicate   an image row, a path, a file record, a head or a label present twice
    missing     an expected image, path, file record or failure record absent
    unexpected  an image, path or record that no command put there
    gap         a registered head without scores on some row (or without its columns)
    score       a stored score that is not the head's output on the row's cached vectors
    heads       a head present that should be absent, or the reverse
    labels      a label lost, changed or invented
    index       an index expected and absent, or a search that fails
    file        a checkpoint a finetune wrote that does not load (a torn write)

`expect` (JSON-able) says what the commands that ran should have left:

    images      {id: [path, ...]}: exactly these contents, each at exactly these paths
    failures    [path, ...] exactly these failure records (None: not checked)
    heads_present, heads_absent   head names
    labels      {id: label} exactly (None: not checked); labels_within {id: label}: each label
                present must be this one (a labels import racing a first ingest skips rows)
    indexed     columns that must carry an index, and a nearest-neighbour search that works
    checkpoints files that, if they exist, must load as checkpoints
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

SCORE_ATOL = 1e-4  # stored vs recomputed logits: batch sizes differ between ingest and rescore
TABLES = ("meta", "files", "failures", "heads", "labels", "images")


def read_tables(db: str) -> tuple[dict, list[str]]:
    """Every table read in full at its latest version (Lance directly, not through faramir)."""
    import lance

    tables, violations = {}, []
    for name in TABLES:
        path = Path(db) / f"{name}.lance"
        if not path.is_dir():
            continue
        try:
            ds = lance.dataset(str(path))
            table = ds.to_table()
            if ds.count_rows() != len(table):
                violations.append(f"unreadable: {name}: count_rows {ds.count_rows()} != {len(table)} rows read")
            tables[name] = table
        except Exception as ex:  # noqa: BLE001
            violations.append(f"unreadable: {name}: {type(ex).__name__}: {str(ex).splitlines()[0][:200]}")
    return tables, violations


def _dups(values, what: str) -> list[str]:
    return [f"duplicate: {what} {v!r} x{n}" for v, n in Counter(values).items() if n > 1][:5]


def check_images(tables: dict, expect: dict) -> list[str]:
    out = []
    images = tables.get("images")
    want = {i: sorted(p) for i, p in expect.get("images", {}).items()}
    if images is None:
        return [f"missing: no images table ({len(want)} images expected)"] if want else []
    ids = images.column("id").to_pylist()
    paths = images.column("paths").to_pylist()
    out += _dups(ids, "image id")
    out += _dups([p for ps in paths for p in (ps or [])], "path in images.paths")
    have = {i: sorted(ps or []) for i, ps in zip(ids, paths)}
    out += [f"missing: image {i[:12]} ({want[i][0] if want[i] else '?'})" for i in sorted(set(want) - set(have))][:5]
    out += [f"unexpected: image {i[:12]} at {have[i]}" for i in sorted(set(have) - set(want))][:5]
    for i in sorted(set(want) & set(have)):
        if have[i] != want[i]:
            out.append(f"missing: image {i[:12]} lists paths {have[i]}, expected {want[i]}")
    files = tables.get("files")
    if files is not None:
        fpaths = files.column("path").to_pylist()
        out += _dups(fpaths, "files record")
        by_path = dict(zip(fpaths, files.column("id").to_pylist()))
        wanted = {p: i for i, ps in want.items() for p in ps}
        out += [f"missing: files record of {p}" for p in sorted(set(wanted) - set(by_path))][:5]
        out += [f"unexpected: files record {p} -> {by_path[p][:12] if by_path[p] else None}"
                for p in sorted(set(by_path) - set(wanted))][:5]
        out += [f"unexpected: files record {p} -> {by_path[p][:12]}, content is {wanted[p][:12]}"
                for p in sorted(set(wanted) & set(by_path)) if by_path[p] != wanted[p]][:5]
    if expect.get("failures") is not None and "failures" in tables:
        got = tables["failures"].column("path").to_pylist()
        out += _dups(got, "failure record")
        out += [f"missing: failure record of {p}" for p in sorted(set(expect["failures"]) - set(got))]
        out += [f"unexpected: failure record {p}" for p in sorted(set(got) - set(expect["failures"]))]
    return out


def check_heads(tables: dict, expect: dict) -> list[str]:
    """Every registered head has its five columns, scored on every row with its own output."""
    import numpy as np

    from faramir.checkpoints import head_from_bytes
    from faramir.config import N_CLASSES, FaramirConfig
    from faramir.store import schema
    from faramir.store.heads.scoring import HeadScorer, head_inputs, vectors

    heads, images, meta = tables.get("heads"), tables.get("images"), tables.get("meta")
    if heads is None:
        return ["missing: no heads table"] if expect.get("heads_present") else []
    names = heads.column("name").to_pylist()
    out = _dups(names, "head")
    out += [f"heads: {n!r} absent, expected present" for n in expect.get("heads_present", []) if n not in names]
    out += [f"heads: {n!r} present, expected absent" for n in expect.get("heads_absent", []) if n in names]
    if images is None or meta is None or not names:
        return out
    config = dict(zip(meta.column("key").to_pylist(), meta.column("value").to_pylist())).get("config")
    if not config:
        return out + [f"unreadable: meta holds no model config, and images holds {len(images)} rows"]
    cfg = FaramirConfig.from_json(config)
    inputs = head_inputs(images, cfg)
    for row in heads.to_pylist():
        cols = schema.HeadColumns.of(row).names
        absent = [c for c in cols if c not in images.column_names]
        if absent:
            out.append(f"gap: head {row['name']!r}: columns {absent} absent")
            continue
        nulls = max(images.column(c).null_count for c in cols)
        if nulls:
            out.append(f"gap: head {row['name']!r}: {nulls} of {len(images)} rows without scores")
            continue
        v, d, _ = HeadScorer(head_from_bytes(row["checkpoint"], cfg), max(len(images), 1)).outputs(*inputs)
        outputs = np.concatenate([v.numpy(), d.numpy()], axis=1)  # logits, then the decision logit
        stored = np.concatenate([vectors(images.column(cols[4]), N_CLASSES),
                                 images.column(cols[0]).to_numpy()[:, None]], axis=1)
        bad = int((np.abs(stored - outputs) > SCORE_ATOL).any(axis=1).sum())
        if bad:
            out.append(f"score: head {row['name']!r}: {bad} of {len(images)} rows differ from the head's output")
    return out


def check_labels(tables: dict, expect: dict) -> list[str]:
    labels = tables.get("labels")
    if labels is None:
        return ["missing: no labels table"] if expect.get("labels") else []
    got = dict(zip(labels.column("id").to_pylist(), labels.column("label").to_pylist()))
    out = _dups(labels.column("id").to_pylist(), "label for")
    if expect.get("labels") is not None:
        want = expect["labels"]
        out += [f"labels: {i[:12]} lost (expected {want[i]!r})" for i in sorted(set(want) - set(got))][:5]
        out += [f"labels: {i[:12]} is {got[i]!r}, expected {want[i]!r}"
                for i in sorted(set(want) & set(got)) if got[i] != want[i]][:5]
        out += [f"labels: {i[:12]} invented ({got[i]!r})" for i in sorted(set(got) - set(want))][:5]
    if expect.get("labels_within") is not None:
        within = expect["labels_within"]
        out += [f"labels: {i[:12]} is {got[i]!r}, not from any file imported" for i in sorted(got)
                if within.get(i) != got[i]][:5]
    return out


def check_through_faramir(db: str, expect: dict) -> list[str]:
    """The cache opens and answers through faramir's own read path; expected indexes serve searches."""
    import faramir.store as store

    out = []
    try:
        rows = store.top(db, limit=None) if "images" in expect and expect["images"] else None
        for head in store.list_heads(db):
            store.count(db, head=head.name)
        store.failures(db)
        store.list_labels(db)
    except Exception as ex:  # noqa: BLE001
        return [f"unreadable: through faramir: {type(ex).__name__}: {str(ex).splitlines()[0][:200]}"]
    if expect.get("indexed"):
        try:
            present = {ix["column"] for ix in _list_indexes(db)}
            out += [f"index: {c} not indexed" for c in expect["indexed"] if c not in present]
            if rows is not None and len(rows):
                found = store.similar(rows.column("id")[0].as_py(), db, k=3)
                if len(found) != min(3, len(rows)):
                    out.append(f"index: similar returned {len(found)} rows of {min(3, len(rows))}")
        except Exception as ex:  # noqa: BLE001
            out.append(f"index: {type(ex).__name__}: {str(ex).splitlines()[0][:200]}")
    return out


def _list_indexes(db: str) -> list[dict]:
    from faramir.store.vectors.indexes import list_indexes

    return list_indexes(db)


def check_checkpoints(expect: dict) -> list[str]:
    from faramir.checkpoints import load_pth

    out = []
    for path in expect.get("checkpoints", []):
        if os.path.exists(path):
            try:
                load_pth(path)
            except Exception as ex:  # noqa: BLE001
                out.append(f"file: {path} does not load: {str(ex).splitlines()[0][:200]}")
    return out


def check(db: str, expect: dict) -> list[str]:
    """Every violation of the invariants by the cache at `db`, given what the commands that ran
    should have left (`expect`, see the module's docstring)."""
    if not os.path.isdir(db):
        return [f"missing: no cache at {db}"] if expect.get("images") else []
    tables, out = read_tables(db)
    if out:
        return out
    out += check_images(tables, expect)
    out += check_heads(tables, expect)
    out += check_labels(tables, expect)
    out += check_through_faramir(db, expect)
    out += check_checkpoints(expect)
    return out
