"""The fused Triton window attention on integer codes against window_attention_int_ref.

Without a GPU the launcher runs on CPU tensors in Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 before this module imports the kernel); with one, compiled on CUDA tensors.
Codes equal the reference's except at rounding ties (the rotations' fp32 summation orders and the
softmax differ from PyTorch's by an ulp or so): the integer q.k^T accumulator is checked exactly
wherever no q or k code sits near a tie, and the output is close on all but a tiny fraction of
rows, those off by at most a couple of quantization steps.
"""
import pytest
import torch

pytest.importorskip("triton")

from compsrt.kernels import window_attention_int_triton as wa  # noqa: E402  (after the env is set)
from compsrt.kernels.hadamard import hadamard_ref  # noqa: E402
from compsrt.kernels.hadamard_quant import hadamard_quant_ref  # noqa: E402
from compsrt.kernels.packed_linear import int_bmm  # noqa: E402
from compsrt.kernels.window_attention_int import window_attention_int, window_attention_int_ref  # noqa: E402
from tie_tolerance import near_tie  # noqa: E402  (tests/kernels/tie_tolerance.py)


def _randn(shape, seed, std=1.0):
    return std * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _qkv(lead, n_tok, d, dtype, device, seed=0):
    """q, k, v (..., N, d) as SwinIR makes them: slices of one qkv tensor, permuted (strided)."""
    qkv = _randn((*lead[:-1], n_tok, 3, lead[-1], d), seed)           # (..., N, 3, heads, d)
    qkv = qkv.movedim(-3, 0).movedim(-2, -3).to(dtype).to(device)      # (3, ..., heads, N, d)
    return qkv[0], qkv[1], qkv[2]


def _qp(q, k, v, bias, scale, bits, keep_dc):
    """(4, 4) [l, u, s, z] per operand from its rotated values (2nd to 98th percentile), with the
    step of l..u and a zero point off l's grid: codes spread over the whole range."""
    qmax = 2 ** bits - 1
    rq = hadamard_ref(q.float() * scale, -1)
    rk = hadamard_ref(k.float(), -1)
    p = (rq @ rk.transpose(-2, -1) + bias.float()).softmax(-1)
    ra = hadamard_ref(p, -1)
    rv = hadamard_ref(v.float(), -2)
    rows = []
    for r in (rq, rk, ra, rv):
        if keep_dc:  # the DC is not quantized: fit the rest
            r = r[..., 1:] if r is not rv else r[..., 1:, :]
        lo, hi = torch.quantile(r.flatten().cpu()[:100000], torch.tensor([0.02, 0.98])).tolist()
        s = (hi - lo) / qmax
        rows.append([lo, hi, s, lo - 0.37 * s])
    return torch.tensor(rows, device=q.device)


def assert_matches_ref(q, k, v, bias, bits, keep_dc, qp=None):
    lead, n_tok, d = q.shape[:-2], q.shape[-2], q.shape[-1]
    scale = d ** -0.5
    if qp is None:
        qp = _qp(q, k, v, bias, scale, bits, keep_dc)
    acc = torch.empty((*lead, n_tok, n_tok), dtype=torch.int32, device=q.device)
    out = wa.window_attention_int_triton(q, k, v, bias, scale, qp, bits, keep_dc, qk_acc_out=acc)
    out_r = window_attention_int_ref(q, k, v, bias, scale, qp, bits, keep_dc)
    assert out.dtype == torch.float32 and out.shape == out_r.shape and out.is_contiguous()

    # the integer q.k^T accumulator: exact wherever neither operand's row holds a near-tie
    qmax = 2 ** bits - 1
    qs = q * scale
    cq, _ = hadamard_quant_ref(qs, qp[0], bits, -1, keep_dc)
    ck, _ = hadamard_quant_ref(k, qp[1], bits, -1, keep_dc)
    acc_r = int_bmm(cq, ck.transpose(-2, -1), qmax, qmax)
    tie_q = near_tie(qs, qp[0], -1).any(-1)
    tie_k = near_tie(k, qp[1], -1).any(-1)
    clean = ~(tie_q[..., :, None] | tie_k[..., None, :])
    assert clean.float().mean() >= 0.95                 # one near-tie row hides 1/N of a window
    assert acc[clean].equal(acc_r[clean])

    # output: rows off by more than 1e-4 are the rare rounding ties of the probabilities' codes,
    # and each is off by at most a couple of steps (one attn level moves a row by s_a |v_hat|, one
    # v level a column by s_v |a_hat|)
    diff = (out - out_r).abs()
    bad_rows = (diff.amax(-1) > 1e-4).sum().item()
    rows = diff.numel() // d
    assert bad_rows < 0.01 * rows, f"{bad_rows} of {rows} rows differ"
    v_hat = hadamard_ref(v.float(), -2).abs().amax().item()
    a_hat = max(abs(qp[2, 0].item()), abs(qp[2, 1].item()))
    step = qp[2, 2].item() * v_hat + qp[3, 2].item() * a_hat
    assert diff.max().item() <= 2 * step
    return out, acc


