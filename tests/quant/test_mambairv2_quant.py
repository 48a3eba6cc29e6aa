"""MambaIRv2-light through the same quantization path as SwinIR-light: its plan, compress_,
calibrated and packed files, and the packed runtime (tiny model; the real one in slow tests)."""
from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from compsrt.calib.dobi import dobi
from compsrt.config import QuantConfig
from compsrt.errors import CompsrtError
from compsrt.model.mambairv2 import MambaIRv2Config, MambaIRv2Light
from compsrt.quant.compress import (compress_, load_calibrated, overriding, save_calibrated, set_calibrating,
                                    site_inputs)
from compsrt.quant.pack import pack_model, read_packed, save_packed
from compsrt.quant.plan import LAYER_SETS, check_layers, plan_for
from compsrt.quant.qmodules import QuantLinear, QuantWeightParam, quantizers
from compsrt.runtime import PackedLinear, load_packed

TINY = MambaIRv2Config(scale=2, embed_dim=36, d_state=4, depths=(2,), num_heads=(2,), window_size=4, inner_rank=8,
                       num_tokens=8)
CONFIGS = [QuantConfig(bits=4), QuantConfig(bits=2, prune=0.4), QuantConfig(bits=3, rotation="none", decompose=False),
           QuantConfig(bits=4, exact_dc=False)]
IDS = [f"w{c.bits}-{c.rotation}-p{c.prune}-dc{int(c.exact_dc)}" for c in CONFIGS]


def _fp() -> MambaIRv2Light:
    torch.manual_seed(0)
    m = MambaIRv2Light(TINY).eval()
    with torch.no_grad():   # trained-looking scales: the untrained layer scales (1e-4) would hide every error
        for b in m.layers:
            for lay in b.residual_group.layers:
                lay.scale1.fill_(1.0)
                lay.scale2.fill_(1.0)
    return m


def _calibrated(cfg: QuantConfig) -> MambaIRv2Light:
    m = compress_(copy.deepcopy(_fp()), cfg).eval()
    set_calibrating(m, partial(dobi, max_elems=1 << 14))
    with torch.no_grad():
        m(torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1)))
    set_calibrating(m, None)
    with torch.no_grad():   # as after finetuning: the extras moved off zero
        for q in quantizers(m):
            if q.step_extra.requires_grad:
                q.step_extra.fill_(1e-3)
                q.zero_extra.fill_(-2e-3)
    return m


def test_official_plan_lists_what_the_official_code_quantizes():
    plan = plan_for(_fp())
    assert plan.layers == "official" and plan.attentions == ()
    names = {s.path.split("layers.0.residual_group.layers.0.")[-1]: s.splits for s in plan.linears
             if s.path.startswith("layers.0.residual_group.layers.0.")}
    assert names == {"wqkv": 3, "win_mhsa.proj": 1, "convffn1.fc1": 1, "convffn1.fc2": 1, "convffn2.fc1": 1,
                     "convffn2.fc2": 1, "assm.out_proj": 1, "assm.route.0": 1, "assm.route.2": 1}
    assert {w.param for w in plan.weights} == {"x_proj_weight", "dt_projs_weight"}
    assert len(plan.linears) == 9 * 2 and len(plan.weights) == 2 * 2


def test_layer_sets_are_checked_per_architecture():
    assert check_layers("swinir-light", "") == "full" and check_layers("mambairv2-light", "") == "official"
    with pytest.raises(ValueError, match="does not exist for swinir-light"):
        check_layers("swinir-light", "official")
    assert LAYER_SETS["swinir-light"] == ("full",)


