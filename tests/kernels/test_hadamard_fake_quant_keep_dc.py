"""keep_dc (the exact-DC rotation): the fused Triton kernels against the reference twin.

Rotated coefficient 0 passes through in FP, takes all of its gradient to x and none to the
quantizer's parameters; the other coefficients are quantized exactly as without keep_dc.
"""
import pytest
import torch

pytest.importorskip("triton")

from compsrt.kernels import hadamard_fake_quant_triton as hfq  # noqa: E402  (after the env is set)
from compsrt.kernels.hadamard import hadamard_ref  # noqa: E402
from compsrt.kernels.hadamard_fake_quant import hadamard_fake_quant, hadamard_fake_quant_ref  # noqa: E402

CASES = [((300, 60), -1, 4, (-0.3, 0.6)), ((2, 2, 64, 10), -2, 2, (0.0, 0.0)), ((3, 49, 10), -2, 3, (0.2, -0.5)),
         ((4, 33, 120), -1, 8, (0.0, 0.0))]


def _params(device, bits, s2_frac, z2_frac, lower=-2.0, upper=2.5):
    s0 = (upper - lower) / (2 ** bits - 1)
    return [torch.tensor(v, device=device, requires_grad=True) for v in (lower, upper, s2_frac * s0, z2_frac * s0)]


def _run(fn, x, bits, dim, extras, grad, device):
    x = x.detach().clone().requires_grad_()
    ps = _params(device, bits, *extras)
    out = fn(x, ps[0], ps[1], bits, ps[2], ps[3], dim, False, True)
    out.backward(grad)
    return out.detach(), x.grad, [p.grad for p in ps]


@pytest.mark.parametrize("shape,dim,bits,extras", CASES, ids=[f"{c[0]}-dim{c[1]}-b{c[2]}" for c in CASES])
def test_keep_dc_matches_ref(device, shape, dim, bits, extras):
    g = torch.Generator().manual_seed(bits)
    x = (1.5 * torch.randn(shape, generator=g) + 0.7).to(device)  # an offset: a large DC coefficient
    rot = hadamard_ref(x, dim)
    grad = torch.randn(rot.shape, generator=g).to(device)
    out_t, gx_t, gp_t = _run(hfq.hadamard_fake_quant_triton, x, bits, dim, extras, grad, device)
    out_r, gx_r, gp_r = _run(hadamard_fake_quant_ref, x, bits, dim, extras, grad, device)
    s = ((2.5 + 2.0) / (2 ** bits - 1)) * (1 + extras[0])
    torch.testing.assert_close(out_t.narrow(dim, 0, 1), rot.narrow(dim, 0, 1), atol=1e-5, rtol=1e-6)  # FP DC
    n = out_t.shape[dim]
    diff = (out_t - out_r).narrow(dim, 1, n - 1).abs()  # the quantized coefficients: codes may move by one
    moved = diff > 1e-4 * s
    assert moved.float().mean() <= 1e-3 and (diff <= 1.01 * s).all()
    torch.testing.assert_close(gx_t, gx_r, atol=1e-4 * grad.abs().max().item(), rtol=1e-5)
    gsum = grad.abs().sum().item()
    for a, b in zip(gp_t, gp_r):
        assert abs(a.item() - b.item()) <= 2e-6 * gsum * 2 ** bits + moved.sum().item() * 2 ** bits * grad.abs().max()


def test_dc_takes_no_part_in_parameter_gradients(device):
    """The parameters' gradients with keep_dc equal those of quantizing coefficients 1.. alone."""
    x = (torch.randn(64, 60, generator=torch.Generator().manual_seed(5)) + 3.0).to(device)
    grad = torch.randn(64, 64, generator=torch.Generator().manual_seed(6)).to(device)
    _, gx, gp = _run(hfq.hadamard_fake_quant_triton, x, 4, -1, (-0.3, 0.6), grad, device)
    grad_dc_zero = grad.clone()
    grad_dc_zero[:, 0] = 0
    _, _, gp_plain = _run(hadamard_fake_quant_ref, x, 4, -1, (-0.3, 0.6), grad_dc_zero, device)
    for a, b in zip(gp, gp_plain):  # the plain quantizer's DC term gets zero gradient here, so sums agree
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


def test_keep_dc_refuses_codes(device):
    x = torch.randn(8, 60).to(device)
    lo, hi = torch.tensor(-1.0, device=device), torch.tensor(1.0, device=device)
    with pytest.raises(ValueError, match="DC coefficient has no code"):
        hfq.hadamard_fake_quant_triton(x, lo, hi, 4, return_codes=True, keep_dc=True)


def test_dispatcher_keep_dc_on_cpu():
    x = torch.randn(16, 60, generator=torch.Generator().manual_seed(2)) + 1.0
    lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    want = hadamard_fake_quant_ref(x, lo, hi, 4, keep_dc=True)
    assert hadamard_fake_quant(x, lo, hi, 4, keep_dc=True).equal(want)
    assert want[:, 0].equal(hadamard_ref(x)[:, 0]) and not want.equal(hadamard_fake_quant_ref(x, lo, hi, 4))
