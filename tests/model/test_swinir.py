"""SwinIR-light: golden vectors of the official model, any input size and batch, shift-mask cache."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import compsrt.model.swinir as swinir_mod
from compsrt.config import SwinIRConfig
from compsrt.model.swinir import SwinIRLight, relative_position_index, shift_mask, window_partition, window_reverse
from compsrt.model.weights import load_swinir

GOLDEN_ATOL = 1e-4  # max abs error, float32, against the official definition
TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(2, 3))


def _tiny(scale: int = 2) -> SwinIRLight:
    torch.manual_seed(0)
    return SwinIRLight(SwinIRConfig(scale=scale, **TINY)).eval()


def _check_pairs(model, io: dict) -> list[str]:
    names = sorted(k[len("input."):] for k in io if k.startswith("input."))
    assert names, "no input.<name> tensors"
    with torch.no_grad():
        for name in names:
            out = model(io[f"input.{name}"])
            want = io[f"output.{name}"]
            assert out.shape == want.shape, name
            err = (out - want).abs().max().item()
            assert err <= GOLDEN_ATOL, f"{name}: max abs error {err:.3g}"
    return names


def test_bundled_golden_pair(model_x2, test_io):
    # Always runs: the one golden pair shipped in tests/data (a 45x53 crop of Set5 baby, x2).
    assert _check_pairs(model_x2, load_file(str(test_io))) == ["real_45x53"]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_golden_vectors(golden_dir, scale):
    model = load_swinir(golden_dir / f"swinir_light_x{scale}_params.safetensors", scale)
    assert model.cfg.scale == scale
    names = _check_pairs(model, load_file(str(golden_dir / f"swinir_light_x{scale}_io.safetensors")))
    assert len(names) >= 3


def test_official_layout_pth_loads_and_matches(golden_dir):
    pth = golden_dir / "swinir_light_x2_official_layout.pth"
    raw = torch.load(str(pth), map_location="cpu", weights_only=True)
    assert any(k.endswith("attn_mask") for k in raw["params"])  # the layout really carries the buffers
    assert any(k.endswith("relative_position_index") for k in raw["params"])
    from_pth = load_swinir(pth, 2)
    from_st = load_swinir(golden_dir / "swinir_light_x2_params.safetensors", 2)
    a, b = from_pth.state_dict(), from_st.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    io = load_file(str(golden_dir / "swinir_light_x2_io.safetensors"))
    with torch.no_grad():
        out = from_pth(io["input.real_45x53"])
    assert (out - io["output.real_45x53"]).abs().max().item() <= GOLDEN_ATOL


# -- any input size and batch ---------------------------------------------------------------

def test_one_pixel_input_uses_edge_padding(model_x2):
    x = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    padded = model_x2.pad_to_window(x)
    assert padded.shape == (1, 3, 8, 8) and torch.equal(padded, x.expand(1, 3, 8, 8))
    with torch.no_grad():
        y = model_x2(x)
    assert y.shape == (1, 3, 2, 2) and torch.isfinite(y).all()


@pytest.mark.parametrize("hw, mode", [((13, 13), "reflect"), ((9, 20), "reflect"), ((3, 20), "replicate"),
                                      ((20, 5), "reflect"), ((20, 2), "replicate"), ((16, 24), None)])
def test_padding_rule(hw, mode):
    model = _tiny()
    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    padded = model.pad_to_window(x)
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    if mode is None:
        assert padded is x
    else:
        ph, pw = padded.shape[-2] - hw[0], padded.shape[-1] - hw[1]
        assert torch.equal(padded, F.pad(x, (0, pw, 0, ph), mode=mode))


@pytest.mark.parametrize("hw", [(7, 13), (9, 17), (1, 30), (31, 2)])
def test_odd_sizes_full_model(model_x2, hw):
    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model_x2(x)
    assert y.shape == (1, 3, hw[0] * 2, hw[1] * 2) and torch.isfinite(y).all()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_each_scale(scale):
    x = torch.rand(2, 3, 11, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert _tiny(scale)(x).shape == (2, 3, 11 * scale, 6 * scale)


def test_batch_of_two_equals_each_alone(model_x2):
    x = torch.rand(2, 3, 12, 19, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        both = model_x2(x)
        one = torch.cat([model_x2(x[:1]), model_x2(x[1:])])
    torch.testing.assert_close(both, one, atol=1e-5, rtol=0)


# -- shift masks ----------------------------------------------------------------------------

def test_shift_mask_cache_reused(monkeypatch):
    model = _tiny()
    calls = []
    real = swinir_mod.shift_mask
    monkeypatch.setattr(swinir_mod, "shift_mask", lambda *a: calls.append(a) or real(*a))
    cpu = torch.device("cpu")
    m1 = model.shift_mask_for(16, 24, cpu)
    assert model.shift_mask_for(16, 24, cpu) is m1
    with torch.no_grad():
        model(torch.rand(1, 3, 13, 20))  # pads to 16 x 24: the same mask
        model(torch.rand(1, 3, 16, 17))
    assert calls == [(16, 24, 8, 4)]
    with torch.no_grad():
        model(torch.rand(1, 3, 8, 8))
    assert len(calls) == 2 and model.shift_mask_for(8, 8, cpu) is model.shift_mask_for(8, 8, cpu)


def test_shift_mask_values():
    m = shift_mask(16, 24, 8, 4)
    assert m.shape == (6, 64, 64)
    assert set(m.unique().tolist()) == {-100.0, 0.0}
    assert torch.equal(m, m.transpose(1, 2))
    assert (m[0] == 0).all()  # the top-left window holds one region only
    assert (m[-1] != 0).any()  # the corner window mixes four regions
    assert (m.diagonal(dim1=1, dim2=2) == 0).all()


def test_window_partition_round_trip_and_position_index():
    x = torch.randn(2, 16, 24, 5)
    w = window_partition(x, 8)
    assert w.shape == (2 * 6, 64, 5)
    assert torch.equal(w[1], x[0, :8, 8:16].reshape(64, 5))  # row-major window order
    assert torch.equal(window_reverse(w, 8, 2, 16, 24), x)
    idx = relative_position_index(8)
    assert idx.shape == (64, 64) and idx.min() == 0 and idx.max() == 15 * 15 - 1
    assert (idx.diagonal() == 7 * 15 + 7).all()


@pytest.mark.parametrize("bad, match", [(dict(scale=5), "scale"), (dict(embed_dim=50, num_heads=(6,) * 4), "divisible"),
                                        (dict(depths=(6, 6)), "differ"), (dict(window_size=7), "window_size")])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        SwinIRConfig(**bad)


def test_fresh_model_has_the_official_init():
    """trunc-normal 0.02 Linear weights (not PyTorch's uniform, std 1/sqrt(3 fan_in)), zero
    biases, unit LayerNorms, and trunc-normal position-bias tables, as the official SwinIR."""
    torch.manual_seed(0)
    m = SwinIRLight(SwinIRConfig(scale=2))
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    w = torch.cat([lin.weight.flatten() for lin in linears])
    kurtosis = (((w - w.mean()) ** 4).mean() / w.var() ** 2).item()
    assert abs(w.std().item() - 0.02) < 0.002 and 2.7 < kurtosis < 3.3  # Gaussian; uniform has 1.8
    assert all(not lin.bias.any() for lin in linears)
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert all(bool((n.weight == 1).all()) and not n.bias.any() for n in norms)
    tables = torch.cat([blk.attn.relative_position_bias_table.flatten() for layer in m.layers
                        for blk in layer.residual_group.blocks])
    assert abs(tables.std().item() - 0.02) < 0.003
