"""The quantizer's step and zero offset from its four parameters (fake_quant's spec)."""
from __future__ import annotations

from torch import Tensor

BITS = (2, 3, 4, 8)


def _check_bits(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"bits must be 2, 3, 4 or 8, got {bits}")
    return 2 ** bits - 1


def step_and_zero(lower: Tensor, upper: Tensor, bits: int, step_extra: Tensor | None,
                  zero_extra: Tensor | None) -> tuple[Tensor, Tensor]:
    """(s, z) as fp32 0-d tensors, differentiable in every parameter."""
    qmax = _check_bits(bits)
    s = (upper.float() - lower.float()) / qmax
    z = lower.float()
    if step_extra is not None:
        s = s + step_extra.float()
    if zero_extra is not None:
        z = z + zero_extra.float()
    return s, z
