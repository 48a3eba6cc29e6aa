"""Fused Triton kernels: zero-pad + normalized Sylvester-Hadamard rotation + fake quantization.

Matches :func:`compsrt.kernels.hadamard_fake_quant.hadamard_fake_quant_ref`, forward and
straight-through backward (the formulas are in :mod:`compsrt.kernels.fake_quant`). Own constraints:

- x is fp32, fp16 or bf16 (computed in fp32, returned in x's dtype); the rotated size pads to
  n <= MAX_N = 128 (ValueError otherwise). The dispatcher
  :func:`compsrt.kernels.hadamard_fake_quant.hadamard_fake_quant` sends anything else (fp64;
  n = 256, e.g. classic SwinIR's C = 180; an empty rotated axis) to the reference, autograd
  included. The kernels are written for n <= 256 and pass the interpreter tests at 256, but
  compiled that case holds a 256 x 256 H per program and is neither tuned nor verified on a GPU
  yet: raise MAX_N once benchmarks/gpu_check.sh shows it compiles and pays.
- Degenerate steps ``s = (u - l) / qmax + s2 <= 0`` (or NaN) are rejected before the launch,
  checked as ``u > l`` or ``(u - l) + qmax * s2 > 0`` (one to three tiny ops): ``ValueError`` for
  CPU tensors (the interpreter); on CUDA a sync-free ``torch._assert_async``, which fails the next
  synchronizing call with a device-side assert (that ends the CUDA context, as any device assert
  does). The kernels themselves trust s > 0.
- Codes of NaN inputs are 0 (their output is NaN), as in the reference.

The rotation (an exact +-1 matmul with a register-generated H_n, fp32 as three exact bf16
pieces), the half-to-even rounding and the interpreter's operand types are shared with the
other Hadamard kernels: see :mod:`compsrt.kernels._triton_common`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._triton_common import (FLOAT_DTYPES, cast_out, code_of, dot_dtype, dot_pm1, rotate_quantize_tile, row_tile_config,
                             rotated_shape, rotated_strides, rows_view, sylvester_block)
from .fake_quant import _check_bits
from .hadamard import next_pow2

MAX_N = 128  # largest padded size the launcher takes (the kernels are written for 256)


# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------
@triton.jit
def _load_params(lower_ptr, upper_ptr, step_extra_ptr, zero_extra_ptr, qmax,
                 HAS_STEP_EXTRA: tl.constexpr, HAS_ZERO_EXTRA: tl.constexpr):
    """(l, u, s, z) in fp32, with the reference's operation order (fake_quant.step_and_zero)."""
    lo = tl.load(lower_ptr).to(tl.float32)
    hi = tl.load(upper_ptr).to(tl.float32)
    s = tl.math.div_rn(hi - lo, qmax)
    z = lo
    if HAS_STEP_EXTRA:
        s = s + tl.load(step_extra_ptr).to(tl.float32)
    if HAS_ZERO_EXTRA:
        z = z + tl.load(zero_extra_ptr).to(tl.float32)
    return lo, hi, s, z


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["M"])
def _hadamard_fake_quant_kernel(
    x_ptr,             # input, viewed as (B, C, K): element (b, c, k) at b*stride_xb + c*stride_xc + k*stride_xk
    out_ptr,           # output (B, N, K) in x's dtype, strides stride_o*
    codes_ptr,         # uint8 codes, same layout as out (written only if WRITE_CODES)
    lower_ptr,         # 0-d clip lower bound l (any float dtype)
    upper_ptr,         # 0-d clip upper bound u
    step_extra_ptr,    # 0-d step extra s2 (read only if HAS_STEP_EXTRA)
    zero_extra_ptr,    # 0-d zero extra z2 (read only if HAS_ZERO_EXTRA)
    M,                 # number of rotated vectors: B * K
    K,                 # trailing size (1 for dim=-1; the row index splits as (b, k) if SPLIT_ROWS)
    C,                 # length of each vector before padding (<= N)
    stride_xb, stride_xk, stride_xc,   # x strides for b, k, c
    stride_ob, stride_ok, stride_oc,   # out/codes strides for b, k, rotated coordinate
    qmax,              # 2^bits - 1, as a float (runtime: one compiled kernel serves every bit width)
    N: tl.constexpr,             # padded length n: power of two
    NP: tl.constexpr,            # tile width max(N, 16) (tl.dot needs >= 16)
    INV_SQRT_N: tl.constexpr,    # 1 / sqrt(N)
    HAS_STEP_EXTRA: tl.constexpr, HAS_ZERO_EXTRA: tl.constexpr,
    WRITE_CODES: tl.constexpr,
    KEEP_DC: tl.constexpr,       # rotated coefficient 0 passes through unquantized (exact_dc)
    SPLIT_ROWS: tl.constexpr,    # K > 1
    SPLIT_F32: tl.constexpr,     # x is fp32: rotate as three exact bf16 pieces
    DOT_DTYPE: tl.constexpr,     # operand type of the +-1 products
    BLOCK_M: tl.constexpr,       # vectors per tile
):
    lo, hi, s, z = _load_params(lower_ptr, upper_ptr, step_extra_ptr, zero_extra_ptr, qmax,
                                HAS_STEP_EXTRA, HAS_ZERO_EXTRA)
    h = sylvester_block(N, NP)
    for blk in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):  # persistent
        rb, rk, row_ok, cols, xr, y, r, q = rotate_quantize_tile(
            blk, x_ptr, M, K, C, stride_xb, stride_xk, stride_xc, h, lo, hi, s, z, qmax,
            NP, INV_SQRT_N, SPLIT_ROWS, SPLIT_F32, DOT_DTYPE, BLOCK_M)
        offs = rb[:, None] * stride_ob + rk[:, None] * stride_ok + cols[None, :] * stride_oc
        mask = row_ok[:, None] & (cols[None, :] < N)
        val = s * q + z
        if KEEP_DC:
            val = tl.where(cols[None, :] == 0, xr, val)
        tl.store(out_ptr + offs, cast_out(val, out_ptr.dtype.element_ty), mask=mask)
        if WRITE_CODES:
            tl.store(codes_ptr + offs, code_of(q).to(tl.uint8), mask=mask)


