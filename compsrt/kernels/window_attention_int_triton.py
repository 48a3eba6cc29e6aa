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

from ._triton_common import FLOAT_DTYPES, cast_out, code_of, dot_dtype, dot_pm1, exact_bf16, pm1_dot, quantize, \
    sylvester_block
from .hadamard import next_pow2

MAX_TOKENS = 64   # N: a 64 x 64 fp32 tile of scores per program
MAX_HEAD_DIM = 32


@triton.jit
def _load_qp(qp_ptr, ROW: tl.constexpr):
    """Row ROW of the (4, 4) quantizer table: (l, u, s, z) fp32."""
    return (tl.load(qp_ptr + ROW * 4 + 0), tl.load(qp_ptr + ROW * 4 + 1),
            tl.load(qp_ptr + ROW * 4 + 2), tl.load(qp_ptr + ROW * 4 + 3))


@triton.jit(do_not_specialize=["G1", "G2"])
def _window_attention_int_kernel(
    q_ptr, k_ptr, v_ptr,     # (G0, G1, G2, L, D) inputs (one dtype), element strides stride_{q,k,v}{0,1,2,l,d}
    bias_ptr,                # (G0, G1, G2, L, L) float bias view, strides stride_b{0,1,2,l,m} (0 where broadcast)
    out_ptr,                 # fp32 output, contiguous (G0 * G1 * G2, L, D)
    qk_ptr,                  # int32 (G0 * G1 * G2, L, L) q.k^T accumulator, contiguous (only if WRITE_QK)
    qp_ptr,                  # fp32 (4, 4) contiguous: rows q, k, attn, v, each [l, u, s, z]
    G1, G2,                  # sizes of the 2nd and 3rd leading dims (program id -> (i0, i1, i2))
    L, D,                    # tokens per window, head dim
    stride_q0, stride_q1, stride_q2, stride_ql, stride_qd,
    stride_k0, stride_k1, stride_k2, stride_kl, stride_kd,
    stride_v0, stride_v1, stride_v2, stride_vl, stride_vd,
    stride_b0, stride_b1, stride_b2, stride_bl, stride_bm,
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

    # q s, rotated along d -> codes cq (LP, DP)
    q_base = q_ptr + i0 * stride_q0 + i1 * stride_q1 + i2 * stride_q2
    x = tl.load(q_base + tok[:, None] * stride_ql + hd[None, :] * stride_qd,
                mask=tok_ok[:, None] & hd_ok[None, :], other=0.0)
    xs = cast_out(x.to(tl.float32) * scale, q_ptr.dtype.element_ty)  # the ref scales in q's dtype
    qr = dot_pm1(xs, h_d, IN_SPLIT, IN_DOT) * INV_SQRT_D
    lq, uq, sq, zq = _load_qp(qp_ptr, 0)
    _, _, cq = quantize(qr, lq, uq, sq, zq, qmax)
    cq = tl.where(hd[None, :] < D_N, code_of(cq), 0.0)
    # k^T, rotated along d (H is symmetric: (k H)^T = H k^T) -> codes ckt (DP, LP)
    k_base = k_ptr + i0 * stride_k0 + i1 * stride_k1 + i2 * stride_k2
    x = tl.load(k_base + hd[:, None] * stride_kd + tok[None, :] * stride_kl,
                mask=hd_ok[:, None] & tok_ok[None, :], other=0.0)
    krt = pm1_dot(h_d, x, IN_SPLIT, IN_DOT) * INV_SQRT_D
    lk, uk, sk, zk = _load_qp(qp_ptr, 1)
    _, _, ckt = quantize(krt, lk, uk, sk, zk, qmax)
    ckt = tl.where(hd[:, None] < D_N, code_of(ckt), 0.0)
    if KEEP_DC:
        dq = tl.sum(tl.where(hd[None, :] == 0, qr, 0.0), axis=1)    # exact: one non-zero term
        dk = tl.sum(tl.where(hd[:, None] == 0, krt, 0.0), axis=0)
        cq = tl.where(hd[None, :] == 0, 0.0, cq)
        ckt = tl.where(hd[:, None] == 0, 0.0, ckt)

    acc = tl.dot(cq.to(tl.int8), ckt.to(tl.int8), out_dtype=tl.int32)   # (LP, LP), exact
    if WRITE_QK:
        tl.store(qk_ptr + g * L * L + tok[:, None] * L + tok[None, :], acc,
                 mask=tok_ok[:, None] & tok_ok[None, :])
    # logits: the ref's epilogue, term by term in its order (no FMA: enable_fp_fusion=False)
    sum_q = tl.sum(cq, axis=1)
    sum_k = tl.sum(ckt, axis=0)
    y = acc.to(tl.float32) * (sq * sk) + sum_q[:, None] * (sq * zk) + sum_k[None, :] * (zq * sk) \
        + zq * zk * count_d
    if KEEP_DC:
        y = y + dq[:, None] * dk[None, :]
    b_base = bias_ptr + i0 * stride_b0 + i1 * stride_b1 + i2 * stride_b2
    bias = tl.load(b_base + tok[:, None] * stride_bl + tok[None, :] * stride_bm,
                   mask=tok_ok[:, None] & tok_ok[None, :], other=0.0)
    y = y + bias.to(tl.float32)
    y = tl.where(tok_ok[None, :], y, float("-inf"))              # padded keys take no probability
    e = tl.exp(y - tl.max(y, axis=1)[:, None])
    p = e / tl.sum(e, axis=1)[:, None]

    # p rotated along the keys -> codes ca (LP, LP)
    pr = dot_pm1(p, h_l, True, P_DOT) * INV_SQRT_L
    la, ua, sa, za = _load_qp(qp_ptr, 2)
    _, _, ca = quantize(pr, la, ua, sa, za, qmax)
    ca = tl.where(tok[None, :] < L_N, code_of(ca), 0.0)
    # v rotated along its tokens -> codes cv (LP, DP)
    v_base = v_ptr + i0 * stride_v0 + i1 * stride_v1 + i2 * stride_v2
    x = tl.load(v_base + tok[:, None] * stride_vl + hd[None, :] * stride_vd,
                mask=tok_ok[:, None] & hd_ok[None, :], other=0.0)
    vr = pm1_dot(h_l, x, IN_SPLIT, IN_DOT) * INV_SQRT_L
    lv, uv, sv, zv = _load_qp(qp_ptr, 3)
    _, _, cv = quantize(vr, lv, uv, sv, zv, qmax)
    cv = tl.where(tok[:, None] < L_N, code_of(cv), 0.0)
    if KEEP_DC:
        da = tl.sum(tl.where(tok[None, :] == 0, pr, 0.0), axis=1)
        dv = tl.sum(tl.where(tok[:, None] == 0, vr, 0.0), axis=0)
        ca = tl.where(tok[None, :] == 0, 0.0, ca)
        cv = tl.where(tok[:, None] == 0, 0.0, cv)

    acc = tl.dot(ca.to(tl.int8), cv.to(tl.int8), out_dtype=tl.int32)    # (LP, DP), exact
    sum_a = tl.sum(ca, axis=1)
    sum_v = tl.sum(cv, axis=0)
    o = acc.to(tl.float32) * (sa * sv) + sum_a[:, None] * (sa * zv) + sum_v[None, :] * (za * sv) \
        + za * zv * count_l
    if KEEP_DC:
        o = o + da[:, None] * dv[None, :]
    tl.store(out_ptr + g * L * D + tok[:, None] * D + hd[None, :], o, mask=tok_ok[:, None] & hd_ok[None, :])


def _as_5d(t: Tensor) -> Tensor:
    """(..., R, S) with exactly three leading dims: size-1 dims prepended (a view), or the extra
    outer dims merged (a view where their strides allow)."""
    lead = t.ndim - 2
    if lead <= 3:
        return t.reshape((1,) * (3 - lead) + tuple(t.shape))
    return t.reshape(-1, *t.shape[-4:])


def window_attention_int_triton(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, qp: Tensor, bits: int,
                                keep_dc: bool, *, qk_acc_out: Tensor | None = None) -> Tensor:
    """Matches :func:`window_attention_int_ref`, fused: the scores stay in registers.

    Args:
        q, k, v: (..., N, d), one dtype of fp32/fp16/bf16, any strides (q unscaled); N <= 64,
            d <= 32. CUDA, or CPU under ``TRITON_INTERPRET=1``.
        bias: fp32/fp16/bf16 broadcastable to (..., N, N), e.g. (heads, N, N) or, for q of shape
            (B, nW, heads, N, d), (nW, heads, N, N): relative-position bias plus the shift mask.
        scale: d ** -0.5.
        qp: (4, 4) fp32, rows q, k, attn, v, each ``[l, u, s, z]``; read in-kernel.
        bits: activation bits (2, 3 or 4).
        keep_dc: the exact DC (QuantConfig.exact_dc).
        qk_acc_out: optional int32 (..., N, N) contiguous: receives the integer q.k^T accumulator
            (the codes' product before its epilogue), for tests.
    Returns:
        fp32 (..., N, d), contiguous.
    Raises:
        ValueError: bits not in (2, 3, 4), mismatched shapes or dtypes, N > 64, d > 32, a bias that
            does not broadcast, qp not of 16 elements, or a bad qk_acc_out.

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
    lead = tuple(q.shape[:-2])
    try:
        bias_b = bias.to(q.device).expand(*lead, n_tok, n_tok)
    except RuntimeError:
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not broadcast to {(*lead, n_tok, n_tok)}") from None
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
    d_n, l_n = next_pow2(d), next_pow2(n_tok)
    in_split, in_dot = dot_dtype(q)
    _window_attention_int_kernel[(groups,)](
        q5, k5, v5, b5, out, out if qk_acc_out is None else qk_acc_out, qp,
        q5.shape[1], q5.shape[2], n_tok, d,
        *q5.stride(), *k5.stride(), *v5.stride(), *b5.stride(),
        float(scale), float(2 ** bits - 1), float(d_n - keep_dc), float(l_n - keep_dc),
        D_N=d_n, DP=max(d_n, 32), L_N=l_n, LP=max(l_n, 32),
        INV_SQRT_D=1.0 / d_n ** 0.5, INV_SQRT_L=1.0 / l_n ** 0.5, KEEP_DC=keep_dc,
        IN_SPLIT=in_split, IN_DOT=in_dot, P_DOT=exact_bf16(q.device), WRITE_QK=qk_acc_out is not None,
        num_warps=4, enable_fp_fusion=False)
    return out
