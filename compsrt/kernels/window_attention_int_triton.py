"""Fused Triton kernel: SwinIR window attention with both products on int8 codes.

Matches :func:`compsrt.kernels.window_attention_int.window_attention_int_ref` (the formulas are in
:mod:`compsrt.kernels.window_attention_int`): codes identical except at rounding ties, where the
fp32 rotations or the softmax round differently from PyTorch's. One program per (window, head):
it loads the q, k, v tiles and the bias tile, rotates q, k along the head dim and v along its
tokens (exact +-1 products, :mod:`compsrt.kernels._triton_common`), quantizes them to codes,
multiplies the q and k codes as an int8 ``tl.dot`` into int32, applies the fp32 epilogue (scales,
code sums, zero points, the DC rank-1 term) and the bias, takes the softmax in registers, rotates
the probabilities along the keys by H (fp32 as three exact bf16 pieces), quantizes them, multiplies
them with v's codes (int8 ``tl.dot``) and writes the fp32 epilogue. The N x N scores never reach
memory. Own constraints:

- q, k, v: one dtype of fp32, fp16, bf16, same shape (..., N, d), any strides, with N <= 64
  tokens and d <= 32 (SwinIR-light: N = 64, d = 10); q is scaled in its own dtype, as the ref.
- bias: fp32/fp16/bf16, broadcastable to (..., N, N), read through its broadcast strides (a
  (heads, N, N) bias is never copied per window; neither is (nW, heads, N, N) against q of shape
  (B, nW, heads, N, d)). Leading dims beyond three are merged first (a copy if they do not merge).
- Tiles are at least 32 wide along the head dim and the tokens (padded with zero codes): int8
  ``tl.dot`` needs K >= 32 on NVIDIA GPUs.
- Under ``TRITON_INTERPRET=1`` the int8 ``tl.dot`` is exact (integer numpy product; Triton 3.9),
  so the interpreter runs the same code; only the bf16 pieces of the rotations are multiplied as
  fp32 there (:func:`compsrt.kernels._triton_common.dot_dtype`).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_common import FLOAT_DTYPES, cast_out, code_of, dot_dtype, dot_pm1, exact_bf16, load_qp, pm1_dot, \
    quantize, sylvester_block
from .hadamard import next_pow2

MAX_TOKENS = 64   # N: a 64 x 64 fp32 tile of scores per program
MAX_HEAD_DIM = 32


@triton.jit
def _load_tile(base, rows, stride_r, rows_ok, cols, stride_c, cols_ok):
    """The (rows, cols) tile at base (element strides stride_r, stride_c), 0 outside rows_ok x cols_ok."""
    return tl.load(base + rows[:, None] * stride_r + cols[None, :] * stride_c,
                   mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)


@triton.jit
def _rotated_codes(x, h, LEFT: tl.constexpr, SPLIT: tl.constexpr, DOT: tl.constexpr, INV_SQRT: tl.constexpr,
                   in_rotation, qp_ptr, ROW: tl.constexpr, qmax):
    """(xr, codes, s, z): x rotated by H (h / sqrt(n)) along its columns (x H) or, LEFT, its rows
    (H x; H is symmetric), its fp32 codes under row ROW of the quantizer table (0 where not
    in_rotation: the padding), and that row's step and zero point."""
    if LEFT:
        xr = pm1_dot(h, x, SPLIT, DOT) * INV_SQRT
    else:
        xr = dot_pm1(x, h, SPLIT, DOT) * INV_SQRT
    lo, hi, s, z = load_qp(qp_ptr, ROW)
    _, _, c = quantize(xr, lo, hi, s, z, qmax)
    return xr, tl.where(in_rotation, code_of(c), 0.0), s, z


@triton.jit
def _int_product(ar, ca, sa, za, br, cb, sb, zb, k_idx, count, KEEP_DC: tl.constexpr):
    """(acc, y) for a @ b from the codes ca (M, K) and cb (K, N) of the rotated ar and br (k_idx:
    the K coordinate): acc the exact int32 product of the codes, y the reference's fp32 epilogue,
    term by term in its order (no FMA: enable_fp_fusion=False). With KEEP_DC, coefficient 0 of K
    takes no code but the exact rank-1 term. count: the quantized coefficients per sum over K."""
    if KEEP_DC:
        da = tl.sum(tl.where(k_idx[None, :] == 0, ar, 0.0), axis=1)    # exact: one non-zero term
        db = tl.sum(tl.where(k_idx[:, None] == 0, br, 0.0), axis=0)
        ca = tl.where(k_idx[None, :] == 0, 0.0, ca)
        cb = tl.where(k_idx[:, None] == 0, 0.0, cb)
    acc = tl.dot(ca.to(tl.int8), cb.to(tl.int8), out_dtype=tl.int32)   # exact
    sum_a = tl.sum(ca, axis=1)
    sum_b = tl.sum(cb, axis=0)
    y = acc.to(tl.float32) * (sa * sb) + sum_a[:, None] * (sa * zb) + sum_b[None, :] * (za * sb) \
        + za * zb * count
    if KEEP_DC:
        y = y + da[:, None] * db[None, :]
    return acc, y


