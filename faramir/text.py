"""The SigLIP so400m text tower: sentences → vectors in the space of the cached SigLIP embeddings.

The cache's `siglip_embedding` is the image side of SigLIP so400m/14@384 (timm's attention-pool
output, no projection). Its text side is open_clip's `ViT-SO400M-14-SigLIP-384` text tower, built
here from open_clip's own `TextTransformer` with that model's text config, and fed by open_clip's
HF tokenizer (`timm/ViT-B-16-SigLIP`'s files, `clean="canonicalize"`). Cosine ranking needs neither
SigLIP's logit scale nor its bias, so only the tower is loaded: the image side never is.

Needs the `text` extra (`pip install 'faramir[text]'`: open_clip, transformers). The config and
`TextError` import without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from functools import partial

import numpy as np

from faramir.errors import FaramirError

TOKENIZER_CLEAN = "canonicalize"  # open_clip's text cleaning for SigLIP: lower case, no punctuation
EXTRA_HINT = "install the text extra: pip install 'faramir[text]'"


class TextError(FaramirError):
    """Text cannot be embedded: the text extra is missing, or the text tower does not fit."""


@dataclass(frozen=True)
class TextConfig:
    """open_clip's text_cfg of ViT-SO400M-14-SigLIP-384 (and the tiny variant of tests)."""

    embed_dim: int = 1152  # output size: equal to the image embedding's (siglip_embedding)
    context_length: int = 64  # tokens per text (padded with </s>, truncated keeping </s>)
    vocab_size: int = 32000  # rows of the token embedding
    width: int = 1152  # transformer width
    heads: int = 16  # attention heads
    layers: int = 27  # transformer blocks
    mlp_ratio: float = 3.7362  # MLP hidden = int(width × mlp_ratio) = 4304
    norm_eps: float = 1e-6  # LayerNorm epsilon
    no_causal_mask: bool = True  # bidirectional attention
    pool_type: str = "last"  # the pooled token: the last one (always </s> after padding)
    proj_bias: bool = True  # the text projection is a Linear with bias
    variant: str = "full"  # "full" (upstream) or "tiny" (tests)

    def open_clip_text_cfg(self) -> dict:
        """This config as open_clip's `text_cfg` dict (tokenizer fields aside)."""
        return {
            "context_length": self.context_length, "vocab_size": self.vocab_size, "width": self.width,
            "heads": self.heads, "layers": self.layers, "mlp_ratio": self.mlp_ratio,
            "no_causal_mask": self.no_causal_mask, "proj_bias": self.proj_bias, "pool_type": self.pool_type,
            "norm_kwargs": {"eps": self.norm_eps},
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TextConfig:
        return cls(**json.loads(text))


TEXT_FULL = TextConfig()
TEXT_TINY = TextConfig(embed_dim=32, vocab_size=256, width=32, heads=2, layers=2, mlp_ratio=2.0, variant="tiny")
TEXT_VARIANTS = {"full": TEXT_FULL, "tiny": TEXT_TINY}  # same names, same image widths as faramir.config


def _open_clip():
    try:
        import open_clip
    except ImportError as ex:
        raise TextError(f"text search needs open_clip ({ex}); {EXTRA_HINT}") from ex
    return open_clip


def build_text_tower(cfg: TextConfig = TEXT_FULL):
    """open_clip's `TextTransformer` as open_clip builds it for `cfg` (random init; use the meta
    device to skip that). Its state dict is the `text.*` part of an open_clip SigLIP checkpoint."""
    from torch import nn

    transformer = _open_clip().transformer
    return transformer.TextTransformer(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.width,
        heads=cfg.heads,
        layers=cfg.layers,
        mlp_ratio=cfg.mlp_ratio,
        output_dim=cfg.embed_dim,
        no_causal_mask=cfg.no_causal_mask,
        pool_type=cfg.pool_type,
        proj_bias=cfg.proj_bias,
        act_layer=nn.GELU,  # open_clip's choice without quick_gelu
        norm_layer=partial(transformer.LayerNorm, eps=cfg.norm_eps),
    )


def build_tokenizer(tokenizer_dir: str | os.PathLike, cfg: TextConfig = TEXT_FULL):
    """open_clip's HF tokenizer over the tokenizer files in `tokenizer_dir` (tokenizer.json and
    tokenizer_config.json), as the SigLIP config sets it up: its context length, canonicalised text."""
    open_clip = _open_clip()
    try:
        return open_clip.tokenizer.HFTokenizer(
            os.fspath(tokenizer_dir), context_length=cfg.context_length, clean=TOKENIZER_CLEAN)
    except ImportError as ex:
        raise TextError(f"the SigLIP tokenizer needs transformers ({ex}); {EXTRA_HINT}") from ex


@dataclass(frozen=True)
class TextInfo:
    """What a loaded text tower was made from."""

    weights_dir: str
    config: TextConfig
    generated: str | None  # description of generated weights, None for real ones


class TextEncoder:
    """A loaded text tower and its tokenizer: `encode(texts)` gives unit vectors (N, embed_dim)."""

    def __init__(self, tower, tokenizer, info: TextInfo, device="cpu"):
        self.tower = tower.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.device = device

    @property
    def dim(self) -> int:
        return self.info.config.embed_dim

    def tokenize(self, texts: list[str]):
        """Token ids (N, context_length) as open_clip's tokenizer makes them."""
        return self.tokenizer(list(texts))

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised text embeddings, float32 (N, embed_dim): open_clip's
        `encode_text(tokens, normalize=True)`."""
        import torch

        tokens = self.tokenize(texts).to(self.device)
        with torch.inference_mode():
            features = self.tower(tokens)  # (N, embed_dim)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy()
