"""The packed integer runtime against the fake-quant model it came from, and proof it is integer."""
from __future__ import annotations

import pytest
import torch

import compsrt.kernels.packed_linear as packed_linear_mod
import compsrt.kernels.window_attention_int as attention_mod
from compsrt.kernels import cpu_kernels
from compsrt.config import QuantConfig
from compsrt.quant.compress import site_inputs
from compsrt.quant.pack import pack_model, read_packed, save_packed
from compsrt.quant.qmodules import QuantLinear
from compsrt.runtime import PackedAttend, PackedLinear, build_runtime, load_packed

# Row means (QuantConfig.row_mean); more of them in test_row_mean_runtime.py.
ROW_MEAN_CONFIGS = [QuantConfig(bits=4, rotation="none", decompose=False, row_mean=True),
                    QuantConfig(bits=2, rotation="none", row_mean=True),
                    QuantConfig(bits=3, rotation="none", decompose=False, row_mean=True, prune=0.4),
                    QuantConfig(bits=4, rotation="none", row_mean=True, prune=0.3, prune_mode="channel")]
CONFIGS = [QuantConfig(bits=4), QuantConfig(bits=2), QuantConfig(bits=3, prune=0.4),
           QuantConfig(bits=4, prune=0.4), QuantConfig(bits=4, rotation="none", decompose=False),
           QuantConfig(bits=2, exact_dc=False, prune=0.3)] + ROW_MEAN_CONFIGS
IDS = [f"w{c.bits}-{c.rotation}-p{c.prune}-{c.prune_mode[:4]}-dc{int(c.exact_dc)}-rm{int(c.row_mean)}-s2{int(c.decompose)}"
       for c in CONFIGS]


def count_int_products(rt, monkeypatch) -> tuple[dict, dict]:
    """Count the PyTorch path's integer products (checking both operands are int8) from now on:
    (the live counts, what one forward of ``rt`` must give: one int_mm per Linear split, two
    int_bmm per attention site)."""
    n_lin = sum(mod.splits for mod in rt.modules() if isinstance(mod, PackedLinear))
    n_att = sum(1 for mod in rt.modules() if isinstance(mod, PackedAttend))
    calls = {"int_mm": 0, "int_bmm": 0}

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            assert a[0].dtype == torch.int8 and a[1].dtype == torch.int8
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(packed_linear_mod, "int_mm", counting("int_mm", packed_linear_mod.int_mm))
    monkeypatch.setattr(attention_mod, "int_bmm", counting("int_bmm", attention_mod.int_bmm))
    return calls, {"int_mm": n_lin, "int_bmm": 2 * n_att}


def _pair(make_calibrated, cfg, tmp_path):
    m = make_calibrated(cfg)
    t, h = pack_model(m, "fp32")
    save_packed(t, h, tmp_path / "p.safetensors")
    return m, load_packed(tmp_path / "p.safetensors")


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_each_site_matches_the_fake_quant_one_on_the_same_input(make_calibrated, cfg, tmp_path):
    """Given identical inputs, a runtime layer gives the calibration model's output: the same codes,
    so differences are float-rounding sized except where a code sits on a rounding tie."""
    fake, rt = _pair(make_calibrated, cfg, tmp_path)
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(3))
    rows_off = rows = 0
    for name, args in site_inputs(fake, x).items():
        with torch.no_grad():
            want = fake.get_submodule(name)(*args)
            got = rt.get_submodule(name)(*args)
        off = (got - want).abs() > 1e-4 * (1 + want.abs())
        rows_off += int(off.reshape(-1, want.shape[-1]).any(-1).sum())
        rows += want.reshape(-1, want.shape[-1]).shape[0]
    assert rows_off / rows < 2e-3, f"{rows_off} of {rows} output rows differ beyond float rounding"


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_whole_model_agrees_with_the_fake_quant_model(make_calibrated, cfg, tmp_path):
    fake, rt = _pair(make_calibrated, cfg, tmp_path)
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = fake(x).clamp(0, 1), rt(x).clamp(0, 1)
    mse = torch.mean((a - b) ** 2).item()
    assert mse == 0 or 10 * torch.log10(torch.tensor(1 / mse)).item() > 60   # > 60 dB apart from ties


