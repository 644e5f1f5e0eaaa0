"""Generated weights: the four files in their real formats, filled with seeded random values.

For tests, benchmarks and offline trials only (and, optionally, the text tower's entry with a
small generated tokenizer). Scores from them mean nothing, and every command that loads them says
so. The SigLIP file's metadata records the seed and config, so a generated
directory is recognised wherever it goes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from faramir.checkpoints import save_state_dict
from faramir.config import VARIANTS, FaramirConfig
from faramir.errors import WeightsError
from faramir.files import atomic_path
from faramir.weights import (
    AESTHETIC_FILE,
    ARNIQA_FILE,
    FARAMIR_FILE,
    META_CONFIG,
    META_GENERATED,
    SIGLIP_FILE,
    WEIGHT_FILES,
)


def _fill(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """A plausible value for one tensor: unit norms, zero biases, small fan-in-scaled weights."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros((), dtype=torch.int64)
    if leaf == "running_var" or leaf == "stddev":
        return 0.5 + torch.rand(shape, generator=gen)
    if leaf in ("running_mean", "mean"):
        return 0.1 * torch.randn(shape, generator=gen)
    if leaf == "m2":
        return torch.rand(shape, generator=gen) + 1.0
    if leaf in ("alpha", "gamma_m", "gamma_p"):
        return torch.randn(shape, generator=gen) * (1.0 if leaf == "alpha" else 0.3)
    if leaf == "bias":
        return 0.02 * torch.randn(shape, generator=gen)
    if len(shape) <= 1 and leaf == "weight":  # LayerNorm / BatchNorm scale, ChannelNorm count
        return 1.0 + 0.05 * torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) / math.sqrt(max(fan_in, 1))


def random_state(module: torch.nn.Module, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        prefix + k: _fill(k, v.shape, gen).to(v.dtype if not v.is_floating_point() else torch.float32)
        for k, v in module.state_dict().items()
    }


def generate(dest: str | os.PathLike, variant: str = "tiny", seed: int = 0, text: bool = True, *,
             force: bool = False) -> Path:
    """Write the four weight files for `variant` ("tiny" or "full") into `dest`, and with `text`
    the text tower's entry (`generate_text`; needs the text extra).

    A directory already holding any of them is refused unless `force`: it may be a user's real
    weights (`~/.cache/faramir/weights`), which random values would silently replace."""
    from faramir.experts import Experts
    from faramir.head import FaramirHead
    from faramir.text_weights import TEXT_MODEL_FILE

    root = Path(dest)
    if not force:
        _refuse_existing(root, [name for name in (*WEIGHT_FILES, *((TEXT_MODEL_FILE,) if text else ()))
                                if (root / name).exists()])
    cfg: FaramirConfig = VARIANTS[variant]
    with torch.device("meta"):
        experts = Experts(cfg)
        head = FaramirHead(cfg)
    (root / SIGLIP_FILE).parent.mkdir(parents=True, exist_ok=True)
    try:
        _write(root, experts, head, cfg, variant, seed, overwrite=force)
        if text:
            generate_text(root, variant, seed, overwrite=force)
    except FileExistsError as ex:  # a file appeared meanwhile: still never replaced
        _refuse_existing(root, [os.path.relpath(ex.filename2 or ex.filename, root)])
    return root


def _refuse_existing(root: Path, present: list[str]) -> None:
    if present:
        raise WeightsError(f"{root} already holds weight files ({', '.join(present)}); choose another "
                           f"directory, or pass --force to overwrite them")


def _write(root: Path, experts, head, cfg: FaramirConfig, variant: str, seed: int, overwrite: bool) -> None:
    """The four files, each written atomically (replacing an existing one only with `overwrite`)."""
    trunk = random_state(experts.trunk, seed)
    meta = {
        "format": "pt",
        META_CONFIG: cfg.to_json(),
        META_GENERATED: f"GENERATED {variant} weights, seed {seed}: random values, scores mean nothing",
    }
    with atomic_path(root / SIGLIP_FILE, overwrite=overwrite) as tmp:
        save_file(trunk, str(tmp), metadata=meta)
    del trunk
    for name, state in (
        (ARNIQA_FILE, random_state(experts.quality, seed + 1)),
        (AESTHETIC_FILE, random_state(experts.aesthetic, seed + 2)),
        (FARAMIR_FILE, {
            **random_state(experts.faramir_pool, seed + 3, "attn_pool."),
            **random_state(head, seed + 4),
        }),
    ):
        save_state_dict(state, root / name, overwrite=overwrite)