def test_compress_quantizes_the_plan_and_is_exact_without_quantization():
    fp = _fp()
    x = torch.rand(1, 3, 10, 14, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = fp(x)
    for rotation in ("deploy", "none"):
        q = compress_(copy.deepcopy(fp), QuantConfig(bits=4, rotation=rotation, decompose=rotation == "deploy"))
        assert sum(isinstance(m, QuantLinear) for m in q.modules()) == 18
        assert sum(isinstance(m, QuantWeightParam) for m in q.modules()) == 4
        with overriding(q, lambda quantizer, t, dc: t), torch.no_grad():
            got = q(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # quantized for real, the weight sites do change the output
    q = _calibrated(QuantConfig(bits=2))
    lin = [m for m in quantizers(q) if not isinstance(m, type(None))]
    with torch.no_grad():
        a = q(x)
        sel = q.get_submodule("layers.0.residual_group.layers.0.assm.selectiveScan")
        assert parametrize.is_parametrized(sel, "x_proj_weight")
        with overriding([p.wq for p in q.modules() if isinstance(p, QuantWeightParam)], lambda quantizer, t, dc: t):
            b = q(x)
    assert lin and not torch.allclose(a, b)


def test_compressing_twice_is_refused():
    q = compress_(_fp(), QuantConfig(bits=4))
    with pytest.raises(ValueError, match="compressed twice"):
        compress_(q, QuantConfig(bits=4))


def test_calibrated_file_round_trips(tmp_path):
    m = _calibrated(QuantConfig(bits=2, prune=0.4))
    save_calibrated(m, tmp_path / "c.safetensors", provenance={"method": "compsrt"})
    back = load_calibrated(tmp_path / "c.safetensors", scale=2)
    x = torch.rand(1, 3, 12, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x))
    with pytest.raises(CompsrtError, match="--arch mambairv2-light"):
        load_calibrated(tmp_path / "c.safetensors", arch="swinir-light")


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_packed_runtime_matches_the_fake_quant_model(cfg, tmp_path):
    fake = _calibrated(cfg)
    t, h = pack_model(fake, "fp32")
    save_packed(t, h, tmp_path / "p.safetensors")
    assert h["arch"] == "mambairv2-light" and h["layers"] == "official" and "model" in h
    rt = load_packed(tmp_path / "p.safetensors", scale=2)
    assert sum(isinstance(m, PackedLinear) for m in rt.modules()) == 18
    assert not any(isinstance(m, QuantWeightParam) for m in rt.modules())
    x = torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = fake(x), rt(x)
    mse = torch.mean((a - b) ** 2).item()
    assert mse == 0 or 10 * torch.log10(torch.tensor(1 / mse)).item() > 60
    # the weight sites were dequantized at load to exactly the fake-quant weights
    for name in ("x_proj_weight", "dt_projs_weight"):
        path = "layers.0.residual_group.layers.1.assm.selectiveScan"
        with torch.no_grad():
            torch.testing.assert_close(getattr(rt.get_submodule(path), name), getattr(fake.get_submodule(path), name),
                                       atol=1e-6, rtol=1e-5)
    with pytest.raises(CompsrtError, match="--arch mambairv2-light"):
        load_packed(tmp_path / "p.safetensors", arch="swinir-light")


def test_packed_file_stores_no_fp_copy_of_a_quantized_weight(tmp_path):
    fake = _calibrated(QuantConfig(bits=4))
    t, h = pack_model(fake, "fp16")
    save_packed(t, h, tmp_path / "p.safetensors")
    pm = read_packed(tmp_path / "p.safetensors")
    quantized = {g.key for g in pm.grids}
    assert "layers.0.residual_group.layers.0.assm.selectiveScan.x_proj_weight" in quantized
    assert not quantized & set(pm.fp)
    fp_numel = sum(p.numel() for p in _fp().parameters())
    assert sum(v.numel() for v in pm.fp.values()) + sum(g.rows * (g.n - g.dc) for g in pm.grids) >= fp_numel * 0.9


def test_full_layer_set_adds_the_attention_products_and_in_proj(tmp_path):
    fp = _fp()
    plan = plan_for(fp, "full")
    assert len(plan.attentions) == 2 and len(plan.linears) == 10 * 2
    assert any(s.path.endswith("assm.in_proj.0") for s in plan.linears)
    x = torch.rand(1, 3, 10, 14, generator=torch.Generator().manual_seed(2))
    q = compress_(copy.deepcopy(fp), QuantConfig(bits=4, layers="full"))
    with overriding(q, lambda quantizer, t, dc: t), torch.no_grad():   # exact without quantization,
        torch.testing.assert_close(q(x), fp(x), atol=1e-5, rtol=1e-5)  # shifted windows' masks included
    for cfg in (QuantConfig(bits=4, layers="full"), QuantConfig(bits=3, layers="full", rotation="none", decompose=False)):
        fake = _calibrated(cfg)
        t, h = pack_model(fake, "fp32")
        save_packed(t, h, tmp_path / "f.safetensors")
        rt = load_packed(tmp_path / "f.safetensors")
        # every site, given the fake-quant model's own inputs, gives its output (same codes) but for
        # the odd row where a code sits on a rounding tie (as tests/runtime/test_runtime.py counts them)
        rows_off = rows = 0
        for name, args in site_inputs(fake, x).items():
            with torch.no_grad():
                want, got = fake.get_submodule(name)(*args), rt.get_submodule(name)(*args)
            off = ((got - want).abs() > 1e-4 * (1 + want.abs())).reshape(-1, want.shape[-1]).any(-1)
            rows_off, rows = rows_off + int(off.sum()), rows + off.numel()
        assert rows_off / rows < 5e-3, f"{rows_off} of {rows} output rows differ beyond float rounding"
        # whole model: a code on a rounding tie can flip and, through the routing's argmax, move
        # many tokens, so the median over inputs is the check (measured: 4 of 4 or 3 of 4 > 60 dB)
        fids = []
        for seed in range(3):
            xs = torch.rand(1, 3, 10, 14, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                mse = torch.mean((fake(xs) - rt(xs)) ** 2).item()
            fids.append(200.0 if mse == 0 else 10 * math.log10(1 / mse))
        assert sorted(fids)[1] > 60, fids
        official = _calibrated(QuantConfig(bits=cfg.bits, rotation=cfg.rotation, decompose=cfg.decompose))
        with torch.no_grad():
            assert not torch.allclose(official(x), fake(x))   # the extra sites are quantized


def test_official_in_proj_conv_weights_load_as_the_linear():
    from compsrt.model.mambairv2 import official_to_model

    fp = _fp()
    sd = {k: (v[:, :, None, None] if k.endswith("assm.in_proj.0.weight") else v) for k, v in fp.state_dict().items()}
    back = official_to_model(sd)
    assert all(torch.equal(back[k], v) for k, v in fp.state_dict().items())


def test_calib_cli_calibrates_and_packs_mambairv2_and_infer_and_eval_run_it(tmp_path, capsys):
    """python -m compsrt.calib --arch mambairv2-light end to end on a tiny model: the packed file
    runs in compsrt-infer and compsrt.eval with --arch mambairv2-light; bad --layers is one line."""
    import json

    from PIL import Image
    from safetensors.torch import save_file

    from compsrt.calib.__main__ import main as calib
    from compsrt.cli import main as infer
    from compsrt.eval import main as evaluate

    def smooth_images(n: int, size: int, seed: int) -> list[np.ndarray]:
        g = torch.Generator().manual_seed(seed)
        low = torch.rand(n, 3, size // 8, size // 8, generator=g)
        return [(F.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 1)[i].permute(1, 2, 0) * 255)
                .round().byte().numpy() for i in range(n)]

    weights, data = tmp_path / "tiny.safetensors", tmp_path / "imgs"
    save_file({k: v.contiguous() for k, v in _fp().state_dict().items()}, str(weights))
    data.mkdir()
    for i, p in enumerate(smooth_images(3, 160, 21)):
        Image.fromarray(p).save(data / f"{i}.png")
    out = tmp_path / "c"
    common = ["--arch", "mambairv2-light", "--scale", "2", "--weights", str(weights), "--data", str(data),
              "--val-images", "1", "--iters", "2", "--batch", "1", "--calib-batch", "2", "--val-every", "1", "--quiet"]
    assert calib([*common, "--bits", "2", "--layers", "full", "--out", str(out)]) == 0
    h = read_packed(out / "model.safetensors").header
    assert h["arch"] == "mambairv2-light" and h["layers"] == "full" and h["provenance"]["arch"] == "mambairv2-light"
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["layers"] == "full" and report["config"]["arch"] == "mambairv2-light"
    capsys.readouterr()
    assert calib(["--scale", "2", "--layers", "official", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist for swinir-light" in err
    src = tmp_path / "in.png"
    Image.fromarray(smooth_images(1, 20, 9)[0]).save(src)
    assert infer([str(src), str(tmp_path / "o.png"), "--arch", "mambairv2-light", "--weights",
                  str(out / "model.safetensors"), "--quiet"]) == 0
    assert Image.open(tmp_path / "o.png").size == (40, 40)
    bench = tmp_path / "bench" / "Tiny"
    (bench / "HR").mkdir(parents=True)
    for i, p in enumerate(smooth_images(2, 48, 5)):
        Image.fromarray(p).save(bench / "HR" / f"{i}.png")
    assert evaluate(["--arch", "mambairv2-light", "--scale", "2", "--weights", str(out / "model.safetensors"),
                     "--data", str(tmp_path / "bench"), "--sets", "Tiny", "--json", str(tmp_path / "e.json"),
                     "--quiet"]) == 0
    assert "| model.safetensors | Tiny |" in capsys.readouterr().out


def test_size_report_counts_the_weight_sites_without_an_activation(tmp_path):
    from compsrt.size import format_report, size_report

    fake = _calibrated(QuantConfig(bits=4))
    t, h = pack_model(fake)
    save_packed(t, h, tmp_path / "p.safetensors")
    r = size_report(tmp_path / "p.safetensors")
    w, a = r["effective_bits"]["weights"], r["effective_bits"]["activations"]
    assert {"x_proj_weight", "dt_projs_weight", "wqkv", "route.0", "route.2"} <= set(w)
    assert "x_proj_weight" not in a and "wqkv" in a
    # dt_projs_weight: 36 rows of 3 columns, rotated to 4, DC in fp16: (4 x 3 + 16) / 3 bits per weight
    assert w["dt_projs_weight"]["bits"] == pytest.approx((4 * 3 + 16) / 3)
    assert "dt_projs_weight" in format_report(r)
