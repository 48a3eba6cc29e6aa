"""The fused Triton launcher against hadamard_fake_quant_ref: forward, codes and every gradient.

Without a GPU the launcher runs on CPU tensors in Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 before this module imports the kernels); with one, compiled on CUDA tensors.
The interpreter is slow, so shapes stay at a few hundred rows.
"""
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from compsrt.kernels import hadamard_fake_quant_triton as hfq  # noqa: E402  (after the env is set)
from compsrt.kernels.hadamard import hadamard_matrix, next_pow2  # noqa: E402
from compsrt.kernels.hadamard_fake_quant import hadamard_fake_quant, hadamard_fake_quant_ref  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PARAM_NAMES = ("lower", "upper", "step_extra", "zero_extra")
# Relative precision of a gradient in each dtype: the ref's own rounding of the rotated gradient.
GRAD_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _x(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(shape, generator=g)).to(dtype).to(device)


def _params(device, bits, s2_frac=0.0, z2_frac=0.0, lower=-2.0, upper=2.5):
    """l, u, s2, z2 (leaf tensors); the extras are fractions of the DOBI step (u - l) / qmax."""
    s0 = (upper - lower) / (2 ** bits - 1)
    return [torch.tensor(v, device=device, requires_grad=True) for v in (lower, upper, s2_frac * s0, z2_frac * s0)]


def _run(fn, x, params, bits, dim, grad):
    """Forward with codes, backward with grad; returns out, codes, grad_x, [param grads]."""
    x = x.detach().clone().requires_grad_()
    ps = [None if p is None else p.detach().clone().requires_grad_() for p in params]
    out, codes = fn(x, ps[0], ps[1], bits, ps[2], ps[3], dim, True)
    out.backward(grad)
    return out.detach(), codes, x.grad, [None if p is None else p.grad for p in ps]


def _step(params, bits):
    lower, upper, s2 = params[0].detach(), params[1].detach(), params[2]
    return ((upper - lower) / (2 ** bits - 1) + (0 if s2 is None else s2.detach())).item()


def assert_matches_ref(x, params, bits, dim=-1, seed=1):
    """STYLE.md section 8: codes at most one level off on a tiny fraction; gradients to the dtype's
    precision wherever no code moved; parameter gradients up to what the moved codes explain."""
    out_shape = list(x.shape)
    out_shape[dim] = next_pow2(out_shape[dim])
    grad = _x(out_shape, x.dtype, x.device, seed)
    out_t, codes_t, gx_t, gp_t = _run(hfq.hadamard_fake_quant_triton, x, params, bits, dim, grad)
    out_r, codes_r, gx_r, gp_r = _run(hadamard_fake_quant_ref, x, params, bits, dim, grad)
    assert out_t.shape == out_r.shape and out_t.dtype == x.dtype and codes_t.dtype == torch.uint8
    s = _step(params, bits)

    moved = codes_t != codes_r
    levels = (codes_t.int() - codes_r.int()).abs()
    assert levels.max() <= 1 and moved.sum() <= max(1, 1e-3 * moved.numel()), f"{moved.sum()} codes moved"
    torch.testing.assert_close(out_t[~moved].float(), out_r[~moved].float(), atol=1e-4 * s, rtol=2 ** -8,
                               equal_nan=True)
    assert ((out_t.float() - out_r.float()).nan_to_num().abs() <= 1.01 * s).all()

    # grad_x: rows (rotated vectors) none of whose codes moved must agree to the dtype's precision
    rot_axis = -1 if dim == -1 else -2
    row_ok = ~moved.any(rot_axis, keepdim=True)
    scale = grad.float().abs().max().item()
    rtol = GRAD_RTOL[x.dtype]
    diff = (gx_t.float() - gx_r.float()).abs()
    assert (diff <= rtol * (gx_r.float().abs() + scale) + 1e-6 * scale)[row_ok.expand_as(gx_r)].all()
    assert row_ok.float().mean() >= 0.95

    qmax = 2 ** bits - 1
    gsum = grad.float().abs().sum().item()
    for name, a, b in zip(PARAM_NAMES, gp_t, gp_r):
        if b is None:
            assert a is None, name
            continue
        # fp32 summation error (the step's terms reach qmax * |g|) + one level per moved code
        tol = 2e-6 * gsum * (qmax if name == "step_extra" else 3) + moved.sum().item() * (qmax + 1) * scale
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert abs(a.item() - b.item()) <= tol, f"{name}: triton {a.item()} vs ref {b.item()} (tol {tol})"
    return out_t, codes_t, gp_t


