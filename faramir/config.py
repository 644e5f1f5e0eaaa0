"""Model dimensions and preprocessing constants, upstream's by default.

A tiny variant shrinks only the experts (trunk, ARNIQA, aesthetic MLP) so tests run in
milliseconds; the classifier head keeps upstream's shape because its labels are fixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

OUTPUT_NAMES: tuple[str, ...] = (
    # accept-biased (indices 0-8)
    "3d_realism", "3d_human", "3d_scene", "3d_environment", "3d_untex", "3d_untex_human",
    "2d_fantasy", "2d_human", "2d_anime",
    # reject-biased (indices 9-29)
    "2d_sketch", "2d_bad", "2d_cute", "3d_model_bad", "3d_model_simple", "3d_scene_bad",
    "3d_untex_bad", "3d_multi", "3d_untex_multi", "2d_multi", "multi_img", "3d_cute",
    "3d_no_fur", "3d_miniature", "3d_rig", "3d_wireframe", "text", "real_human", "technology",
    "ui", "degraded",
    # the decision
    "accept",
)
N_ACCEPT = 9  # accept-biased class heads
N_REJECT = 21  # reject-biased class heads
N_CLASSES = N_ACCEPT + N_REJECT  # gated class heads (30)
N_FREE = 2  # ungated head units that go to the decision beside the 30 gated logits
DEFAULT_THRESHOLD = 0.5  # upstream's: accepted iff confidence > 0.5, unless a query names another
LABELS: tuple[str, ...] = OUTPUT_NAMES[:N_CLASSES]
ACCEPT_LABELS: frozenset[str] = frozenset(OUTPUT_NAMES[:N_ACCEPT])

# Bump when anything in preprocessing changes numerically; it is part of the cache fingerprint.
PREPROCESS_VERSION = 1

# How images become the experts' inputs: "faithful" is upstream's loader bit for bit (the default);
# "fast" decodes large images smaller (faramir.fast_decode). Their vectors are never mixed in a cache.
DECODE_MODES = ("faithful", "fast")
FAST_DECODE_VERSION = 1  # bump when the fast decode changes numerically


def decoded_fingerprint(experts_fingerprint: str, decode: str) -> str:
    """The fingerprint of vectors made by experts of `experts_fingerprint` from inputs decoded by
    `decode`: the experts' own for the faithful decode, another one for the fast decode, so a cache
    never holds vectors of both."""
    if decode == "faithful":
        return experts_fingerprint
    assert decode in DECODE_MODES, f"decode must be one of {DECODE_MODES}, not {decode!r}"
    text = json.dumps({"experts": experts_fingerprint, "decode": decode, "version": FAST_DECODE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()

# Upstream's finetune recipe: only these modules of the gated head (`head.head`) ever train.
TRAINED_MODULES: tuple[str, ...] = ("linear_3", "activation_2", "linear_4")
TRAINED_PREFIXES: tuple[str, ...] = tuple(f"head.{m}." for m in TRAINED_MODULES)  # checkpoint keys

PRECISIONS = ("fp32", "bf16")  # stage one's compute precisions: fp32 is the reference

TRUNK_MODEL = "vit_so400m_patch14_siglip_384"  # timm architecture of the SigLIP trunk
ARNIQA_MODEL = "resnet50"  # timm architecture of the ARNIQA encoder


@dataclass(frozen=True)
class FaramirConfig:
    backbone_res: int = 384  # side of the square trunk input
    quality_res: int = 512  # side of the square ARNIQA input (a centre crop, never resized)
    trunk_kwargs: dict = field(default_factory=dict)  # timm overrides for the trunk (tiny variant)
    backbone_dim: int = 1152  # trunk width = pooled embedding size
    aesthetic_hidden: tuple[int, ...] = (1024, 128, 64)  # aesthetic v2.5 MLP hidden sizes
    aesthetic_dim: int = 16  # aesthetic features fed to the head
    arniqa_kwargs: dict = field(default_factory=dict)  # timm overrides for the ResNet (tiny)
    arniqa_dim: int = 2048  # ResNet pooled feature size = projector hidden size
    quality_dim: int = 128  # ARNIQA projector output
    hidden_dim: int = 64  # head: linear_1 output
    decision_dim: int = 8  # head: linear_3 output
    n_free: int = N_FREE  # head: ungated units passed to the decision
    variant: str = "full"  # "full" (upstream) or "tiny" (tests)

    @property
    def head_in_dim(self) -> int:
        return self.backbone_dim + self.aesthetic_dim + self.quality_dim

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FaramirConfig:
        data = json.loads(text)
        data["aesthetic_hidden"] = tuple(data["aesthetic_hidden"])
        return cls(**data)


FULL = FaramirConfig()

TINY = FaramirConfig(
    trunk_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0},
    backbone_dim=32,
    aesthetic_hidden=(24, 16, 16),
    arniqa_kwargs={"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8},
    arniqa_dim=256,  # Bottleneck expansion 4 × 64
    variant="tiny",
)

VARIANTS = {"full": FULL, "tiny": TINY}
