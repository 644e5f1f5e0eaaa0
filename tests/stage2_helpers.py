"""Caches for stage-two tests: synthetic rows of the tiny config, and rows with hand-made scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.synthetic import Generator, image_rows, random_checkpoint, save_checkpoint, write_cache
from faramir.checkpoints import head_to_bytes, split_faramir_checkpoint
from faramir.config import ACCEPT_LABELS, LABELS, N_CLASSES, N_FREE, TINY
from faramir.digests import tensor_digest
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.heads import registry
from faramir.store.schema import HeadColumns

ACCEPT = [x for x in LABELS if x in ACCEPT_LABELS]
REJECT = [x for x in LABELS if x not in ACCEPT_LABELS]
POOL_SEED = 1000  # the pool of every synthetic cache made with seed 0


def tiny_cache(db, n: int = 2000, seed: int = 0) -> Cache:
    """`n` synthetic rows of the tiny config in two fragments, scored by faramir-v1."""
    return write_cache(db, n, TINY, seed=seed, batch_rows=max(1, (n + 1) // 2))


def head_file(path, seed: int, pool_seed: int = POOL_SEED, head_only: bool = False) -> Path:
    """A tiny-config checkpoint in upstream's format (a full one, or norm.* + head.* only)."""
    state = random_checkpoint(TINY, seed, pool_seed)
    if head_only:
        state = split_faramir_checkpoint(state)[1]
    return save_checkpoint(state, path)


def hand_cache(db, confidence, accept_label, reject_label, aesthetic=None, seed: int = 0,
               head: str = schema.DEFAULT_HEAD) -> Cache:
    """A tiny-config cache whose head `head` has exactly these scores (float32 confidences)."""
    confidence = np.asarray(confidence, np.float32)
    n = len(confidence)
    gen = Generator(TINY, n, seed)
    rows = image_rows(gen, 0, n, {})
    if aesthetic is not None:
        rows = rows.set_column(rows.schema.get_field_index("aesthetic_score"), "aesthetic_score",
                               pa.array(np.asarray(aesthetic, np.float32)))
    prefix = schema.new_prefix(head, set())
    with np.errstate(divide="ignore"):
        decision = np.log(confidence.astype(np.float64)) - np.log1p(-confidence.astype(np.float64))
    logits = np.zeros((n, N_CLASSES), np.float32)
    columns = {
        f"{prefix}_decision": pa.array(decision.astype(np.float32)),
        f"{prefix}_confidence": pa.array(confidence),
        f"{prefix}_accept_label": pa.array(list(accept_label), pa.string()),
        f"{prefix}_reject_label": pa.array(list(reject_label), pa.string()),
        f"{prefix}_logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), N_CLASSES),
        f"{prefix}_free": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * N_FREE, np.float32)), N_FREE),
    }
    for name, values in columns.items():
        rows = rows.append_column(name, values)
    cache = Cache.open(db, create=True)
    state = random_checkpoint(TINY, seed, POOL_SEED)
    pool, head_state = split_faramir_checkpoint(state)
    cache.set_meta(config=TINY.to_json(), experts_fingerprint="hand", pool_fingerprint=tensor_digest(pool),
                   weights_generated="hand-made rows")
    table = cache.create_images(TINY, [prefix])
    table.add(rows.select(schema.images_schema(TINY, [prefix]).names))
    registry.register(cache, name=head, columns=HeadColumns(prefix, prefix), fingerprint=tensor_digest(head_state),
                      pool_fingerprint=tensor_digest(pool), source="hand", checkpoint=head_to_bytes(head_state))
    return cache


def boundary_confidences(rng: np.random.Generator, n_random: int = 200) -> np.ndarray:
    """Float32 confidences at and next to the float32 roundings of common thresholds, plus random ones."""
    values = [0.0, 1.0]
    for t in (0.1, 0.3, 0.5, 0.7, 0.9, 0.25):
        c = np.float32(t)
        values += [c, np.nextafter(c, np.float32(1)), np.nextafter(c, np.float32(0))]
    values += list(rng.random(n_random).astype(np.float32))
    return np.asarray(values, np.float32)


def errors(result) -> list[str]:
    """A CLI result's stderr lines but the warning that every command reading a cache built from
    generated weights gives (tests/test_generated_cache.py): every test cache is one."""
    return [line for line in result.stderr.splitlines() if "was built from GENERATED weights" not in line]


def logit(p: float) -> float:
    return math.log(p / (1 - p))
