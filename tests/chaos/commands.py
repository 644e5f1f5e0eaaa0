"""What tests/chaos/run.py runs: its prepared collection and cache, the six writing commands, what
each should leave behind, and the readers that loop while they write.

Every function here runs in a forked child (tests/chaos/forked.py) and returns JSON-able values. The
commands are the library twins the CLI calls, one call each, with the CLI's defaults except
ingest's commit chunk (two files, so a kill or a race meets many commits).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import os
import shutil
import time
from pathlib import Path

IMAGE_SIZE = (32, 24)
WRITERS = ("ingest", "rescore", "finetune", "labels import", "heads rm", "index")


# -- the prepared collection and cache ---------------------------------------------------------

def _head_file(weights: Path, dest: Path, seed: int) -> None:
    """A head-only checkpoint (norm.* + head.*): the released head's tensors, perturbed."""
    import torch

    from faramir.checkpoints import load_pth, save_state_dict, split_faramir_checkpoint

    _, head = split_faramir_checkpoint(load_pth(weights / "faramir-v1.pth"))
    gen = torch.Generator().manual_seed(seed)
    save_state_dict({k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if v.numel() > 1 else v
                     for k, v in head.items()}, dest)


def _labels(paths: list[Path], first_label: int) -> dict[str, str]:
    names = ("accept", "reject")
    return {str(p): names[(i + first_label) % 2] for i, p in enumerate(paths)}


