"""Synthetic caches in the real schema, for tests and benchmarks (no image is decoded).

Benchmark and test scaffolding, not part of the installed package: both import it from the
repository (`from bench.synthetic import ...`).

Rows are shaped like real ones where it matters to stage two:

- Embeddings are clustered, not isotropic: every row belongs to one of a few thousand clusters
  (sizes drawn Zipf-like), whose centres share a common direction (random centres have cosine
  about 0.25 with each other, as real image embeddings are far from uniform on the sphere). A row
  is its centre plus noise of a per-row spread (cosine to its centre 0.65-0.9), and the noise has
  a decaying spectrum (per-dimension scale ∝ rank^-0.5 over a random permutation of dimensions),
  so most variance lies in a few hundred directions. Isotropic random vectors have no
  neighbourhood structure at all and defeat every ANN index; these do not.
- The FARAMIR embedding is scaled to norm √D (entries about unit variance, like the normalised
  head input), the SigLIP one to unit norm; both come from the same cluster of the same row, with
  independent centres and noise.
- Aesthetic features, quality features and the aesthetic score carry a per-cluster offset.
- Scores come from a real `FaramirHead` with seeded random weights, its decision bias shifted so
  that confidences spread across (0, 1) instead of piling up at one end.

Scores from random weights mean nothing; the meta record says the cache was built synthetically.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from faramir.checkpoints import head_to_bytes, load_head_checkpoint, save_state_dict, split_faramir_checkpoint
from faramir.config import FULL, PREPROCESS_VERSION, FaramirConfig
from faramir.digests import tensor_digest
from faramir.head import FaramirHead
from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.heads import registry
from faramir.store.heads.scoring import fixed_size_list, score_columns
from faramir.store.schema import HeadColumns

GENERATED = "SYNTHETIC cache rows (bench.synthetic): random vectors and a random head, scores mean nothing"


def random_checkpoint(cfg: FaramirConfig = FULL, seed: int = 0, pool_seed: int | None = None,
                      decision_bias: float | None = None) -> dict[str, torch.Tensor]:
    """A 39-key FARAMIR checkpoint (attn_pool.*, norm.*, head.*) of seeded random values.

    `pool_seed` fixes the attention pool separately, so two heads can share a pool (a finetune)
    or not (a different model). `decision_bias` overrides head.linear_4.bias."""
    from faramir.experts import build_trunk
    from faramir.fake_weights import random_state

    with torch.device("meta"):
        pool = build_trunk(cfg).attn_pool
        head = FaramirHead(cfg)
    state = {
        **random_state(pool, seed + 1000 if pool_seed is None else pool_seed, "attn_pool."),
        **random_state(head, seed),
    }
    if decision_bias is not None:
        state["head.linear_4.bias"] = torch.full_like(state["head.linear_4.bias"], decision_bias)
    return state


def save_checkpoint(state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_state_dict(state, path)


class Generator:
    """Seeded row generator: `batch(start, n)` gives rows start..start+n-1 of one fixed collection."""

    def __init__(self, cfg: FaramirConfig = FULL, n: int = 1000, seed: int = 0, clusters: int | None = None):
        self.cfg, self.n, self.seed = cfg, n, seed
        self.clusters = clusters or max(1, min(3000, n // 100))
        rng = np.random.default_rng(seed)
        d = cfg.backbone_dim
        # Cluster sizes Zipf-like (a few big themes, a long tail): row → cluster by inverse CDF.
        weights = 1.0 / np.arange(1, self.clusters + 1) ** 0.8
        self._cdf = np.cumsum(rng.permutation(weights / weights.sum()))
        common = [_unit(rng.standard_normal(d)) for _ in range(2)]
        self.centres = [  # (clusters, D) per embedding: cosine ≈ 0.25 between two centres
            _unit(0.5 * c + math.sqrt(0.75) * _unit(rng.standard_normal((self.clusters, d))))
            .astype(np.float32) for c in common
        ]
        spectrum = np.arange(1, d + 1, dtype=np.float64) ** -0.5
        self.spectra = [  # per-dimension noise scale, unit total variance, decaying by rank
            (rng.permutation(spectrum) / np.sqrt((spectrum ** 2).sum())).astype(np.float32)
            for _ in range(2)
        ]
        self.ae_offsets = rng.standard_normal((self.clusters, cfg.aesthetic_dim)).astype(np.float32)
        self.q_offsets = rng.standard_normal((self.clusters, cfg.quality_dim)).astype(np.float32)
        self.score_offsets = rng.normal(0.0, 1.0, self.clusters).astype(np.float32)

    def cluster_of(self, rows: np.ndarray) -> np.ndarray:
        u = np.random.default_rng([self.seed, 7]).random(self.n)[rows]
        return np.minimum(np.searchsorted(self._cdf, u), self.clusters - 1)

    def _embedding(self, which: int, cluster: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, d = len(cluster), self.cfg.backbone_dim
        # cos(row, centre) = 1/sqrt(1 + s²): s in [0.48, 1.17] gives 0.65-0.9
        spread = rng.uniform(0.48, 1.17, (n, 1)).astype(np.float32)
        noise = rng.standard_normal((n, d), dtype=np.float32)
        noise *= self.spectra[which]
        noise *= spread
        noise += self.centres[which][cluster]
        return _unit(noise)

    def batch(self, start: int, n: int) -> dict[str, np.ndarray]:
        """Rows start..start+n-1 as arrays (deterministic per row range and seed)."""
        rows = np.arange(start, start + n)
        rng = np.random.default_rng([self.seed, start, n])
        cluster = self.cluster_of(rows)
        d = self.cfg.backbone_dim
        ap = self._embedding(0, cluster, rng)
        ap *= np.float32(math.sqrt(d))
        stock = self._embedding(1, cluster, rng)
        ae = self.ae_offsets[cluster] + 0.5 * rng.standard_normal((n, self.cfg.aesthetic_dim), dtype=np.float32)
        q = self.q_offsets[cluster] + 0.7 * rng.standard_normal((n, self.cfg.quality_dim), dtype=np.float32)
        score = np.clip(5.5 + 0.8 * self.score_offsets[cluster] + 0.9 * rng.standard_normal(n), 1.0, 10.0)
        return {"rows": rows, "cluster": cluster, "faramir": ap, "siglip": stock, "ae": ae, "q": q,
                "aesthetic_score": score.astype(np.float32)}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / norm


def row_id(seed: int, row: int) -> str:
    return hashlib.sha256(f"synthetic-{seed}-{row}".encode()).hexdigest()


def row_path(root: str, cluster: int, row: int) -> str:
    return f"{root}/{cluster:04d}/{row:08d}.png"


def image_rows(gen: Generator, start: int, n: int, heads: dict[str, FaramirHead], root: str = "/synthetic",
               experts_fingerprint: str = "synthetic") -> pa.Table:
    """`n` rows of the images table (with score columns for every prefix → head in `heads`)."""
    b = gen.batch(start, n)
    now = datetime.now(timezone.utc)
    paths = [[row_path(root, int(c), int(r))] for c, r in zip(b["cluster"], b["rows"])]
    columns = {
        "id": pa.array([row_id(gen.seed, int(r)) for r in b["rows"]], pa.string()),
        "paths": pa.array(paths, pa.list_(pa.string())),
        "size": pa.array(np.full(n, 123_456), pa.int64()),
        "mtime_ns": pa.array(np.full(n, 1_700_000_000_000_000_000), pa.int64()),
        "width": pa.array(np.full(n, 1024), pa.int32()),
        "height": pa.array(np.full(n, 768), pa.int32()),
        "format": pa.array(["PNG"] * n, pa.string()),
        "mode": pa.array(["RGB"] * n, pa.string()),
        "faramir_embedding": fixed_size_list(b["faramir"]),
        "siglip_embedding": fixed_size_list(b["siglip"]),
        "aesthetic_features": fixed_size_list(b["ae"]),
        "aesthetic_score": pa.array(b["aesthetic_score"], pa.float32()),
        "quality_features": fixed_size_list(b["q"]),
        "experts_fingerprint": pa.array([experts_fingerprint] * n, pa.string()),
        "precision": pa.array(["fp32"] * n, pa.string()),
        "ingested_at": pa.array([now] * n, schema.TIMESTAMP),
    }
    for prefix, head in heads.items():
        columns.update(score_columns(HeadColumns(prefix, prefix), head, b["faramir"], b["ae"], b["q"]))
    return pa.table(columns, schema=schema.images_schema(gen.cfg, list(heads)))


def calibrated_checkpoint(gen: Generator, seed: int = 0, pool_seed: int | None = None,
                          median: float = 0.45, spread: float = 1.6) -> dict[str, torch.Tensor]:
    """A random checkpoint whose decision logit has median logit(`median`) and standard deviation
    `spread` over the collection (head.linear_4 rescaled), so confidences fill (0, 1)."""
    state = random_checkpoint(gen.cfg, seed, pool_seed)
    head = FaramirHead(gen.cfg)
    head.load_state_dict(split_faramir_checkpoint(state)[1])
    b = gen.batch(0, min(gen.n, 2000))
    with torch.inference_mode():
        d = head(*(torch.from_numpy(b[k]) for k in ("faramir", "ae", "q")))[:, -1].double()
    k = spread / max(float(d.std()), 1e-6)
    state["head.linear_4.weight"] = (state["head.linear_4.weight"] * k).to(torch.float32)
    bias = k * (state["head.linear_4.bias"].double() - float(d.median())) + math.log(median / (1 - median))
    state["head.linear_4.bias"] = bias.to(torch.float32)
    return state


def write_cache(
    db: str | os.PathLike,
    n: int,
    cfg: FaramirConfig = FULL,
    *,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    head_name: str = schema.DEFAULT_HEAD,
    clusters: int | None = None,
    batch_rows: int = 20_000,
    root: str = "/synthetic",
    with_files: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Cache:
    """A new cache at `db` holding `n` synthetic rows scored by one registered head.

    `checkpoint`: a FARAMIR checkpoint file for the head (its attn_pool.* fingerprints the cache);
    default: a calibrated random one (see `calibrated_checkpoint`)."""
    gen = Generator(cfg, n, seed, clusters)
    cache = Cache.open(db, create=True)
    if cache.has_images():
        raise FileExistsError(f"{cache.uri} already holds an images table")
    if checkpoint is None:
        state = calibrated_checkpoint(gen, seed)
        source = "synthetic"
        pool_state, head_state = split_faramir_checkpoint(state)
        pool_fp = tensor_digest(pool_state)
        head_fp = tensor_digest(head_state)
        head = FaramirHead(cfg)
        head.load_state_dict(head_state)
        head.eval()
    else:
        head, head_state, pool_fp, head_fp = load_head_checkpoint(checkpoint, cfg)
        source = str(Path(checkpoint).resolve())
    prefix = schema.new_prefix(head_name, set())
    experts_fp = hashlib.sha256(f"synthetic|{PREPROCESS_VERSION}|{pool_fp}".encode()).hexdigest()
    cache.set_meta(config=cfg.to_json(), experts_fingerprint=experts_fp, pool_fingerprint=pool_fp or "",
                   weights_generated=GENERATED)
    table = cache.create_images(cfg, [prefix])
    files = cache.table(schema.FILES)
    for start in range(0, n, batch_rows):
        rows = image_rows(gen, start, min(batch_rows, n - start), {prefix: head}, root, experts_fp)
        table.add(rows)
        if with_files:
            paths = pa.array([p[0] for p in rows.column("paths").to_pylist()], pa.string())
            files.add(pa.table({
                "path": paths, "id": rows.column("id"), "size": rows.column("size"),
                "mtime_ns": rows.column("mtime_ns"),
                "seen_at": pa.array([datetime.now(timezone.utc)] * len(rows), schema.TIMESTAMP),
            }, schema=schema.FILES_SCHEMA))
        if progress:
            progress(len(rows))
    registry.register(cache, name=head_name, columns=HeadColumns(prefix, prefix), fingerprint=head_fp,
                      pool_fingerprint=pool_fp or "", source=source, checkpoint=head_to_bytes(head_state))
    return cache


def learnable_rows(head: FaramirHead, n: int, seed: int):
    """Random pooled vectors labelled by a rule the decision layers can learn.

    Only linear_3 → activation_2 → linear_4 train, and they see cat(v, f) (32 numbers), so the
    target is a threshold (at the median) on a random linear projection of the base head's own
    eval-mode (v, f). The base decision is an unrelated function of (v, f), so it scores near 0.
    """
    cfg = head.cfg
    g = torch.Generator().manual_seed(seed)
    ap = torch.randn(n, cfg.backbone_dim, generator=g)
    ae = torch.randn(n, cfg.aesthetic_dim, generator=g)
    q = torch.randn(n, cfg.quality_dim, generator=g)
    with torch.no_grad():
        r, gate, f = head.head.gates(head.forward_norm(ap, ae, q))
        score = torch.cat((r * gate.sigmoid(), f), dim=-1) @ torch.randn(32, generator=g)
    return ap, ae, q, score > score.median()
