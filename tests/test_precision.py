"""bf16 experts (weights cast once, float32 out), channels_last ARNIQA, and the bf16 advice."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from faramir import load_image
from faramir.cli.app import app
from faramir.devices import Bf16, bf16_from_cpu_flags, precision_advice
from faramir.errors import InputError
from faramir.store.ingestion import ingest_all
from faramir.weights import load_model

runner = CliRunner()
CPU = torch.device("cpu")

# /proc/cpuinfo flags of three real machines, cut to what matters
SAPPHIRE_RAPIDS = "fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"
SPR_VM_WITHOUT_AMX = "fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16"
EPYC_ZEN2 = "fpu sse2 avx avx2 fma sha_ni"


def test_cpu_flags_classify_bf16():
    assert bf16_from_cpu_flags(SAPPHIRE_RAPIDS.split()) is Bf16.FAST
    assert bf16_from_cpu_flags(SPR_VM_WITHOUT_AMX.split()) is Bf16.NATIVE
    assert bf16_from_cpu_flags(EPYC_ZEN2.split()) is Bf16.EMULATED
    assert bf16_from_cpu_flags("fp asimd evtstrm aes sve bf16".split()) is Bf16.UNKNOWN  # aarch64
    assert bf16_from_cpu_flags([]) is Bf16.UNKNOWN


@pytest.mark.parametrize("flags,precision,expected", [
    (SAPPHIRE_RAPIDS, "fp32", "precision bf16 would be faster"),
    (SAPPHIRE_RAPIDS, "bf16", None),
    (SPR_VM_WITHOUT_AMX, "fp32", None),
    (SPR_VM_WITHOUT_AMX, "bf16", "without AMX it is no faster than fp32"),
    (EPYC_ZEN2, "fp32", None),
    (EPYC_ZEN2, "bf16", "is emulated here"),
    ("fp asimd bf16", "fp32", None),
    ("fp asimd bf16", "bf16", None),
])
def test_advice_is_one_line_and_only_where_it_helps(flags, precision, expected):
    support = (bf16_from_cpu_flags(flags.split()), "CPU: test flags")
    advice = precision_advice(CPU, precision, support)
    if expected is None:
        assert advice is None
    else:
        assert expected in advice and "\n" not in advice


def test_advice_for_gpus():
    cuda = torch.device("cuda")
    assert "precision bf16 would be faster" in precision_advice(cuda, "fp32", (Bf16.FAST, "H100: bf16 tensor cores"))
    assert precision_advice(cuda, "bf16", (Bf16.FAST, "H100: bf16 tensor cores")) is None
    assert "emulated" in precision_advice(cuda, "bf16", (Bf16.EMULATED, "T4: no native bf16"))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    from tests.conftest import write_images

    paths = write_images(tmp_path_factory.mktemp("imgs"), 6, size=(300, 220), fmt="jpg")
    arrays = [load_image(p) for p in paths]
    return torch.from_numpy(np.stack([a[0] for a in arrays])), torch.from_numpy(np.stack([a[1] for a in arrays]))


def test_bf16_weights_are_cast_once_at_load(tiny_weights):
    model = load_model(tiny_weights, precision="bf16")
    ex = model.experts
    assert model.precision == "bf16"
    for module in (ex.trunk, ex.faramir_pool, ex.quality.model):  # the stock pool is in the trunk
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    for module in (ex.aesthetic, ex.quality.projector, model.head):  # small MLPs on pooled vectors
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    convs = [m.weight for m in ex.quality.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    with pytest.raises(AssertionError, match="load the weights again"):
        ex.prepare("fp32")  # bf16 cannot go back to the reference


def test_bf16_outputs_float32_and_agree_with_fp32(tiny_weights, batch):
    xb, xq = batch
    fp32 = load_model(tiny_weights, precision="fp32")
    bf16 = load_model(tiny_weights, precision="bf16")
    f32, f16 = fp32.features(xb, xq), bf16.features(xb, xq, "bf16")
    for name in ("faramir_embedding", "siglip_embedding", "aesthetic_features", "aesthetic_score",
                 "quality_features"):
        a, b = getattr(f32, name), getattr(f16, name)
        assert b.dtype == torch.float32 and b.shape == a.shape, name
        # bf16 keeps 8 significant bits: a few parts in a hundred after a trunk and a ResNet
        assert ((a - b).norm() / a.norm()).item() < 0.05, name
    out32, out16 = fp32.score(f32), bf16.score(f16)
    assert out16.dtype == torch.float32 and torch.isfinite(out16).all()
    d32, d16 = out32[:, 30], out16[:, 30]
    assert ((d16 - d32).abs() <= 0.1 + 0.05 * d32.abs()).all(), (d32, d16)
    clear = d32.abs() > 0.1  # decisions away from the boundary do not flip
    assert ((d16 > 0) == (d32 > 0))[clear].all()


def test_features_refuse_another_precision(tiny_weights, batch):
    model = load_model(tiny_weights)
    with pytest.raises(ValueError, match="loaded for fp32; load it with precision='bf16'"):
        model.features(*batch, "bf16")


def test_channels_last_resnet_equals_nchw_in_fp32(tiny_weights, batch):
    model = load_model(tiny_weights)  # prepare("fp32") lays the ResNet out channels_last
    resnet = model.experts.quality.model
    nchw = copy.deepcopy(resnet).to(memory_format=torch.contiguous_format)
    assert next(nchw.parameters()).is_contiguous() and not next(resnet.parameters()).is_contiguous()
    x = (batch[1].float() - 0.45) / 0.22
    with torch.inference_mode():
        want = nchw(x.contiguous())
        got = resnet(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # float32 rounding, not a bf16-size gap


def test_assess_and_ingest_in_bf16(tiny_weights, make_images, tmp_path):
    images = tmp_path / "imgs"
    make_images(images, 4, size=(120, 90))
    rows = {}
    for precision in ("fp32", "bf16"):
        result = runner.invoke(app, ["assess", str(images), "--format", "jsonl", "--weights-dir",
                                     str(tiny_weights), "--device", "cpu", "--workers", "0",
                                     "--precision", precision])
        assert result.exit_code == 0, result.output
        rows[precision] = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows["bf16"]) == 4
    for a, b in zip(rows["fp32"], rows["bf16"]):
        assert a["path"] == b["path"]
        assert abs(a["logits"][30] - b["logits"][30]) <= 0.1 + 0.05 * abs(a["logits"][30])

    summary = ingest_all([images], db=tmp_path / "db", weights_dir=tiny_weights, device="cpu",
                         precision="bf16", workers=0)
    assert summary.new == 4
    from faramir.store.cache import Cache

    assert set(Cache.open(tmp_path / "db").images().to_arrow()["precision"].to_pylist()) == {"bf16"}


def test_ingest_refuses_a_model_of_another_precision(tiny_weights, make_images, tmp_path):
    make_images(tmp_path / "imgs", 1)
    model = load_model(tiny_weights)
    with pytest.raises(InputError, match="precision 'bf16': the model given was loaded for fp32"):
        ingest_all([tmp_path / "imgs"], db=tmp_path / "db", model=model, precision="bf16", workers=0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity calls on this platform")
def test_decode_workers_follow_the_cpu_affinity():
    """Under taskset or a container's cpuset the machine's core count overstates what this process
    may use: decode workers are sized by the affinity (one core here: one worker, not cpu_count-1)."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from faramir.decoding import default_workers, usable_cores; print(usable_cores(), default_workers())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["1", "1"]