def build_fixture(root: str, n_base: int, n_more: int) -> dict:
    """Generate tiny weights, two folders of images (`n_base` and one unreadable file; `n_more`
    new and two copies of known content), two head files, two label files (the first half of the
    base images; the middle half, half of them relabelled), and the prepared cache: the base
    folder ingested, head 'extra' scored, the first labels imported."""
    import faramir.store as store
    from faramir.fake_weights import generate
    from tests.conftest import write_images

    root = Path(root)
    weights = generate(root / "weights", "tiny", 0)
    base, more = root / "images" / "base", root / "images" / "more"
    base_paths = write_images(base, n_base, size=IMAGE_SIZE, seed=0)
    more_paths = write_images(more, n_more, size=IMAGE_SIZE, seed=1, prefix="new")
    more_paths.append(Path(shutil.copy(base_paths[0], more / "copy-of-base.png")))
    more_paths.append(Path(shutil.copy(more_paths[0], more / "copy-of-new.png")))
    broken = base / "broken.png"
    broken.write_bytes(b"not an image")
    contents = {os.path.abspath(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in base_paths + more_paths}
    for name, seed in (("alt", 1), ("extra", 2)):
        _head_file(weights, root / f"{name}.pth", seed)
    labels1 = _labels(base_paths[: n_base // 2], 0)  # by path
    labels2 = {contents[os.path.abspath(p)]: label  # by id
               for p, label in _labels(base_paths[n_base // 4: 3 * n_base // 4], 1).items()}
    _write_csv(root / "labels1.csv", "path", labels1)
    _write_csv(root / "labels2.csv", "id", labels2)

    db = root / "base.lancedb"
    store.ingest_all([base], db=db, weights_dir=weights, device="cpu", workers=0)
    store.rescore(root / "extra.pth", "extra", db=db)
    store.import_labels(root / "labels1.csv", db=db)
    return {
        "root": str(root), "weights": str(weights), "base": str(base), "more": str(more), "db": str(db),
        "alt": str(root / "alt.pth"), "labels2_file": str(root / "labels2.csv"),
        "contents": contents, "broken": os.path.abspath(broken),
        "labels1": {contents[os.path.abspath(p)]: label for p, label in labels1.items()},
        "labels2": labels2,
    }


def _write_csv(path: Path, key: str, labels: dict[str, str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([key, "label"])
        writer.writerows(labels.items())


# -- the writing commands ----------------------------------------------------------------------

def folders(fx: dict, new_cache: bool) -> list[str]:
    """What ingest reads: the base folder into a new cache; both folders into the prepared one."""
    return [fx["base"]] if new_cache else [fx["base"], fx["more"]]


def run_command(fx: dict, command: str, db: str, new_cache: bool, out: str) -> dict:
    """One writing command against `db`, as the CLI runs it (`out`: finetune's checkpoint)."""
    import faramir.store as store

    if command == "ingest":
        s = store.ingest_all(folders(fx, new_cache), db=db, weights_dir=fx["weights"], device="cpu",
                             workers=1, batch_size=2, commit_every=2)
        return {"new": s.new, "unchanged": s.unchanged, "duplicate": s.duplicate, "failed": s.failed}
    if command == "rescore":
        return {"rows": store.rescore(fx["alt"], "alt", db=db).rows}
    if command == "finetune":
        return {"out": str(store.finetune("faramir-v1", out, db=db, name="tuned", epochs=3).out)}
    if command == "labels import":
        return {"imported": store.import_labels(fx["labels2_file"], db=db).imported}
    if command == "heads rm":
        return {"removed": store.remove_head("extra", db).name}
    if command == "index":
        return {"indexes": len(store.index(db))}
    raise ValueError(command)


def expected_refusal(command: str, new_cache: bool, error: str, message: str, partner: str | None) -> bool:
    """A refusal that is right, not a failure: a command needing images on a cache that has none
    yet, or a second `heads rm` finding the head already gone."""
    if new_cache and command != "ingest":
        return (error == "NoCache" or "no head named" in message
                or "no labelled cached images" in message)
    return command == "heads rm" and partner == "heads rm" and "no head named 'extra'" in message


# -- what they should leave --------------------------------------------------------------------

def images_of(fx: dict, dirs: list[str]) -> dict[str, list[str]]:
    """{id: [paths]} of the good images in these folders."""
    out: dict[str, list[str]] = {}
    for path, content_id in fx["contents"].items():
        if any(path.startswith(d.rstrip("/") + "/") for d in dirs):
            out.setdefault(content_id, []).append(path)
    return {i: sorted(p) for i, p in out.items()}


def initial(fx: dict, new_cache: bool) -> dict:
    """The expectation before any command: the prepared cache, or nothing."""
    if new_cache:
        return {"images": {}, "failures": [], "heads_present": [], "heads_absent": [], "labels": {}}
    return {"images": images_of(fx, [fx["base"]]), "failures": [fx["broken"]],
            "heads_present": ["faramir-v1", "extra"], "heads_absent": [], "labels": dict(fx["labels1"])}


def apply(expect: dict, fx: dict, command: str, new_cache: bool, out: str) -> dict:
    """The expectation once `command` has run to the end."""
    e = copy.deepcopy(expect)
    if command == "ingest":
        e["images"] = images_of(fx, folders(fx, new_cache))
        e["failures"] = [fx["broken"]]
        e["heads_present"] = sorted(set(e["heads_present"]) | {"faramir-v1"})
    elif command in ("rescore", "finetune"):
        e["heads_present"] = sorted(set(e["heads_present"]) | {"alt" if command == "rescore" else "tuned"})
        if command == "finetune":
            e["checkpoints"] = [*e.get("checkpoints", []), out]
    elif command == "labels import":
        if new_cache:  # racing the first ingest: rows naming images not yet cached are skipped
            e["labels"], e["labels_within"] = None, dict(fx["labels2"])
        else:
            e["labels"] = {**e["labels"], **fx["labels2"]}
    elif command == "heads rm":
        e["heads_present"] = [h for h in e["heads_present"] if h != "extra"]
        e["heads_absent"] = sorted(set(e["heads_absent"]) | {"extra"})
    elif command == "index":
        e["indexed"] = ["faramir_embedding"]
    return e


# -- readers -----------------------------------------------------------------------------------

def reader_loop(db: str, stop: str, new_cache: bool, pause_s: float = 0.02) -> dict:
    """Query the cache the ways stage two does until `stop` exists. Counts: queries, expected
    refusals (no cache or no images yet, on a new cache), errors (anything else), duplicate ids
    in a ranking, and rows seen without a registered head's scores (a gap visible to a reader,
    however briefly)."""
    import faramir.store as store
    from faramir.errors import FaramirError
    from faramir.store.errors import NoCache

    seen = {"queries": 0, "refused": 0, "errors": [], "duplicates": [], "gaps": []}
    queries = [_top, _count_and_stats, _heads_and_gaps, _failures_and_labels, _similar]
    i = 0
    while not os.path.exists(stop):
        query = queries[i % len(queries)]
        i += 1
        try:
            query(store, db, seen)
        except FaramirError as ex:
            if new_cache and (isinstance(ex, NoCache) or "no head named 'faramir-v1'" in str(ex)):
                seen["refused"] += 1
            else:
                seen["errors"].append(f"{query.__name__[1:]}: {type(ex).__name__}: {str(ex)[:200]}")
        except Exception as ex:  # noqa: BLE001
            seen["errors"].append(f"{query.__name__[1:]}: {type(ex).__name__}: {str(ex).splitlines()[0][:200]}")
        seen["queries"] += 1
        time.sleep(pause_s)
    return seen


def _top(store, db, seen) -> None:
    ids = store.top(db, limit=None).column("id").to_pylist()
    if len(ids) != len(set(ids)):
        seen["duplicates"].append(f"top: {len(ids) - len(set(ids))} duplicate ids in {len(ids)} rows")


def _count_and_stats(store, db, seen) -> None:
    store.count(db)
    store.stats(db)


def _heads_and_gaps(store, db, seen) -> None:
    from faramir.store import schema
    from faramir.store.cache import Cache
    from faramir.store.heads import registry

    cache = Cache.open(db)
    heads = registry.heads(cache)
    if not cache.has_images():
        return
    ds = cache.dataset(schema.IMAGES)
    for head in heads:
        column = f"{head['prefix']}_confidence"
        missing = ds.count_rows(f"{column} IS NULL") if column in ds.schema.names else ds.count_rows()
        if missing:
            seen["gaps"].append(f"{head['name']}: {missing} of {ds.count_rows()} rows unscored at version {ds.version}")
    store.list_heads(db)


def _failures_and_labels(store, db, seen) -> None:
    store.failures(db)
    store.list_labels(db)


def _similar(store, db, seen) -> None:
    rows = store.top(db, limit=1)
    if len(rows):
        store.similar(rows.column("id")[0].as_py(), db, k=3)
