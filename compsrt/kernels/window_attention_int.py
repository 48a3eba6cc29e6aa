"""Window attention with both products on integer codes: the packed runtime's attention.

For each window and head (N tokens, head dim d), with the four activation quantizers of a
SwinIR block's attention (rows of ``qp``: q, k, attn, v; each ``[l, u, s, z]``)::

    cq, dq = hadamard_quant(q * scale, qp[0], along d)     # d -> n_d = next_pow2(d)
    ck, dk = hadamard_quant(k,         qp[1], along d)
    logits = sq sk (cq ck^T) + sq zk rowsum(cq) + zq sk rowsum(ck)^T + zq zk c_d + dq dk^T + bias
    p      = softmax(logits)
    ca, da = hadamard_quant(p, qp[2], along N)             # the 64 keys of each row
    cv, dv = hadamard_quant(v, qp[3], along N)             # v's token axis
    out    = sa sv (ca cv) + sa zv rowsum(ca) + za sv colsum(cv) + za zv c_N + da dv

where c_d (c_N) counts the quantized coefficients (n, or n - 1 with the exact DC, whose code
is 0 and whose FP coefficient enters through the rank-1 term). This is, up to float rounding,
``QuantAttend``'s fake-quantized ``softmax(Q(q s) Q(k)^T + bias) Q(attn) Q(v)``.

With the row mean (rotation "none", ``QuantConfig.row_mean``) each operand row along the
contraction axis (q, k, attn: their last axis; v: its token axis) is ``m 1^T + Q(c)``: its FP mean m
is subtracted before quantizing, and the product of two such operands (contraction length n) is::

    Q(c_a) Q(c_b)^T + m_a (sb colsum(cb) + zb n) + (sa rowsum(ca) + za n) m_b + n m_a m_b

(:func:`row_mean_epilogue_ref`), the integer product's epilogue above plus three rank-1 FP terms.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import CompsrtError
from .hadamard import next_pow2
from .hadamard_quant import hadamard_quant_ref, quantize_ref
from .packed_linear import int_bmm


def attention_epilogue_ref(acc: Tensor, ca: Tensor, cb: Tensor, qa: Tensor, qb: Tensor, count: int,
                           dc_a: Tensor | None, dc_b: Tensor | None) -> Tensor:
    """fp32 float product of two dequantized operands from their integer product ``acc`` (..., M, P).

    ``ca`` (..., M, 1) and ``cb`` (..., 1, P): the operands' code sums over the contraction
    axis; ``qa``, ``qb``: their ``[l, u, s, z]``; ``count``: quantized coefficients per sum.
    """
    sa, za = qa[2], qa[3]
    sb, zb = qb[2], qb[3]
    y = acc.float() * (sa * sb) + ca.float() * (sa * zb) + cb.float() * (za * sb) + za * zb * count
    if dc_a is not None:
        y = y + dc_a * dc_b
    return y


def row_mean_epilogue_ref(acc: Tensor, ca: Tensor, cb: Tensor, qa: Tensor, qb: Tensor, n: int, m_a: Tensor,
                          m_b: Tensor) -> Tensor:
    """fp32 ``(m_a 1^T + Q(c_a)) (m_b 1^T + Q(c_b))^T`` (..., M, P) from the integer product ``acc`` of
    the centred rests' codes: :func:`attention_epilogue_ref`'s ``Q(c_a) Q(c_b)^T`` plus the row means'
    terms ``m_a rowsum(Q(c_b))^T + rowsum(Q(c_a)) m_b^T + n m_a m_b^T``.

    ``ca`` (..., M, 1), ``cb`` (..., 1, P): the code sums over the contraction axis (length n);
    ``qa``, ``qb``: ``[l, u, s, z]``; ``m_a`` (..., M, 1), ``m_b`` (..., 1, P): the FP means. The
    per-row and per-column parts are summed as vectors first and the full-size result is built in
    place (this path has no fused kernel: at 128 x 128 it halved the attention's time on this CPU).
    """
    sa, za, sb, zb = qa[2], qa[3], qb[2], qb[3]
    sum_a = ca.float() * sa + za * n          # rowsum Q(c_a): (..., M, 1)
    sum_b = cb.float() * sb + zb * n          # rowsum Q(c_b): (..., 1, P)
    rows = ca.float() * (sa * zb) + za * zb * n
    cols = cb.float() * (za * sb)
    y = acc.to(torch.float32, copy=True).mul_(sa * sb).add_(rows).add_(cols)   # Q(c_a) Q(c_b)^T
    y.addcmul_(m_a, sum_b)
    return y.addcmul_(sum_a + n * m_a, m_b)


def window_attention_int_ref(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, qp: Tensor,
                             bits: int, keep_dc: bool, rotate: bool = True, row_mean: bool = False,
                             mask: Tensor | None = None) -> Tensor:
    """softmax(Q(q scale) Q(k)^T + bias) -> Q(attn) Q(v) with integer products.

    Args:
        q, k, v: (..., N, d) float (q unscaled).
        bias: broadcastable to (..., N, N): the relative-position bias (plus the shift mask,
            unless ``mask`` brings it).
        scale: d ** -0.5.
        qp: (4, 4) fp32, rows q, k, attn, v, each ``[l, u, s, z]``.
        bits: activation bits (2, 3 or 4).
        keep_dc: the exact DC (QuantConfig.exact_dc; needs rotate).
        rotate: False quantizes the operands as they are (2DQuant): no rotation, no padding.
        row_mean: (not with rotate) each operand row's mean along the contraction axis stays FP
            and the centred rest is quantized (QuantConfig.row_mean).
        mask: None or a second term broadcastable to (..., N, N), the shift mask (e.g. (nW, 1, N,
            N) against q of shape (B, nW, heads, N, d)): the logits take ``bias + mask``, summed
            first, as the model sums them.
    Returns:
        fp32 (..., N, d).
    """
    qmax = 2 ** bits - 1
    d, n_tok = q.shape[-1], q.shape[-2]
    if rotate and row_mean:
        raise ValueError("row_mean needs rotate=False (with the rotation the exact DC keeps the offset)")
    if not rotate:
        keep_dc = False
    if mask is not None:
        bias = bias + mask
    c_d = next_pow2(d) - keep_dc if rotate else d
    c_n = next_pow2(n_tok) - keep_dc if rotate else n_tok

    def codes(x: Tensor, p: Tensor, dim: int) -> tuple[Tensor, Tensor | None]:
        if rotate:
            return hadamard_quant_ref(x, p, bits, dim, keep_dc)
        if row_mean:
            m = x.mean(dim, keepdim=True)
            return quantize_ref(x - m, p, bits), m
        return quantize_ref(x, p, bits), None

    cq, dq = codes(q * scale, qp[0], -1)
    ck, dk = codes(k, qp[1], -1)
    acc = int_bmm(cq, ck.transpose(-2, -1), qmax, qmax)
    sq = cq.sum(-1, keepdim=True, dtype=torch.int32)
    sk = ck.sum(-1, dtype=torch.int32).unsqueeze(-2)
    dk = None if dk is None else dk.transpose(-2, -1)
    if row_mean:
        logits = row_mean_epilogue_ref(acc, sq, sk, qp[0], qp[1], c_d, dq, dk).add_(bias)
    else:
        logits = attention_epilogue_ref(acc, sq, sk, qp[0], qp[1], c_d, dq, dk) + bias
    p = logits.softmax(-1)
    ca, da = codes(p, qp[2], -1)
    cv, dv = codes(v, qp[3], -2)
    acc = int_bmm(ca, cv, qmax, qmax)
    sa = ca.sum(-1, keepdim=True, dtype=torch.int32)
    sv = cv.sum(-2, keepdim=True, dtype=torch.int32)
    if row_mean:
        return row_mean_epilogue_ref(acc, sa, sv, qp[2], qp[3], c_n, da, dv)
    return attention_epilogue_ref(acc, sa, sv, qp[2], qp[3], c_n, da, dv)


def _load_triton():
    try:
        from . import window_attention_int_triton
    except ImportError as e:
        raise CompsrtError(f"the CUDA fast path needs Triton ({e}); install it with 'pip install triton'") from None
    return window_attention_int_triton


def window_attention_int(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, qp: Tensor, bits: int,
                         keep_dc: bool, rotate: bool = True, row_mean: bool = False,
                         mask: Tensor | None = None) -> Tensor:
    """Matches :func:`window_attention_int_ref`; CUDA tensors run the fused Triton kernel
    (the N x N scores never reach memory, nor the sum of bias and mask) where the operands are
    rotated (so never with row_mean)."""
    if bits not in (2, 3, 4):
        raise ValueError(f"bits must be 2, 3 or 4, got {bits}")
    if not q.is_cuda or not rotate or q.shape[-2] > 64 or q.shape[-1] > 32:   # the fused kernel's limits
        return window_attention_int_ref(q, k, v, bias, scale, qp, bits, keep_dc, rotate, row_mean, mask)
    return _load_triton().window_attention_int_triton(q, k, v, bias, scale, qp, bits, keep_dc, mask=mask)
