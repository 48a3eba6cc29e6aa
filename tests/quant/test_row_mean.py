"""The row mean (QuantConfig.row_mean, ``--row-mean``) in fake quantization and in the packed file,
and the --exact-dc / --row-mean method options: each operand row along the contraction axis is
its FP mean plus the quantized centred rest, exact when quantization is off."""
from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from safetensors.torch import load_file

from compsrt.calib.dobi import dobi
from compsrt.calib.methods import method_config
from compsrt.config import QuantConfig, SwinIRConfig
from compsrt.errors import CompsrtError
from compsrt.kernels.fake_quant import fake_quant, fake_quant_ref
from compsrt.model.swinir import SwinIRLight
from compsrt.quant.compress import compress_, overriding, prune_mask, set_calibrating
from compsrt.quant.pack import pack_model, read_header, read_packed, save_packed
from compsrt.quant.qmodules import ActQuantizer, QuantAttend, QuantLinear, WeightQuantizer, quantizers

ROW_MEAN = QuantConfig(bits=4, rotation="none", decompose=False, row_mean=True)


def _fp() -> SwinIRLight:
    torch.manual_seed(0)
    return SwinIRLight(SwinIRConfig(scale=2, embed_dim=20, depths=(2,), num_heads=(2,))).eval()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(seed))


def _with_bounds(q, lo: float, hi: float):
    with torch.no_grad():
        q.lower.fill_(lo)
        q.upper.fill_(hi)
    return q


# -- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rotation", ["deploy", "official"])
def test_row_mean_needs_the_unrotated_method(rotation):
    with pytest.raises(ValueError, match="row_mean.*rotation 'none'"):
        QuantConfig(rotation=rotation, row_mean=True)
    assert QuantConfig(rotation="none", row_mean=True).row_mean


def test_method_config_takes_the_offset_options():
    assert method_config("compsrt", 4).exact_dc and not method_config("compsrt", 4).row_mean   # defaults unchanged
    assert method_config("compsrt", 4, exact_dc=False).exact_dc is False
    assert method_config("rotation-only", 2, exact_dc=True).exact_dc
    assert method_config("2dquant", 4, row_mean=True).row_mean
    assert method_config("decomposition-only", 4, row_mean=True).row_mean
    assert method_config("2dquant", 4) == QuantConfig(bits=4, rotation="none", decompose=False)   # unchanged preset


