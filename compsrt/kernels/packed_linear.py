"""The integer linear product of the packed runtime, with its float epilogue.

For a quantized Linear in the rotated domain (K = n coefficients per row), activation codes
qx (M, K), weight codes qw (N, K), keep-mask Mk (N, K) (pruned coefficients and, with the
exact DC, column 0 are 0; their codes are stored as 0), and per-tensor step/zero pairs
(sx, zx), (sw, zw)::

    x_hat W_hat^T = sx sw (qx (Mk*qw)^T) + sx zw (qx Mk^T) + zx sw rowsum(Mk*qw) + zx zw rowsum(Mk)
                    + dc_x dc_w^T + bias

The two integer sums ``acc_w = qx (Mk*qw)^T`` and ``acc_m = qx Mk^T`` are the products; the
rest is folded at load time into ``alpha = sx sw``, ``beta = sx zw`` and one vector
``c0 = zx sw rowsum(Mk*qw) + zx zw rowsum(Mk) + bias``. When the mask is trivial (no pruning),
``acc_m`` is the activation codes' row sum (column 0's code is 0 with the exact DC). int32
cannot overflow: K <= 128 and codes <= 15.

With the row mean instead (rotation "none", ``QuantConfig.row_mean``) each operand row is
``m 1^T + Q(c)`` with an FP mean m (the weight's stored as sqrt(n) m, like a DC coefficient),
and Q(c) no longer sums to zero, so the product of the fake-quantized operands is::

    Q(c_x) (Mk*Q(c_w))^T + m_x (n m_w + rowsum(Mk*Q(c_w)))^T + (sx sum(qx) + zx n) m_w^T

The first term is the formula above without the DC; the second is its DC term with
``dc_x = m_x`` and ``dc_w = n m_w + sw rowsum(Mk*qw) + zw rowsum(Mk)`` (a per-output constant
folded at load); of the third, ``zx n m_w`` folds into ``c0`` and ``sx sum(qx) m_w^T`` is one more
rank-1 term from the activation codes' row sum (:func:`code_sum_term`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .bitpack import unpack_bits


def int_mm(a: Tensor, b_t: Tensor) -> Tensor:
    """int8 (M, K) x int8 (K, N) of codes in [0, 15] -> int32 (M, N), exact.

    ``torch._int_mm`` (CPU: oneDNN, VNNI where present; CUDA: int8 tensor cores). Shapes the
    CUDA one refuses (M <= 16, K or N not a multiple of 8) multiply as fp32, exact for these
    codes: every partial sum is an integer below K * 15 * 15 < 2^24.
    """
    if a.shape[0] == 0:
        return torch.zeros(0, b_t.shape[1], dtype=torch.int32, device=a.device)
    if a.is_cuda and (a.shape[0] <= 16 or a.shape[1] % 8 or b_t.shape[1] % 8):
        assert a.shape[1] * 225 < 1 << 24
        return (a.float() @ b_t.float()).to(torch.int32)
    return torch._int_mm(a.contiguous(), b_t.contiguous())


def int_bmm(a: Tensor, b: Tensor, qmax_a: int, qmax_b: int) -> Tensor:
    """Batched int8 (..., M, K) x int8 (..., K, N) -> int32, exact.

    No batched int8 GEMM exists on the CPU (``bmm`` on int8 returns int8 and overflows; int32
    ``bmm`` is a slow scalar loop), so the codes are multiplied as fp32, which is exact here:
    every partial sum is an integer of magnitude <= K qmax_a qmax_b < 2^24 (asserted), and
    fp32 represents every integer below 2^24 exactly, whatever the summation order.
    """
    k = a.shape[-1]
    assert k * qmax_a * qmax_b < 1 << 24, "fp32 would not hold the integer product exactly"
    return torch.matmul(a.float(), b.float()).to(torch.int32)


def linear_epilogue_ref(acc_w: Tensor, acc_m: Tensor, alpha: float, beta: float, c0: Tensor,
                        dc_x: Tensor | None = None, dc_w: Tensor | None = None) -> Tensor:
    """fp32 (M, N) = alpha acc_w + beta acc_m + c0 (+ dc_x dc_w^T). acc_m: (M, N) or (M, 1)."""
    y = acc_w.float() * alpha + acc_m.float() * beta + c0
    if dc_x is not None:
        y = y + dc_x.reshape(-1, 1) * dc_w.reshape(1, -1)
    return y


def code_sum_term(qx: Tensor, g: Tensor) -> Tensor:
    """fp32 (M, N) ``sum(qx) g^T``: the row-mean epilogue's term ``sx sum(qx) m_w^T`` with
    ``g = sx m_w`` (N,); qx int8 (M, K) activation codes (their row sum is exact in int32)."""
    return qx.sum(-1, keepdim=True, dtype=torch.int32).float() * g.reshape(1, -1)


def packed_matmul_ref(qx: Tensor, w_planes: Tensor, m_planes: Tensor | None, bits: int) -> tuple[Tensor, Tensor]:
    """The two integer accumulators straight from packed weights.

    Args:
        qx: int8 (M, K) activation codes.
        w_planes: int32 (N, bits, K // 32): bit-planes of the masked codes Mk*qw.
        m_planes: int32 (N, 1, K // 32): the keep-mask, or None for a trivial mask.
    Returns:
        (acc_w int32 (M, N), acc_m int32 (M, N), or (M, 1) row sums of qx when m_planes is None).
    """
    w = unpack_bits(w_planes, bits).to(torch.int8)
    acc_w = int_mm(qx, w.T)
    if m_planes is None:
        return acc_w, qx.to(torch.int32).sum(-1, keepdim=True)
    return acc_w, int_mm(qx, unpack_bits(m_planes, 1).to(torch.int8).T)


def packed_linear_ref(qx: Tensor, w_planes: Tensor, m_planes: Tensor | None, bits: int, alpha: float,
                      beta: float, c0: Tensor, dc_x: Tensor | None = None, dc_w: Tensor | None = None) -> Tensor:
    """fp32 (M, N) output of a packed linear: :func:`packed_matmul_ref` + :func:`linear_epilogue_ref`."""
    acc_w, acc_m = packed_matmul_ref(qx, w_planes, m_planes, bits)
    return linear_epilogue_ref(acc_w, acc_m, alpha, beta, c0, dc_x, dc_w)


def linear_int8(qx: Tensor, w_t: Tensor, n_out: int, alpha: float, beta: float, c0: Tensor,
                dc_x: Tensor | None = None, dc_w: Tensor | None = None) -> Tensor:
    """The CPU path: unpacked int8 weights ``w_t`` (K, N) = (Mk*qw)^T, or (K, 2N) = [(Mk*qw)^T | Mk^T]
    when the mask is not trivial; one ``int_mm`` gives both accumulators. Matches packed_linear_ref."""
    acc = int_mm(qx, w_t)
    if w_t.shape[1] == n_out:
        acc_w, acc_m = acc, qx.to(torch.int32).sum(-1, keepdim=True)
    else:
        acc_w, acc_m = acc[:, :n_out], acc[:, n_out:]
    return linear_epilogue_ref(acc_w, acc_m, alpha, beta, c0, dc_x, dc_w)


def _load_cuda():
    from . import packed_linear_cuda   # CompsrtError with the fix if nvcc / the library is missing

    return packed_linear_cuda


def packed_linear(qx: Tensor, w_planes: Tensor, m_planes: Tensor | None, bits: int, alpha: float, beta: float,
                  c0: Tensor, dc_x: Tensor | None = None, dc_w: Tensor | None = None) -> Tensor:
    """Matches :func:`packed_linear_ref`; CUDA tensors run csrc/packed_linear.cu."""
    if bits not in (2, 3, 4):
        raise ValueError(f"bits must be 2, 3 or 4, got {bits}")
    if not qx.is_cuda:
        return packed_linear_ref(qx, w_planes, m_planes, bits, alpha, beta, c0, dc_x, dc_w)
    return _load_cuda().packed_linear_cuda(qx, w_planes, m_planes, bits, alpha, beta, c0, dc_x, dc_w)
