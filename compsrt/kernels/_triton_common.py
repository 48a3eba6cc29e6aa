"""Triton pieces shared by the Hadamard kernels: +-1 rotation, exact rounding, quantization.

Used by :mod:`compsrt.kernels.hadamard_fake_quant_triton`, :mod:`compsrt.kernels.hadamard_quant_triton`
and :mod:`compsrt.kernels.window_attention_int_triton`; the names are public here so that no
kernel module imports another's private names.

Why a matmul with H and not a butterfly: the rotated axes are short (16, 64, 128), so one
``tl.dot`` of a (rows x n) tile with the +-1 matrix H_n is a few tensor-core instructions, while
a log2(n)-stage butterfly in Triton needs a reshape and a cross-lane layout change per stage.
H_n is generated in registers from the bit-parity rule H[j, k] = (-1)^popcount(j & k) (no host
tensor, no load). Its entries are exact in fp16/bf16, so fp16/bf16 tiles multiply it exactly
with fp32 accumulation; fp32 tiles are split exactly into three bf16 pieces (x = hi + mid + lo,
24 mantissa bits), so an fp32 rotation costs three bf16 MMAs instead of tf32's 10-bit
truncation or a slow FMA loop. The 1/sqrt(n) normalization is applied in fp32 after the product.

Rounding is half to even, written with floor (exact for every fp32), so it needs no libdevice
entry point that differs between Triton versions or the interpreter.

Under ``TRITON_INTERPRET=1`` (CPU tensors, the tests on machines without a GPU) the bf16 pieces
are multiplied as fp32 instead (:func:`dot_dtype`): the interpreter's bf16 ``tl.dot`` is wrong
(Triton 3.9), and the pieces are exact in both types, so only the operand type changes.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch import Tensor


# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------
@triton.jit
def sylvester_block(N: tl.constexpr, NP: tl.constexpr):
    """Unnormalized Sylvester H_N (+-1) in the top-left N x N corner of an NP x NP block of zeros."""
    j = tl.arange(0, NP)[:, None]
    k = tl.arange(0, NP)[None, :]
    p = j & k
    p = p ^ (p >> 8)  # fold the index bits (NP <= 65536) down to their parity in bit 0
    p = p ^ (p >> 4)
    p = p ^ (p >> 2)
    p = p ^ (p >> 1)
    h = tl.where((p & 1) == 1, -1.0, 1.0)
    return tl.where((j < N) & (k < N), h, 0.0)


@triton.jit
def bf16_head(v):
    """v with its low 16 bits cleared: exactly representable in bf16 (truncation, never inf)."""
    return (v.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)


@triton.jit
def split3(v):
    """fp32 v = hi + mid + lo exactly, each piece exactly representable in bf16."""
    vf = v.to(tl.float32)
    hi = bf16_head(vf)
    r1 = tl.where(hi == vf, 0.0, vf - hi)  # exact; the test keeps +-inf from becoming inf - inf
    mid = bf16_head(r1)
    lo = r1 - mid                           # <= 8 significant bits left: exact in bf16
    return hi, mid, lo


@triton.jit
def dot_pm1(v, h, SPLIT_F32: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """v @ h in fp32 for h with entries in {-1, 0, 1}: every product exact, fp32 accumulation."""
    hd = h.to(DOT_DTYPE)
    if SPLIT_F32:
        hi, mid, lo = split3(v)
        acc = tl.dot(lo.to(DOT_DTYPE), hd)
        acc = tl.dot(mid.to(DOT_DTYPE), hd, acc)
        acc = tl.dot(hi.to(DOT_DTYPE), hd, acc)
    else:
        acc = tl.dot(v.to(DOT_DTYPE), hd)
    return acc


@triton.jit
def pm1_dot(h, v, SPLIT_F32: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """h @ v in fp32 for h with entries in {-1, 0, 1} (the left-hand twin of :func:`dot_pm1`)."""
    hd = h.to(DOT_DTYPE)
    if SPLIT_F32:
        hi, mid, lo = split3(v)
        acc = tl.dot(hd, lo.to(DOT_DTYPE))
        acc = tl.dot(hd, mid.to(DOT_DTYPE), acc)
        acc = tl.dot(hd, hi.to(DOT_DTYPE), acc)
    else:
        acc = tl.dot(hd, v.to(DOT_DTYPE))
    return acc


@triton.jit
def cast_out(v, OUT_DTYPE: tl.constexpr):
    """fp32 -> OUT_DTYPE, round to nearest even. bf16 is rounded by hand: the interpreter's own
    fp32 -> bf16 cast truncates (Triton 3.9); compiled, both ways give the same bits."""
    if OUT_DTYPE == tl.bfloat16:
        b = v.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        v = tl.where(v != v, v, b.to(tl.float32, bitcast=True))  # keep NaN (0x7FFFFFFF would wrap)
    return v.to(OUT_DTYPE)


@triton.jit
def round_half_even(y):
    f = tl.floor(y)
    d = y - f                                   # exact: the fraction of a float is a float
    half = f * 0.5
    odd = (half - tl.floor(half)) != 0.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)  # NaN stays NaN


@triton.jit
def quantize(xr, lo, hi, s, z, qmax):
    """(y, r, q): scaled value (c - z) / s, its rounding, and the clamped code (all fp32).

    ``q`` is NaN where ``xr`` is; the code stored for it is 0 (:func:`code_of`)."""
    c = tl.where(xr < lo, lo, tl.where(xr > hi, hi, xr))  # where, not minimum: NaN must survive
    y = tl.math.div_rn(c - z, s)
    r = round_half_even(y)
    q = tl.where(r < 0.0, 0.0, tl.where(r > qmax, qmax, r))
    return y, r, q


@triton.jit
def load_qp(qp_ptr, ROW: tl.constexpr):
    """Row ROW of a contiguous fp32 table of quantizers, 4 values a row: (l, u, s, z)."""
    return (tl.load(qp_ptr + ROW * 4 + 0), tl.load(qp_ptr + ROW * 4 + 1),
            tl.load(qp_ptr + ROW * 4 + 2), tl.load(qp_ptr + ROW * 4 + 3))


@triton.jit
def code_of(q):
    """Clamped fp32 code from :func:`quantize` -> fp32 integer, NaN -> 0 (as the references)."""
    return tl.where(q == q, q, 0.0)


@triton.jit
def row_index(blk, M, K, BLOCK_M: tl.constexpr, SPLIT_ROWS: tl.constexpr):
    """Rows blk*BLOCK_M.. of the (B, ., K) view as (b, k) int64 pairs, plus the in-range mask."""
    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = rows < M
    if SPLIT_ROWS:
        rb = rows // K
        rk = rows - rb * K
    else:
        rb = rows
        rk = rows * 0
    return rb.to(tl.int64), rk.to(tl.int64), ok


@triton.jit
def rotate_rows(x_ptr, rb, rk, row_ok, C, stride_xb, stride_xk, stride_xc, h,
                NP: tl.constexpr, INV_SQRT_N: tl.constexpr, SPLIT_F32: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """pad(x) @ H_n / sqrt(n) for one tile of rows, fp32 (BLOCK_M, NP); columns >= n are 0."""
    cols = tl.arange(0, NP)
    offs = rb[:, None] * stride_xb + rk[:, None] * stride_xk + cols[None, :] * stride_xc
    v = tl.load(x_ptr + offs, mask=row_ok[:, None] & (cols[None, :] < C), other=0.0)
    return dot_pm1(v, h, SPLIT_F32, DOT_DTYPE) * INV_SQRT_N



@triton.jit
def rotate_quantize_tile(blk, x_ptr, M, K, C, stride_xb, stride_xk, stride_xc, h, lo, hi, s, z, qmax,
                         NP: tl.constexpr, INV_SQRT_N: tl.constexpr, SPLIT_ROWS: tl.constexpr,
                         SPLIT_F32: tl.constexpr, DOT_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr):
    """Tile ``blk`` of the row kernels: its rows (:func:`row_index`) and columns ``cols`` (the
    rotated coordinate, 0..NP-1), their rotation ``xr`` (:func:`rotate_rows`) and :func:`quantize`
    of it: (rb, rk, row_ok, cols, xr, y, r, q)."""
    rb, rk, row_ok = row_index(blk, M, K, BLOCK_M, SPLIT_ROWS)
    xr = rotate_rows(x_ptr, rb, rk, row_ok, C, stride_xb, stride_xk, stride_xc, h,
                     NP, INV_SQRT_N, SPLIT_F32, DOT_DTYPE)
    y, r, q = quantize(xr, lo, hi, s, z, qmax)
    return rb, rk, row_ok, tl.arange(0, NP), xr, y, r, q


# --------------------------------------------------------------------------------------------
# Host helpers
# --------------------------------------------------------------------------------------------
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the kernels load


@lru_cache(maxsize=8)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def exact_bf16(device: torch.device):
    """Operand type for bf16-exact pieces: bf16 compiled, fp32 in the interpreter (module docstring)."""
    return tl.bfloat16 if device.type == "cuda" else tl.float32


def dot_dtype(x: Tensor):
    """(SPLIT_F32, DOT_DTYPE) for rotating a tile of x's dtype exactly."""
    if x.dtype == torch.float16:
        return False, tl.float16
    return x.dtype == torch.float32, exact_bf16(x.device)


