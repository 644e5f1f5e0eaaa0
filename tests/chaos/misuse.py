"""tests/chaos/run.py's hostile use: the CLI and the gallery given what a careless or hostile user
gives them. Each case runs on a copy of the prepared cache, in a forked child, through the CLI as
a user runs it (or the gallery's API), and must end as expected: its exit status (or HTTP status),
one `Error:` line and no traceback, nothing written where it was not asked, and afterwards the
cache passes every invariant, unchanged.

    export     a cached file replaced by a symlink to a secret, or by other bytes of its size (as
               files and as WebDataset shards); destinations in /proc and inside the cache (also
               for training sets); a full disk at the destination
    numbers    bounds beyond float32's range, NaN, infinity and huge integers, CLI and gallery
    read-only  every writing command, and the gallery's writes, on a read-only file system
    db         --db another LanceDB database, a file, a folder of other files
    labels     a binary label file, JSON lines that are not objects
    names      a finetune from the gallery under a registered head's name
    memory     a thumbnail of a cached path that now holds a 1 GiB file
    weights    a head checkpoint of integers
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.chaos import commands as cmds
from tests.hostile import spoil_cached

GIB = 1 << 30


def _cli(*args) -> dict:
    """What `faramir ARGS` did: exit status, its error lines, whether a traceback showed."""
    from typer.testing import CliRunner

    from faramir.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    traceback = result.exception is not None and not isinstance(result.exception, SystemExit)
    return {"exit": result.exit_code, "errors": [x for x in result.stderr.splitlines() if x.startswith("Error:")],
            "traceback": traceback or "Traceback" in result.stderr}


def _verdict(got: dict, code: int, *problems: str) -> dict:
    out = [p for p in problems if p]
    if got["traceback"]:
        out.append("a traceback")
    if got["exit"] != code:
        out.append(f"exit {got['exit']}, want {code}")
    if code == 1 and len(got["errors"]) != 1:
        out.append(f"{len(got['errors'])} error lines, want 1")
    return {"result": (got["errors"] or [f"exit {got['exit']}"])[0][:160], "problems": out}


def _listing(folder: Path) -> dict:
    return {str(p): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


# -- the cases: each returns _verdict(...) ------------------------------------------------------------

def export_symlink(fx: dict, db: str, folder: Path) -> dict:
    images = sorted(Path(folder / "images").iterdir())
    spoil_cached(images[0], images[1], folder)
    got = _cli("export", folder / "out", "--db", db)
    shards = _cli("export", folder / "shards", "--db", db, "--format", "webdataset")
    leaked = [p for out in ("out", "shards") if (folder / out).is_dir() for p in (folder / out).iterdir()
              if b"password" in p.read_bytes()]
    return _verdict(got if shards["exit"] == 3 else shards, 3, f"exported the secret in {leaked[0].name}" if leaked else "")


def export_destinations(fx: dict, db: str, folder: Path) -> dict:
    before = _listing(Path(db))
    results = [_cli("export", dest, "--db", db)
               for dest in ("/proc/self/faramir-export", Path(db), Path(db) / "images.lance", Path(db) / "rows.csv")]
    results += [_cli("export", dest, "--db", db, "--format", fmt) for dest, fmt in (
        ("/proc/self/faramir-export", "webdataset"), (Path(db) / "train", "hf"))]
    bad = next((r for r in results if r["exit"] != 1 or r["traceback"] or len(r["errors"]) != 1), results[0])
    return _verdict(bad, 1, "" if _listing(Path(db)) == before else "files written into the cache")


def numbers(fx: dict, db: str, folder: Path) -> dict:
    from fastapi.testclient import TestClient

    from faramir.gallery.app import create_app

    results = [_cli("top", "--db", db, option, value) for option, value in
               (("--max-aesthetic", "-1e39"), ("--min-aesthetic", "nan"), ("--limit", "99999999999999999999"))]
    bad = next((r for r in results[:2] if r["exit"] != 1 or r["traceback"]), results[0])
    client = TestClient(create_app(db, work=folder / "work"), base_url="http://127.0.0.1:8765")
    statuses = [client.get("/api/grid", params=p).status_code for p in
                ({"max_aesthetic": "1e39"}, {"after": "1e39," + "0" * 64}, {"limit": "99999999999999999999"})]
    return _verdict(bad, 1, "" if results[2]["exit"] == 0 else f"top --limit huge: exit {results[2]['exit']}",
                    "" if statuses == [400] * 3 else f"gallery answered {statuses}, want 400s")


def read_only(fx: dict, db: str, folder: Path) -> dict:
    mount = folder / "ro"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        return {"result": "skipped: mounting a read-only file system needs root", "problems": [], "skipped": True}
    try:
        copy = mount / "cache.lancedb"
        shutil.copytree(db, copy)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        results = [_cli(*args, "--db", copy) for args in (
            ("labels", "import", fx["labels2_file"]), ("labels", "rm", "--all"), ("heads", "rm", "extra"),
            ("rescore", "--head", fx["alt"], "--name", "alt"), ("index",),
            ("ingest", fx["more"], "--weights-dir", fx["weights"], "--device", "cpu"))]
        bad = next((r for r in results if r["exit"] != 1 or r["traceback"] or len(r["errors"]) != 1
                    or "cannot be written" not in r["errors"][0]), results[0])
        return _verdict(bad, 1)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def not_a_cache(fx: dict, db: str, folder: Path) -> dict:
    import lancedb
    import pyarrow as pa

    other, file, pictures = folder / "other.lancedb", folder / "notes.txt", folder / "Pictures"
    lancedb.connect(other).create_table("images", pa.table({"url": ["a"]}))
    file.write_text("mine\n")
    pictures.mkdir()
    (pictures / "holiday.jpg").write_bytes(b"x")
    before = {p: _listing(p) for p in (other, pictures)}
    results = [_cli("ingest", fx["more"], "--db", target, "--weights-dir", fx["weights"], "--device", "cpu")
               for target in (other, file, pictures)] + [_cli("top", "--db", file)]
    bad = next((r for r in results if r["exit"] != 1 or r["traceback"] or len(r["errors"]) != 1), results[0])
    changed = [str(p) for p, listing in before.items() if _listing(p) != listing] + \
        ([str(file)] if file.read_text() != "mine\n" else [])
    return _verdict(bad, 1, f"written into {', '.join(changed)}" if changed else "")


def labels(fx: dict, db: str, folder: Path) -> dict:
    binary, objects = folder / "labels.csv", folder / "labels.jsonl"
    binary.write_bytes(bytes(range(256)) * 64)
    objects.write_text("\n".join(['[1, 2]', '"x"', "42", "null"] * 500) + "\n")
    results = [_cli("labels", "import", binary, "--db", db), _cli("labels", "import", objects, "--db", db)]
    bad = next((r for r in results if r["exit"] != 1 or r["traceback"] or len(r["errors"]) != 1), results[0])
    return _verdict(bad, 1)


def names(fx: dict, db: str, folder: Path) -> dict:
    from fastapi.testclient import TestClient

    from faramir.gallery.app import create_app

    app = create_app(db, work=folder / "work")
    response = TestClient(app, base_url="http://127.0.0.1:8765").post(
        "/api/finetune", json={"name": "extra", "epochs": 1}, headers={"X-Faramir-Token": app.state.token})
    got = {"exit": 1 if response.status_code == 409 else response.status_code, "traceback": False,
           "errors": [f"Error: {response.json().get('error', '')}"]}
    return _verdict(got, 1)


def memory(fx: dict, db: str, folder: Path) -> dict:
    from fastapi.testclient import TestClient

    from faramir.gallery.app import create_app
    from faramir.store.cache import Cache

    row = Cache.open(db).read("images", ["id", "paths"]).to_pylist()[0]
    path = Path(row["paths"][0])
    with open(path, "r+b") as f:
        f.truncate(GIB)  # sparse: 1 GiB where the image was
    read = _bytes_read()
    client = TestClient(create_app(db, work=folder / "work"), base_url="http://127.0.0.1:8765")
    missing = [client.get(f"/api/thumb/{row['id']}").headers.get("X-Faramir-Missing") for _ in range(3)]
    read = _bytes_read() - read
    got = {"exit": 0, "traceback": False, "errors": [f"placeholders {missing}, {read} bytes read"]}
    return _verdict(got, 0, "" if missing == ["1"] * 3 else "no placeholder",
                    "" if read < 1 << 20 else f"read {read} bytes of the 1 GiB file")


def _bytes_read() -> int:
    lines = Path("/proc/self/io").read_text().splitlines()
    return int(next(x for x in lines if x.startswith("rchar:")).split()[1])


def weights(fx: dict, db: str, folder: Path) -> dict:
    from faramir.checkpoints import load_pth, save_state_dict

    ints = folder / "ints.pth"
    save_state_dict({k: v.to(__import__("torch").int64) for k, v in load_pth(fx["alt"]).items()}, ints)
    return _verdict(_cli("rescore", "--head", ints, "--name", "ints", "--db", db), 1)


CASES = {
    "export: symlink to a secret, same-size other bytes": export_symlink,
    "export: /proc, inside the cache": export_destinations,
    "numbers beyond float32, NaN, huge (CLI, gallery)": numbers,
    "read-only file system: every writing command": read_only,
    "--db: another LanceDB, a file, a folder of pictures": not_a_cache,
    "labels: binary file, JSON lines of non-objects": labels,
    "gallery finetune under a head's name": names,
    "thumbnail of a path now holding 1 GiB": memory,
    "head checkpoint of int64": weights,
}


def misuse(h) -> dict:
    """Every case on its own copy of the prepared cache (its images too), then the invariants."""
    rows = []
    for i, (name, case) in enumerate(CASES.items()):
        folder, db = h.fresh(f"misuse {i}", new_cache=False)
        shutil.copytree(Path(h.fx["base"]), folder / "images")
        expect = h.run(_repoint, h.fx, db, str(folder / "images"), name=f"misuse-copy-{i}")
        run = h.run(case, h.fx, db, folder, name=f"misuse-{i}")
        if run.status != "ok" or expect.status != "ok":
            rows.append({"case": name, "ok": False, "result": run.line() if run.status != "ok" else expect.line()})
            continue
        problems = run.value["problems"] + h.check(db, expect.value)
        rows.append({"case": name, "ok": None if run.value.get("skipped") else not problems,
                     "result": "; ".join(problems) or run.value["result"]})
    return {"rows": rows, "ok": all(r["ok"] is not False for r in rows)}


def _repoint(fx: dict, db: str, images: str) -> dict:
    """Make the copy's rows name the copy's images (so a case may spoil them); returns what the
    invariants must find afterwards: the prepared cache, at those paths."""
    from faramir.store import schema
    from faramir.store.cache import Cache

    cache, old = Cache.open(db), fx["base"]

    def moved(path: str) -> str:
        return path.replace(old, images, 1)

    table = cache.images()
    for row in table.to_arrow().select(["id", "paths"]).to_pylist():
        table.update(where=f"id = '{row['id']}'", values={"paths": [moved(p) for p in row["paths"]]})
    for name in (schema.FILES, schema.FAILURES):
        rows = cache.table(name).to_arrow()
        cache.table(name).delete("true")
        cache.table(name).add(rows.set_column(0, "path", __import__("pyarrow").array(
            [moved(p) for p in rows.column("path").to_pylist()])))
    expect = cmds.initial(fx, False)
    expect["images"] = {i: [moved(p) for p in paths] for i, paths in expect["images"].items()}
    expect["failures"] = [moved(p) for p in expect["failures"]]
    return expect