# -- the text tower's entry (faramir.text_weights) -----------------------------------------------

# The generated tokenizer's words: enough for tests and benchmark sentences; anything else is
# spelled out letter by letter (or <unk> for what it lacks). Real SigLIP has 32,000 pieces.
WORDS = (
    "a an the of in on over under with without and or to from by at near above below behind "
    "image photo picture painting drawing sketch render illustration artwork art scene portrait "
    "landscape close up view of dragon dragons cat dog horse bird fish wolf knight wizard elf castle "
    "tower city village forest tree trees mountain mountains river lake sea ocean water sky cloud "
    "clouds sun moon star stars night day sunset fire ice snow rain storm light dark shadow red blue "
    "green yellow black white gold silver purple orange pink grey brown colorful bright dim 2d 3d "
    "anime cartoon realistic fantasy sci fi robot spaceship car house room interior street person "
    "man woman girl boy child people face hands eyes hair armor sword shield magic flying standing "
    "sitting running sleeping small large big tiny old young beautiful ugly cute scary happy sad "
    "wireframe model render untextured text ui screenshot blurry noisy sharp high quality low"
).split()


def generated_vocab() -> list[tuple[str, float]]:
    """(piece, log-probability) of the generated Unigram tokenizer: T5's special ids first
    (0 <pad>, 1 </s>, 2 <unk>), then words, then single characters."""
    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += [f"▁{w}" for w in dict.fromkeys(WORDS)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces += [f"▁{c}" for c in chars if f"▁{c}" not in pieces] + list(chars)
    return [(p, 0.0 if i < 3 else -2.0 - 0.01 * i - (4.0 if len(p.lstrip("▁")) == 1 else 0.0))
            for i, p in enumerate(pieces)]


def write_generated_tokenizer(dest: str | os.PathLike, context_length: int, vocab_size: int) -> Path:
    """A small T5-style sentencepiece (Unigram) tokenizer saved as transformers saves SigLIP's:
    tokenizer.json and tokenizer_config.json, padding with </s> (id 1) as open_clip's SigLIP
    tokenizer does, `</s>` appended to every text."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = generated_vocab()
    assert len(vocab) <= vocab_size, "the generated tokenizer has more pieces than the tower has rows"
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    fast = T5TokenizerFast(tokenizer_object=tok, extra_ids=0, eos_token="</s>", unk_token="<unk>",
                           pad_token="</s>", model_max_length=context_length)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(dest))
    return dest


def generate_text(dest: str | os.PathLike, variant: str = "tiny", seed: int = 0, *, overwrite: bool = True) -> Path:
    """Write the text entry for `variant` ("tiny" or "full") into the weights directory `dest`:
    a seeded random tower in open_clip's key format and the generated tokenizer (the tower
    replacing an existing one only with `overwrite`)."""
    from faramir.text import TEXT_VARIANTS, build_text_tower
    from faramir.text_weights import META_TEXT_CONFIG, PREFIX, TEXT_DIR, TEXT_MODEL_FILE

    cfg = TEXT_VARIANTS[variant]
    with torch.device("meta"):
        tower = build_text_tower(cfg)
    root = Path(dest)
    (root / TEXT_DIR).mkdir(parents=True, exist_ok=True)
    state = random_state(tower, seed + 5, PREFIX)
    meta = {
        "format": "pt",
        META_TEXT_CONFIG: cfg.to_json(),
        META_GENERATED: f"GENERATED {variant} text tower, seed {seed}: random values, search results mean nothing",
    }
    with atomic_path(root / TEXT_MODEL_FILE, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata=meta)
    write_generated_tokenizer(root / TEXT_DIR, cfg.context_length, cfg.vocab_size)
    return root