@triton.jit(do_not_specialize=["M"])
def _hadamard_fake_quant_bwd_kernel(
    x_ptr,             # forward input (B, C, K), strides stride_x*; the rotation is recomputed
    grad_out_ptr,      # upstream gradient (B, N, K), x's dtype, strides stride_g*
    grad_x_ptr,        # output: gradient to x (B, C, K), x's dtype, strides stride_d*
    partial_ptr,       # output: fp32 (num_programs, 4) per-program sums of d/dl, d/du, d/ds2, d/dz2
    lower_ptr, upper_ptr, step_extra_ptr, zero_extra_ptr,   # as in the forward kernel
    M, K, C,                           # as in the forward kernel
    stride_xb, stride_xk, stride_xc,
    stride_gb, stride_gk, stride_gc,
    stride_db, stride_dk, stride_dc,
    qmax,                              # 2^bits - 1, as a float
    N: tl.constexpr, NP: tl.constexpr, INV_SQRT_N: tl.constexpr,
    HAS_STEP_EXTRA: tl.constexpr, HAS_ZERO_EXTRA: tl.constexpr, KEEP_DC: tl.constexpr,
    SPLIT_ROWS: tl.constexpr, SPLIT_F32: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    lo, hi, s, z = _load_params(lower_ptr, upper_ptr, step_extra_ptr, zero_extra_ptr, qmax,
                                HAS_STEP_EXTRA, HAS_ZERO_EXTRA)
    h = sylvester_block(N, NP)
    acc_s = tl.zeros((NP,), tl.float32)  # d x_hat/d s * g, summed over rows (columns kept)
    acc_z = tl.zeros((NP,), tl.float32)  # d x_hat/d z * g
    acc_l = tl.zeros((NP,), tl.float32)  # clip path to l
    acc_u = tl.zeros((NP,), tl.float32)  # clip path to u
    for blk in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        rb, rk, row_ok, cols, xr, y, r, q = rotate_quantize_tile(
            blk, x_ptr, M, K, C, stride_xb, stride_xk, stride_xc, h, lo, hi, s, z, qmax,
            NP, INV_SQRT_N, SPLIT_ROWS, SPLIT_F32, DOT_DTYPE, BLOCK_M)
        g_offs = rb[:, None] * stride_gb + rk[:, None] * stride_gk + cols[None, :] * stride_gc
        g = tl.load(grad_out_ptr + g_offs, mask=row_ok[:, None] & (cols[None, :] < N), other=0.0)
        gf = g.to(tl.float32)
        inrange = (r >= 0.0) & (r <= qmax)     # code not saturated (False for NaN)
        sat = (r < 0.0) | (r > qmax)           # saturated (also False for NaN: no gradient at all)
        inside = (xr >= lo) & (xr <= hi)       # clip passes gradient (ties included, as torch.clamp)
        # d/dx: STE mask in the rotated domain, rotated back by H (symmetric, orthonormal), cropped.
        gm = tl.where(inside & inrange, g, 0.0)   # still exact in g's dtype
        if KEEP_DC:  # coefficient 0 is the identity: all of its gradient to x, none to the parameters
            is_dc = cols[None, :] == 0
            gm = tl.where(is_dc, g, gm)
            gf = tl.where(is_dc, 0.0, gf)
        gx = dot_pm1(gm, h, SPLIT_F32, DOT_DTYPE) * INV_SQRT_N
        d_offs = rb[:, None] * stride_db + rk[:, None] * stride_dk + cols[None, :] * stride_dc
        tl.store(grad_x_ptr + d_offs, cast_out(gx, grad_x_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (cols[None, :] < C))
        acc_s += tl.sum(tl.where(inrange, q - y, tl.where(sat, q, 0.0)) * gf, axis=0)
        acc_z += tl.sum(tl.where(sat, gf, 0.0), axis=0)
        acc_l += tl.sum(tl.where((xr < lo) & inrange, gf, 0.0), axis=0)
        acc_u += tl.sum(tl.where((xr > hi) & inrange, gf, 0.0), axis=0)
    d_s = tl.sum(acc_s, axis=0)
    d_z = tl.sum(acc_z, axis=0)
    d_su = tl.math.div_rn(d_s, qmax)                           # s = (u - l) / qmax + s2
    base = partial_ptr + tl.program_id(0) * 4
    tl.store(base + 0, d_z - d_su + tl.sum(acc_l, axis=0))     # l: z = l + z2, s, clip
    tl.store(base + 1, d_su + tl.sum(acc_u, axis=0))           # u: s, clip
    tl.store(base + 2, d_s)                                    # s2
    tl.store(base + 3, d_z)                                    # z2


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
def _common(x: Tensor, dim: int, bits: int, step_extra, zero_extra):
    last = dim in (-1, x.ndim - 1)
    c = x.shape[-1 if last else -2]
    n = next_pow2(c)
    meta = dict(N=n, NP=max(n, 16), INV_SQRT_N=1.0 / n ** 0.5,
                HAS_STEP_EXTRA=step_extra is not None, HAS_ZERO_EXTRA=zero_extra is not None)
    return last, c, n, meta


def _launch_forward(x, lower, upper, step_extra, zero_extra, bits, dim, return_codes, keep_dc):
    last, c, n, meta = _common(x, dim, bits, step_extra, zero_extra)
    out_shape = rotated_shape(x, last, n)
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    codes = torch.empty(out_shape, dtype=torch.uint8, device=x.device) if return_codes else None
    xv, m, k, (sxb, sxk, sxc) = rows_view(x, last)
    if m == 0:
        return out, codes
    block_m, num_warps, max_programs = row_tile_config(n, x.device)
    grid = (min(triton.cdiv(m, block_m), max_programs),)
    split_f32, dot_ty = dot_dtype(x)
    sob, sok, soc = rotated_strides(out_shape, last)
    _hadamard_fake_quant_kernel[grid](
        xv, out, out if codes is None else codes,
        lower, upper, lower if step_extra is None else step_extra, lower if zero_extra is None else zero_extra,
        m, k, c, sxb, sxk, sxc, sob, sok, soc, float(2 ** bits - 1),
        WRITE_CODES=codes is not None, KEEP_DC=keep_dc, SPLIT_ROWS=k > 1, SPLIT_F32=split_f32, DOT_DTYPE=dot_ty,
        BLOCK_M=block_m, num_warps=num_warps, enable_fp_fusion=False, **meta)
    return out, codes


def _launch_backward(x, grad_out, lower, upper, step_extra, zero_extra, bits, dim, keep_dc):
    """(grad_x, sums): sums = fp32 [d/dl, d/du, d/ds2, d/dz2] of sum(grad_out * x_hat)."""
    last, c, n, meta = _common(x, dim, bits, step_extra, zero_extra)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    xv, m, k, (sxb, sxk, sxc) = rows_view(x, last)
    if m == 0:
        return grad_x, torch.zeros(4, dtype=torch.float32, device=x.device)
    gv, _, _, (sgb, sgk, sgc) = rows_view(grad_out.to(x.dtype), last)
    _, _, _, (sdb, sdk, sdc) = rows_view(grad_x, last)
    block_m, num_warps, max_programs = row_tile_config(n, x.device)
    programs = min(triton.cdiv(m, block_m), max_programs)
    partial = torch.empty((programs, 4), dtype=torch.float32, device=x.device)
    split_f32, dot_ty = dot_dtype(x)
    _hadamard_fake_quant_bwd_kernel[(programs,)](
        xv, gv, grad_x, partial,
        lower, upper, lower if step_extra is None else step_extra, lower if zero_extra is None else zero_extra,
        m, k, c, sxb, sxk, sxc, sgb, sgk, sgc, sdb, sdk, sdc, float(2 ** bits - 1),
        KEEP_DC=keep_dc, SPLIT_ROWS=k > 1, SPLIT_F32=split_f32, DOT_DTYPE=dot_ty,
        BLOCK_M=block_m, num_warps=num_warps, enable_fp_fusion=False, **meta)
    return grad_x, partial.sum(0)


class _HadamardFakeQuant(torch.autograd.Function):
    """Fused forward; the backward recomputes the rotation from x instead of storing it."""

    @staticmethod
    def forward(ctx, x, lower, upper, step_extra, zero_extra, bits, dim, return_codes, keep_dc):
        out, codes = _launch_forward(x, lower, upper, step_extra, zero_extra, bits, dim, return_codes, keep_dc)
        ctx.save_for_backward(x, lower, upper, step_extra, zero_extra)
        ctx.bits, ctx.dim, ctx.keep_dc = bits, dim, keep_dc
        if codes is None:
            return out
        ctx.mark_non_differentiable(codes)
        return out, codes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, *_codes_grad):
        x, lower, upper, step_extra, zero_extra = ctx.saved_tensors
        grad_x, sums = _launch_backward(x, grad_out, lower, upper, step_extra, zero_extra, ctx.bits, ctx.dim,
                                        ctx.keep_dc)
        need = ctx.needs_input_grad
        grads = [grad_x if need[0] else None]
        for i, p in enumerate((lower, upper, step_extra, zero_extra)):
            grads.append(sums[i].reshape(p.shape).to(p.dtype) if p is not None and need[i + 1] else None)
        return (*grads, None, None, None, None)


def _param(p: Tensor | None, name: str, device: torch.device) -> Tensor | None:
    if p is None:
        return None
    if not isinstance(p, Tensor) or p.numel() != 1 or not p.is_floating_point():
        raise ValueError(f"{name} must be a one-element float tensor (per-tensor quantizer), got "
                         f"{type(p).__name__} {tuple(getattr(p, 'shape', ()))}")
    return p.to(device)  # differentiable: gradients flow back to a parameter kept on another device


def _check_step(x: Tensor, lower: Tensor, upper: Tensor, step_extra: Tensor | None, qmax: int) -> None:
    """Reject s = (u - l) / qmax + s2 <= 0 (or NaN) with as few launches as possible, no host sync
    on CUDA: s > 0 is u > l, or (u - l) + qmax * s2 > 0."""
    with torch.no_grad():
        ok = upper > lower if step_extra is None else torch.add(upper - lower, step_extra, alpha=qmax) > 0
    msg = "hadamard_fake_quant: step (upper - lower) / (2^bits - 1) + step_extra must be > 0"
    if x.is_cuda:
        torch._assert_async(ok.reshape(()), msg)
    elif not bool(ok):
        s = (upper.float() - lower.float()) / qmax + (0.0 if step_extra is None else step_extra.float())
        raise ValueError(f"{msg}, got {float(s):.6g}")


def supports(x: Tensor, dim: int) -> bool:
    """Whether the fused kernels take x rotated along dim (-1 or -2): fp32/fp16/bf16 and
    1 <= x.shape[dim] <= MAX_N. The dispatcher runs the reference for the rest."""
    if dim not in (-1, -2, x.ndim - 1, x.ndim - 2) or x.ndim < 1:
        return False
    c = x.shape[dim]
    return x.dtype in FLOAT_DTYPES and 0 < c and next_pow2(c) <= MAX_N


def hadamard_fake_quant_triton(x: Tensor, lower: Tensor, upper: Tensor, bits: int, step_extra: Tensor | None = None,
                               zero_extra: Tensor | None = None, dim: int = -1,
                               return_codes: bool = False, keep_dc: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Matches :func:`hadamard_fake_quant_ref` (forward and straight-through gradients), fused.

    Args:
        x: (..., C) for dim=-1 or (..., C, K) for dim=-2; fp32, fp16 or bf16, any strides; CUDA, or
            CPU under ``TRITON_INTERPRET=1``. C >= 1 pads to n = next power of two <= MAX_N.
        lower, upper, step_extra, zero_extra: one-element float tensors l, u, s2, z2 (None = 0 and
            no gradient); moved to x's device if needed.
        bits: 2, 3, 4 or 8.
        dim: -1, or -2 to rotate the second-to-last axis (v's token axis for attn @ v).
        return_codes: also return the uint8 codes (rotated, padded domain).
        keep_dc: rotated coefficient 0 passes through unquantized (QuantConfig.exact_dc); it takes
            no part in the parameters' gradients and has no code (so not with return_codes).
    Returns:
        The dequantized rotated tensor (axis ``dim`` of size n, x's dtype, contiguous), and the codes
        if asked for. Differentiable in x, lower, upper, step_extra and zero_extra.
    Raises:
        ValueError: bits not in (2, 3, 4, 8), keep_dc with return_codes, dim not one of the last two
            axes, x that :func:`supports` rejects, a parameter that is not a one-element float
            tensor, or (CPU tensors) a step s <= 0. On CUDA, s <= 0 raises a device-side assert at
            the next synchronization instead.

    Example:
        >>> out = hadamard_fake_quant_triton(x, lo, hi, 4)      # x: (B*64, 64, 60) fp16 on CUDA
    """
    qmax = _check_bits(bits)
    if dim not in (-1, -2, x.ndim - 1, x.ndim - 2) or x.ndim < (1 if dim in (-1, x.ndim - 1) else 2):
        raise ValueError(f"dim must be the last or second-to-last axis, got {dim} for a {x.ndim}-d tensor")
    dim = -1 if dim in (-1, x.ndim - 1) else -2
    if keep_dc and return_codes:
        raise ValueError("return_codes needs keep_dc=False: the DC coefficient has no code")
    if not supports(x, dim):
        raise ValueError(f"the fused kernels take fp32/fp16/bf16 with 1 <= size <= {MAX_N} along dim, got "
                         f"{x.dtype} {tuple(x.shape)} (dim={dim}); hadamard_fake_quant runs the reference "
                         "for the rest")
    lower, upper = _param(lower, "lower", x.device), _param(upper, "upper", x.device)
    step_extra, zero_extra = _param(step_extra, "step_extra", x.device), _param(zero_extra, "zero_extra", x.device)
    _check_step(x, lower, upper, step_extra, qmax)
    params = (lower, upper, step_extra, zero_extra)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *params)):
        return _HadamardFakeQuant.apply(x, *params, bits, dim, return_codes, keep_dc)
    out, codes = _launch_forward(x, *params, bits, dim, return_codes, keep_dc)
    return (out, codes) if return_codes else out
