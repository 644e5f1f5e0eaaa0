"""FaramirModel: the experts (stage one) and the head (stage two) of one weights directory."""

from __future__ import annotations

import torch
from torch import nn

from faramir.config import PRECISIONS
from faramir.experts import ExpertOutputs, Experts
from faramir.head import FaramirHead


class FaramirModel(nn.Module):
    def __init__(self, experts: Experts, head: FaramirHead, info):
        super().__init__()
        self.experts = experts
        self.head = head
        self.info = info  # faramir.weights.WeightsInfo

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @torch.inference_mode()
    def features(self, xb: torch.Tensor, xq: torch.Tensor, precision: str = "fp32") -> ExpertOutputs:
        """Stage one on a batch of upstream inputs (float16 or float32 in [0, 1])."""
        assert precision in PRECISIONS, f"precision must be one of {PRECISIONS}, not {precision!r}"
        dev = self.device
        xb = xb.to(dev, torch.float32, non_blocking=True).contiguous(memory_format=torch.channels_last)
        xq = xq.to(dev, torch.float32, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return self.experts(xb, xq, precision)

    @torch.inference_mode()
    def score(self, feats: ExpertOutputs) -> torch.Tensor:
        """Stage two: the 31 logits (B, 31), always in float32."""
        return self.head(feats.faramir_embedding, feats.aesthetic_features, feats.quality_features)
