"""fake_quant_ref against the written-out quantizer and its straight-through gradients."""
import pytest
import torch

from compsrt.kernels.fake_quant import fake_quant, fake_quant_ref

BITS = [2, 3, 4, 8]
LOWER, UPPER = -1.3, 1.7
# (s2, z2) as fractions of the DOBI step s0 = (u - l) / qmax: the DOBI start, codes saturating at
# both ends (smaller step, zero moved up), and at the top only (larger step, zero moved down).
EXTRAS = [(0.0, 0.0), (-0.4, 0.7), (0.2, -0.7)]


def _params(bits, s2_frac=0.0, z2_frac=0.0, dtype=torch.float32):
    s0 = (UPPER - LOWER) / (2 ** bits - 1)
    vals = (LOWER, UPPER, s2_frac * s0, z2_frac * s0)
    return [torch.tensor(v, dtype=dtype, requires_grad=True) for v in vals]


def _x(numel=4000, seed=0, dtype=torch.float32):
    # wide enough that a good share of the values is clipped at l and u
    return (2 * torch.randn(numel, generator=torch.Generator().manual_seed(seed))).to(dtype)


def _fq(x, params, bits, **kw):
    lower, upper, s2, z2 = params
    return fake_quant_ref(x, lower, upper, bits, s2, z2, **kw)


def _written_out(x, lower, upper, s2, z2, bits, grad):
    """docs/engine.md's quantizer and its STE gradients, term by term (fp32, like the reference)."""
    qmax = 2 ** bits - 1
    l, u, s2, z2 = (t.detach().float() for t in (lower, upper, s2, z2))
    s = (u - l) / qmax + s2
    z = l + z2
    c = torch.clamp(x, l, u)
    y = (c - z) / s
    r = torch.round(y)
    sat = (r < 0) | (r > qmax)
    q = torch.clamp(r, 0, qmax)
    g = grad.double()
    inside = (x >= l) & (x <= u)
    d_s = (g * torch.where(sat, q, q - y).double()).sum()
    d_z = (g * sat).sum()
    d_l_clip = (g * ((x < l) & ~sat)).sum()
    d_u_clip = (g * ((x > u) & ~sat)).sum()
    grads = {
        "x": grad * (inside & ~sat),
        "lower": -d_s / qmax + d_z + d_l_clip,
        "upper": d_s / qmax + d_u_clip,
        "step_extra": d_s,
        "zero_extra": d_z,
    }
    return s * q + z, q, sat, r, grads


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("extras", EXTRAS)
def test_forward_and_gradients_match_written_out_formulas(bits, extras):
    x = _x(seed=bits).requires_grad_()
    params = _params(bits, *extras)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out, codes = _fq(x, params, bits, return_codes=True)
    out.backward(grad)
    want, q, sat, r, grads = _written_out(x.detach(), *params, bits, grad)
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    assert codes.dtype == torch.uint8 and codes.equal(q.to(torch.uint8))
    torch.testing.assert_close(x.grad, grads["x"], atol=0, rtol=0)
    scale = grad.abs().sum().item() * 2 ** bits
    for name, p in zip(("lower", "upper", "step_extra", "zero_extra"), params):
        torch.testing.assert_close(p.grad.double(), grads[name], atol=1e-6 * scale, rtol=1e-5, msg=name)
    if extras == (-0.4, 0.7):
        assert (r < 0).any() and (r > 2 ** bits - 1).any(), "both ends must saturate in this case"
        assert params[3].grad != 0
    if extras == (0.0, 0.0):
        assert not sat.any()


@pytest.mark.parametrize("bits", BITS)
def test_zero_extra_gradient_is_exactly_zero_at_dobi_start(bits):
    x = _x(numel=20000, seed=10 + bits)
    for seed in range(3):
        params = _params(bits)
        out = _fq(x, params, bits)
        out.backward(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))
        assert params[3].grad.item() == 0.0
        assert params[2].grad.item() != 0.0  # s2 gets LSQ's step gradient from the start


@pytest.mark.parametrize("bits", BITS)
def test_outputs_lie_on_the_grid(bits):
    lower, upper, s2, z2 = _params(bits, -0.1, 0.3)
    out, codes = fake_quant_ref(_x(), lower, upper, bits, s2, z2, return_codes=True)
    s = (upper - lower) / (2 ** bits - 1) + s2
    k = (out - (lower + z2)) / s
    torch.testing.assert_close(k, k.round(), atol=1e-4, rtol=0)
    assert k.round().min() >= 0 and k.round().max() <= 2 ** bits - 1
    assert codes.max() <= 2 ** bits - 1


def test_gradcheck_float64_without_rounding(monkeypatch):
    """With round() the identity the quantizer is smooth almost everywhere, and its STE gradients
    are its true derivatives: gradcheck them on points away from the clip and clamp kinks.
    step_and_zero rounds s and z to fp32 by design, so the finite differences use eps = 1e-3
    (the function is piecewise linear in every input there, so only that rounding enters)."""
    monkeypatch.setattr(torch, "round", lambda t: t)
    bits, g = 3, torch.Generator().manual_seed(3)
    lower, upper = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    s2, z2 = torch.tensor(-0.05, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    # in range, clipped below/above, and saturated at code 0 (l <= x < z)
    x = torch.cat([torch.empty(12, dtype=torch.float64).uniform_(-0.6, 1.2, generator=g),
                   torch.tensor([-2.0, -1.5, 2.0, 3.0, -0.9, -0.95], dtype=torch.float64)])
    inputs = tuple(t.clone().requires_grad_() for t in (x, lower, upper, s2, z2))
    assert torch.autograd.gradcheck(lambda *t: fake_quant_ref(t[0], t[1], t[2], bits, t[3], t[4]), inputs,
                                    eps=1e-3, atol=2e-3, rtol=1e-3)


def test_non_finite_inputs():
    bits = 4
    x = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.25, 5.0]).requires_grad_()
    params = _params(bits, -0.2, 0.4)
    out, codes = _fq(x, params, bits, return_codes=True)
    clean = torch.tensor([UPPER, LOWER, 0.0, 0.25, UPPER])
    want = _fq(clean, [p.detach() for p in params], bits)
    assert out[0] == want[0] and out[1] == want[1]  # +-inf clip to u and l like any outlier
    assert torch.isnan(out[2]) and codes[2] == 0    # NaN propagates; its code is 0
    out.backward(torch.ones_like(out))
    assert torch.isfinite(x.grad).all() and x.grad[2] == 0
    for p in params:                                # NaN contributes no gradient to the parameters
        assert torch.isfinite(p.grad)
    ref_params = _params(bits, -0.2, 0.4)
    _fq(clean[[0, 1, 3, 4]], ref_params, bits).sum().backward()
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p.grad, r.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_keep_their_dtype(dtype):
    x = _x(dtype=dtype)
    params = [p.detach() for p in _params(4)]
    out = _fq(x, params, 4)
    assert out.dtype == dtype
    assert out.equal(_fq(x.float(), params, 4).to(dtype))
    assert fake_quant(x, params[0], params[1], 4, params[2], params[3]).equal(out)


def test_none_extras_are_zero():
    params = [p.detach() for p in _params(3)]
    zero = torch.tensor(0.0)
    x = _x()
    assert fake_quant_ref(x, params[0], params[1], 3).equal(fake_quant_ref(x, params[0], params[1], 3, zero, zero))


def test_rejects_other_bit_widths():
    with pytest.raises(ValueError, match="bits must be"):
        fake_quant_ref(torch.zeros(3), torch.tensor(-1.0), torch.tensor(1.0), 5)
