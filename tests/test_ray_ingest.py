"""`faramir ingest --ray` on a local 2-CPU Ray, with tiny generated weights: the same rows as the
local ingest, the same incremental reruns, and the same crash safety."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

pytest.importorskip("ray", reason="Ray is not installed (pip install 'faramir[ray]')")
pytest.importorskip("lance_ray", reason="lance-ray is not installed (pip install 'faramir[ray]')")

from faramir.cli.app import app  # noqa: E402
from faramir.store import schema  # noqa: E402
from faramir.store.cache import Cache  # noqa: E402
from faramir.store.heads import registry
from faramir.store.heads.rescore import rescore  # noqa: E402
from faramir.store.ingestion import ingest, ingest_all  # noqa: E402
from faramir.store.ingestion.write import EMBEDDING_FIELDS  # noqa: E402
from tests import crash  # noqa: E402
from tests.conftest import write_images  # noqa: E402
from tests.stage2_helpers import head_file  # noqa: E402
from tests.test_ingest import never_load  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module (2 CPUs, as on the CI machine): `--ray local` uses it."""
    import ray

    from faramir.store.ingestion.ray_cluster import connect

    started = connect("local", num_cpus=2)
    yield
    if started:
        ray.shutdown()


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def images(db) -> pa.Table:
    return Cache.open(db).images().to_arrow().sort_by("id")


def table_rows(db, name: str, columns: list[str]) -> list[dict]:
    return sorted(Cache.open(db).read(name, columns).to_pylist(), key=lambda r: r["path"])


def assert_same_images(ours: pa.Table, reference: pa.Table, prefixes: list[str]) -> None:
    """The same rows: ids, paths, embeddings bit for bit, and every head's scores. The embeddings
    are equal because both ingests run the experts on the same batches with the same number of
    threads (`faramir.devices.torch_threads`: a matrix product's last bits depend on both, and a
    process's thread count is whatever its last setter left). Scores agree to float32 rounding
    only: the local ingest scores a commit chunk at a time, Ray a fragment."""
    assert ours.column("id").to_pylist() == reference.column("id").to_pylist()
    assert [sorted(p) for p in ours.column("paths").to_pylist()] == \
        [sorted(p) for p in reference.column("paths").to_pylist()]
    for name in ("size", "width", "height", "format", "mode", "experts_fingerprint", "precision"):
        assert ours.column(name).to_pylist() == reference.column(name).to_pylist(), name
    for name in EMBEDDING_FIELDS:
        assert ours.column(name).equals(reference.column(name)), f"{name} differs"
    for prefix in prefixes:
        for kind in ("accept_label", "reject_label"):
            column = f"{prefix}_{kind}"
            assert ours.column(column).to_pylist() == reference.column(column).to_pylist(), column
            assert ours.column(column).null_count == 0, f"{column}: a new row was not scored"
        for kind, width in (("decision", 1), ("confidence", 1), ("logits", 30)):
            column = f"{prefix}_{kind}"
            a, b = (np.asarray(t.column(column).combine_chunks().flatten() if width > 1
                               else t.column(column).to_numpy()) for t in (ours, reference))
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=column)