def row_tile_config(n: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, num_warps, max programs) of the row-rotating kernels. Fixed per shape class: they
    are memory-bound."""
    if device.type != "cuda":
        return 32, 4, 3  # interpreter: small tiles, a few programs so the persistent loop and tails run
    block_m = 128 if n <= 16 else 64 if n <= 128 else 32
    num_warps = 4 if n <= 64 else 8
    return block_m, num_warps, sm_count(device.index or 0) * (32 // num_warps)


def rows_view(x: Tensor, last: bool):
    """(view, M, K, (stride_b, stride_k, stride_c)): x as (B, C, K) rows; dim=-1 uses K = 1."""
    if last:
        x2 = x.reshape(-1, x.shape[-1])
        return x2, x2.shape[0], 1, (x2.stride(0), 0, x2.stride(1))
    x3 = x.reshape(-1, x.shape[-2], x.shape[-1])
    return x3, x3.shape[0] * x3.shape[2], x3.shape[2], (x3.stride(0), x3.stride(2), x3.stride(1))


def rotated_shape(x: Tensor, last: bool, n: int) -> tuple[int, ...]:
    """x's shape with the rotated axis (last, else second-to-last) padded to n."""
    return (*x.shape[:-1], n) if last else (*x.shape[:-2], n, x.shape[-1])


def rotated_strides(shape: tuple[int, ...], last: bool) -> tuple[int, int, int]:
    """(b, k, rotated) strides of a contiguous tensor of :func:`rotated_shape`."""
    if last:
        return shape[-1], 0, 1
    return shape[-2] * shape[-1], 1, shape[-1]
