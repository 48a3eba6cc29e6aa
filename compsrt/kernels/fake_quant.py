"""Per-tensor asymmetric fake quantization with CompSRT's scalar decomposition.

The spec (docs/engine.md, "The maths the runtime executes"), for b bits and qmax = 2^b - 1::

    s = (u - l) / qmax + s2          # step: bound-derived part + learned extra
    z = l + z2                       # zero offset: bound part + learned extra
    c = clip(x, l, u)
    q = clamp(round((c - z) / s), 0, qmax)  # round half to even, straight-through
    x_hat = s * q + z

Gradients (straight-through round; "sat" = round((c - z) / s) outside [0, qmax])::

    d x_hat / d x  = [l <= x <= u] * [not sat]
    d x_hat / d s  = (q - (c - z) / s) if not sat else q         -> s2; l (-1/qmax); u (+1/qmax)
    d x_hat / d z  = 0 if not sat else 1                         -> z2; l (+1)
    d x_hat / d l += [x < l] * [not sat];  d x_hat / d u += [x > u] * [not sat]

So z2 only learns where codes saturate: at the DOBI start (z = l, s = (u-l)/qmax) no code
can saturate and its gradient is exactly 0.

Non-finite inputs: +inf and -inf clip to u and l like any outlier; NaN propagates to the
output (never a silent finite value) and contributes no gradient to x or the parameters;
its code (return_codes) is 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .fake_quant_lean import fake_quant_lean
from .quant_step import BITS, _check_bits, step_and_zero

__all__ = ["BITS", "fake_quant", "fake_quant_ref", "step_and_zero"]

def fake_quant_ref(x: Tensor, lower: Tensor, upper: Tensor, bits: int, step_extra: Tensor | None = None,
                   zero_extra: Tensor | None = None, return_codes: bool = False,
                   dc_dim: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Quantize-dequantize ``x`` per tensor; autograd gives the straight-through gradients.

    Args:
        x: float tensor, any shape; computed in fp32 (fp64 stays fp64), returned in x's dtype.
        lower, upper: 0-d tensors, the clip bounds l < u.
        bits: 2, 3, 4 or 8.
        step_extra, zero_extra: 0-d tensors s2, z2 (None = 0).
        return_codes: also return the integer codes q as uint8 (same shape as x).
        dc_dim: pass coefficient 0 of this axis through unquantized (the exact-DC rotation,
            see QuantConfig.exact_dc); it plays no part in the parameters' gradients.
    """
    if dc_dim is not None:
        if return_codes:
            raise ValueError("return_codes needs dc_dim=None: the DC coefficient has no code")
        n = x.shape[dc_dim]
        rest = fake_quant_ref(x.narrow(dc_dim, 1, n - 1), lower, upper, bits, step_extra, zero_extra)
        return torch.cat([x.narrow(dc_dim, 0, 1).to(rest.dtype), rest], dc_dim)
    s, z = step_and_zero(lower, upper, bits, step_extra, zero_extra)
    qmax = 2 ** bits - 1
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc, lo, hi, s, z = x.to(cdt), lower.to(cdt), upper.to(cdt), s.to(cdt), z.to(cdt)
    nan = torch.isnan(xc)  # quantize a finite stand-in and restore NaN after: no NaN in any gradient
    c = torch.clamp(xc.masked_fill(nan, 0), lo, hi)
    y = (c - z) / s
    r = torch.round(y)
    q = torch.clamp(r, 0, qmax).detach()
    # Straight-through gradients, written out: in range d/dc = 1, d/ds = q - y, d/dz = 0 exactly;
    # saturated d/ds = q, d/dz = 1. (Chaining through s * round_ste((c - z) / s) leaves fp32 noise on
    # d/dz where it must be 0, which Adam would turn into full-size steps of z2.)
    ste = torch.where((r >= 0) & (r <= qmax), c + s * (q - y).detach(), s * q + z)
    out = ((s * q + z).detach() + (ste - ste.detach())).masked_fill(nan, float("nan")).to(x.dtype)
    if return_codes:
        return out, q.masked_fill(nan, 0).to(torch.uint8)
    return out


def fake_quant(x: Tensor, lower: Tensor, upper: Tensor, bits: int, step_extra: Tensor | None = None,
               zero_extra: Tensor | None = None, dc_dim: int | None = None) -> Tensor:
    """Matches :func:`fake_quant_ref`, saving only its input for backward (see fake_quant_lean)."""
    _check_bits(bits)
    return fake_quant_lean(x, lower, upper, bits, step_extra, zero_extra, dc_dim)
