"""Rescoring a finetuned head from its base's cached v and f: the same scores as from the
embeddings, on real finetune output; only its decision and confidence are written, its labels, v
and f read from the base's columns through the registry, and they outlive the base; the
embeddings path for any other head; caches from before schema version 2 keep working."""

from __future__ import annotations

import shutil
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest
import torch

from bench.synthetic import save_checkpoint
from faramir.checkpoints import frozen_fingerprint, head_state_from_bytes, load_head_checkpoint, load_pth
from faramir.config import LABELS, TINY, TRAINED_PREFIXES
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.errors import CacheError
from faramir.store.heads import registry
from faramir.store.heads.finetune import finetune
from faramir.store.heads.registry import list_heads, remove_head
from faramir.store.heads.rescore import rescore
from faramir.store.heads.scoring import head_outputs, vectors
from faramir.store.heads.unscored import fill_gaps
from faramir.store.ingestion import ingest_all
from faramir.store.labels.files import import_labels
from faramir.store.queries.images import detail
from faramir.store.queries.ranking import top
from faramir.weights import FARAMIR_FILE
from tests.conftest import write_images
from tests.stage2_helpers import head_file, tiny_cache

HEAD_INPUTS = ["faramir_embedding", "aesthetic_features", "quality_features"]
LABEL_NAMES = ["3d_realism", "2d_bad", "accept", "reject", "text", "2d_anime", "degraded", "ui"]


def columns_of(cache: Cache, name: str) -> dict[str, np.ndarray]:
    """Head `name`'s score columns by id order: decision, confidence, labels, logits, free."""
    c = registry.columns(cache, name)
    t = cache.read(schema.IMAGES, ["id", *c.names]).sort_by("id")
    return {
        "id": np.asarray(t["id"].to_pylist()),
        "decision": t[c.decision].to_numpy(),
        "confidence": t[c.confidence].to_numpy(),
        "accept_label": np.asarray(t[c.accept_label].to_pylist()),
        "reject_label": np.asarray(t[c.reject_label].to_pylist()),
        "logits": vectors(t[c.logits], 30),
        "free": vectors(t[c.free], 2),
    }