def test_ray_ingest_gives_the_local_rows_and_reruns_read_only_what_changed(tmp_path, tiny_weights,
                                                                           tiny_model, ray_local):
    # Both caches start alike: a few images, then a second head, so new rows are scored by two.
    first = write_images(tmp_path / "first", 3, seed=7)
    local_db, ray_db = tmp_path / "local.lancedb", f"file://{tmp_path / 'ray.lancedb'}"
    for db in (local_db, ray_db):
        ingest_all([tmp_path / "first"], db=db, model=tiny_model, workers=0)
        rescore(head_file(tmp_path / "second.pth", seed=5, head_only=True), "second", db=db)
    prefixes = [h["prefix"] for h in registry.heads(Cache.open(local_db))]
    assert len(prefixes) == 2

    imgs = tmp_path / "imgs"
    originals = write_images(imgs, 14)
    shutil.copy(originals[3], imgs / "copy-of-3.png")  # met twice in one run: stored once
    shutil.copy(first[1], imgs / "copy-of-first.png")  # cached already: never decoded
    (imgs / "broken.png").write_bytes(b"not an image")

    local = ingest_all([imgs], db=local_db, model=tiny_model, workers=0)
    ray_run = ingest_all([imgs], db=ray_db, weights_dir=tiny_weights, device="cpu", ray="local")
    assert (ray_run.found, ray_run.new, ray_run.unchanged, ray_run.duplicate, ray_run.failed) == \
        (local.found, local.new, local.unchanged, local.duplicate, local.failed) == (17, 14, 0, 2, 1)
    assert ray_run.images_per_s > 0
    assert (tmp_path / "ray.lancedb" / "images.lance").is_dir()  # the file:// URI's folder

    assert_same_images(images(ray_db), images(local_db), prefixes)
    files = ["path", "id", "size", "mtime_ns"]
    assert table_rows(ray_db, schema.FILES, files) == table_rows(local_db, schema.FILES, files)
    assert [(r["path"], r["reason"]) for r in table_rows(ray_db, schema.FAILURES, ["path", "reason"])] == \
        [(os.path.abspath(imgs / "broken.png"), "not an image format Pillow can read; convert it to PNG or JPEG")]
    assert Cache.open(ray_db).images().to_lance().get_fragments()  # appended as fragments, then indexed
    assert {ix.columns[0] for ix in Cache.open(ray_db).images().list_indices()} >= {"id", f"{prefixes[1]}_confidence"}

    # Unchanged: nothing is read, no model is loaded, Ray is not even needed.
    events = list(ingest([imgs], db=ray_db, model=never_load, ray="local"))
    assert events[0].to_read == 0
    again = events[-1]
    assert (again.new, again.unchanged, again.failed) == (0, 16, 1)

    # A renamed file is recognised by its content (through the CLI).
    os.rename(originals[5], imgs / "renamed.png")
    result = runner.invoke(app, ["ingest", str(imgs), "--db", ray_db, "--weights-dir", str(tiny_weights),
                                 "--device", "cpu", "--ray", "local"])
    assert result.exit_code == 3, result.output  # done, but one file could not be read (as assess)
    assert "Ingested 17 files" in result.output and "0 new, 15 unchanged, 1 duplicate, 1 failed" in result.output
    cached = images(ray_db)
    assert cached.num_rows == 3 + 14
    row = cached.filter(pc.equal(cached.column("id"), sha(imgs / "renamed.png"))).to_pylist()[0]
    assert os.path.abspath(imgs / "renamed.png") in row["paths"]
    files = {r["path"]: r["id"] for r in table_rows(ray_db, schema.FILES, ["path", "id"])}
    assert files[os.path.abspath(imgs / "renamed.png")] == row["id"]


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile needs a C++ compiler on the CPU (apt-get install g++)")
def test_ray_ingest_compile_gives_the_eager_vectors(tmp_path, tiny_weights, tiny_model, ray_local):
    """`--compile` with `--ray`: each model actor compiles its own experts (batches padded to the
    batch size); the rows are the eager local ingest's within float rounding."""
    write_images(tmp_path / "imgs", 5, seed=11)  # batches of 4 and 1: the second one padded
    local_db, ray_db = tmp_path / "local.lancedb", f"file://{tmp_path / 'ray.lancedb'}"
    ingest_all([tmp_path / "imgs"], db=local_db, model=tiny_model, workers=0, batch_size=4)
    ran = ingest_all([tmp_path / "imgs"], db=ray_db, weights_dir=tiny_weights, device="cpu", batch_size=4,
                     compile=True, ray="local")
    assert (ran.new, ran.failed) == (5, 0)
    ours, reference = images(ray_db), images(local_db)
    assert ours.column("id").to_pylist() == reference.column("id").to_pylist()
    for name in EMBEDDING_FIELDS:
        a, b = (np.stack(t.column(name).to_numpy(zero_copy_only=False)) for t in (reference, ours))
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, err_msg=name)


