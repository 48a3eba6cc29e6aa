"""The packed runtime of row-mean models (QuantConfig.row_mean) against the fake-quant model it came
from: the same codes, and the row means' rank-1 terms in the epilogues, so the outputs agree up to
float rounding (and codes on rounding ties). On the CPU the fused kernels run them, as every other layer."""
from __future__ import annotations

import pytest
import torch

from compsrt.kernels import cpu_kernels
from compsrt.quant.compress import site_inputs
from compsrt.quant.pack import pack_model, read_packed, save_packed
from compsrt.runtime import PackedAttend, PackedLinear, load_packed
from test_runtime import ROW_MEAN_CONFIGS, count_int_products

# The per-site and whole-model agreement of these configurations is tested with the others in
# tests/runtime/test_runtime.py (ROW_MEAN_CONFIGS).
CONFIGS = ROW_MEAN_CONFIGS


def _pair(make_calibrated, cfg, tmp_path, fp_dtype="fp32"):
    m = make_calibrated(cfg)
    t, h = pack_model(m, fp_dtype)
    save_packed(t, h, tmp_path / "p.safetensors")
    return m, load_packed(tmp_path / "p.safetensors")


def test_the_row_means_matter(make_calibrated, tmp_path):
    """The row-mean terms are large: the same codes and scales without them (a plain 2DQuant
    epilogue) are far off the fake-quant layer, with them float-rounding close."""
    fake, rt = _pair(make_calibrated, CONFIGS[0], tmp_path)
    pm = read_packed(tmp_path / "p.safetensors")
    grid = pm.grids[0]
    (x,) = site_inputs(fake, torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5)))[grid.path]
    w_raw, a_raw = pm.qparams[:grid.splits], pm.qparams[grid.splits:2 * grid.splits]
    in_f = fake.get_submodule(grid.path).weight.shape[1]
    plain = PackedLinear(in_f, grid.n, pm.codes[0], pm.masks[0], None, w_raw, a_raw, pm.fp[f"{grid.path}.bias"],
                         pm.quant.bits, False)
    with torch.no_grad():
        want = fake.get_submodule(grid.path)(x)
        err_with = (rt.get_submodule(grid.path)(x) - want).abs().max()
        err_without = (plain(x - x.mean(-1, keepdim=True)) - want).abs().max()
    assert err_without > 1000 * err_with


def test_row_mean_layers_run_integer_products_on_the_pytorch_path(make_calibrated, tmp_path, monkeypatch):
    """Without the fused CPU kernels (CUDA's path for these layers) every quantized product is
    still an int8 product, and no float linear runs."""
    _, rt = _pair(make_calibrated, CONFIGS[2], tmp_path)
    assert all(mod.row_mean for mod in rt.modules() if isinstance(mod, (PackedLinear, PackedAttend)))
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    calls, want = count_int_products(rt, monkeypatch)

    def never(*a, **k):
        raise AssertionError("a float linear ran a quantized product")

    monkeypatch.setattr(torch.nn.functional, "linear", never)
    with torch.no_grad():
        rt(torch.rand(1, 3, 16, 16))
    assert calls == want


@pytest.mark.skipif(not cpu_kernels.available(), reason=cpu_kernels.unavailable_reason())
@pytest.mark.parametrize("idx", range(len(CONFIGS)))
def test_row_mean_model_runs_the_fused_cpu_kernels(make_calibrated, tmp_path, monkeypatch, idx):
    """Every row-mean site takes the fused CPU kernel, and the whole model agrees with the PyTorch path."""
    _, rt = _pair(make_calibrated, CONFIGS[idx], tmp_path)
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    sites = sum(isinstance(mod, (PackedLinear, PackedAttend)) for mod in rt.modules())
    seen = []
    for name in ("packed_linear_cpu", "window_attention_int_cpu"):
        real = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, _real=real, **k: seen.append(1) or _real(*a, **k))
    with torch.no_grad():
        fused = rt(x)
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
        plain = rt(x)
    assert len(seen) == sites > 0
    assert (fused - plain).abs().max() < 1e-3


def test_fp16_row_means_stay_close(make_calibrated, tmp_path):
    fake, rt = _pair(make_calibrated, CONFIGS[0], tmp_path, "fp16")
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (fake(x).clamp(0, 1) - rt(x).clamp(0, 1)).abs().max() < 0.02


def test_row_mean_module_arguments_are_checked():
    codes = torch.zeros(4, 8, dtype=torch.uint8)
    raw = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="row_mean"):
        PackedLinear(8, 8, codes, None, None, raw, raw, torch.zeros(4), 4, False, row_mean=True)
    with pytest.raises(ValueError, match="row_mean"):
        PackedAttend(torch.zeros(4, 4), 4, False, True, row_mean=True)