def by_hand(cache: Cache, checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint's head run over every cached row's embeddings in one batch, by id order."""
    t = cache.read(schema.IMAGES, ["id", *HEAD_INPUTS]).sort_by("id")
    out = head_outputs(load_head_checkpoint(checkpoint, TINY)[0],
                       *(vectors(t[c], d) for c, d in zip(HEAD_INPUTS, (32, 16, 128))))
    return {"id": np.asarray(t["id"].to_pylist()), "logits": out[:, :30], "decision": out[:, 30]}


def assert_same_answers(got: dict, want: dict, threshold: float = 0.5):
    """Same decisions at the threshold and same labels; logits equal to float32 rounding (batches of
    other sizes sum in another order: a logit near 0.1 among logits up to 5 moved by 2.8e-6 once,
    in a CI run with other tests running beside it)."""
    assert (got["id"] == want["id"]).all()
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["decision"], want["decision"], rtol=1e-5, atol=1e-5)
    accepted = got["confidence"] > np.float32(threshold)
    assert (accepted == (torch.tensor(want["decision"]).sigmoid().numpy() > np.float32(threshold))).all()
    assert (got["accept_label"] == np.asarray([LABELS[i] for i in want["logits"][:, :9].argmax(1)])).all()
    assert (got["reject_label"] == np.asarray([LABELS[9 + i] for i in want["logits"][:, 9:].argmax(1)])).all()


# -- real finetune output on a cache ingested with the tiny weights --------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_weights):
    """A cache ingested from generated images in two runs (two fragments), labels imported, and
    the checkpoint `faramir finetune` makes from faramir-v1 (not yet scored into the cache)."""
    root = tmp_path_factory.mktemp("finetuned")
    images = write_images(root / "imgs", 40, size=(48, 40))
    db = root / "db"
    for part in (images[:24], images[24:]):
        ingest_all(part, db=db, weights_dir=tiny_weights, device="cpu", workers=0, batch_size=8)
    csv = root / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{LABEL_NAMES[i % 8]}\n" for i, p in enumerate(images)))
    assert import_labels(csv, db).imported == 40
    out = root / "tuned.pth"
    finetune("faramir-v1", out, db=db, epochs=3, seed=1, val_fraction=0.25, lr=0.01)
    return db, out


def test_a_finetuned_head_scored_from_its_bases_v_and_f_equals_the_embeddings_path(tuned, tiny_weights, tmp_path):
    db, out = tuned
    cache = Cache.open(db)
    base, tuned_state = load_pth(tiny_weights / FARAMIR_FILE), load_pth(out)
    changed = {k for k in base if not torch.equal(base[k], tuned_state[k])}
    assert changed and all(k.startswith(TRAINED_PREFIXES) for k in changed)  # a real finetune

    fast = rescore(out, "tuned", db=cache)
    full = rescore(out, "tuned-full", db=cache, reuse=False)
    assert fast.scored_from == "faramir-v1" and full.scored_from is None
    assert fast.rows == full.rows == 40
    got, want = columns_of(cache, "tuned"), columns_of(cache, "tuned-full")
    base_cols = columns_of(cache, "faramir-v1")
    assert not np.array_equal(got["decision"], base_cols["decision"])  # the decision did change
    # v and f are the base's, bit for bit; both paths compute them with the same ops from the
    # same rows in the same batches, so they equal the embeddings path's bit for bit too.
    for key in ("logits", "free", "accept_label", "reject_label"):
        assert np.array_equal(got[key], base_cols[key]), key
        assert np.array_equal(got[key], want[key]), key
    assert np.array_equal(got["decision"], want["decision"])
    assert np.array_equal(got["confidence"], want["confidence"])
    assert_same_answers(got, by_hand(cache, out))
    for threshold in (0.3, 0.5, 0.7):
        fast_rows = top(cache, head="tuned", threshold=threshold, limit=None).to_pylist()
        full_rows = top(cache, head="tuned-full", threshold=threshold, limit=None).to_pylist()
        assert [(r["id"], r["accepted"], r["label"]) for r in fast_rows] == \
               [(r["id"], r["accepted"], r["label"]) for r in full_rows]

    # A copy of a cached image adds a path to its row, which Lance writes in place (a new file for
    # the paths column of that fragment): both heads' scores stay as they were.
    first = cache.read(schema.IMAGES, ["paths"]).column("paths")[0][0].as_py()
    copy = tmp_path / "copy.png"
    shutil.copyfile(first, copy)
    ingest_all([copy], db=db, weights_dir=tiny_weights, device="cpu", workers=0)
    assert str(copy) in sum(Cache.open(db).read(schema.IMAGES, ["paths"]).column("paths").to_pylist(), [])
    for name, columns in (("tuned", got), ("faramir-v1", base_cols)):
        assert_equal_columns(columns_of(Cache.open(db), name), columns)


def test_finetune_with_a_name_scores_from_the_base(tuned, tiny_weights, tmp_path):
    db, _ = tuned
    outcome = finetune("faramir-v1", tmp_path / "again.pth", db=db, name="again", epochs=2, seed=2,
                       val_fraction=0.25, lr=0.01)
    assert outcome.scored_as == "again"
    cache = Cache.open(db)
    record = registry.head(cache, "again")
    assert record["frozen_fingerprint"] == registry.head(cache, "faramir-v1")["frozen_fingerprint"]
    assert_same_answers(columns_of(cache, "again"), by_hand(cache, tmp_path / "again.pth"))


# -- which path runs ---------------------------------------------------------------------------------


def decision_only_variant(cache: Cache, path, seed: int, base: str = "faramir-v1"):
    """The checkpoint of the cache's head `base` with new values in the decision layers only."""
    state = head_state_from_bytes(registry.checkpoint(cache, base))
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(v.shape, generator=g) if k.startswith(TRAINED_PREFIXES) else v)
             for k, v in state.items()}
    return save_checkpoint(state, path)


@pytest.fixture
def cache(tmp_path):
    return tiny_cache(tmp_path / "db", n=600)


