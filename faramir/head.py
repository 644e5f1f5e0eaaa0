"""Stage two: ChannelNorm and the FARAMIR gated head, over pooled vectors.

Module and buffer names follow upstream's checkpoint keys (`norm.*`, `head.*`) so a
`faramir-v1.pth` loads strictly. Inference is `FaramirHead.forward` (`forward_norm`, then
`forward_head`); training mode reproduces upstream's dropout and gate-substitution so a finetune
sees what upstream's training saw.
"""

from __future__ import annotations

import torch
from torch import nn

from faramir.config import DEFAULT_THRESHOLD, FULL, N_ACCEPT, N_CLASSES, FaramirConfig
from faramir.decision import decide


class AdaptiveSigmoid(nn.Module):
    """Self-gated activation: lerp(x, tanh x, σ(alpha)) · σ(x · (gamma_m if x < 0 else |gamma_p| + 1))."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.gamma_m = nn.Parameter(torch.zeros(dim))
        self.gamma_p = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.lerp(x, x.tanh(), self.alpha.sigmoid())
        gamma_p = self.gamma_p.abs() + 1.0
        g = x * torch.where(x < 0.0, self.gamma_m, gamma_p)
        return a * g.sigmoid()

    @torch.no_grad()
    def step(self) -> None:
        """Upstream's post-optimiser-step projection: keep gamma_p non-negative."""
        self.gamma_p.copy_(self.gamma_p.abs())


