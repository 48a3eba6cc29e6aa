"""The memory-lean fake_quant (what calibration runs on the CPU) against fake_quant_ref."""
import pytest
import torch

from compsrt.kernels.fake_quant import fake_quant, fake_quant_ref, step_and_zero

BITS = [2, 4, 8]
# (s2, z2) as fractions of the DOBI step: no saturation (the fast backward) and saturation at
# both ends (the general backward)
EXTRAS = [(0.0, 0.0), (-0.4, 0.7)]


def _params(bits, s2_frac, z2_frac):
    lo, hi = -1.3, 1.7
    s0 = (hi - lo) / (2 ** bits - 1)
    return [torch.tensor(v, requires_grad=True) for v in (lo, hi, s2_frac * s0, z2_frac * s0)]


def _run(fn, x, params, bits, grad, **kw):
    x = x.clone().requires_grad_()
    out = fn(x, params[0], params[1], bits, params[2], params[3], **kw)
    out.backward(grad)
    return out.detach(), x.grad, [p.grad.clone() for p in params]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("extras", EXTRAS)
@pytest.mark.parametrize("dc_dim", [None, -1, -2])
def test_lean_matches_reference(bits, extras, dc_dim):
    g = torch.Generator().manual_seed(bits)
    x = 2 * torch.randn(6, 16, 12, generator=g)
    x[..., 0, :] += 9.0  # a large DC row/column: it must not move the parameters' gradients
    x[..., :, 0] += 9.0
    grad = torch.randn(x.shape, generator=g)
    want = _run(fake_quant_ref, x, _params(bits, *extras), bits, grad, dc_dim=dc_dim)
    got = _run(fake_quant, x, _params(bits, *extras), bits, grad, dc_dim=dc_dim)
    assert got[0].equal(want[0]) and got[1].equal(want[1])
    for a, b in zip(got[2], want[2]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    if dc_dim is not None:
        assert x.narrow(dc_dim, 0, 1).equal(got[0].narrow(dc_dim, 0, 1))  # DC passes through exactly
        assert got[1].narrow(dc_dim, 0, 1).equal(grad.narrow(dc_dim, 0, 1))


def test_lean_non_finite_with_dc():
    x = torch.tensor([[float("nan"), 0.3, float("inf"), -5.0], [0.1, float("nan"), 0.2, 0.4]])
    grad = torch.ones_like(x)
    want = _run(fake_quant_ref, x, _params(4, -0.2, 0.4), 4, grad, dc_dim=-1)
    got = _run(fake_quant, x, _params(4, -0.2, 0.4), 4, grad, dc_dim=-1)
    torch.testing.assert_close(got[0], want[0], equal_nan=True)
    assert got[1].equal(want[1])
    for a, b in zip(got[2], want[2]):
        assert torch.isfinite(a)
        torch.testing.assert_close(a, b)


def test_codes_refuse_dc():
    with pytest.raises(ValueError, match="DC coefficient has no code"):
        fake_quant_ref(torch.zeros(2, 4), torch.tensor(-1.0), torch.tensor(1.0), 4, return_codes=True, dc_dim=-1)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("extras", EXTRAS)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("special", [None, "inf", "nan"])
def test_cpu_backward_is_the_masked_backward_bit_for_bit(bits, extras, layout, special):
    """The float-arithmetic CPU backward against the boolean-mask one (what CUDA runs): the same
    sums in the same order, a transposed gradient (k in q k^T) included. Only d/ds differs when
    no code saturates, where it is one dot product instead of a masked sum."""
    from compsrt.kernels.fake_quant_lean import _cpu_backward, _masked_backward

    g = torch.Generator().manual_seed(bits)
    x = 2 * torch.randn(3, 64, 40, generator=g)
    if special:
        x[0, 5, 7], x[2, 1, 3] = (float("inf"), -float("inf")) if special == "inf" else (float("nan"),) * 2
    grad = torch.randn(x.shape, generator=g)
    if layout == "transposed":
        grad = torch.randn(3, 40, 64, generator=g).transpose(1, 2)
    lo, hi, s2, z2 = (p.detach() for p in _params(bits, *extras))
    s, z = step_and_zero(lo, hi, bits, s2, z2)
    want = _masked_backward(x, grad, lo, hi, s, z, 2 ** bits - 1)
    got = _cpu_backward(x, grad, lo, hi, s, z, 2 ** bits - 1)
    saturates = extras != (0.0, 0.0)
    for name, a, b in zip(("gx", "gs", "gz", "gl", "gu"), got, want):
        if name == "gs" and not saturates and special != "nan":
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert a.equal(b), name
    if saturates:  # the gradient to x keeps the masked form's layout (its own is g's when none saturate)
        assert got[0].stride() == want[0].stride()