# (leading shape + rotated layout, dim, bits, (s2, z2) fractions): SwinIR-light's sizes
# (60 -> 64, 120 -> 128, head dim 10 -> 16, 64 tokens), row counts that are no multiple of the
# interpreter's 32-row tile, v's token axis (dim=-2) with and without padding.
CASES = [
    ((300, 60), -1, 4, (-0.3, 0.6)),
    ((2, 129, 120), -1, 3, (0.1, -0.4)),
    ((100, 64), -1, 8, (0.0, 0.0)),
    ((3, 45, 10), -1, 2, (-0.4, 0.7)),
    ((2, 2, 64, 10), -2, 4, (-0.3, 0.6)),
    ((3, 49, 10), -2, 3, (0.0, 0.0)),
    ((2, 16, 24), -2, 8, (0.2, -0.5)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim,bits,extras", CASES, ids=[f"{c[0]}-dim{c[1]}-b{c[2]}" for c in CASES])
def test_matches_ref(device, dtype, shape, dim, bits, extras):
    x = _x(shape, dtype, device, seed=len(shape) + bits)
    assert_matches_ref(x, _params(device, bits, *extras), bits, dim)


@pytest.mark.parametrize("c", [1, 2, 4, 8, 16, 32, 128])
def test_power_of_two_sizes(device, c):
    x = _x((40, c), torch.float32, device, seed=c)
    assert_matches_ref(x, _params(device, 4, -0.2, 0.5), 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_kernels_at_n256_when_enabled(device, dtype, monkeypatch):
    """C = 180 -> 256 runs the reference by default (MAX_N = 128); the kernels are written for it:
    on a GPU this test shows whether the compiled 256 case works before MAX_N is raised."""
    monkeypatch.setattr(hfq, "MAX_N", 256)
    called = []
    launch = hfq._launch_forward
    monkeypatch.setattr(hfq, "_launch_forward", lambda *a: called.append(1) or launch(*a))
    x = _x((40, 180), dtype, device, seed=180)
    assert_matches_ref(x, _params(device, 4, -0.2, 0.5), 4)
    assert called


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_bit_widths_on_grid_fp32(device, bits):
    params = _params(device, bits, -0.25, 0.4)
    x = _x((70, 60), torch.float32, device, seed=bits)
    out, codes, _ = assert_matches_ref(x, params, bits)
    s = _step(params, bits)
    z = (params[0] + params[3]).item()
    k = (out - z) / s
    torch.testing.assert_close(k, k.round(), atol=1e-4, rtol=0)
    assert k.round().equal(codes.float())
    assert codes.max() <= 2 ** bits - 1
    assert codes.max() == 2 ** bits - 1 and codes.min() == 0  # both ends saturate with these extras


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_exact_ties_round_half_to_even_and_bounds_pass_gradient(device, dtype):
    """Rotated values placed exactly on rounding ties and on l and u (x = target @ H is exact here,
    and so is its rotation): codes must be torch.round's (half to even) and the clip must pass
    gradient at x == l and x == u, as torch.clamp does."""
    lower, upper, bits = -2.0, 1.75, 4          # s = 0.25, z = -2: every tie is exact in fp32
    ties = lower + (torch.arange(15, dtype=torch.float64) + 0.5) * 0.25
    row = torch.cat([ties, torch.tensor([lower])])
    target = torch.stack([row.roll(i) for i in range(15)] + [torch.full((16,), upper, dtype=torch.float64)])
    x = (target @ hadamard_matrix(16, torch.float64)).to(dtype).to(device)
    params = _params(device, bits, lower=lower, upper=upper)
    out, codes, _ = assert_matches_ref(x, params, bits)
    want = torch.round((target - lower) / 0.25).clamp(0, 15)
    assert codes.cpu().equal(want.to(torch.uint8))
    _, codes_r = hadamard_fake_quant_ref(x, *params[:2], bits, return_codes=True)
    assert codes.equal(codes_r)
    x = x.detach().clone().requires_grad_()
    lo, hi = (p.detach().clone().requires_grad_() for p in params[:2])
    hfq.hadamard_fake_quant_triton(x, lo, hi, bits).sum().backward()
    # every rotated value is inside [l, u] (some equal to them), no code saturates: the all-ones
    # gradient reaches x whole (ones @ H = [4, 0, ...]) and l, u only through the step
    want_gx = torch.zeros(16, 16, device=device)
    want_gx[:, 0] = 4
    torch.testing.assert_close(x.grad.float(), want_gx, atol=1e-6, rtol=0)
    assert lo.grad.item() == -hi.grad.item()


def test_zero_extra_gradient_exactly_zero_at_dobi_start(device):
    x = _x((200, 60), torch.float32, device, seed=5)
    for bits in (2, 8):
        params = _params(device, bits)
        grad = _x((200, 64), torch.float32, device, seed=6)
        _, _, _, gp = _run(hfq.hadamard_fake_quant_triton, x, params, bits, -1, grad)
        assert gp[3].item() == 0.0 and gp[2].item() != 0.0


def test_none_extras_have_no_gradient(device):
    x = _x((90, 60), torch.float16, device)
    lower, upper, _, _ = _params(device, 4)
    assert_matches_ref(x, [lower, upper, None, None], 4)
    out = hfq.hadamard_fake_quant_triton(x, lower, upper, 4)
    zero = torch.zeros((), device=device)
    assert out.equal(hfq.hadamard_fake_quant_triton(x, lower, upper, 4, zero, zero))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter: inf - inf
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_finite_inputs(device, dtype):
    """inf clips (a lone inf saturates its whole rotated row), NaN propagates through its row;
    neither puts a NaN into any gradient, as the reference documents."""
    x = _x((64, 60), dtype, device, seed=3)
    x[3, 7] = float("inf")
    x[9, 0] = float("-inf")
    x[20, 59] = float("nan")
    params = _params(device, 4, -0.2, 0.5)
    out, codes, gp = assert_matches_ref(x, params, 4)
    out_r, codes_r = hadamard_fake_quant_ref(x, *params[:2], 4, params[2], params[3], -1, True)
    assert torch.isnan(out).equal(torch.isnan(out_r))
    assert torch.isnan(out[20]).all() and (codes[20] == 0).all()
    assert torch.isfinite(out[[3, 9]]).all()
    assert all(torch.isfinite(g) for g in gp)


def test_non_contiguous_inputs(device):
    base = _x((64, 4, 60), torch.float32, device, seed=8)
    params = _params(device, 4, -0.2, 0.3)
    x = base.transpose(0, 1)                      # (4, 64, 60), strided rows
    assert_matches_ref(x, params, 4, dim=-1)
    v = base[:, :, :10].transpose(1, 2)[:2]       # (2, 10, 4)... rotate a strided second-to-last axis
    assert not v.is_contiguous()
    assert_matches_ref(v, params, 4, dim=-2)


def test_no_grad_path_and_parameter_shapes(device):
    x = _x((33, 120), torch.float16, device)
    params = _params(device, 3, 0.1, 0.2)
    with torch.no_grad():
        fast = hfq.hadamard_fake_quant_triton(x, params[0], params[1], 3, params[2], params[3])
    out = hfq.hadamard_fake_quant_triton(x, *params[:2], 3, params[2], params[3])
    assert out.requires_grad and out.equal(fast)
    ps = [p.detach().reshape(1).requires_grad_() for p in params]  # the official code's (1,) shape
    hfq.hadamard_fake_quant_triton(x.float(), ps[0], ps[1], 3, ps[2], ps[3]).sum().backward()
    assert all(p.grad.shape == (1,) for p in ps)


def test_empty_and_unsupported(device):
    """No rows is fine; fp64, n > MAX_N and an empty rotated axis are refused by the launcher
    (the dispatcher sends them to the reference: test_dispatcher_falls_back_on_cuda)."""
    params = _params(device, 4)
    empty = hfq.hadamard_fake_quant_triton(torch.zeros(0, 60, device=device), params[0], params[1], 4)
    assert empty.shape == (0, 64)
    for x, dim in [(_x((20, 60), torch.float64, device), -1), (_x((4, 180), torch.float32, device), -1),
                   (torch.zeros(3, 0, 5, device=device), -2)]:
        assert not hfq.supports(x, dim)
        with pytest.raises(ValueError, match="reference"):
            hfq.hadamard_fake_quant_triton(x, params[0], params[1], 4, dim=dim)
    assert hfq.supports(_x((4, 128), torch.bfloat16, device), -1)


def test_argument_errors(device):
    x = _x((8, 60), torch.float32, device)
    lower, upper = torch.tensor(-1.0, device=device), torch.tensor(1.0, device=device)
    with pytest.raises(ValueError, match="bits"):
        hfq.hadamard_fake_quant_triton(x, lower, upper, 5)
    with pytest.raises(ValueError, match="dim"):
        hfq.hadamard_fake_quant_triton(x[None], lower, upper, 4, dim=0)
    with pytest.raises(ValueError, match="one-element"):
        hfq.hadamard_fake_quant_triton(x, torch.zeros(2, device=device), upper, 4)


def test_degenerate_step_rejected_on_cpu(device):
    if device.type == "cuda":
        pytest.skip("on CUDA the check is a device-side assert: see test_degenerate_step_asserts_on_cuda")
    x = _x((8, 60), torch.float32, device)
    lower, upper = torch.tensor(-1.0), torch.tensor(1.0)
    with pytest.raises(ValueError, match="step"):
        hfq.hadamard_fake_quant_triton(x, lower, upper, 4, torch.tensor(-0.2))
    with pytest.raises(ValueError, match="step"):
        hfq.hadamard_fake_quant_triton(x, upper, lower, 4)


@pytest.mark.cuda
def test_degenerate_step_asserts_on_cuda(device):
    if device.type != "cuda":
        pytest.skip("needs a CUDA GPU")
    code = ("import torch; from compsrt.kernels.hadamard_fake_quant_triton import hadamard_fake_quant_triton as f;"
            "x = torch.randn(8, 60, device='cuda'); l, u = torch.tensor(1.0, device='cuda'), torch.tensor(-1.0, device='cuda');"
            "f(x, l, u, 4); torch.cuda.synchronize()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    log = res.stdout + res.stderr
    assert res.returncode != 0 and ("step" in log or "device-side assert" in log), log[-2000:]


def test_dispatcher_uses_the_reference_on_cpu():
    x = _x((16, 60), torch.float32, "cpu")
    lower, upper = torch.tensor(-1.0), torch.tensor(1.0)
    assert hadamard_fake_quant(x, lower, upper, 4).equal(hadamard_fake_quant_ref(x, lower, upper, 4))


@pytest.mark.cuda
def test_dispatcher_falls_back_on_cuda(device):
    if device.type != "cuda":
        pytest.skip("needs a CUDA GPU")
    params = _params(device, 4)
    for x in (_x((20, 60), torch.float64, device), _x((4, 180), torch.float32, device)):
        got = hadamard_fake_quant(x, params[0], params[1], 4)
        assert got.equal(hadamard_fake_quant_ref(x, params[0], params[1], 4))


@pytest.mark.cuda
def test_dispatcher_uses_triton_on_cuda(device):
    if device.type != "cuda":
        pytest.skip("needs a CUDA GPU")
    x = _x((256, 60), torch.float16, device)
    params = _params(device, 4)
    got = hadamard_fake_quant(x, params[0], params[1], 4)
    assert got.equal(hfq.hadamard_fake_quant_triton(x, params[0], params[1], 4))