@triton.jit(do_not_specialize=["G1", "G2"])
def _window_attention_int_kernel(
    q_ptr, k_ptr, v_ptr,     # (G0, G1, G2, L, D) inputs (one dtype), element strides stride_{q,k,v}{0,1,2,l,d}
    bias_ptr,                # (G0, G1, G2, L, L) float bias view, strides stride_b{0,1,2,l,m} (0 where broadcast)
    mask_ptr,                # the same for the shift mask, strides stride_m{0,1,2,l,n} (only if HAS_MASK)
    out_ptr,                 # fp32 output, contiguous (G0 * G1 * G2, L, D)
    qk_ptr,                  # int32 (G0 * G1 * G2, L, L) q.k^T accumulator, contiguous (only if WRITE_QK)
    qp_ptr,                  # fp32 (4, 4) contiguous: rows q, k, attn, v, each [l, u, s, z]
    G1, G2,                  # sizes of the 2nd and 3rd leading dims (program id -> (i0, i1, i2))
    L, D,                    # tokens per window, head dim
    stride_q0, stride_q1, stride_q2, stride_ql, stride_qd,
    stride_k0, stride_k1, stride_k2, stride_kl, stride_kd,
    stride_v0, stride_v1, stride_v2, stride_vl, stride_vd,
    stride_b0, stride_b1, stride_b2, stride_bl, stride_bm,
    stride_m0, stride_m1, stride_m2, stride_ml, stride_mn,
    scale,                   # q's scale d^-0.5 (fp32)
    qmax,                    # 2^bits - 1, as a float
    count_d,                 # quantized coefficients per head-dim sum: D_N - KEEP_DC, as a float
    count_l,                 # quantized coefficients per key sum: L_N - KEEP_DC, as a float
    D_N: tl.constexpr,           # next_pow2(D): the head-dim rotation size
    DP: tl.constexpr,            # head-dim tile width max(D_N, 32)
    L_N: tl.constexpr,           # next_pow2(L): the token rotation size
    LP: tl.constexpr,            # token tile width max(L_N, 32)
    INV_SQRT_D: tl.constexpr,    # 1 / sqrt(D_N)
    INV_SQRT_L: tl.constexpr,    # 1 / sqrt(L_N)
    KEEP_DC: tl.constexpr,       # coefficient 0 of every rotation stays fp32 (exact_dc), its code 0
    IN_SPLIT: tl.constexpr,      # q, k, v are fp32: rotate them as three exact bf16 pieces
    IN_DOT: tl.constexpr,        # operand type of their +-1 products
    P_DOT: tl.constexpr,         # operand type of the probabilities' (fp32, split) +-1 products
    WRITE_QK: tl.constexpr,      # store the int32 q.k^T accumulator to qk_ptr (tests)
    HAS_MASK: tl.constexpr,      # add the mask tile to the bias tile (in the bias's dtype, as torch)
):
    g = tl.program_id(0).to(tl.int64)
    i2 = g % G2
    t = g // G2
    i1 = t % G1
    i0 = t // G1
    tok = tl.arange(0, LP)       # queries along rows, keys along columns
    hd = tl.arange(0, DP)
    tok_ok = tok < L
    hd_ok = hd < D
    h_d = sylvester_block(D_N, DP)
    h_l = sylvester_block(L_N, LP)

    # logits: q s rotated along d (LP, DP) times k^T rotated along d (DP, LP; H symmetric: (k H)^T = H k^T)
    q_base = q_ptr + i0 * stride_q0 + i1 * stride_q1 + i2 * stride_q2
    x = _load_tile(q_base, tok, stride_ql, tok_ok, hd, stride_qd, hd_ok)
    xs = cast_out(x.to(tl.float32) * scale, q_ptr.dtype.element_ty)  # the ref scales in q's dtype
    qr, cq, sq, zq = _rotated_codes(xs, h_d, False, IN_SPLIT, IN_DOT, INV_SQRT_D, hd[None, :] < D_N, qp_ptr, 0, qmax)
    k_base = k_ptr + i0 * stride_k0 + i1 * stride_k1 + i2 * stride_k2
    x = _load_tile(k_base, hd, stride_kd, hd_ok, tok, stride_kl, tok_ok)
    krt, ckt, sk, zk = _rotated_codes(x, h_d, True, IN_SPLIT, IN_DOT, INV_SQRT_D, hd[:, None] < D_N, qp_ptr, 1, qmax)
    acc, y = _int_product(qr, cq, sq, zq, krt, ckt, sk, zk, hd, count_d, KEEP_DC)
    if WRITE_QK:
        tl.store(qk_ptr + g * L * L + tok[:, None] * L + tok[None, :], acc,
                 mask=tok_ok[:, None] & tok_ok[None, :])
    b_base = bias_ptr + i0 * stride_b0 + i1 * stride_b1 + i2 * stride_b2
    bias = _load_tile(b_base, tok, stride_bl, tok_ok, tok, stride_bm, tok_ok)
    if HAS_MASK:   # bias + mask rounded to their (common) dtype: torch's sum, bit for bit
        m_base = mask_ptr + i0 * stride_m0 + i1 * stride_m1 + i2 * stride_m2
        m = _load_tile(m_base, tok, stride_ml, tok_ok, tok, stride_mn, tok_ok)
        bias = cast_out(bias.to(tl.float32) + m.to(tl.float32), bias_ptr.dtype.element_ty)
    y = y + bias.to(tl.float32)
    y = tl.where(tok_ok[None, :], y, float("-inf"))              # padded keys take no probability
    e = tl.exp(y - tl.max(y, axis=1)[:, None])
    p = e / tl.sum(e, axis=1)[:, None]

    # output: p rotated along the keys (LP, LP) times v rotated along its tokens (LP, DP)
    pr, ca, sa, za = _rotated_codes(p, h_l, False, True, P_DOT, INV_SQRT_L, tok[None, :] < L_N, qp_ptr, 2, qmax)
    v_base = v_ptr + i0 * stride_v0 + i1 * stride_v1 + i2 * stride_v2
    x = _load_tile(v_base, tok, stride_vl, tok_ok, hd, stride_vd, hd_ok)
    vr, cv, sv, zv = _rotated_codes(x, h_l, True, IN_SPLIT, IN_DOT, INV_SQRT_L, tok[:, None] < L_N, qp_ptr, 3, qmax)
    _, o = _int_product(pr, ca, sa, za, vr, cv, sv, zv, tok, count_l, KEEP_DC)
    tl.store(out_ptr + g * L * D + tok[:, None] * D + hd[None, :], o, mask=tok_ok[:, None] & hd_ok[None, :])