def test_ray_fast_decode_gives_the_local_fast_rows_and_known_content_needs_no_ray(tmp_path, tiny_weights,
                                                                                  tiny_model, ray_local):
    """`--decode fast` on Ray decodes as the local ingest does (a large image, which it reduces,
    among small ones): the same rows, bit for bit, under the fast decode's fingerprint. Then a
    copy of cached content is recognised by the driver: no model, no Ray."""
    from PIL import Image

    from faramir.config import decoded_fingerprint

    imgs = tmp_path / "imgs"
    write_images(imgs, 3, seed=13)
    y, x = np.mgrid[0:1500, 0:2200]
    Image.fromarray(np.stack([x % 251, y % 241, (x + y) % 239], -1).astype(np.uint8)).save(imgs / "big.jpg",
                                                                                       quality=90)
    local_db, ray_db = tmp_path / "local.lancedb", f"file://{tmp_path / 'ray.lancedb'}"
    ingest_all([imgs], db=local_db, model=tiny_model, workers=0, decode="fast")
    ran = ingest_all([imgs], db=ray_db, weights_dir=tiny_weights, device="cpu", ray="local", decode="fast")
    assert (ran.new, ran.failed) == (4, 0)
    prefixes = [h["prefix"] for h in registry.heads(Cache.open(local_db))]
    assert_same_images(images(ray_db), images(local_db), prefixes)
    assert set(images(ray_db).column("experts_fingerprint").to_pylist()) == \
        {decoded_fingerprint(tiny_model.info.experts_fingerprint, "fast")}

    shutil.copy(imgs / "big.jpg", imgs / "big-copy.jpg")
    again = ingest_all([imgs], db=ray_db, model=never_load, ray="ray://nowhere:1", decode="fast")
    assert (again.new, again.unchanged, again.duplicate) == (0, 4, 1)


def test_gpu_model_actors_take_two_batches_at_once_and_cpu_actors_one():
    """The strategy a GPU cluster gets (not run here: no GPU) double-buffers its model actors; a
    CPU actor computes one batch at a time, with all its node's cores, as a local ingest does."""
    from faramir.store.ingestion.ray_run import GPU_CALLS, actor_strategy

    gpu = actor_strategy(gpus=2, nodes=1)
    assert (gpu.min_size, gpu.max_size, gpu.max_concurrent_calls_per_actor) == (1, 2, GPU_CALLS) and GPU_CALLS == 2
    assert gpu._enable_true_multi_threading
    cpu = actor_strategy(gpus=0, nodes=3)
    assert (cpu.min_size, cpu.max_size) == (3, 3) and not cpu._enable_true_multi_threading


CHILD = """
import sys
from faramir.store.ingestion import ingest_all
imgs, db, weights = sys.argv[1:]
ingest_all([imgs], db=db, weights_dir=weights, device="cpu", batch_size=2, commit_every=2, ray="local")
"""


