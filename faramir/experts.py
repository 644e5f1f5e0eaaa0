"""Stage one: the experts, images → pooled vectors.

The SigLIP trunk runs once per batch and feeds both attention pools: the stock one (→ aesthetic
v2.5 features and score) and FARAMIR's fine-tuned one (→ the head's main input). ARNIQA runs on the
separate quality input. Everything the head needs leaves here as float32.

Precision is chosen once, after the weights are loaded (`Experts.prepare`): in bf16 the trunk, both
pools and ARNIQA's ResNet hold bf16 weights and compute in bf16 (no autocast, which would cast
every weight again on every call); the small MLPs on pooled vectors (aesthetic v2.5, ARNIQA's
projector) stay float32, like the head. ARNIQA's ResNet is channels_last in both precisions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import timm
import torch
from torch import nn

from faramir.config import ARNIQA_MODEL, FULL, PRECISIONS, TRUNK_MODEL, FaramirConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm.data.IMAGENET_DEFAULT_MEAN, as upstream uses
IMAGENET_STD = (0.229, 0.224, 0.225)  # timm.data.IMAGENET_DEFAULT_STD


def build_trunk(cfg: FaramirConfig) -> nn.Module:
    """timm's SigLIP so400m (or its tiny variant) with no classifier: tokens and the stock pool."""
    return timm.create_model(TRUNK_MODEL, pretrained=False, num_classes=0, **cfg.trunk_kwargs)


class AestheticPredictor(nn.Module):
    """aesthetic-predictor-v2.5's head: L2-normalised SigLIP embedding → 16 features → score."""

    def __init__(self, cfg: FaramirConfig):
        super().__init__()
        dims = (cfg.backbone_dim, *cfg.aesthetic_hidden, cfg.aesthetic_dim)
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            layers.append(nn.Dropout(0.2 if i == len(dims) - 2 else 0.5))  # identity at inference
        layers.append(nn.Linear(cfg.aesthetic_dim, 1))
        self.scoring_head = nn.Sequential(*layers)  # keys scoring_head.{0,2,4,6,8}.*

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, 16), score (B,)) from the stock pooled embedding (B, D)."""
        x = nn.functional.normalize(embedding, dim=-1)
        for module in self.scoring_head[:-2]:
            x = module(x)
        score = self.scoring_head[-1](x).squeeze(-1)  # the Dropout before it is identity
        return x, score


class ArniqaEncoder(nn.Module):
    """ARNIQA: a ResNet-50 (children as a Sequential) and a projector to 128 quality features."""

    def __init__(self, cfg: FaramirConfig):
        super().__init__()
        resnet = timm.create_model(ARNIQA_MODEL, pretrained=False, num_classes=0, **cfg.arniqa_kwargs)
        self.model = nn.Sequential(*resnet.children())  # keys model.*
        self.projector = nn.Sequential(  # keys projector.{0,2}.*
            nn.Linear(cfg.arniqa_dim, cfg.arniqa_dim),
            nn.ReLU(),
            nn.Linear(cfg.arniqa_dim, cfg.quality_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.model(x).float()  # (B, 2048); the ResNet may run in bf16, the projector not
        return self.projector(nn.functional.normalize(pooled))


@dataclass
class ExpertOutputs:
    """Pooled outputs of one batch, float32 on the model's device."""

    faramir_embedding: torch.Tensor  # (B, D) FARAMIR attention pool: the head's main input
    siglip_embedding: torch.Tensor  # (B, D) stock SigLIP attention pool
    aesthetic_features: torch.Tensor  # (B, 16) aesthetic v2.5 features (head input)
    aesthetic_score: torch.Tensor  # (B,) published aesthetic v2.5 score, about 1-10
    quality_features: torch.Tensor  # (B, 128) ARNIQA features (head input)

    def first(self, n: int) -> ExpertOutputs:
        """The outputs of the batch's first `n` images."""
        return ExpertOutputs(**{f.name: getattr(self, f.name)[:n] for f in fields(self)})


class Experts(nn.Module):
    """All stage-one experts. `forward(xb, xq)` takes upstream's [0, 1] inputs."""

    def __init__(self, cfg: FaramirConfig = FULL):
        super().__init__()
        self.cfg = cfg
        self.trunk = build_trunk(cfg)
        self.aesthetic = AestheticPredictor(cfg)
        self.quality = ArniqaEncoder(cfg)
        self.faramir_pool = copy.deepcopy(self.trunk.attn_pool)  # weights: attn_pool.* of FARAMIR

    @property
    def dtype(self) -> torch.dtype:
        """What the trunk, the pools and the ResNet compute in: float32 or bfloat16."""
        return self.trunk.patch_embed.proj.weight.dtype

    def prepare(self, precision: str) -> Experts:
        """Lay the loaded weights out for inference in `precision` ("fp32" or "bf16"), once.

        bf16 casts the trunk (with the stock pool), the FARAMIR pool and ARNIQA's ResNet; the
        aesthetic MLP and ARNIQA's projector keep float32. ARNIQA's ResNet goes channels_last
        in both precisions: faster convolutions on CPUs, equal to NCHW within float32 rounding.
        """
        assert precision in PRECISIONS, f"precision must be one of {PRECISIONS}, not {precision!r}"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        assert self.dtype in (torch.float32, dtype), (
            f"experts already cast to {self.dtype}; load the weights again for {precision}")
        for module in (self.trunk, self.faramir_pool):
            module.to(dtype)
        self.quality.model.to(dtype, memory_format=torch.channels_last)
        return self

    def forward_features(self, xb: torch.Tensor) -> torch.Tensor:
        """Trunk tokens (B, 729, D), in the experts' dtype, from the backbone input in [0, 1]."""
        return self.trunk.forward_features(((xb.float() - 0.5) * 2.0).to(self.dtype))

    def forward_quality(self, xq: torch.Tensor) -> torch.Tensor:
        """ARNIQA features (B, 128), float32, from the quality input in [0, 1]."""
        xq = xq.float()
        mean = torch.tensor(IMAGENET_MEAN, device=xq.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=xq.device)[:, None, None]
        x = ((xq - mean) / std).to(self.dtype, memory_format=torch.channels_last)
        return self.quality(x)

    def forward_pools(self, tokens: torch.Tensor):
        """(faramir embedding, stock embedding), each (B, D) float32, from one set of trunk tokens."""
        return self.faramir_pool(tokens).float(), self.trunk.attn_pool(tokens).float()

    def forward(self, xb: torch.Tensor, xq: torch.Tensor) -> ExpertOutputs:
        """The pooled outputs of one batch; `xb` (B, 3, 384, 384) and `xq` (B, 3, 512, 512) in [0, 1]."""
        tokens = self.forward_features(xb)  # (B, 729, D)
        faramir_embedding, siglip_embedding = self.forward_pools(tokens)
        quality = self.forward_quality(xq)  # (B, 128)
        # The small aesthetic MLP runs in float32 on the float32 embedding, like the head.
        aesthetic, score = self.aesthetic(siglip_embedding)
        return ExpertOutputs(
            faramir_embedding=faramir_embedding,
            siglip_embedding=siglip_embedding,
            aesthetic_features=aesthetic,
            aesthetic_score=score,
            quality_features=quality,
        )
