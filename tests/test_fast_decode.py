"""Decoding: batches written in place equal upstream's loader bit for bit; the opt-in fast decode
keeps the quality input exact, its trunk input close, and its vectors apart in the cache."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from faramir.cli.app import app
from faramir.config import decoded_fingerprint
from faramir.decoding import iter_batches
from faramir.errors import ImageLoadError, InputError
from faramir.fast_decode import _jpeg_stripe, preprocess_fast
from faramir.preprocess import decode, load_image
from faramir.sources import Source
from faramir.store.cache import Cache
from faramir.store.errors import ExpertsMismatch
from faramir.store.ingestion import ingest_all
from tests.conftest import write_images

runner = CliRunner()


def artwork(w: int, h: int, seed: int = 0, alpha: bool = False) -> Image.Image:
    """Smooth colour fields with edges and noise: something a resampler can get wrong."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = [127 + 100 * np.sin(x / rng.uniform(20, 90) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(20, 90))
                for _ in range(3)]
    pixels = np.stack(channels, -1) + rng.normal(0, 8, (h, w, 3))
    pixels[h // 3:h // 2, w // 4:w // 2] = rng.integers(0, 256, 3)  # a hard-edged block
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if alpha:
        image.putalpha(Image.fromarray(np.clip(x * 255 / w, 0, 255).astype(np.uint8), "L"))
    return image


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def fast(data: bytes, name: str = "x"):
    return decode(data, name, preprocessor=preprocess_fast)




@pytest.mark.parametrize("case", [
    ("JPEG", {"quality": 90}, False), ("JPEG", {"quality": 85, "progressive": True}, False),
    ("JPEG", {"quality": 95, "subsampling": 0}, False), ("PNG", {}, False), ("PNG", {}, True), ("WEBP", {}, False),
], ids=["jpeg", "progressive-jpeg", "jpeg-444", "png", "png-rgba", "webp"])
def test_fast_decode_keeps_the_quality_input_exact_and_the_trunk_input_close(case):
    fmt, options, alpha = case
    data = encoded(artwork(2400, 1500, seed=len(fmt), alpha=alpha), fmt, **options)
    xb, xq, facts = decode(data, "x")
    fxb, fxq, ffacts = fast(data)
    assert ffacts == facts
    assert np.array_equal(fxq.view(np.uint16), xq.view(np.uint16))  # upstream's quality input, bit for bit
    assert fxb.shape == xb.shape and fxb.dtype == np.float16
    assert not np.array_equal(fxb, xb)  # the trunk input was really computed another way
    difference = np.abs(fxb.astype(np.float32) - xb.astype(np.float32))
    assert difference.mean() < 0.01 and difference.max() < 0.25


def test_fast_decode_of_an_image_too_small_to_reduce_is_upstreams_bit_for_bit(tmp_path):
    for fmt in ("png", "jpg"):
        path = write_images(tmp_path, 1, size=(700, 500), fmt=fmt)[0]
        data = path.read_bytes()
        for a, b in zip(fast(data)[:2], load_image(path)):
            assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_the_top_rows_of_a_jpeg_decode_alone_as_in_the_whole_image():
    for options in ({"quality": 80}, {"quality": 80, "progressive": True}, {"quality": 90, "subsampling": 0}):
        data = encoded(artwork(1000, 1400, seed=2), "JPEG", **options)
        stripe = _jpeg_stripe(data, 1400, 528)
        assert stripe is not None and stripe.size == (1000, 528)
        whole = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(np.asarray(stripe.convert("RGB"))[:512], whole[:512])
    assert _jpeg_stripe(b"\xff\xd8garbage", 1400, 528) is None


def test_fast_decode_applies_a_colour_profile_and_fails_as_upstream_on_a_broken_file():
    image = artwork(2400, 1500, seed=4)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encoded(image, "JPEG", quality=90, icc_profile=srgb)
    xb, xq, _ = decode(data, "x")
    fxb, fxq, _ = fast(data)
    assert np.array_equal(fxq, xq) and np.abs(fxb.astype(np.float32) - xb.astype(np.float32)).mean() < 0.01

    truncated = encoded(image, "JPEG", quality=90)[:40_000]
    with pytest.raises(ImageLoadError) as faithful_error:
        decode(truncated, "t.jpg")
    with pytest.raises(ImageLoadError) as fast_error:
        fast(truncated, "t.jpg")
    assert str(fast_error.value).startswith("t.jpg: image file is truncated")
    assert str(faithful_error.value).startswith("t.jpg: image file is truncated")


def test_batches_written_in_place_equal_upstreams_loader(tmp_path):
    """In worker processes (shared memory) and in this one; a bad file in the middle of a batch
    leaves its row to the next file."""
    paths = write_images(tmp_path / "imgs", 5, size=(600, 400), fmt="jpg")
    paths += write_images(tmp_path / "imgs", 3, size=(90, 700), seed=1, prefix="tall")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    paths.insert(2, tmp_path / "imgs" / "broken.png")
    sources = [Source(str(p), str(p)) for p in paths]
    for workers in (0, 2):
        seen = []
        for batch in iter_batches(sources, 4, workers):
            assert batch.xb is None or batch.xb.shape[0] == len(batch.items)
            for row, it in enumerate(batch.items):
                xb, xq = load_image(paths[it.index])
                assert np.array_equal(batch.xb[row].numpy(), xb) and np.array_equal(batch.xq[row].numpy(), xq)
                seen.append(it.index)
            seen += [it.index for it in batch.others]
            assert [it.error is not None for it in batch.others] == [it.index == 2 for it in batch.others]
        assert sorted(seen) == list(range(len(paths)))
    with pytest.raises(InputError, match="decode 'quick'"):
        next(iter_batches(sources, 4, 0, decode_mode="quick"))


def test_a_cache_holds_the_vectors_of_one_decode(tmp_path, tiny_model):
    big = tmp_path / "big"
    big.mkdir()
    artwork(2000, 1200, seed=5).save(big / "wallpaper.jpg", quality=90)
    write_images(big, 2)
    db = tmp_path / "fast.lancedb"
    s = ingest_all([big], db=db, model=tiny_model, workers=0, decode="fast")
    assert s.new == 3
    fingerprint = decoded_fingerprint(tiny_model.info.experts_fingerprint, "fast")
    assert fingerprint != tiny_model.info.experts_fingerprint
    cache = Cache.open(db)
    assert cache.get_meta("experts_fingerprint") == fingerprint
    assert set(cache.images().to_arrow().column("experts_fingerprint").to_pylist()) == {fingerprint}

    more = write_images(tmp_path / "more", 1, seed=3)
    with pytest.raises(ExpertsMismatch, match="was built with --decode fast, whose vectors cannot be mixed"):
        ingest_all(more, db=db, model=tiny_model, workers=0)
    assert ingest_all(more, db=db, model=tiny_model, workers=0, decode="fast").new == 1

    faithful_db = tmp_path / "faithful.lancedb"
    ingest_all([big], db=faithful_db, model=tiny_model, workers=0)
    result = runner.invoke(app, ["ingest", str(more[0]), "--db", str(faithful_db), "--decode", "fast",
                                 "--weights-dir", str(tiny_model.info.weights_dir), "--device", "cpu",
                                 "--workers", "0"])
    assert result.exit_code != 0
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: ") and "was built with --decode faithful" in message


def test_assess_fast_gives_upstreams_results_on_small_images(tmp_path, tiny_weights):
    write_images(tmp_path / "imgs", 3)
    common = ["assess", str(tmp_path / "imgs"), "--weights-dir", str(tiny_weights), "--device", "cpu",
              "--workers", "0"]
    faithful = runner.invoke(app, common)
    quick = runner.invoke(app, [*common, "--decode", "fast"])
    assert faithful.exit_code == quick.exit_code == 0
    assert quick.stdout == faithful.stdout and len(quick.stdout.splitlines()) == 3
