"""Hadamard rotation + quantization to integer codes: the runtime's activation quantizer.

The same arithmetic as :func:`compsrt.kernels.fake_quant.fake_quant_ref` (clip, subtract the
zero offset, divide by the step, round half to even, clamp), stopping at the code: the packed
runtime feeds the codes to integer products instead of dequantizing them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import CompsrtError
from .hadamard import hadamard_ref


def quant_params(lower: Tensor, upper: Tensor, step: Tensor, zero: Tensor) -> Tensor:
    """The runtime's quantizer parameters as one (4,) fp32 tensor ``[l, u, s, z]``."""
    return torch.stack([t.detach().float().reshape(()) for t in (lower, upper, step, zero)])


def quantize_ref(t: Tensor, qp: Tensor, bits: int) -> Tensor:
    """Codes of ``t`` (already in the quantization domain): int8 in [0, 2^bits - 1], NaN -> 0.

    Args:
        t: float tensor, any shape (computed in fp32).
        qp: (4,) fp32 ``[l, u, s, z]`` (:func:`quant_params`).
        bits: 2, 3 or 4.
    """
    qmax = 2 ** bits - 1
    lo, hi, s, z = qp.to(t.device).float().unbind()
    c = torch.clamp(t.float(), float(lo), float(hi)) if t.device.type == "cpu" else torch.clamp(t.float(), lo, hi)
    q = torch.round((c - z) / s).clamp_(0, qmax)
    return q.nan_to_num_(0.0).to(torch.int8)


def hadamard_quant_ref(x: Tensor, qp: Tensor, bits: int, dim: int = -1,
                       keep_dc: bool = False) -> tuple[Tensor, Tensor | None]:
    """Rotate ``x`` along ``dim`` (zero-padded to n, a power of two) and quantize it to codes.

    Args:
        x: (..., C) (dim=-1) or (..., C, K) (dim=-2) float tensor.
        qp: (4,) fp32 ``[l, u, s, z]``.
        bits: 2, 3 or 4.
        dim: -1 or -2, the contraction axis of the product the codes feed.
        keep_dc: rotated coefficient 0 stays FP (QuantConfig.exact_dc): its code is 0.
    Returns:
        (codes int8 with axis ``dim`` of size n, dc) where dc is the fp32 coefficient 0 with
        that axis kept at size 1 (None without keep_dc).
    """
    r = hadamard_ref(x.float(), dim)
    codes = quantize_ref(r, qp, bits)
    if not keep_dc:
        return codes, None
    last = dim in (-1, x.ndim - 1)
    if last:
        codes[..., 0] = 0
        return codes, r[..., :1].contiguous()
    codes[..., 0, :] = 0
    return codes, r[..., :1, :].contiguous()


def _load_triton():
    try:
        from . import hadamard_quant_triton
    except ImportError as e:
        raise CompsrtError(f"the CUDA fast path needs Triton ({e}); install it with 'pip install triton'") from None
    return hadamard_quant_triton


def hadamard_quant(x: Tensor, qp: Tensor, bits: int, dim: int = -1,
                   keep_dc: bool = False) -> tuple[Tensor, Tensor | None]:
    """Matches :func:`hadamard_quant_ref`; CUDA tensors run the fused Triton kernel."""
    if bits not in (2, 3, 4):
        raise ValueError(f"bits must be 2, 3 or 4, got {bits}")
    if not x.is_cuda:
        return hadamard_quant_ref(x, qp, bits, dim, keep_dc)
    tri = _load_triton()
    if not tri.supports(x, dim):   # fp64, or a padded size beyond the kernel's (n > 128)
        return hadamard_quant_ref(x, qp, bits, dim, keep_dc)
    return tri.hadamard_quant_triton(x, qp, bits, dim, keep_dc)
