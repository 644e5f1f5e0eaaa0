"""Storage faults: what a power cut leaves (a zero-byte newest manifest: Lance does not fsync) and a
disk that fills up mid-write. The cache opens at its newest whole version and says so; a full disk
is one clear error, the cache stays whole, and a rerun finishes once space is freed."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import warnings

import lance
import pytest
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import CacheError, CacheRecovered, DiskFull, ExpertsMismatch, ReadOnlyCache, storage_error
from faramir.store.ingestion import ingest_all
from faramir.store.recovery import BROKEN_DIR, latest_manifest, manifest_version, manifests
from tests.conftest import write_images
from tests.stage2_helpers import tiny_cache

runner = CliRunner()


def _cut(db, table: str) -> int:
    """Truncate the newest manifest of `table` to zero bytes; its version."""
    path = latest_manifest(os.path.join(db, f"{table}.lance"))
    os.truncate(path, 0)
    return manifest_version(path.name)


def test_manifest_names_give_versions_newest_first(tmp_path):
    tiny_cache(tmp_path / "db", n=10)
    found = manifests(tmp_path / "db" / "images.lance")
    versions = [v for v, _ in found]
    assert versions == sorted(versions, reverse=True) and len(versions) >= 2
    assert versions[0] == lance.dataset(str(tmp_path / "db" / "images.lance")).version
    assert manifest_version("18446744073709551607.manifest") == 8  # V2 naming: u64::MAX - version
    assert manifest_version("3.manifest") == 3  # V1 naming
    assert manifest_version("18446744073709551607.manifest#1") is None  # Lance's temporary file


def test_a_zero_byte_newest_manifest_opens_at_the_last_whole_version_and_says_so(tmp_path):
    db = tmp_path / "db"
    tiny_cache(db, n=40)  # two fragments: the newest images version holds 40 rows, the one before 20
    broken = _cut(db, schema.IMAGES)
    with pytest.raises(Exception):
        lance.dataset(str(db / "images.lance"))  # what Lance alone makes of it

    with pytest.warns(CacheRecovered, match=f"images table's newest version {broken} was cut short") as caught:
        cache = Cache.open(db)
    caught = [w for w in caught if w.category is CacheRecovered]  # not the generated-weights warning
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert cache.warnings == [str(caught[0].message)]
    assert f"opened at version {broken - 1}" in cache.warnings[0]
    ds = cache.dataset(schema.IMAGES)
    assert ds.version == broken - 1 and ds.count_rows() == 20
    assert (db / "images.lance" / BROKEN_DIR / latest_manifest_name(broken)).stat().st_size == 0

    cache.set_meta(note="written after the fallback")  # writes go on from the last whole version
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRecovered)  # nothing left to recover: no second warning
        assert Cache.open(db).get_meta("note") == "written after the fallback"


def latest_manifest_name(version: int) -> str:
    return f"{2**64 - 1 - version:020d}.manifest"


def test_the_cli_prints_the_fallback_as_one_warning_line(tmp_path):
    db = tmp_path / "db"
    tiny_cache(db, n=40)
    _cut(db, schema.FILES)  # (labels is made in one commit, its key declared in its schema: one version)
    result = runner.invoke(app, ["stats", "--db", str(db)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "table's newest version" in line]
    assert len(lines) == 1 and lines[0].startswith("Warning: ") and "files table's newest version" in lines[0], \
        result.stderr


def test_a_table_with_no_whole_manifest_is_a_clear_error(tmp_path):
    db = tmp_path / "db"
    tiny_cache(db, n=10)
    for _, path in manifests(db / "heads.lance"):
        os.truncate(path, 0)
    with pytest.raises(CacheError, match="no version of this table is readable.*restore the cache from a copy"):
        Cache.open(db)


def test_a_lost_claim_in_meta_is_restored_by_the_next_ingest(tmp_path, tiny_model, tiny_weights):
    """The meta table's newest version holds the first ingest's claim (config, experts
    fingerprint). Lost to a power cut while later commits survive, stage two says how to restore
    it, the rows still refuse other weights, and the next ingest restores it without reading."""
    imgs, db = tmp_path / "imgs", tmp_path / "db"
    write_images(imgs, 3, size=(32, 24))
    ingest_all([imgs], db=db, model=tiny_model, workers=0)
    _cut(db, schema.META)
    with pytest.warns(CacheRecovered):
        cache = Cache.open(db)
    assert cache.get_meta("experts_fingerprint") is None
    with pytest.raises(CacheError, match="record of the model this cache was built with is missing.*faramir ingest"):
        cache.config()

    from faramir.fake_weights import generate
    from faramir.weights import load_model

    other = load_model(generate(tmp_path / "other-weights", "tiny", seed=1))
    with pytest.raises(ExpertsMismatch):
        ingest_all([imgs], db=db, model=other, workers=0)

    summary = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert summary.new == 0
    assert Cache.open(db).config() == tiny_model.info.config


def test_a_lost_claim_of_a_fast_decode_cache_is_restored_for_the_fast_decode(tmp_path, tiny_model):
    from faramir.config import decoded_fingerprint

    imgs, db = tmp_path / "imgs", tmp_path / "db"
    write_images(imgs, 2, size=(32, 24))
    ingest_all([imgs], db=db, model=tiny_model, workers=0, decode="fast")
    _cut(db, schema.META)
    with pytest.warns(CacheRecovered):
        assert Cache.open(db).get_meta("experts_fingerprint") is None
    assert ingest_all([imgs], db=db, model=tiny_model, workers=0, decode="fast").new == 0
    assert Cache.open(db).get_meta("experts_fingerprint") == \
        decoded_fingerprint(tiny_model.info.experts_fingerprint, "fast")


def test_disk_full_is_recognised_from_python_and_from_lance():
    assert isinstance(storage_error(OSError(errno.ENOSPC, "No space left on device")), DiskFull)
    lance_error = RuntimeError("lance error: LanceError(IO): Generic LocalFileSystem error: Unable to copy data "
                               "to file: No space left on device (os error 28), commit.rs:1663:50")
    full = storage_error(lance_error, "/data/cache")
    assert str(full).startswith("/data/cache: the disk is full") and "\n" not in str(full)
    assert storage_error(RuntimeError("lance error: something else")) is None
    refused = storage_error(OSError(errno.EACCES, "Permission denied", "/data/cache/images.lance"), "/data/cache")
    assert isinstance(refused, ReadOnlyCache) and str(refused).startswith("/data/cache: the cache cannot be written")
    assert storage_error(OSError(errno.EACCES, "Permission denied", "/elsewhere/x.png"), "/data/cache") is None


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs (needs root and mount permission: skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk, leave: int):
    st = os.statvfs(disk)
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return ballast


def test_a_disk_filling_up_mid_ingest_is_one_error_and_a_rerun_finishes(tmp_path, small_disk, tiny_model, tiny_weights):
    imgs, db = tmp_path / "imgs", small_disk / "cache.lancedb"
    write_images(imgs, 8, size=(32, 24))
    ingest_all([imgs / "img00000.png"], db=db, model=tiny_model, workers=0)  # the cache exists
    ballast = _fill(small_disk, 192 * 1024)
    with pytest.raises(DiskFull, match="the disk is full .*free some space and run the command again"):
        ingest_all([imgs], db=db, model=tiny_model, workers=0, batch_size=2, commit_every=2)
    cache = Cache.open(db)
    ids = cache.read(schema.IMAGES, ["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) and 1 <= len(ids) < 8  # whole, and stopped mid-way

    result = runner.invoke(app, ["ingest", str(imgs), "--db", str(db), "--weights-dir", str(tiny_weights),
                                 "--device", "cpu", "--workers", "0"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert len(errors) == 1 and "the disk is full" in errors[0], result.stderr

    ballast.unlink()
    summary = ingest_all([imgs], db=db, model=tiny_model, workers=0)
    assert summary.failed == 0
    rows = Cache.open(db).read(schema.IMAGES, ["id", "s_faramir_v1_1_confidence"])
    assert len(rows) == 8 and len(set(rows.column("id").to_pylist())) == 8
    assert rows.column("s_faramir_v1_1_confidence").null_count == 0
