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
        # Set by faramir.compiled.compile_experts: smaller batches are padded to it (one graph).
        self.fixed_batch: int | None = None

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @property
    def precision(self) -> str:
        """What the experts compute in ("fp32" or "bf16"), chosen at load; the head is always fp32."""
        return "bf16" if self.experts.dtype == torch.bfloat16 else "fp32"

    @torch.inference_mode()
    def features(self, xb: torch.Tensor, xq: torch.Tensor, precision: str | None = None) -> ExpertOutputs:
        """Stage one on a batch of upstream inputs (float16 or float32 in [0, 1]), in the precision
        the model was loaded for; `precision`, if given, must be that one."""
        if precision is not None and precision != self.precision:
            assert precision in PRECISIONS, f"precision must be one of {PRECISIONS}, not {precision!r}"
            raise ValueError(f"this model was loaded for {self.precision}; load it with "
                             f"precision={precision!r} to compute in {precision}")
        dev = self.device
        # float16 travels to the device (half the bytes of float32) and is widened there.
        xb = xb.to(dev, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
        xq = xq.to(dev, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
        n = xb.shape[0]
        if self.fixed_batch is not None and n < self.fixed_batch:  # the compiled shape: pad, then drop
            xb, xq = (torch.cat([x, x.new_zeros(self.fixed_batch - n, *x.shape[1:])])
                      .contiguous(memory_format=torch.channels_last) for x in (xb, xq))
            return self.experts(xb, xq).first(n)
        return self.experts(xb, xq)

    @torch.inference_mode()
    def score(self, feats: ExpertOutputs) -> torch.Tensor:
        """Stage two: the 31 logits (B, 31), always in float32."""
        return self.head(feats.faramir_embedding, feats.aesthetic_features, feats.quality_features)
