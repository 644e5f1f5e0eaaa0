"""Finetune the FARAMIR decision on cached pooled vectors, as upstream prescribes.

Upstream never released training code; its guidance (see DESIGN.md, "Finetuning") is followed
to the letter:

- Only `head.linear_3`, `head.activation_2` and `head.linear_4` train. Every other tensor —
  `norm.*` buffers, `linear_1`, `activation_1`, `linear_2`, and a full checkpoint's `attn_pool.*`
  — stays bit-identical, which is what keeps cached pooled vectors valid after a finetune.
- AdamW, learning rate 4e-4; weight decay (0.01) on `linear_3.weight` and `linear_4.weight` only,
  none on biases or the AdaptiveSigmoid parameters (`alpha`, `gamma_m`, `gamma_p`).
- Loss: BCE-with-logits on the decision logit `d` (output column 30). A label given as one of the
  30 names counts as accept iff it is accept-biased (index < 9).
- After every optimiser step `activation_2.gamma_p ← |gamma_p|`. `activation_1` is *not* stepped:
  it is frozen, its `gamma_p` may be negative in the base, and it must stay bit-identical.

Dropout on the frozen layers (a deliberate choice). Upstream's training-mode forward applies
dropout 0.2 to the head's *inputs* and after `activation_1`, i.e. inside layers that are frozen
here, and then per element swaps `v` for `r` (p = 0.1) or zeroes it (p = 0.1). Freezing those
layers does not switch that noise off in upstream's module, so the decision layers were trained
on noisy `(v, r, f)`, freshly drawn each step. A tempting shortcut — compute `(v, r, f)` once per
row and train only the tail — would change what the decision layers see (no input/hidden
dropout), so it is *not* used: each training step runs the full training-mode forward through
the frozen layers (under `torch.no_grad`, since nothing there needs a gradient; it is one
1296→64 and one 64→62 matmul per row). Validation runs in eval mode, where the frozen part is
deterministic, so its `(v, r, f)` are computed once and only the tail runs each epoch.
ChannelNorm is always in eval mode and never updates its statistics.

Determinism. The validation split is stratified by target and drawn with
`numpy.random.RandomState(seed)`; batch order comes from a `torch.Generator` seeded with `seed`;
the dropout and swap masks use torch's global RNG (that is how upstream's modules draw them), so
each epoch runs inside `torch.random.fork_rng` with the global RNG seeded from that generator.
The result is bit-reproducible for a seed — within a process and across processes with the same
torch build and thread count — and a finetune neither depends on nor disturbs the caller's
global RNG state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from faramir.checkpoints import trained_state_dict
from faramir.config import TRAINED_MODULES, TRAINED_PREFIXES
from faramir.head import FaramirHead
from faramir.metrics import mcc

__all__ = [
    "TRAINED_MODULES", "TRAINED_PREFIXES", "EpochReport", "FinetuneResult", "Finetuner",
    "finetune_head", "split_indices", "trained_state_dict",
]


_DECAYED = ("linear_3.weight", "linear_4.weight")  # the only parameters with weight decay
_EVAL_CHUNK = 65536  # rows per eval-mode forward when precomputing validation features


# ------------------------------------------------------------------------------------ the split

def split_indices(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices, each sorted; stratified by target, seeded.

    Each class gives round(count · val_fraction) rows to validation, at least one and at most
    all but one when the class has two or more rows (a single-row class stays in training).
    """
    t = np.asarray(targets, dtype=np.bool_).reshape(-1)
    rng = np.random.RandomState(seed)
    train, val = [], []
    for cls in (False, True):
        idx = np.flatnonzero(t == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ------------------------------------------------------------------------------------ reports

@dataclass(frozen=True)
class EpochReport:
    """One epoch's outcome. Epoch 0 is the base head, before any training (train_loss None)."""

    epoch: int
    train_loss: float | None  # mean training-mode BCE over the epoch's batches (row-weighted)
    val_loss: float  # eval-mode BCE on the validation rows
    val_mcc: float  # validation MCC at threshold 0.5 (accept iff sigmoid(d) > 0.5)
    best_epoch: int  # best epoch so far (by val MCC, ties → lower val loss, then earlier)
    best_val_mcc: float
    seconds: float  # wall time of this epoch (training + validation)


@dataclass(frozen=True)
class FinetuneResult:
    """What a finished (or stopped) run did; the head then holds the best epoch's weights."""

    base_val_mcc: float
    base_val_loss: float
    best_epoch: int  # 0 means no epoch beat the base head: the head is unchanged
    best_val_mcc: float
    best_val_loss: float
    epochs_run: int
    completed: bool  # False when the caller stopped iterating early
    reports: tuple[EpochReport, ...]
    train_rows: int
    val_rows: int


# ----------------------------------------------------------------------------------- finetuner

def _as_features(name: str, x, dim: int) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {t.dtype}")
    t = t.to(torch.float32)
    bad = sum(int((~torch.isfinite(t[i:i + _EVAL_CHUNK])).any(dim=1).sum())
              for i in range(0, len(t), _EVAL_CHUNK))  # chunked: no N×D temporary
    if bad:
        raise ValueError(f"{name} has {bad} row(s) with NaN or infinite values")
    return t


def _rng_fork(device: torch.device):
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)


