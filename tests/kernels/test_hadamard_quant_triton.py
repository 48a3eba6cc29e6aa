"""The fused Triton launcher hadamard_quant_triton against hadamard_quant_ref: codes and DC.

Without a GPU the launcher runs on CPU tensors in Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 before this module imports the kernels); with one, compiled on CUDA tensors.
Codes must equal the reference's except at rounding ties: every code that differs is checked to
sit on a tie of the exact (fp64) rotation, where two fp32 summation orders may round either way.
"""
import pytest
import torch

pytest.importorskip("triton")

from compsrt.kernels import hadamard_quant_triton as hq  # noqa: E402  (after the env is set)
from compsrt.kernels.hadamard import hadamard_matrix, next_pow2  # noqa: E402
from compsrt.kernels.hadamard_fake_quant_triton import hadamard_fake_quant_triton  # noqa: E402
from compsrt.kernels.hadamard_quant import hadamard_quant, hadamard_quant_ref, quant_params  # noqa: E402
from tie_tolerance import near_tie  # noqa: E402  (tests/kernels/tie_tolerance.py)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _x(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(shape, generator=g)).to(dtype).to(device)


def _qp(bits, lower=-2.0, upper=2.5, zero_frac=0.3, device="cpu"):
    """[l, u, s, z] with the DOBI step and a zero point off the grid of l."""
    s = (upper - lower) / (2 ** bits - 1)
    return torch.tensor([lower, upper, s, lower + zero_frac * s], device=device)


def assert_matches_ref(x, qp, bits, dim=-1, keep_dc=False):
    codes, dc = hq.hadamard_quant_triton(x, qp, bits, dim, keep_dc)
    codes_r, dc_r = hadamard_quant_ref(x, qp, bits, dim, keep_dc)
    assert codes.dtype == torch.int8 and codes.shape == codes_r.shape and codes.is_contiguous()
    moved = codes != codes_r
    if moved.any():
        assert (codes.int() - codes_r.int()).abs().max() <= 1
        assert moved.sum() <= max(1, 1e-3 * moved.numel()), f"{moved.sum()} codes moved"
        assert near_tie(x, qp, dim)[moved].all(), "a code moved away from a rounding tie"
    if not keep_dc:
        assert dc is None and dc_r is None
    else:
        assert dc.dtype == torch.float32 and dc.shape == dc_r.shape
        scale = x.float().nan_to_num(0.0, 0.0, 0.0).abs().amax().item() * next_pow2(x.shape[dim]) ** 0.5
        torch.testing.assert_close(dc, dc_r, atol=1e-6 * scale, rtol=0, equal_nan=True)
        axis = -1 if dim in (-1, x.ndim - 1) else -2
        assert (codes.select(axis, 0) == 0).all()
    return codes, dc


# (shape, dim, bits): SwinIR-light's sizes (60 -> 64, 120 -> 128, head dim 10 -> 16, 64 tokens
# along v's token axis), row counts that are no multiple of the interpreter's 32-row tile.
CASES = [
    ((300, 60), -1, 4),
    ((2, 129, 120), -1, 3),
    ((100, 64), -1, 2),
    ((3, 45, 10), -1, 4),
    ((2, 2, 64, 10), -2, 4),
    ((3, 49, 10), -2, 3),
]