# (lead = (..., heads), tokens N, head dim d, bits, keep_dc, dtype): SwinIR-light's windows
# (64 tokens, d = 10 -> 16), a 16-token window, a window of 7 x 7 tokens (49 -> 64), the largest
# head dim (32), every bit width, the exact DC on and off.
CASES = [
    ((2, 3), 64, 10, 4, True, torch.float32),
    ((2, 3), 64, 10, 2, False, torch.float32),
    ((1, 2, 2), 64, 10, 3, True, torch.float16),
    ((2, 2), 64, 10, 4, False, torch.bfloat16),
    ((3, 2), 16, 10, 4, False, torch.float32),
    ((2, 2), 16, 8, 3, True, torch.float16),
    ((1, 3), 49, 10, 4, True, torch.float32),
    ((1, 2), 64, 32, 4, True, torch.float32),
]


@pytest.mark.parametrize("lead,n_tok,d,bits,keep_dc,dtype", CASES,
                         ids=[f"{c[0]}-N{c[1]}-d{c[2]}-b{c[3]}-{'dc' if c[4] else 'ac'}-{str(c[5])[6:]}"
                              for c in CASES])
def test_matches_ref(device, lead, n_tok, d, bits, keep_dc, dtype):
    q, k, v = _qkv(lead, n_tok, d, dtype, device, seed=n_tok + d + bits)
    bias = _randn((lead[-1], n_tok, n_tok), seed=1, std=2.0).to(device)   # relative-position bias per head
    assert not q.is_contiguous()
    assert_matches_ref(q, k, v, bias, bits, keep_dc)


def test_shifted_windows_bias_per_window(device):
    """SwinIR's shifted windows: q (B, nW, heads, N, d) and a bias (nW, heads, N, N) holding the
    relative-position bias plus the -100 shift mask, read through its broadcast strides."""
    b, n_w, heads, n_tok, d = 2, 3, 2, 64, 10
    q, k, v = _qkv((b, n_w, heads), n_tok, d, torch.float32, device, seed=5)
    rpb = _randn((heads, n_tok, n_tok), seed=6, std=2.0)
    groups = torch.arange(n_tok)[None, :] // 16 + torch.arange(n_w)[:, None]      # (nW, N) region ids
    mask = torch.where(groups[:, :, None] == groups[:, None, :], 0.0, -100.0)      # (nW, N, N)
    bias = (rpb[None] + mask[:, None]).to(device)
    out, _ = assert_matches_ref(q, k, v, bias, 4, True)
    # the same bias as (B, nW, heads, N, N) materialized gives the same result
    full = bias.expand(b, n_w, heads, n_tok, n_tok).contiguous()
    qp = _qp(q, k, v, bias, d ** -0.5, 4, True)
    again = wa.window_attention_int_triton(q, k, v, full, d ** -0.5, qp, 4, True)
    assert again.equal(wa.window_attention_int_triton(q, k, v, bias, d ** -0.5, qp, 4, True))