def test_not_a_dequantize_at_load_runtime(make_calibrated, tmp_path, monkeypatch):
    """No runtime module holds a float tensor shaped like a quantized weight, and every quantized
    product goes through the integer ops (F.linear is never called)."""
    fake, rt = _pair(make_calibrated, QuantConfig(bits=4, prune=0.4), tmp_path)
    weight_shapes = set()
    for mod in fake.modules():
        if isinstance(mod, QuantLinear):
            weight_shapes.add(tuple(mod.weight.shape))
            for wq in mod.wq:
                weight_shapes |= {tuple(wq.w_dom.shape), tuple(wq.quantized_part().shape)}
    for name, t in list(rt.named_buffers()) + list(rt.named_parameters()):
        if t.is_floating_point():
            assert tuple(t.shape) not in weight_shapes, name
            assert t.ndim < 2 or t.shape[-1] != t.shape[-2] or "attn" not in name or t.numel() < 64, name
    calls, want = count_int_products(rt, monkeypatch)

    def no_linear(*a, **k):
        raise AssertionError("F.linear called: a product ran in float")

    monkeypatch.setattr(torch.nn.functional, "linear", no_linear)
    with torch.no_grad(), monkeypatch.context() as mp:   # the PyTorch path
        mp.setattr(cpu_kernels, "available", lambda: False)
        rt(torch.rand(1, 3, 16, 16))
    assert calls == want
    if cpu_kernels.available():   # the fused CPU kernels: one call per module, integer inside
        fused = {"packed_linear_cpu": 0, "window_attention_int_cpu": 0}
        for name in fused:
            def wrapped(*a, _fn=getattr(cpu_kernels, name), _name=name, **k):
                fused[_name] += 1
                return _fn(*a, **k)
            monkeypatch.setattr(cpu_kernels, name, wrapped)
        with torch.no_grad():
            rt(torch.rand(1, 3, 16, 16))
        n_mods = sum(1 for mod in rt.modules() if isinstance(mod, PackedLinear))
        assert fused == {"packed_linear_cpu": n_mods, "window_attention_int_cpu": want["int_bmm"] // 2}


def test_integer_accumulators_are_exact(make_calibrated, tmp_path):
    """The CPU path's int_mm equals an int64 matmul of the same codes (no float anywhere)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 16, (257, 64), generator=g, dtype=torch.int8)
    b = torch.randint(0, 16, (64, 180), generator=g, dtype=torch.int8)
    assert torch.equal(packed_linear_mod.int_mm(a, b).long(), a.long() @ b.long())
    x = torch.randint(0, 16, (3, 5, 64, 16), generator=g, dtype=torch.int8)
    y = torch.randint(0, 16, (3, 5, 16, 64), generator=g, dtype=torch.int8)
    assert torch.equal(attention_mod.int_bmm(x, y, 15, 15).long(), x.long() @ y.long())


def test_runtime_modules_hold_only_codes_and_scales(make_calibrated, tmp_path):
    _, rt = _pair(make_calibrated, QuantConfig(bits=2), tmp_path)
    lin = next(mod for mod in rt.modules() if isinstance(mod, PackedLinear))
    kinds = {n: b.dtype for n, b in lin.named_buffers()}
    assert kinds["w_t"] == torch.int8 and kinds["w_planes"] == torch.int32
    assert int(lin.w_t.max()) <= 3 and int(lin.w_t.min()) >= 0
    pm = read_packed(tmp_path / "p.safetensors")   # every FP tensor but the biases folded into the epilogues
    assert rt.state_dict().keys() == pm.fp.keys() - {f"{g.path}.bias" for g in pm.grids}


def test_build_runtime_from_fp16_file_stays_close(make_calibrated, tmp_path):
    m = make_calibrated(QuantConfig(bits=4))
    t, h = pack_model(m)
    save_packed(t, h, tmp_path / "p16.safetensors")
    rt = build_runtime(read_packed(tmp_path / "p16.safetensors"))
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = m(x).clamp(0, 1), rt(x).clamp(0, 1)
    assert (a - b).abs().max() < 0.02
