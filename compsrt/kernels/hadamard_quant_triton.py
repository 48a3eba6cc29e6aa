"""Fused Triton kernel: zero-pad + normalized Sylvester-Hadamard rotation + quantization to int8 codes.

Matches :func:`compsrt.kernels.hadamard_quant.hadamard_quant_ref` (codes identical except at
rounding ties, where the fp32 rotations' summation orders differ). Own constraints:

- x is fp32, fp16 or bf16, any strides, rotated along its last or second-to-last axis; that axis
  pads to n <= MAX_N = 128 (SwinIR-light: 60 -> 64, 120 -> 128, head dim 10 -> 16).
- ``qp`` is read in-kernel (no host sync); it is moved to x's device and fp32 if needed. The
  kernel trusts s > 0, as the reference does.

The rotation, rounding and quantization are those of the fake-quant kernel
(:mod:`compsrt.kernels._triton_common`), so the two agree code for code.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_common import (FLOAT_DTYPES, code_of, dot_dtype, load_qp, rotate_quantize_tile, rotated_shape,
                             rotated_strides, row_tile_config, rows_view, sylvester_block)
from .hadamard import next_pow2

MAX_N = 128  # largest padded size the launcher takes


@triton.jit(do_not_specialize=["M"])
def _hadamard_quant_kernel(
    x_ptr,             # input, viewed as (B, C, K): element (b, c, k) at b*stride_xb + c*stride_xc + k*stride_xk
    codes_ptr,         # int8 codes (B, N, K), strides stride_o*
    dc_ptr,            # fp32 coefficient 0 (B, 1, K), contiguous (written only if KEEP_DC)
    qp_ptr,            # fp32 [l, u, s, z], contiguous
    M,                 # number of rotated vectors: B * K
    K,                 # trailing size (1 for dim=-1; the row index splits as (b, k) if SPLIT_ROWS)
    C,                 # length of each vector before padding (<= N)
    stride_xb, stride_xk, stride_xc,   # x strides for b, k, c
    stride_ob, stride_ok, stride_oc,   # codes strides for b, k, rotated coordinate
    qmax,              # 2^bits - 1, as a float (runtime: one compiled kernel serves every bit width)
    N: tl.constexpr,             # padded length n: power of two
    NP: tl.constexpr,            # tile width max(N, 16) (tl.dot needs >= 16)
    INV_SQRT_N: tl.constexpr,    # 1 / sqrt(N)
    KEEP_DC: tl.constexpr,       # coefficient 0 goes to dc_ptr in fp32, its code is 0 (exact_dc)
    SPLIT_ROWS: tl.constexpr,    # K > 1
    SPLIT_F32: tl.constexpr,     # x is fp32: rotate as three exact bf16 pieces
    DOT_DTYPE: tl.constexpr,     # operand type of the +-1 products
    BLOCK_M: tl.constexpr,       # vectors per tile
):
    lo, hi, s, z = load_qp(qp_ptr, 0)
    h = sylvester_block(N, NP)
    for blk in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):  # persistent
        rb, rk, row_ok, cols, xr, _, _, q = rotate_quantize_tile(
            blk, x_ptr, M, K, C, stride_xb, stride_xk, stride_xc, h, lo, hi, s, z, qmax,
            NP, INV_SQRT_N, SPLIT_ROWS, SPLIT_F32, DOT_DTYPE, BLOCK_M)
        code = code_of(q)
        if KEEP_DC:
            code = tl.where(cols[None, :] == 0, 0.0, code)
            dc = tl.sum(tl.where(cols[None, :] == 0, xr, 0.0), axis=1)  # exact: one non-zero term
            tl.store(dc_ptr + rb * K + rk, dc, mask=row_ok)
        offs = rb[:, None] * stride_ob + rk[:, None] * stride_ok + cols[None, :] * stride_oc
        tl.store(codes_ptr + offs, code.to(tl.int8), mask=row_ok[:, None] & (cols[None, :] < N))


def supports(x: Tensor, dim: int) -> bool:
    """Whether the kernel takes x rotated along dim (-1 or -2): fp32/fp16/bf16 and
    1 <= x.shape[dim] <= MAX_N after padding."""
    if dim not in (-1, -2, x.ndim - 1, x.ndim - 2) or x.ndim < 1:
        return False
    c = x.shape[dim]
    return x.dtype in FLOAT_DTYPES and 0 < c and next_pow2(c) <= MAX_N


def hadamard_quant_triton(x: Tensor, qp: Tensor, bits: int, dim: int = -1,
                          keep_dc: bool = False) -> tuple[Tensor, Tensor | None]:
    """Matches :func:`hadamard_quant_ref`, in one pass over x.

    Args:
        x: (..., C) for dim=-1 or (..., C, K) for dim=-2; fp32, fp16 or bf16, any strides; CUDA, or
            CPU under ``TRITON_INTERPRET=1``. C >= 1 pads to n = next power of two <= MAX_N.
        qp: (4,) fp32 ``[l, u, s, z]`` (:func:`compsrt.kernels.hadamard_quant.quant_params`).
        bits: 2, 3 or 4.
        dim: -1 or -2 (v's token axis for attn @ v).
        keep_dc: coefficient 0 stays fp32 (QuantConfig.exact_dc): its code is 0.
    Returns:
        (codes, dc): contiguous int8 codes with axis ``dim`` of size n, and the fp32 coefficient 0
        with that axis kept at size 1 (None without keep_dc).
    Raises:
        ValueError: bits not in (2, 3, 4), dim not one of the last two axes, x that :func:`supports`
            rejects, or qp not of 4 elements.

    Example:
        >>> codes, _ = hadamard_quant_triton(x, qp, 4)       # x: (65536, 60) fp16 on CUDA -> (65536, 64)
    """
    if bits not in (2, 3, 4):
        raise ValueError(f"bits must be 2, 3 or 4, got {bits}")
    if dim not in (-1, -2, x.ndim - 1, x.ndim - 2) or x.ndim < (1 if dim in (-1, x.ndim - 1) else 2):
        raise ValueError(f"dim must be the last or second-to-last axis, got {dim} for a {x.ndim}-d tensor")
    last = dim in (-1, x.ndim - 1)
    if not supports(x, dim):
        raise ValueError(f"hadamard_quant_triton takes fp32/fp16/bf16 with 1 <= size <= {MAX_N} along dim, "
                         f"got {x.dtype} {tuple(x.shape)} (dim={dim})")
    if qp.numel() != 4:
        raise ValueError(f"qp must hold [l, u, s, z] (4 elements), got shape {tuple(qp.shape)}")
    qp = qp.to(device=x.device, dtype=torch.float32).contiguous()
    c = x.shape[-1 if last else -2]
    n = next_pow2(c)
    shape = rotated_shape(x, last, n)
    codes = torch.empty(shape, dtype=torch.int8, device=x.device)
    dc_shape = (*x.shape[:-1], 1) if last else (*x.shape[:-2], 1, x.shape[-1])
    dc = torch.empty(dc_shape, dtype=torch.float32, device=x.device) if keep_dc else None
    xv, m, k, (sxb, sxk, sxc) = rows_view(x, last)
    if m == 0:
        return codes, dc
    block_m, num_warps, max_programs = row_tile_config(n, x.device)
    split_f32, dot_ty = dot_dtype(x)
    sob, sok, soc = rotated_strides(shape, last)
    _hadamard_quant_kernel[(min(triton.cdiv(m, block_m), max_programs),)](
        xv, codes, codes if dc is None else dc, qp,
        m, k, c, sxb, sxk, sxc, sob, sok, soc, float(2 ** bits - 1),
        N=n, NP=max(n, 16), INV_SQRT_N=1.0 / n ** 0.5, KEEP_DC=keep_dc, SPLIT_ROWS=k > 1,
        SPLIT_F32=split_f32, DOT_DTYPE=dot_ty, BLOCK_M=block_m, num_warps=num_warps, enable_fp_fusion=False)
    return codes, dc
