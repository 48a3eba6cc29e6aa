"""Hadamard rotation fused with fake quantization: what every quantized operand goes through."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import CompsrtError
from .fake_quant import _check_bits, fake_quant, fake_quant_ref, step_and_zero
from .hadamard import hadamard_ref


def _dc_dim(x: Tensor, dim: int, keep_dc: bool) -> int | None:
    """fake_quant's ``dc_dim`` for keep_dc: the rotated axis as -1 or -2, or None."""
    if not keep_dc:
        return None
    return -1 if dim in (-1, x.ndim - 1) else -2


def hadamard_fake_quant_ref(x: Tensor, lower: Tensor, upper: Tensor, bits: int, step_extra: Tensor | None = None,
                            zero_extra: Tensor | None = None, dim: int = -1,
                            return_codes: bool = False, keep_dc: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """fake_quant_ref(hadamard_ref(x, dim), ...) with the rotation kept in fp32 for half inputs:
    the spec the fused kernels are tested against.

    Args:
        x: float tensor (..., C) (dim=-1) or (..., C, K) (dim=-2).
        lower, upper, step_extra, zero_extra: 0-d tensors, see :mod:`compsrt.kernels.fake_quant`.
        bits: 2, 3, 4 or 8.
        dim: the contraction axis to rotate (padded with zeros to the next power of two n).
        return_codes: also return the uint8 codes (in the rotated, padded domain).
        keep_dc: rotated coefficient 0 passes through unquantized (QuantConfig.exact_dc).
    Returns:
        The dequantized rotated tensor, axis ``dim`` of size n, in x's dtype (and the codes).
    """
    dc_dim = _dc_dim(x, dim, keep_dc)
    if x.dtype in (torch.float16, torch.bfloat16):
        # Quantize the fp32 rotation: rounding it to x's dtype first would move bf16 codes at 8 bits
        # on ~4% of elements, and the fused kernels keep it in fp32.
        res = fake_quant_ref(hadamard_ref(x.float(), dim), lower, upper, bits, step_extra, zero_extra, return_codes,
                             dc_dim)
        return (res[0].to(x.dtype), res[1]) if return_codes else res.to(x.dtype)
    return fake_quant_ref(hadamard_ref(x, dim), lower, upper, bits, step_extra, zero_extra, return_codes, dc_dim)


def _load_triton():
    try:
        from . import hadamard_fake_quant_triton
    except ImportError as e:
        raise CompsrtError(f"the CUDA fast path needs Triton ({e}); install it with 'pip install triton'") from None
    return hadamard_fake_quant_triton


def hadamard_fake_quant(x: Tensor, lower: Tensor, upper: Tensor, bits: int, step_extra: Tensor | None = None,
                        zero_extra: Tensor | None = None, dim: int = -1,
                        return_codes: bool = False, keep_dc: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Matches :func:`hadamard_fake_quant_ref`; CUDA tensors run the fused Triton kernels where
    they apply (fp32/fp16/bf16, rotated size padding to at most their MAX_N = 128), the reference
    elsewhere (fp64; C = 180 -> 256), autograd included."""
    _check_bits(bits)
    if not x.is_cuda:
        if return_codes:
            return hadamard_fake_quant_ref(x, lower, upper, bits, step_extra, zero_extra, dim, return_codes, keep_dc)
        return fake_quant(hadamard_ref(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim),
                          lower, upper, bits, step_extra, zero_extra, _dc_dim(x, dim, keep_dc)).to(x.dtype)
    tri = _load_triton()
    if not tri.supports(x, dim):
        return hadamard_fake_quant_ref(x, lower, upper, bits, step_extra, zero_extra, dim, return_codes, keep_dc)
    return tri.hadamard_fake_quant_triton(x, lower, upper, bits, step_extra, zero_extra, dim, return_codes, keep_dc)