def _session(sid: int) -> list[int]:
    """Processes of session `sid` (Linux /proc; elsewhere none are seen)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == sid and fields[0] != "Z":  # state, ppid, pgrp, session
            found.append(int(entry.parent.name))
    return found


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_ray_ingest_then_rerun_leaves_every_image_exactly_once(tmp_path, tiny_weights, ray_local):
    imgs, db = tmp_path / "imgs", tmp_path / "db"
    content = crash.collection(imgs)
    session = crash.kill_mid_run(tmp_path, CHILD, [str(imgs), str(db), str(tiny_weights)], db, timeout=300, poll=0.05)
    deadline = time.monotonic() + 30
    while _session(session) and time.monotonic() < deadline:  # Ray's workers follow their raylet
        time.sleep(0.2)
    assert not _session(session), f"processes of the killed ingest's Ray live on: {_session(session)}"
    survived = crash.images_rows(db)
    assert 0 < survived < len(set(content.values())), "the kill should land mid-run"

    summary = ingest_all([imgs], db=db, weights_dir=tiny_weights, device="cpu", ray="local")
    assert summary.new == len(set(content.values())) - survived  # nothing committed is recomputed
    assert summary.failed == 1

    crash.assert_each_image_once(db, content)

    again = ingest_all([imgs], db=db, model=never_load)  # and the local ingest agrees: all done
    assert (again.new, again.unchanged, again.failed) == (0, len(content), 1)


def test_an_id_another_process_committed_meanwhile_is_cut_from_a_fragment_not_duplicated(tmp_path, tiny_model):
    """The driver's writer, between a worker writing a fragment and the driver committing it:
    another ingest commits one of its ids first. The fragment is rewritten without that row,
    whose path goes to the other process's row instead."""
    from lance_ray.fragment import write_fragment

    from faramir.store.ingestion.fragments import Fragment, FragmentChunk, FragmentWriter
    from faramir.store.ingestion.write import prepare

    imgs = write_images(tmp_path / "imgs", 3)
    db, elsewhere = tmp_path / "db", tmp_path / "elsewhere.lancedb"
    ingest_all([imgs[0]], db=db, model=tiny_model, workers=0)
    ingest_all(imgs[1:], db=elsewhere, model=tiny_model, workers=0)  # rows as a worker makes them
    cache = Cache.open(db)
    writer = FragmentWriter(cache, *prepare(cache, tiny_model))
    rows = images(elsewhere).cast(writer.images_schema)
    (metadata, _), = write_fragment([rows], writer.uri, schema=writer.images_schema)
    b, c = rows.column("id").to_pylist()
    mtimes = rows.column("mtime_ns").to_pylist()

    ingest_all([imgs[2]], db=db, model=tiny_model, workers=0)  # the other process, meanwhile
    ours = os.path.abspath(tmp_path / "our-copy.png")
    chunk = FragmentChunk(fragments=[Fragment(metadata, [(b, os.path.abspath(imgs[1]), mtimes[0]),
                                                         (c, ours, mtimes[1])])])
    writer.put(chunk)
    writer.close()

    cached = {r["id"]: sorted(r["paths"]) for r in cache.read(schema.IMAGES, ["id", "paths"]).to_pylist()}
    assert sorted(cached) == sorted([sha(imgs[0]), b, c])  # each once
    assert cached[b] == [os.path.abspath(imgs[1])]
    assert cached[c] == sorted([os.path.abspath(imgs[2]), ours])
    kept = images(db).filter(pc.equal(images(db).column("id"), b))
    for name in EMBEDDING_FIELDS:  # the rewritten fragment holds the worker's row as it was
        assert kept.column(name).equals(rows.slice(0, 1).column(name)), name


def test_cached_ids_are_found_by_the_read_tasks_whatever_their_bytes():
    from faramir.store.ingestion.ray_tasks import digests, has

    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200)]
    ends_in_zeros, starts_with_zeros = "ab" + "00" * 31, "00" * 31 + "ab"  # numpy strips trailing NULs
    cached = digests(ids[:100] + [ends_in_zeros])
    assert all(has(cached, h) for h in ids[:100] + [ends_in_zeros])
    assert not any(has(cached, h) for h in ids[100:] + [starts_with_zeros, "ab" + "00" * 30 + "01"])
    assert not has(digests([]), ends_in_zeros)


def test_bad_ray_address_is_one_line(tmp_path, tiny_weights):
    write_images(tmp_path / "imgs", 1)
    result = runner.invoke(app, ["ingest", str(tmp_path / "imgs"), "--db", str(tmp_path / "db"),
                                 "--weights-dir", str(tiny_weights), "--ray", "nowhere"])
    assert result.exit_code == 1
    assert "--ray 'nowhere': use local, auto, ray://HOST:PORT or HOST:PORT" in result.output
    assert not (tmp_path / "db").exists()  # refused before anything was planned or created
