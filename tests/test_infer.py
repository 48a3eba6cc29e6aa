"""compsrt.infer's --tile auto: the memory estimate, the decision, the available memory, OOM detection."""
from __future__ import annotations

import pytest
import torch

from compsrt.config import SwinIRConfig
from compsrt.infer import (BASE_BYTES, GIB, MIN_AUTO_TILE, SWINIR_BYTES_PER_PIXEL, TILE_BYTES, auto_tile,
                           available_bytes, bytes_per_pixel, estimate_bytes, is_out_of_memory)
from compsrt.model.swinir import SwinIRLight


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