@pytest.mark.parametrize("bias_dtype,mask_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                                   (torch.bfloat16, torch.float32)])
def test_shift_mask_apart(device, bias_dtype, mask_dtype):
    """The shift mask given apart ((nW, 1, N, N), broadcast over batch and heads) is added to the
    (heads, N, N) bias in-kernel: the same bits as the bias + mask summed by torch first, in their
    promoted dtype, and the reference with the mask apart agrees with the reference summed."""
    b, n_w, heads, n_tok, d = 2, 3, 2, 64, 10
    q, k, v = _qkv((b, n_w, heads), n_tok, d, torch.float32, device, seed=7)
    rpb = _randn((heads, n_tok, n_tok), seed=8, std=2.0).to(bias_dtype).to(device)
    groups = torch.arange(n_tok)[None, :] // 16 + torch.arange(n_w)[:, None]
    mask = torch.where(groups[:, :, None] == groups[:, None, :], 0.0, -100.0).to(mask_dtype).to(device)
    summed = rpb + mask[:, None]
    qp = _qp(q, k, v, summed, d ** -0.5, 4, True)
    apart = wa.window_attention_int_triton(q, k, v, rpb, d ** -0.5, qp, 4, True, mask=mask[:, None])
    assert apart.equal(wa.window_attention_int_triton(q, k, v, summed, d ** -0.5, qp, 4, True))
    ref = window_attention_int_ref(q, k, v, rpb, d ** -0.5, qp, 4, True, mask=mask[:, None])
    assert ref.equal(window_attention_int_ref(q, k, v, summed, d ** -0.5, qp, 4, True))
    # and the mask matters: without it the output is another one
    assert not apart.equal(wa.window_attention_int_triton(q, k, v, rpb, d ** -0.5, qp, 4, True))
    with pytest.raises(ValueError, match="mask of shape"):
        wa.window_attention_int_triton(q, k, v, rpb, d ** -0.5, qp, 4, True, mask=mask)   # (nW, N, N): not over heads
    with pytest.raises(ValueError, match="mask must be"):
        wa.window_attention_int_triton(q, k, v, rpb, d ** -0.5, qp, 4, True, mask=mask.bool()[:, None])


def test_more_than_three_leading_dims(device):
    """Leading dims beyond three are merged; the bias broadcasts over the outer ones."""
    q, k, v = _qkv((2, 1, 2, 2), 16, 10, torch.float32, device, seed=3)
    bias = _randn((2, 2, 16, 16), seed=4).to(device)
    out, _ = assert_matches_ref(q, k, v, bias, 4, True)
    assert out.shape == (2, 1, 2, 2, 16, 10)


def test_fp16_bias_and_cpu_qp(device):
    q, k, v = _qkv((2, 2), 64, 10, torch.float16, device, seed=9)
    bias = _randn((2, 64, 64), seed=10).half().to(device)
    qp = _qp(q, k, v, bias, 10 ** -0.5, 4, False)
    assert_matches_ref(q, k, v, bias, 4, False, qp)
    out = wa.window_attention_int_triton(q, k, v, bias, 10 ** -0.5, qp, 4, False)
    assert out.equal(wa.window_attention_int_triton(q, k, v, bias, 10 ** -0.5, qp.cpu(), 4, False))


def test_empty_and_argument_errors(device):
    q, k, v = _qkv((1, 2), 64, 10, torch.float32, device)
    bias = torch.zeros(2, 64, 64, device=device)
    qp = _qp(q, k, v, bias, 10 ** -0.5, 4, True)
    empty = torch.zeros(0, 2, 64, 10, device=device)
    assert wa.window_attention_int_triton(empty, empty, empty, bias, 0.3, qp, 4, True).shape == (0, 2, 64, 10)
    with pytest.raises(ValueError, match="bits"):
        wa.window_attention_int_triton(q, k, v, bias, 0.3, qp, 8, True)
    with pytest.raises(ValueError, match="shape"):
        wa.window_attention_int_triton(q, k[..., :8], v, bias, 0.3, qp, 4, True)
    with pytest.raises(ValueError, match="dtype"):
        wa.window_attention_int_triton(q, k.half(), v, bias, 0.3, qp, 4, True)
    with pytest.raises(ValueError, match="N <= 64"):
        big = torch.zeros(1, 1, 128, 10, device=device)
        wa.window_attention_int_triton(big, big, big, torch.zeros(128, 128, device=device), 0.3, qp, 4, True)
    with pytest.raises(ValueError, match="d <= 32"):
        wide = torch.zeros(1, 1, 64, 48, device=device)
        wa.window_attention_int_triton(wide, wide, wide, bias[0], 0.3, qp, 4, True)
    with pytest.raises(ValueError, match="broadcast"):
        wa.window_attention_int_triton(q, k, v, torch.zeros(3, 64, 64, device=device), 0.3, qp, 4, True)
    with pytest.raises(ValueError, match="qp"):
        wa.window_attention_int_triton(q, k, v, bias, 0.3, qp[:3], 4, True)
    with pytest.raises(ValueError, match="qk_acc_out"):
        wa.window_attention_int_triton(q, k, v, bias, 0.3, qp, 4, True,
                                       qk_acc_out=torch.empty(1, 2, 64, 64, device=device))


def test_dispatcher_uses_the_reference_on_cpu():
    q, k, v = _qkv((1, 2), 16, 10, torch.float32, "cpu")
    bias = torch.zeros(2, 16, 16)
    qp = _qp(q, k, v, bias, 10 ** -0.5, 4, True)
    got = window_attention_int(q, k, v, bias, 10 ** -0.5, qp, 4, True)
    assert got.equal(window_attention_int_ref(q, k, v, bias, 10 ** -0.5, qp, 4, True))


@pytest.mark.cuda
def test_dispatcher_uses_triton_on_cuda(device):
    if device.type != "cuda":
        pytest.skip("needs a CUDA GPU")
    q, k, v = _qkv((4, 6), 64, 10, torch.float16, device)
    bias = torch.zeros(6, 64, 64, device=device)
    qp = _qp(q, k, v, bias, 10 ** -0.5, 4, True)
    got = window_attention_int(q, k, v, bias, 10 ** -0.5, qp, 4, True)
    assert got.equal(wa.window_attention_int_triton(q, k, v, bias, 10 ** -0.5, qp, 4, True))


def test_step_bound_is_meaningful():
    """The output tolerance (two steps) is far below the output's own scale: a wrong kernel fails."""
    q, k, v = _qkv((1, 2), 64, 10, torch.float32, "cpu", seed=2)
    bias = torch.zeros(2, 64, 64)
    qp = _qp(q, k, v, bias, 10 ** -0.5, 4, True)
    out = window_attention_int_ref(q, k, v, bias, 10 ** -0.5, qp, 4, True)
    step = qp[2, 2].item() * hadamard_ref(v, -2).abs().amax().item() + qp[3, 2].item() * qp[2, :2].abs().max().item()
    assert 2 * step < 0.5 * out.abs().amax().item()