@pytest.mark.parametrize("keep_dc", [False, True], ids=["ac", "dc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim,bits", CASES, ids=[f"{c[0]}-dim{c[1]}-b{c[2]}" for c in CASES])
def test_matches_ref(device, dtype, shape, dim, bits, keep_dc):
    x = _x(shape, dtype, device, seed=len(shape) + bits)
    assert_matches_ref(x, _qp(bits, device=device), bits, dim, keep_dc)


@pytest.mark.parametrize("c", [1, 3, 16, 32, 128])
def test_sizes(device, c):
    assert_matches_ref(_x((40, c), torch.float32, device, seed=c), _qp(4, device=device), 4, -1, c > 1)


def test_agrees_with_the_fake_quant_kernel(device):
    """Same rotation, rounding and clamp: with s = (u - l) / qmax and z = l, the fake-quant
    kernel's codes are these codes."""
    x = _x((130, 60), torch.float32, device, seed=11)
    lo, hi = torch.tensor(-1.7, device=device), torch.tensor(2.1, device=device)
    qp = quant_params(lo, hi, (hi - lo) / 15, lo)
    codes, _ = hq.hadamard_quant_triton(x, qp, 4)
    _, codes_fq = hadamard_fake_quant_triton(x, lo, hi, 4, return_codes=True)
    assert codes.equal(codes_fq.to(torch.int8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_exact_ties_round_half_to_even(device, dtype):
    """Rotated values placed exactly on rounding ties and on l and u (exact in fp32 here): codes
    must be torch.round's (half to even)."""
    lower, upper, bits = -2.0, 1.75, 4          # s = 0.25, z = -2: every tie is exact in fp32
    ties = lower + (torch.arange(15, dtype=torch.float64) + 0.5) * 0.25
    row = torch.cat([ties, torch.tensor([lower])])
    target = torch.stack([row.roll(i) for i in range(15)] + [torch.full((16,), upper, dtype=torch.float64)])
    x = (target @ hadamard_matrix(16, torch.float64)).to(dtype).to(device)
    qp = torch.tensor([lower, upper, 0.25, lower], device=device)
    codes, _ = hq.hadamard_quant_triton(x, qp, bits)
    want = torch.round((target - lower) / 0.25).clamp(0, 15).to(torch.int8)
    assert codes.cpu().equal(want)
    assert codes.equal(hadamard_quant_ref(x, qp, bits)[0])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter: inf - inf
def test_non_finite_inputs(device):
    """A lone inf saturates its rotated row; a NaN row gets code 0 (and a NaN DC), as the ref."""
    x = _x((64, 60), torch.float32, device, seed=3)
    x[3, 7] = float("inf")
    x[9, 0] = float("-inf")
    x[20, 59] = float("nan")
    qp = _qp(4, device=device)
    codes, dc = assert_matches_ref(x, qp, 4, -1, True)
    assert (codes[20] == 0).all() and torch.isnan(dc[20]).all()
    assert ((codes[3, 1:] == 0) | (codes[3, 1:] == 15)).all()


def test_non_contiguous_inputs(device):
    base = _x((64, 4, 60), torch.float16, device, seed=8)
    qp = _qp(3, device=device)
    assert_matches_ref(base.transpose(0, 1), qp, 3, -1, True)        # (4, 64, 60), strided rows
    v = base[:, :, :10].transpose(1, 2)[:2]                           # (2, 10, 4), strided axis -2
    assert not v.is_contiguous()
    assert_matches_ref(v, qp, 3, -2, True)


def test_qp_is_read_on_the_device(device):
    """qp is a device tensor read in-kernel: a new value in the same tensor changes the codes, and
    a CPU qp is moved to x's device."""
    x = _x((50, 60), torch.float32, device, seed=4)
    qp = _qp(4, device=device)
    first, _ = hq.hadamard_quant_triton(x, qp, 4)
    qp[3] -= qp[2]                                        # z one step lower: codes one higher
    second, _ = hq.hadamard_quant_triton(x, qp, 4)
    assert second.equal(hadamard_quant_ref(x, qp, 4)[0]) and not second.equal(first)
    assert hq.hadamard_quant_triton(x, qp.cpu(), 4)[0].equal(second)


def test_empty_and_argument_errors(device):
    qp = _qp(4, device=device)
    codes, dc = hq.hadamard_quant_triton(torch.zeros(0, 60, device=device), qp, 4, keep_dc=True)
    assert codes.shape == (0, 64) and dc.shape == (0, 1)
    x = _x((8, 60), torch.float32, device)
    with pytest.raises(ValueError, match="bits"):
        hq.hadamard_quant_triton(x, qp, 8)
    with pytest.raises(ValueError, match="dim"):
        hq.hadamard_quant_triton(x[None], qp, 4, dim=0)
    with pytest.raises(ValueError, match="qp"):
        hq.hadamard_quant_triton(x, qp[:3], 4)
    for bad in (x.double(), _x((8, 180), torch.float32, device)):
        assert not hq.supports(bad, -1)
        with pytest.raises(ValueError, match="takes"):
            hq.hadamard_quant_triton(bad, qp, 4)


def test_dispatcher_uses_the_reference_on_cpu():
    x = _x((16, 60), torch.float32, "cpu")
    qp = _qp(4)
    got, ref = hadamard_quant(x, qp, 4, -1, True), hadamard_quant_ref(x, qp, 4, -1, True)
    assert got[0].equal(ref[0]) and got[1].equal(ref[1])


@pytest.mark.cuda
def test_dispatcher_uses_triton_on_cuda(device):
    if device.type != "cuda":
        pytest.skip("needs a CUDA GPU")
    x = _x((256, 60), torch.float16, device)
    qp = _qp(4, device=device)
    assert hadamard_quant(x, qp, 4)[0].equal(hq.hadamard_quant_triton(x, qp, 4)[0])