@pytest.mark.parametrize("kw, match", [
    (dict(name="2dquant", exact_dc=False), "--exact-dc/--no-exact-dc needs the deployable rotation"),
    (dict(name="2dquant", exact_dc=True), "--exact-dc/--no-exact-dc needs the deployable rotation"),
    (dict(name="compsrt", official_rotation=True, exact_dc=False), "with --official-rotation"),
    (dict(name="compsrt", row_mean=True), "--row-mean needs a method without rotation"),
    (dict(name="tuning-only", row_mean=True), "--row-mean needs a method without rotation"),
])
def test_method_config_refuses_an_offset_option_of_the_other_kind(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        method_config(bits=4, **kw)
    assert "\n" not in str(e.value)


# -- fake quantization -----------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [-1, -2])
def test_an_operand_is_its_row_mean_plus_the_quantized_centred_rest(dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 12, generator=g) * 0.1 + 5 * torch.randn(3, 16, 1, generator=g)   # big per-row offsets
    if dim == -2:
        x = x.transpose(-2, -1).contiguous()
    q = _with_bounds(ActQuantizer(ROW_MEAN, dim), -0.3, 0.3)
    m = x.mean(dim, keepdim=True)
    with torch.no_grad():
        got = q(x)
        want = m + fake_quant_ref(x - m, q.lower, q.upper, 4)
    assert torch.equal(got, want)
    plain = _with_bounds(ActQuantizer(QuantConfig(bits=4, rotation="none", decompose=False), dim), -0.3, 0.3)
    with torch.no_grad():   # without the mean the offsets sit outside the range: far worse
        assert (plain(x) - x).abs().mean() > 20 * (got - x).abs().mean()


def test_row_means_follow_each_products_contraction_axis():
    att = QuantAttend(ROW_MEAN)
    assert (att.q.dim, att.k.dim, att.a.dim, att.v.dim) == (-1, -1, -1, -2)   # v: its token axis
    lin = QuantLinear(torch.nn.Linear(20, 30), ROW_MEAN)
    assert all(q.dim == -1 and q.row_mean for q in [*lin.wq, *lin.aq])
    assert QuantAttend(QuantConfig(rotation="none")).v.dim == -1   # 2DQuant without row means: as before


def test_the_bound_search_and_an_override_see_the_centred_rest():
    """DOBI (and an override) get c = r - mean(r) along the quantizer's axis, never r."""
    m = compress_(_fp(), ROW_MEAN)
    searched, overridden = [], []

    def search(t, bits, one_sided=False):
        searched.append(t)
        return float(t.min()), float(t.max())

    def seen(q, t, dc_dim):
        overridden.append((q.dim, t))
        return t

    set_calibrating(m, search)
    with torch.no_grad(), overriding(m, seen):
        m(_x())
    set_calibrating(m, None)
    assert len(searched) == len(overridden) == len(quantizers(m))
    for dim, t in overridden:
        assert t.mean(dim).abs().max() < 1e-5 * (1 + t.abs().max())
    assert all(s is t for s, (_, t) in zip(searched, overridden))


def test_with_quantization_off_the_row_mean_model_is_the_fp_model():
    fp = _fp()
    for cfg in (ROW_MEAN, QuantConfig(bits=2, rotation="none", row_mean=True)):
        m = compress_(copy.deepcopy(fp), cfg)
        with torch.no_grad(), overriding(m, lambda q, t, dc_dim: t):
            out = m(_x())
        with torch.no_grad():
            torch.testing.assert_close(out, fp(_x()), rtol=1e-5, atol=1e-6)


def test_row_means_help_offsets():
    """Activations with a per-row offset: DOBI on the centred rest quantizes them far better."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 60, generator=g) * 0.2 + 2 * torch.randn(256, 1, generator=g)
    lin = torch.nn.Linear(60, 30)
    errs = {}
    for rm in (False, True):
        q = QuantLinear(lin, QuantConfig(bits=4, rotation="none", decompose=False, row_mean=rm))
        set_calibrating(q, partial(dobi, max_elems=1 << 14))
        with torch.no_grad():
            q(x)
        set_calibrating(q, None)
        with torch.no_grad():
            errs[rm] = float(((q(x) - lin(x)) ** 2).mean())
    assert errs[True] < errs[False] / 4


@pytest.mark.parametrize("mode", ["unstructured", "channel"])
def test_pruning_a_row_mean_weight_prunes_its_centred_rest(mode):
    """The mask covers c (chosen by |c|); a pruned coefficient dequantizes to its row's mean."""
    cfg = QuantConfig(bits=3, rotation="none", row_mean=True, prune=0.4, prune_mode=mode)
    compressed = compress_(_fp(), cfg)
    wq = next(q for q in quantizers(compressed) if isinstance(q, WeightQuantizer))
    c = wq.w_dom - wq.w_dom.mean(-1, keepdim=True)
    assert torch.equal(wq.quantized_part(), c)
    assert torch.equal(wq.mask, prune_mask(c, 0.4, mode))
    _with_bounds(wq, float(c.min()), float(c.max()))
    with torch.no_grad():
        w = wq()
    means = wq.w_dom.mean(-1, keepdim=True).expand_as(w)
    assert torch.equal(w[~wq.mask], means[~wq.mask])
    q = fake_quant(c, wq.lower, wq.upper, 3)
    assert torch.equal(w[wq.mask], (means + q)[wq.mask])


# -- the packed file -------------------------------------------------------------------------------

def _calibrated(cfg: QuantConfig):
    m = compress_(_fp(), cfg).eval()
    set_calibrating(m, partial(dobi, max_elems=1 << 14))
    with torch.no_grad():
        m(_x())
    set_calibrating(m, None)
    m.provenance = {"method": "test"}
    return m


@pytest.mark.parametrize("prune", [0.0, 0.4])
def test_the_packed_file_holds_the_codes_of_the_centred_rest_and_sqrt_n_row_means(prune, tmp_path):
    cfg = QuantConfig(bits=4, rotation="none", row_mean=True, prune=prune)
    m = _calibrated(cfg)
    tensors, header = pack_model(m, "fp32")
    save_packed(tensors, header, tmp_path / "p.safetensors")
    pm = read_packed(tmp_path / "p.safetensors")
    assert pm.quant.row_mean and header["quant"]["row_mean"] and read_header(tmp_path / "p.safetensors")["quant"]["row_mean"]
    lins = [mod for mod in m.modules() if isinstance(mod, QuantLinear)]
    for lin, grid, codes, dc in zip(lins, pm.grids, pm.codes, pm.dc):
        n = lin.weight.shape[1]
        assert grid.n == grid.cols == n   # every coefficient of the centred rest has a code
        rows = [wq.w_dom.mean(-1) * n ** 0.5 for wq in lin.wq]
        assert torch.equal(dc, torch.cat(rows))
        want = []
        for wq in lin.wq:
            c = wq.w_dom - wq.w_dom.mean(-1, keepdim=True)
            _, q = fake_quant_ref(c, wq.lower, wq.upper, 4, *wq.extras(), return_codes=True)
            want.append(q if wq.mask is None else q * wq.mask)
        assert torch.equal(codes, torch.cat(want))


def test_a_row_mean_file_without_its_means_is_refused(tmp_path):
    m = _calibrated(ROW_MEAN)
    tensors, header = pack_model(m, "fp32")
    save_packed(tensors, header, tmp_path / "p.safetensors")
    t = load_file(str(tmp_path / "p.safetensors"))
    del t["quant.dc"]
    save_packed(t, header, tmp_path / "bad.safetensors")   # a valid sha256, a missing tensor
    with pytest.raises(CompsrtError, match=r"missing \['quant.dc'\]"):
        read_packed(tmp_path / "bad.safetensors")


def test_without_the_exact_dc_the_file_has_no_offsets_and_says_so(tmp_path):
    m = _calibrated(method_config("compsrt", 3, exact_dc=False))
    tensors, header = pack_model(m, "fp32")
    assert "quant.dc" not in tensors and header["quant"]["exact_dc"] is False and not header["quant"]["row_mean"]
    save_packed(tensors, header, tmp_path / "p.safetensors")
    pm = read_packed(tmp_path / "p.safetensors")
    assert all(g.dc == 0 and g.cols == g.n for g in pm.grids) and all(d is None for d in pm.dc)
