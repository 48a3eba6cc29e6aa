"""compsrt.infer: --tile auto (the memory estimate, the decision, the available memory, OOM
detection), several images at once (--batch), --outscale's resample and --half's precision."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import Nearest  # tests/cli_helpers.py
from compsrt.config import SwinIRConfig
from compsrt.errors import CompsrtError
from compsrt.infer import (BASE_BYTES, GIB, MIN_AUTO_TILE, SWINIR_BYTES_PER_PIXEL, TILE_BYTES, FullPrecision,
                           auto_tile, available_bytes, bytes_per_pixel, estimate_bytes, is_out_of_memory, outscale_size,
                           prepare_half, resample, upscale, upscale_many, upscale_tensor)
from compsrt.io import Image, to_float
from compsrt.model.swinir import SwinIRLight
from compsrt.resize import imresize

BUNDLED = Path(__file__).resolve().parents[1] / "compsrt" / "weights"


def test_estimate_grows_linearly_and_pads_to_the_window():
    one = estimate_bytes(64, 64, 2) - BASE_BYTES
    assert estimate_bytes(128, 128, 2) - BASE_BYTES == 4 * one
    assert estimate_bytes(57, 61, 2) - BASE_BYTES > estimate_bytes(56, 56, 2) - BASE_BYTES
    assert estimate_bytes(64, 64, 4) > estimate_bytes(64, 64, 2)   # the output is larger
    # above what was measured here: a 768^2 FP forward peaked 4.1 GB above its start
    assert estimate_bytes(768, 768, 2) > 4109 * 2 ** 20 * 1.2


def test_small_image_small_budget():
    """The decision on a small image: whole when it fits, tiles when the budget is a byte short."""
    h, w = 150, 200
    need = estimate_bytes(h, w, 2)
    assert auto_tile(h, w, 2, budget_bytes=need) == 0
    tile = auto_tile(h, w, 2, budget_bytes=need - 1)
    assert MIN_AUTO_TILE <= tile < w and tile % 8 == 0
    assert estimate_bytes(tile, tile, 2) <= need - 1 < estimate_bytes(tile + 8, tile + 8, 2)
    # a budget too small for any useful tile still gives the smallest allowed one
    assert auto_tile(h, w, 2, budget_bytes=1) == MIN_AUTO_TILE
    assert auto_tile(h, w, 2, budget_bytes=1, overlap=100) == 216   # 2 x overlap + 16


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_large_image_tiles_stay_under_4gb(scale):
    tile = auto_tile(2000, 3000, scale, budget_bytes=10 * GIB)
    assert tile >= 512
    assert estimate_bytes(tile, tile, scale) <= TILE_BYTES < estimate_bytes(tile + 8, tile + 8, scale)
    assert auto_tile(2000, 3000, scale, budget_bytes=100 * GIB) == 0   # a big machine runs it whole


def test_bytes_per_pixel_follows_the_model():
    light = SwinIRLight(SwinIRConfig(scale=2))
    assert bytes_per_pixel(light) == SWINIR_BYTES_PER_PIXEL
    tiny = SwinIRLight(SwinIRConfig(scale=2, embed_dim=20, depths=(2,), num_heads=(2,)))
    assert bytes_per_pixel(tiny) == SWINIR_BYTES_PER_PIXEL          # never below the measured model
    wide = SwinIRLight(SwinIRConfig(scale=2, embed_dim=180, depths=(2,), num_heads=(6,)))
    assert bytes_per_pixel(wide) == 3 * SWINIR_BYTES_PER_PIXEL
    assert bytes_per_pixel(torch.nn.Identity()) == SWINIR_BYTES_PER_PIXEL


def test_fake_quant_model_counts_more(make_calibrated):
    from compsrt.config import QuantConfig

    assert bytes_per_pixel(make_calibrated(QuantConfig(bits=4))) == 1.5 * SWINIR_BYTES_PER_PIXEL


def test_available_bytes_is_a_plausible_number():
    avail = available_bytes("cpu")
    assert avail is not None and 0 < avail
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert avail <= total


def test_available_bytes_without_proc(monkeypatch):
    import builtins

    real_open = builtins.open

    def no_proc(path, *a, **k):
        if str(path).startswith(("/proc/", "/sys/")):
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    avail = available_bytes("cpu")   # os.sysconf's available pages
    assert avail is not None and avail > 0


@pytest.mark.parametrize("error, oom", [
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 34359738368 bytes."), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes."), True),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (MemoryError(), True),
    (RuntimeError("The size of tensor a (3) must match the size of tensor b (4)"), False),
    (ValueError("out of memory"), False),
])
def test_is_out_of_memory(error, oom):
    assert is_out_of_memory(error) == oom


# -- several images at once (--batch), --outscale's resample, --half ------------------------------


def _images(make_rgb, h: int, w: int) -> list[Image]:
    """An RGB, a gray and an RGBA image of one size."""
    gray = to_float(make_rgb(h, w, seed=2)[..., 0])
    return [Image(rgb=to_float(make_rgb(h, w, seed=1))), Image(rgb=gray.expand(3, -1, -1).contiguous(), gray=True),
            Image(rgb=to_float(make_rgb(h, w, seed=3)), alpha=to_float(make_rgb(h, w, seed=4)[..., 0]))]


class _CountingNearest(Nearest):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return super().forward(x)


@pytest.mark.parametrize("tile", [0, 16])
def test_stacked_batch_is_each_image_alone(make_rgb, tile):
    """stack=True runs (3, 3, H, W) forwards; with a pointwise model it must give, image by
    image and in order, exactly what upscale gives each alone (gray and alpha kept)."""
    imgs = _images(make_rgb, 20, 26)
    model = _CountingNearest()
    batch = upscale_many(model, imgs, 2, tile=tile, overlap=4, stack=True)
    assert set(model.batches) == {3}
    model.batches.clear()
    upscale_many(model, imgs, 2, tile=tile, overlap=4, stack=False)
    assert set(model.batches) == {1}
    for img, out in zip(imgs, batch):
        alone = upscale(Nearest(), img, 2, tile=tile, overlap=4)
        assert torch.equal(out.rgb, alone.rgb) and out.gray == img.gray
        assert (out.alpha is None) == (img.alpha is None)
        if out.alpha is not None:
            assert torch.equal(out.alpha, alone.alpha)


def test_stacked_batch_swinir_matches_one_by_one(make_rgb, model_x2):
    """SwinIR-light on a stack: each output is its own image's, up to the float order of a batched
    convolution (not bit-identical: the reason the CPU runs --batch one image at a time)."""
    imgs = _images(make_rgb, 16, 24)
    stacked = upscale_many(model_x2, imgs, 2, stack=True)
    alone = upscale_many(model_x2, imgs, 2, stack=False)
    for i, (s, a) in enumerate(zip(stacked, alone)):
        assert (s.rgb - a.rgb).abs().max() < 1e-4
        others = [(s.rgb - b.rgb).abs().max() for j, b in enumerate(alone) if j != i]
        assert min(others) > 0.05                     # and not another image's output
    assert all(torch.equal(a.rgb, upscale(model_x2, img, 2).rgb) for a, img in zip(alone, imgs))


def test_upscale_many_refuses_mixed_sizes(make_rgb):
    imgs = [Image(rgb=to_float(make_rgb(8, 8))), Image(rgb=to_float(make_rgb(8, 9)))]
    with pytest.raises(ValueError, match="one size"):
        upscale_many(Nearest(), imgs, 2)


def test_outscale_size_rounds_half_up():
    assert outscale_size(12, 17, 1.5) == (18, 26)          # 25.5 -> 26
    assert outscale_size(12, 17, 3) == (36, 51)
    assert outscale_size(3, 5, 0.1) == (1, 1)              # never empty


@pytest.mark.parametrize("size", [(45, 61), (13, 17)])   # up x3.8 (after the model), down x0.5
def test_resample_is_keys_bicubic_antialiased(make_rgb, size):
    """resample's kernel is MATLAB imresize's (Keys a = -0.5, widened when shrinking): inside the
    image (borders differ: MATLAB mirrors, torch clamps) the two agree to float precision."""
    x = to_float(make_rgb(26, 34, seed=7))
    got = resample(Image(rgb=x), size).rgb
    want = imresize(x, size=size).clamp(0, 1)
    m = 6
    assert got.shape == want.shape == (3, *size)
    assert (got[:, m:-m, m:-m] - want[:, m:-m, m:-m]).abs().max() < 1e-4
    plain = torch.nn.functional.interpolate(x[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)
    assert (plain[:, m:-m, m:-m] - want[:, m:-m, m:-m]).abs().max() > 1e-3   # torch's default a = -0.75 is not


def test_resample_keeps_alpha_and_flags(make_rgb):
    img = Image(rgb=to_float(make_rgb(8, 10)), alpha=to_float(make_rgb(8, 10, seed=1)[..., 0]), bits=16, icc=b"x")
    out = resample(img, (12, 15))
    assert out.alpha.shape == (1, 12, 15) and out.bits == 16 and out.icc == b"x" and not out.gray


class _Spy(torch.nn.Module):
    """Records the dtype it is given and whether autocast was on."""

    def forward(self, x):
        self.seen = (x.dtype, torch.is_autocast_enabled("cpu"))
        return x @ torch.eye(x.shape[-1])


def test_full_precision_turns_autocast_off_inside():
    spy = _Spy()
    x = torch.rand(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = FullPrecision(spy)(x.bfloat16())
        assert spy.seen == (torch.float32, False) and y.dtype == torch.float32
        spy(x)
        assert spy.seen[1] and spy(x).dtype == torch.bfloat16   # unwrapped: autocast applies


def test_prepare_half_wraps_only_the_integer_sites(make_calibrated, tmp_path):
    from compsrt.config import QuantConfig
    from compsrt.quant.pack import pack_model, save_packed
    from compsrt.runtime import load_packed
    from compsrt.runtime.modules import PackedAttend, PackedLinear

    m = make_calibrated(QuantConfig(bits=4))
    with pytest.raises(CompsrtError, match="calibrated .* fp32 only"):
        prepare_half(m)
    save_packed(*pack_model(m), tmp_path / "p.safetensors")
    packed = load_packed(tmp_path / "p.safetensors")
    n_sites = sum(isinstance(mod, (PackedLinear, PackedAttend)) for mod in packed.modules())
    x = torch.rand(1, 3, 16, 16)
    want = upscale_tensor(packed, x, 2)
    assert prepare_half(packed) is packed
    wrapped = [mod for mod in packed.modules() if isinstance(mod, FullPrecision)]
    assert n_sites > 0 and len(wrapped) == n_sites
    assert all(isinstance(w.inner, (PackedLinear, PackedAttend)) for w in wrapped)
    prepare_half(packed)                                              # idempotent
    assert sum(isinstance(mod, FullPrecision) for mod in packed.modules()) == n_sites
    assert torch.equal(upscale_tensor(packed, x, 2), want)          # without half: the same integers
    got = upscale_tensor(packed, x, 2, half=torch.bfloat16)
    assert got.dtype == torch.float32 and got.shape == want.shape


@pytest.mark.skipif(not (BUNDLED / "swinir_light_x2.safetensors").is_file(), reason="bundled FP x2 weights absent")
def test_half_autocasts_the_fp_model(make_rgb):
    """On the CPU autocast takes bf16 (the CLI's --half is fp16 on CUDA): the output changes a
    little, stays fp32 and close to the fp32 one (trained weights)."""
    from compsrt.model.weights import load_swinir

    model = load_swinir(BUNDLED / "swinir_light_x2.safetensors", 2)
    assert prepare_half(model) is model and not any(isinstance(m, FullPrecision) for m in model.modules())
    x = to_float(make_rgb(24, 24, seed=5))[None]
    full, half = upscale_tensor(model, x, 2), upscale_tensor(model, x, 2, half=torch.bfloat16)
    mse = float(((full - half) ** 2).mean())
    db = 10 * np.log10(1 / mse)
    print(f"bf16 autocast vs fp32, bundled x2 FP, 24x24: {db:.1f} dB")
    assert half.dtype == torch.float32 and 0 < mse and db > 35