def _as_5d(t: Tensor) -> Tensor:
    """(..., R, S) with exactly three leading dims: size-1 dims prepended (a view), or the extra
    outer dims merged (a view where their strides allow)."""
    lead = t.ndim - 2
    if lead <= 3:
        return t.reshape((1,) * (3 - lead) + tuple(t.shape))
    return t.reshape(-1, *t.shape[-4:])


def window_attention_int_triton(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, qp: Tensor, bits: int,
                                keep_dc: bool, *, mask: Tensor | None = None,
                                qk_acc_out: Tensor | None = None) -> Tensor:
    """Matches :func:`window_attention_int_ref`, fused: the scores stay in registers.

    Args:
        q, k, v: (..., N, d), one dtype of fp32/fp16/bf16, any strides (q unscaled); N <= 64,
            d <= 32. CUDA, or CPU under ``TRITON_INTERPRET=1``.
        bias: fp32/fp16/bf16 broadcastable to (..., N, N), e.g. (heads, N, N) or, for q of shape
            (B, nW, heads, N, d), (nW, heads, N, N): relative-position bias (plus the shift mask,
            unless ``mask`` brings it).
        mask: None or fp32/fp16/bf16 broadcastable to (..., N, N), e.g. (nW, 1, N, N) for q of
            shape (B, nW, heads, N, d): the shift mask, read through its own broadcast strides and
            added to the bias tile in-kernel (``bias + mask`` in their promoted dtype), so the
            (nW, heads, N, N) sum is never built.
        scale: d ** -0.5.
        qp: (4, 4) fp32, rows q, k, attn, v, each ``[l, u, s, z]``; read in-kernel.
        bits: activation bits (2, 3 or 4).
        keep_dc: the exact DC (QuantConfig.exact_dc).
        qk_acc_out: optional int32 (..., N, N) contiguous: receives the integer q.k^T accumulator
            (the codes' product before its epilogue), for tests.
    Returns:
        fp32 (..., N, d), contiguous.
    Raises:
        ValueError: bits not in (2, 3, 4), mismatched shapes or dtypes, N > 64, d > 32, a bias or
            mask that does not broadcast, qp not of 16 elements, or a bad qk_acc_out.

    Example:
        >>> out = window_attention_int_triton(q, k, v, rpb, 10 ** -0.5, qp, 4, True)  # q: (B, 6, 64, 10)
    """
    if bits not in (2, 3, 4):
        raise ValueError(f"bits must be 2, 3 or 4, got {bits}")
    if q.ndim < 2 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one shape (..., N, d), got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.dtype not in FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype of fp32/fp16/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    n_tok, d = q.shape[-2], q.shape[-1]
    if not (1 <= n_tok <= MAX_TOKENS and 1 <= d <= MAX_HEAD_DIM):
        raise ValueError(f"the fused kernel takes N <= {MAX_TOKENS} tokens and head dim d <= {MAX_HEAD_DIM}, "
                         f"got N={n_tok}, d={d}")
    if bias.dtype not in FLOAT_DTYPES:
        raise ValueError(f"bias must be fp32/fp16/bf16, got {bias.dtype}")
    if mask is not None and mask.dtype not in FLOAT_DTYPES:
        raise ValueError(f"mask must be fp32/fp16/bf16, got {mask.dtype}")
    if mask is not None and mask.dtype != bias.dtype:   # the sum's dtype, as torch promotes (small copies)
        common = torch.promote_types(bias.dtype, mask.dtype)
        bias, mask = bias.to(common), mask.to(common)
    lead = tuple(q.shape[:-2])

    def broadcast(t: Tensor, what: str) -> Tensor:
        try:
            return t.to(q.device).expand(*lead, n_tok, n_tok)
        except RuntimeError:
            raise ValueError(f"{what} of shape {tuple(t.shape)} does not broadcast to {(*lead, n_tok, n_tok)}") \
                from None

    bias_b = broadcast(bias, "bias")
    mask_b = None if mask is None else broadcast(mask, "mask")
    if qp.numel() != 16:
        raise ValueError(f"qp must be (4, 4) (rows q, k, attn, v), got shape {tuple(qp.shape)}")
    qp = qp.to(device=q.device, dtype=torch.float32).contiguous()
    out = torch.empty((*lead, n_tok, d), dtype=torch.float32, device=q.device)
    if qk_acc_out is not None and (qk_acc_out.shape != (*lead, n_tok, n_tok) or qk_acc_out.dtype != torch.int32
                                   or not qk_acc_out.is_contiguous() or qk_acc_out.device != q.device):
        raise ValueError(f"qk_acc_out must be a contiguous int32 {(*lead, n_tok, n_tok)} tensor on {q.device}")
    groups = math.prod(lead)
    if groups == 0:
        return out
    q5, k5, v5, b5 = (_as_5d(t) for t in (q, k, v, bias_b))
    m5 = b5 if mask_b is None else _as_5d(mask_b)
    d_n, l_n = next_pow2(d), next_pow2(n_tok)
    in_split, in_dot = dot_dtype(q)
    _window_attention_int_kernel[(groups,)](
        q5, k5, v5, b5, m5, out, out if qk_acc_out is None else qk_acc_out, qp,
        q5.shape[1], q5.shape[2], n_tok, d,
        *q5.stride(), *k5.stride(), *v5.stride(), *b5.stride(), *m5.stride(),
        float(scale), float(2 ** bits - 1), float(d_n - keep_dc), float(l_n - keep_dc),
        D_N=d_n, DP=max(d_n, 32), L_N=l_n, LP=max(l_n, 32),
        INV_SQRT_D=1.0 / d_n ** 0.5, INV_SQRT_L=1.0 / l_n ** 0.5, KEEP_DC=keep_dc,
        IN_SPLIT=in_split, IN_DOT=in_dot, P_DOT=exact_bf16(q.device), WRITE_QK=qk_acc_out is not None,
        HAS_MASK=mask_b is not None, num_warps=4, enable_fp_fusion=False)
    return out