class ChannelNorm(nn.Module):
    """(x - mean) / stddev with frozen statistics (`m2` and `weight` are kept for the checkpoint)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(1))
        self.register_buffer("m2", torch.zeros(dim))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("stddev", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.stddev


class ClassifierNorm(nn.Module):
    def __init__(self, cfg: FaramirConfig):
        super().__init__()
        self.ap_norm = ChannelNorm(cfg.backbone_dim)
        self.ae_norm = ChannelNorm(cfg.aesthetic_dim)
        self.q_norm = ChannelNorm(cfg.quality_dim)

    def forward(self, ap, ae, q):
        return self.ap_norm(ap), self.ae_norm(ae), self.q_norm(q)


class ClassifierHead(nn.Module):
    """The gated head: 30 class logits v = r · σ(g) and one decision logit d."""

    dropout_p = 0.2  # upstream's training-mode dropout
    swap_p = 0.1  # training: probability that v is replaced by the ungated r
    zero_p = 0.1  # training: probability that v is zeroed

    def __init__(self, cfg: FaramirConfig):
        super().__init__()
        self.n_free = cfg.n_free
        self.dropout = nn.Dropout(self.dropout_p)
        self.linear_1 = nn.Linear(cfg.head_in_dim, cfg.hidden_dim)
        self.activation_1 = AdaptiveSigmoid(cfg.hidden_dim)
        self.linear_2 = nn.Linear(cfg.hidden_dim, 2 * N_CLASSES + cfg.n_free)
        self.linear_3 = nn.Linear(N_CLASSES + cfg.n_free, cfg.decision_dim)
        self.activation_2 = AdaptiveSigmoid(cfg.decision_dim)
        self.linear_4 = nn.Linear(cfg.decision_dim, 1)

    def gates(self, x):
        """(r, g, f) from the normalised input x (B, head_in_dim): raw class logits, gate logits,
        free units; (B, 30 | 30 | 2)."""
        x = self.dropout(x)
        x = self.dropout(self.activation_1(self.linear_1(x)))  # (B, hidden)
        x = self.linear_2(x)  # (B, 62)
        x, f = torch.tensor_split(x, (2 * N_CLASSES,), dim=-1)
        r, g = torch.tensor_split(x, 2, dim=-1)
        return r, g, f

    def decide(self, v, r, f):
        """Decision logit (B, 1) from gated logits, as upstream computes it (train or eval)."""
        d = v
        if self.training:
            m = torch.rand_like(v)
            d = torch.where(m >= self.swap_p, v, r)
            d = torch.where(m < (1.0 - self.zero_p), d, 0.0)
        d = torch.cat((d, self.dropout(f)), dim=-1)  # (B, 32)
        d = self.dropout(self.activation_2(self.linear_3(d)))  # (B, decision)
        return self.linear_4(d)

    def gated(self, x):
        """(v, r, g, f) from the normalised input x (B, head_in_dim): the gated class logits
        v = r · σ(g), and the raw class logits, gate logits and free units they came from."""
        r, g, f = self.gates(x)
        return r * g.sigmoid(), r, g, f

    def forward(self, x):
        """(v, d, r, g) as upstream returns them, from the normalised input x (B, head_in_dim)."""
        v, r, g, f = self.gated(x)
        return v, self.decide(v, r, f), r, g

    def step(self) -> None:
        self.activation_1.step()
        self.activation_2.step()


class FaramirHead(nn.Module):
    """ChannelNorm + gated head: (faramir embedding, aesthetic features, quality) → 31 logits.

    timm-style entry points, so every caller runs the same code: `forward_norm` makes the head's
    input (each part normalised, then concatenated), `forward_head` runs the gated head on it
    (`forward_scores` also hands back the free units). `forward` is the two in turn; a caller
    scoring many rows passes its own buffer to `forward_norm` and so allocates nothing per batch
    (`faramir.store.heads.scoring.HeadScorer`). `forward_decision` runs the decision layers alone.
    """

    def __init__(self, cfg: FaramirConfig = FULL):
        super().__init__()
        self.cfg = cfg
        self.norm = ClassifierNorm(cfg)
        self.head = ClassifierHead(cfg)

    def forward_norm(self, ap, ae, q, out: torch.Tensor | None = None) -> torch.Tensor:
        """x = cat(ap_norm(ap), ae_norm(ae), q_norm(q)): (B, head_in_dim) float32.

        With `out`, a (B, head_in_dim) float32 tensor, x is computed in place there (no autograd:
        for inference and frozen layers); the values are the same to the bit."""
        if out is None:
            return torch.cat(self.norm(ap, ae, q), dim=-1)
        lo = 0
        for values, norm in zip((ap, ae, q), (self.norm.ap_norm, self.norm.ae_norm, self.norm.q_norm)):
            part = out[:, lo:lo + values.shape[-1]]
            torch.sub(values, norm.mean, out=part)  # ChannelNorm: (x - mean) / stddev
            part.div_(norm.stddev)
            lo += values.shape[-1]
        assert lo == out.shape[-1], f"inputs hold {lo} features, the head takes {out.shape[-1]}"
        return out

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """The 31 logits cat(v, d) (B, 31) from the normalised input x (B, head_in_dim)."""
        v, d, _ = self.forward_scores(x)
        return torch.cat((v, d), dim=-1)

    def forward_scores(self, x: torch.Tensor):
        """(v (B, 30), d (B, 1), f (B, 2)) from the normalised input x: the 31 logits, and the
        free units that go into the decision beside v. A finetune changes only the decision
        layers, so a finetuned head's v and f are its base's: `forward_decision` scores it."""
        v, r, _, f = self.head.gated(x)
        return v, self.head.decide(v, r, f), f

    def forward_decision(self, v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The decision logit d (B, 1) from gated logits v (B, 30) and free units f (B, 2): the
        decision layers alone, in eval mode (where they never read the raw logits r)."""
        assert not self.training, "training swaps v for r, which this entry point does not have"
        return self.head.decide(v, None, f)

    def forward_all(self, ap, ae, q):
        """(outputs (B, 31) = cat(v, d), r (B, 30), g (B, 30))."""
        v, d, r, g = self.head(self.forward_norm(ap, ae, q))
        return torch.cat((v, d), dim=-1), r, g

    def forward(self, ap, ae, q):
        return self.forward_head(self.forward_norm(ap, ae, q))


def side_labels(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(best accept-side label index, best reject-side label index), each (B,), from (B, 30 or 31)
    logits: argmax of v[0:9], and 9 + argmax of v[9:30] (the first index on ties)."""
    return outputs[:, :N_ACCEPT].argmax(dim=-1), N_ACCEPT + outputs[:, N_ACCEPT:N_CLASSES].argmax(dim=-1)


def assess_outputs(outputs: torch.Tensor, threshold: float = DEFAULT_THRESHOLD):
    """Upstream's rule on (B, 31) logits: (accepted (B,), label index (B,), confidence (B,))."""
    p = outputs[:, -1].sigmoid()
    accepted, label = decide(p, *side_labels(outputs), threshold)
    return accepted, label, p