class Finetuner:
    """Finetunes `head` in place on labelled rows; iterate `run()` for progress, then read `result`.

        tuner = Finetuner(head, ap, ae, q, targets, epochs=20)
        for report in tuner.run():      # epoch 0 (the base head), then 1 … epochs
            ...
        tuner.result.best_val_mcc       # the head now holds the best epoch's weights

    `ap` (N, D), `ae` (N, 16), `q` (N, 128) are the cached pooled vectors (float, any device;
    batches move to the head's device), `targets` (N,) booleans, True = accept. When `run()`
    ends — exhausted, or stopped early by the caller (break / close / exception) — the head
    holds the best epoch seen so far (epoch 0 = the base weights, so a finetune never leaves the
    head worse on validation than it started), its parameters' `requires_grad` flags and
    train/eval modes are restored, and `result` is set. A Finetuner runs once.
    """

    def __init__(
        self,
        head: FaramirHead,
        ap,
        ae,
        q,
        targets,
        *,
        epochs: int = 20,
        lr: float = 4e-4,
        batch_size: int = 256,
        val_fraction: float = 0.2,
        seed: int = 0,
        weight_decay: float = 0.01,
    ):
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        if not lr > 0.0:
            raise ValueError(f"lr must be positive, got {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        cfg = head.cfg
        self.head = head
        self.ap = _as_features("ap", ap, cfg.backbone_dim)
        self.ae = _as_features("ae", ae, cfg.aesthetic_dim)
        self.q = _as_features("q", q, cfg.quality_dim)
        y = torch.as_tensor(targets)
        if y.dtype != torch.bool:
            raise ValueError(f"targets must be boolean (True = accept), got {y.dtype}")
        self.targets = y.reshape(-1).cpu()
        n = len(self.targets)
        if not len(self.ap) == len(self.ae) == len(self.q) == n:
            raise ValueError(
                f"row counts differ: ap {len(self.ap)}, ae {len(self.ae)}, q {len(self.q)}, "
                f"targets {n}"
            )
        n_pos = int(self.targets.sum())
        if n_pos == 0 or n_pos == n:
            raise ValueError(
                f"need both accept and reject examples to finetune the decision; got {n_pos} "
                f"accept and {n - n_pos} reject"
            )
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.val_fraction, self.seed, self.weight_decay = float(val_fraction), int(seed), float(weight_decay)
        train_idx, val_idx = split_indices(self.targets.numpy(), self.val_fraction, self.seed)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ValueError(
                f"{n} rows are too few to split into training and validation "
                f"(val_fraction {self.val_fraction})"
            )
        self.train_index, self.val_index = train_idx, val_idx
        self.result: FinetuneResult | None = None
        self._started = False

    # -- pieces

    def _device(self) -> torch.device:
        return next(self.head.parameters()).device

    def _trained(self) -> dict[str, torch.nn.Module]:
        return {m: getattr(self.head.head, m) for m in TRAINED_MODULES}

    def _snapshot(self) -> dict[str, dict[str, torch.Tensor]]:
        return {m: {k: v.detach().clone() for k, v in mod.state_dict().items()}
                for m, mod in self._trained().items()}

    def _optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for m, mod in self._trained().items():
            for name, p in mod.named_parameters():
                (decay if f"{m}.{name}" in _DECAYED else no_decay).append(p)
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )

    @torch.no_grad()
    def _frozen_forward(self, idx: torch.Tensor, device: torch.device):
        """(v, r, f) for rows `idx` through the frozen layers, in the head's current mode."""
        head = self.head
        x = head.forward_norm(self.ap[idx].to(device), self.ae[idx].to(device), self.q[idx].to(device))
        r, g, f = head.head.gates(x)
        return r * g.sigmoid(), r, f

    @torch.no_grad()
    def _evaluate(self, v, r, f, y) -> tuple[float, float]:
        was = self.head.head.training
        self.head.head.eval()
        try:
            d = torch.cat([
                self.head.head.decide(v[i:i + _EVAL_CHUNK], r[i:i + _EVAL_CHUNK], f[i:i + _EVAL_CHUNK])
                for i in range(0, len(v), _EVAL_CHUNK)
            ]).squeeze(-1)
        finally:
            self.head.head.train(was)
        loss = float(F.binary_cross_entropy_with_logits(d, y.to(d.dtype)))
        accepted = (d.sigmoid() > 0.5).cpu().numpy()
        return loss, mcc(y.cpu().numpy(), accepted)

    def _validation_features(self, device: torch.device):
        """(v, r, f, y) of the validation rows: the frozen layers in eval mode are deterministic,
        so they run once, not every epoch."""
        val_t = torch.as_tensor(self.val_index, dtype=torch.long)
        v, r, f = zip(*(self._frozen_forward(val_t[i:i + _EVAL_CHUNK], device)
                        for i in range(0, len(val_t), _EVAL_CHUNK)))
        return torch.cat(v), torch.cat(r), torch.cat(f), self.targets[val_t].to(device)

    def _train_epoch(self, opt, gen: torch.Generator, y_all: torch.Tensor, device: torch.device) -> float:
        """One pass over the training rows in a seeded order; the mean training-mode loss."""
        head = self.head
        train_t = torch.as_tensor(self.train_index, dtype=torch.long)
        n_train = len(train_t)
        order = train_t[torch.randperm(n_train, generator=gen)]
        epoch_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        total = 0.0
        with _rng_fork(device):
            torch.manual_seed(epoch_seed)
            head.head.train()  # upstream's dropout and v→r swap / zeroing; norm stays eval
            for b in range(0, n_train, self.batch_size):
                idx = order[b:b + self.batch_size]
                v, r, f = self._frozen_forward(idx, device)
                d = head.head.decide(v, r, f).squeeze(-1)
                loss = F.binary_cross_entropy_with_logits(d, y_all[idx.to(device)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                head.head.activation_2.step()  # gamma_p ← |gamma_p|; activation_1 is frozen, never stepped
                total += loss.detach().item() * len(idx)
            head.head.eval()
        return total / n_train

    def _unfreeze(self) -> None:
        for p in self.head.parameters():
            p.requires_grad_(False)
        for mod in self._trained().values():
            for p in mod.parameters():
                p.requires_grad_(True)
        self.head.eval()

    # -- the run

    def run(self) -> Iterator[EpochReport]:
        """Yield the base head's report (epoch 0), then one report per epoch; see the class doc."""
        if self._started:
            raise RuntimeError("a Finetuner runs once; make a new one to finetune again")
        self._started = True
        head = self.head
        device = self._device()
        modes = {mod: mod.training for mod in head.modules()}
        grads = {p: p.requires_grad for p in head.parameters()}
        reports: list[EpochReport] = []
        completed = False
        best = base = None
        best_state = self._snapshot()
        try:
            self._unfreeze()
            t0 = time.perf_counter()
            val = self._validation_features(device)
            val_loss, val_mcc = self._evaluate(*val)
            base = best = (0, val_mcc, val_loss)
            reports.append(EpochReport(0, None, val_loss, val_mcc, 0, val_mcc, time.perf_counter() - t0))
            yield reports[-1]

            opt = self._optimizer()
            gen = torch.Generator().manual_seed(self.seed)
            y_all = self.targets.to(device=device, dtype=torch.float32)
            for epoch in range(1, self.epochs + 1):
                t0 = time.perf_counter()
                train_loss = self._train_epoch(opt, gen, y_all, device)
                val_loss, val_mcc = self._evaluate(*val)
                if val_mcc > best[1] or (val_mcc == best[1] and val_loss < best[2]):
                    best = (epoch, val_mcc, val_loss)
                    best_state = self._snapshot()
                reports.append(EpochReport(epoch, train_loss, val_loss, val_mcc, best[0], best[1],
                                           time.perf_counter() - t0))
                yield reports[-1]
            completed = True
        finally:
            with torch.no_grad():
                for m, mod in self._trained().items():
                    mod.load_state_dict(best_state[m])
            for p, flag in grads.items():
                p.requires_grad_(flag)
            for mod, flag in modes.items():
                mod.training = flag
            if base is not None:
                self.result = FinetuneResult(
                    base_val_mcc=base[1], base_val_loss=base[2],
                    best_epoch=best[0], best_val_mcc=best[1], best_val_loss=best[2],
                    epochs_run=len(reports) - 1, completed=completed, reports=tuple(reports),
                    train_rows=len(self.train_index), val_rows=len(self.val_index),
                )


def finetune_head(head: FaramirHead, ap, ae, q, targets, **settings) -> FinetuneResult:
    """Run a `Finetuner` to the end (same keyword settings) and return its result.

    The head is changed in place and holds the best epoch's weights afterwards.
    """
    tuner = Finetuner(head, ap, ae, q, targets, **settings)
    for _ in tuner.run():
        pass
    assert tuner.result is not None
    return tuner.result