def test_only_a_head_with_a_registered_frozen_part_skips_the_embeddings(cache, tmp_path):
    variant = decision_only_variant(cache, tmp_path / "variant.pth", seed=3)
    other = head_file(tmp_path / "other.pth", seed=5)  # other norms and gates: a new frozen part
    assert rescore(other, "other", db=cache).scored_from is None
    assert_same_answers(columns_of(cache, "other"), by_hand(cache, other))

    # Without the head inputs in the table only the decision-layers path can still score.
    cache.images().drop_columns(HEAD_INPUTS)
    with pytest.raises(Exception, match="faramir_embedding"):
        rescore(head_file(tmp_path / "third.pth", seed=6), "third", db=cache)
    record = rescore(variant, "variant", db=cache)
    assert record.scored_from == "faramir-v1" and record.rows == 600
    assert registry.head(cache, "variant")["frozen_fingerprint"] == frozen_fingerprint(load_pth(variant))
    got = columns_of(cache, "variant")
    base = columns_of(cache, "faramir-v1")
    assert np.array_equal(got["logits"], base["logits"]) and np.array_equal(got["free"], base["free"])
    head = load_head_checkpoint(variant, TINY)[0]
    with torch.inference_mode():
        d = head.forward_decision(torch.from_numpy(base["logits"]), torch.from_numpy(base["free"]))
    assert np.array_equal(got["decision"], d.reshape(-1).numpy())


def test_rows_the_shared_head_has_not_scored_send_the_rescore_to_the_embeddings(cache, tmp_path):
    extra = cache.images().search().limit(7).to_arrow()
    extra = extra.set_column(0, "id", pa.array([f"{n:064x}" for n in range(7)]))
    cache.images().add(extra.drop_columns([c for c in extra.column_names if c.startswith("s_")]))
    variant = decision_only_variant(cache, tmp_path / "variant.pth", seed=3)
    record = rescore(variant, "variant", db=cache)
    assert record.scored_from is None and record.rows == 607
    assert_same_answers(columns_of(cache, "variant"), by_hand(cache, variant))


# -- the shared columns: the base's, read through the registry ----------------------------------


def score_columns_in(cache: Cache) -> set[str]:
    return {c for c in cache.images().schema.names if schema.is_score_column(c)}


def assert_equal_columns(got: dict, want: dict):
    for key, values in want.items():
        assert np.array_equal(got[key], values), key


@pytest.mark.filterwarnings("ignore:optimize.cleanup_older_than=0.")
def test_a_finetuned_head_writes_its_decision_only_and_its_bases_columns_outlive_the_base(cache, tmp_path,
                                                                                         tiny_weights):
    a = head_file(tmp_path / "a.pth", seed=5)
    rescore(a, "a", db=cache)
    b = decision_only_variant(cache, tmp_path / "b.pth", seed=3, base="a")
    assert rescore(b, "b", db=cache).scored_from == "a"
    of_a, of_b = registry.columns(cache, "a"), registry.columns(cache, "b")
    assert of_b.shared == of_a.prefix != of_b.prefix
    assert {c for c in score_columns_in(cache) if c.startswith(of_b.prefix + "_")} == \
        {of_b.decision, of_b.confidence}  # 8 bytes a row: the rest is a's
    want = columns_of(cache, "b")
    assert_same_answers(want, by_hand(cache, b))
    assert not np.array_equal(want["decision"], columns_of(cache, "a")["decision"])

    remove_head("a", db=cache)  # drops a's decision and confidence; its v, f and labels stay for b
    with pytest.raises(CacheError, match="no head named 'a'"):
        registry.head(cache, "a")
    assert {of_a.decision, of_a.confidence}.isdisjoint(score_columns_in(cache))
    assert {of_a.logits, of_a.free, of_a.accept_label, of_a.reject_label} <= score_columns_in(cache)
    assert [h.scored_from for h in list_heads(cache) if h.name == "b"] == \
        [f"a head since removed or rescored ({of_a.prefix}_*)"]
    cache.images().optimize(cleanup_older_than=timedelta(0))  # compaction and cleanup keep them
    assert_equal_columns(columns_of(Cache.open(cache.uri), "b"), want)

    # New rows get b's scores, and the v and f it reads, though no head of their own writes them.
    new = cache.images().search().limit(5).to_arrow()
    new = new.set_column(0, "id", pa.array([f"{n:064x}" for n in range(5)]))
    cache.images().add(new.drop_columns([c for c in new.column_names if schema.is_score_column(c)]))
    assert fill_gaps(cache) >= 5
    assert_same_answers(columns_of(cache, "b"), by_hand(cache, b))

    # A rescore of b reads the same v and f again; removing b at last drops them.
    assert rescore(b, "b", db=cache).scored_from == f"a head since removed or rescored ({of_a.prefix}_*)"
    remove_head("b", db=cache)
    assert not {c for c in score_columns_in(cache) if c.startswith((of_a.prefix + "_", of_b.prefix + "_"))}
    assert len(top(cache.uri, limit=None)) == 605


