"""Memory-lean fake quantization for CPU training: matches ``fake_quant_ref``.

Autograd through the reference keeps about ten full-size temporaries per quantizer alive
until backward; calibration runs 384 quantizers, so a 4 x 64 x 64 batch needed over 12 GB.
This Function saves only its input and recomputes the masks in backward, where the
straight-through gradients of ``fake_quant``'s docstring are written out directly and the
parameter gradients are reduced on the spot.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .fake_quant import step_and_zero


class _LeanFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lo: Tensor, hi: Tensor, s: Tensor, z: Tensor, qmax: int) -> Tensor:
        xc = x.float() if x.dtype != torch.float64 else x
        ctx.save_for_backward(xc, lo, hi, s, z)
        ctx.qmax = qmax
        # In place after one allocation; NaN passes through clamp and round, so it propagates.
        out = torch.clamp(xc, lo, hi).sub_(z).div_(s).round_().clamp_(0, qmax).mul_(s).add_(z)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        xc, lo, hi, s, z = ctx.saved_tensors
        qmax = ctx.qmax
        g = g.to(xc.dtype)
        y = torch.clamp(xc, lo, hi).sub_(z).div_(s)
        q = torch.round(y)
        inrange = (q >= 0) & (q <= qmax)               # False for NaN
        sat = ~inrange & ~torch.isnan(xc)              # saturated codes (NaN is neither)
        q.clamp_(0, qmax)
        g_in = torch.where(inrange, g, 0)
        gx = torch.where((xc >= lo) & (xc <= hi), g_in, 0)
        g_sat = torch.where(sat, g, 0)
        gs = torch.where(inrange, g * (q - y), g_sat * q.nan_to_num_(0)).sum()
        gz = g_sat.sum()
        gl_clip = torch.where(xc < lo, g_in, 0).sum()
        gu_clip = torch.where(xc > hi, g_in, 0).sum()
        # s = (u - l) / qmax + s2 and z = l + z2: autograd outside (step_and_zero) chains d/ds and
        # d/dz to l, u, s2, z2; here are d/ds, d/dz and the clip terms of l and u.
        return gx, gl_clip, gu_clip, gs, gz, None


def fake_quant_lean(x: Tensor, lower: Tensor, upper: Tensor, bits: int, step_extra: Tensor | None = None,
                    zero_extra: Tensor | None = None) -> Tensor:
    """Matches :func:`compsrt.kernels.fake_quant_ref` (values and gradients), saving one tensor."""
    s, z = step_and_zero(lower, upper, bits, step_extra, zero_extra)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return _LeanFakeQuant.apply(x, lower.to(cdt), upper.to(cdt), s.to(cdt), z.to(cdt), 2 ** bits - 1)
