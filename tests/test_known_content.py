"""Known content never wakes the model: renamed and copied files whose content is cached are
recognised by their hash before anything loads, and only new content loads the experts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.ingestion import IngestPlan, ingest, ingest_all
from tests.conftest import write_images
from tests.test_ingest import never_load

REPO = Path(__file__).resolve().parents[1]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def paths_of(db) -> dict[str, list[str]]:
    rows = Cache.open(db).read(schema.IMAGES, ["id", "paths"]).to_pylist()
    return {r["id"]: sorted(r["paths"]) for r in rows}


def test_renamed_and_copied_content_is_recorded_without_loading_the_model(tmp_path, tiny_model):
    imgs, db = tmp_path / "imgs", tmp_path / "db"
    originals = write_images(imgs, 4)
    ingest_all([imgs], db=db, model=tiny_model, workers=0)
    moved = imgs / "renamed.png"
    originals[0].rename(moved)
    (imgs / "sub").mkdir()
    copied = shutil.copy(originals[1], imgs / "sub" / "copy.png")

    events = list(ingest([imgs], db=db, model=never_load, recursive=True, workers=0))
    assert isinstance(events[0], IngestPlan) and events[0].to_read == 2  # read (to be hashed), never decoded
    s = events[-1]
    assert (s.found, s.new, s.unchanged, s.duplicate, s.failed) == (5, 0, 3, 2, 0)
    files = {r["path"]: r["id"] for r in Cache.open(db).read(schema.FILES, ["path", "id"]).to_pylist()}
    assert files[os.path.abspath(moved)] == sha(moved) and files[os.path.abspath(copied)] == sha(copied)
    assert os.path.abspath(copied) in paths_of(db)[sha(copied)]
    assert os.path.abspath(moved) in paths_of(db)[sha(moved)]

    again = ingest_all([imgs], db=db, model=never_load, recursive=True, workers=0)  # now unchanged
    assert (again.new, again.unchanged, again.duplicate) == (0, 5, 0)


def test_a_copy_ingested_from_the_command_line_imports_neither_torch_nor_timm(tmp_path, tiny_weights):
    """In a fresh interpreter, with no weights to be found: known content needs none."""
    imgs, db = tmp_path / "imgs", tmp_path / "db"
    originals = write_images(imgs, 3)
    ingest_all([imgs], db=db, weights_dir=tiny_weights, device="cpu", workers=0)
    shutil.copy(originals[2], imgs / "again.png")
    probe = ("import json, sys\n"
             "from faramir.cli.app import main\n"
             "sys.argv = ['faramir', 'ingest', sys.argv[1], '--db', sys.argv[2]]\n"
             "code = 0\n"
             "try:\n    main()\nexcept SystemExit as ex:\n    code = ex.code or 0\n"
             "print(json.dumps([code, sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)]))\n")
    env = {**os.environ, "FARAMIR_WEIGHTS": str(tmp_path / "nowhere")}
    done = subprocess.run([sys.executable, "-c", probe, str(imgs), str(db)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "[0, []]", done.stderr
    assert "0 new, 3 unchanged, 1 duplicate" in done.stderr
    assert os.path.abspath(imgs / "again.png") in paths_of(db)[sha(originals[2])]


def test_new_content_among_known_loads_the_model_once_and_computes_only_it(tmp_path, tiny_model):
    """A file of a cached size but other bytes is hashed first, found new and decoded; copies of
    cached content are only paths; the new rows equal a fresh ingest's."""
    imgs, db = tmp_path / "imgs", tmp_path / "db"
    pixels = np.random.default_rng(3).integers(0, 256, (2, 40, 50, 3), np.uint8)
    for i in range(2):  # two BMPs of one size: equal file sizes, other bytes
        Image.fromarray(pixels[i]).save(tmp_path / f"bmp{i}.bmp")
    imgs.mkdir()
    shutil.copy(tmp_path / "bmp0.bmp", imgs / "first.bmp")
    ingest_all([imgs], db=db, model=tiny_model, workers=0)
    shutil.copy(tmp_path / "bmp0.bmp", imgs / "first-again.bmp")  # known
    shutil.copy(tmp_path / "bmp1.bmp", imgs / "same-size.bmp")  # new, of a cached size
    write_images(imgs, 1, seed=9, prefix="other")  # new, of another size
    assert os.path.getsize(imgs / "same-size.bmp") == os.path.getsize(imgs / "first.bmp")

    loads = []

    def load():
        loads.append(1)
        return tiny_model

    s = ingest_all([imgs], db=db, model=load, workers=0)
    assert loads == [1]
    assert (s.new, s.unchanged, s.duplicate, s.failed) == (2, 1, 1, 0)
    assert set(s.waits) == {"decoding", "device", "writer"} and min(s.waits.values()) >= 0

    fresh = ingest_all([next(imgs.glob("other*")), imgs / "same-size.bmp"], db=tmp_path / "fresh",
                       model=tiny_model, workers=0)  # the same batch, in the same order
    assert fresh.new == 2
    ours = Cache.open(db).images().to_arrow()
    theirs = Cache.open(tmp_path / "fresh").images().to_arrow()
    for content in (sha(imgs / "same-size.bmp"), sha(next(imgs.glob("other*")))):
        a = ours.filter(np.array(ours.column("id").to_pylist()) == content)
        b = theirs.filter(np.array(theirs.column("id").to_pylist()) == content)
        assert a.column("faramir_embedding").equals(b.column("faramir_embedding"))
    assert os.path.abspath(imgs / "first-again.bmp") in paths_of(db)[sha(imgs / "first.bmp")]