def test_a_head_whose_shared_columns_go_while_it_is_scored_is_scored_from_the_embeddings(cache, tmp_path,
                                                                                        monkeypatch):
    a = head_file(tmp_path / "a.pth", seed=5)
    rescore(a, "a", db=cache)
    b = decision_only_variant(cache, tmp_path / "b.pth", seed=3, base="a")
    register = registry.register
    removed = []

    def after_a_concurrent_removal(*args, **kwargs):  # `heads rm a` lands between scoring and registering
        if not removed:
            removed.append(remove_head("a", db=cache))
        return register(*args, **kwargs)

    monkeypatch.setattr(registry, "register", after_a_concurrent_removal)
    record = rescore(b, "b", db=cache)
    assert removed and record.scored_from is None and record.rows == 600
    assert not registry.columns(cache, "b").shares
    assert_same_answers(columns_of(cache, "b"), by_hand(cache, b))
    assert {c for c in score_columns_in(cache) if c.startswith("s_b_")} == \
        set(registry.columns(cache, "b").names)  # the first try's columns are gone


# -- caches made before schema version 2 ----------------------------------------------------------


def as_schema_1(db) -> None:
    """Turn a cache into what this code made before version 2: no heads.frozen_fingerprint, no
    P_free columns, meta schema_version 1."""
    cache = Cache.open(db)
    cache.table(schema.HEADS).drop_columns(["frozen_fingerprint"])
    images = cache.images()
    images.drop_columns([c for c in images.schema.names if c.endswith("_free")])
    cache.set_meta(schema_version="1")


def test_a_schema_1_cache_is_migrated_and_keeps_working(tuned, tiny_weights, tmp_path):
    db_src, out = tuned
    db = tmp_path / "old"
    shutil.copytree(db_src, db)
    as_schema_1(db)

    cache = Cache.open(db)  # migrates: frozen fingerprints from the stored checkpoints
    assert cache.get_meta("schema_version") == str(schema.SCHEMA_VERSION) == "5"
    for head in registry.heads(cache):
        stored = registry.checkpoint(cache, head["name"])
        assert head["frozen_fingerprint"] == frozen_fingerprint(head_state_from_bytes(stored))
    assert Cache.open(db).get_meta("schema_version") == "5"  # a second open finds nothing to do

    # faramir-v1 has no f column: the finetuned head is scored from the embeddings, and gets one.
    first = rescore(out, "tuned", db=cache)
    assert first.scored_from is None
    assert_same_answers(columns_of(cache, "tuned"), by_hand(cache, out))
    second = decision_only_variant(cache, tmp_path / "variant.pth", seed=4)
    assert rescore(second, "variant", db=cache).scored_from == "tuned"
    assert_same_answers(columns_of(cache, "variant"), by_hand(cache, second))

    # Ingest still scores new rows with every head, the old one included; the gallery's detail
    # view reads every head's columns.
    new = write_images(tmp_path / "new", 3, size=(48, 40), seed=5, prefix="new")
    ingest_all(new, db=db, weights_dir=tiny_weights, device="cpu", workers=0)
    for name in ("faramir-v1", "tuned", "variant"):
        rows = top(db, head=name, limit=None).to_pylist()
        assert len(rows) == 43 and all(r["confidence"] is not None for r in rows)
    shown = detail(rows[0]["id"], db)
    assert [s["head"] for s in shown.scores] == [h["name"] for h in registry.heads(cache)]
    assert {"faramir-v1", "tuned", "variant"} <= {s["head"] for s in shown.scores}
