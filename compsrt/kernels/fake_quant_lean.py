"""Memory-lean fake quantization, what ``fake_quant`` runs on every device: matches ``fake_quant_ref``.

Autograd through the reference keeps about ten full-size temporaries per quantizer alive
until backward; calibration runs 384 quantizers, so a 4 x 64 x 64 batch needed over 12 GB.
This Function saves only its input and recomputes the masks in backward, where the
straight-through gradients of ``fake_quant``'s docstring are written out directly and the
parameter gradients are reduced on the spot.

``dc_dim`` passes coefficient 0 of that axis through unquantized inside the Function (the
exact-DC rotation): slicing and concatenating outside would cost two zero-filled full-size
gradient buffers and a copy per quantizer, about a sixth of a calibration step on the CPU.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .quant_step import step_and_zero


def _dc(t: Tensor, dim: int) -> Tensor:
    return t.narrow(dim, 0, 1)


def _clamp(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """clamp(x, lo, hi); on the CPU with Python-number bounds, which takes the scalar kernel
    (several times faster than broadcasting 0-d tensors) and is exact: it only compares."""
    if x.device.type == "cpu":
        return torch.clamp(x, float(lo), float(hi))
    return torch.clamp(x, lo, hi)


class _LeanFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lo: Tensor, hi: Tensor, s: Tensor, z: Tensor, qmax: int,
                dc_dim: int | None) -> Tensor:
        xc = x.float() if x.dtype != torch.float64 else x
        ctx.save_for_backward(xc, lo, hi, s, z)
        ctx.qmax, ctx.dc_dim = qmax, dc_dim
        # In place after one allocation; NaN passes through clamp and round, so it propagates.
        out = _clamp(xc, lo, hi).sub_(z).div_(s).round_().clamp_(0, qmax).mul_(s).add_(z)
        if dc_dim is not None:
            _dc(out, dc_dim).copy_(_dc(xc, dc_dim))
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        xc, lo, hi, s, z = ctx.saved_tensors
        qmax, dc_dim = ctx.qmax, ctx.dc_dim
        g = g.to(xc.dtype)
        g_dc = None
        if dc_dim is not None:  # coefficient 0 is the identity: its gradient goes to x alone
            g_dc = _dc(g, dc_dim).clone()
            g = g.clone()
            _dc(g, dc_dim).zero_()
        if xc.device.type == "cpu":
            gx, gs, gz, gl_clip, gu_clip = _cpu_backward(xc, g, lo, hi, s, z, qmax)
        else:  # no data-dependent branch: it would synchronize the GPU
            gx, gs, gz, gl_clip, gu_clip = _masked_backward(xc, g, lo, hi, s, z, qmax)
        if g_dc is not None:
            _dc(gx, dc_dim).copy_(g_dc)
        # s = (u - l) / qmax + s2 and z = l + z2: autograd outside (step_and_zero) chains d/ds and
        # d/dz to l, u, s2, z2; here are d/ds, d/dz and the clip terms of l and u.
        return gx, gl_clip, gu_clip, gs, gz, None, None


def _cpu_backward(xc, g, lo, hi, s, z, qmax):
    """:func:`_masked_backward`'s gradients from float arithmetic instead of bool masks, bit for bit.

    On the CPU a comparison into a bool tensor, and ``where`` on one, cost several float passes,
    so the masks become 0/1 floats (research/fake_quant_backward.py times both): the
    side of the clip range is ``sign(x - clip(x))`` (-1 below, 0 inside, +1 above) and a code
    saturates where ``round(y) != clamp(round(y))``. Multiplying by 1 or 0 keeps or zeroes a
    value exactly, so every sum adds the same terms in the same order as the masked form (a zero
    may carry a sign: equal values). Each product is written so that its result takes the memory
    layout the masked form's did (that of its first operand): a non-contiguous ``g`` (the
    gradient of a transposed k) would otherwise be summed in another order. When no code
    saturates, d/ds is one dot product. NaN inputs take :func:`_general`, whose masks define
    what NaN contributes.
    """
    c = _clamp(xc, lo, hi)
    side = torch.sub(xc, c).sign_()
    y = c.sub_(z).div_(s)
    q = torch.round(y)
    lo_q, hi_q = torch.aminmax(q)
    if bool(lo_q.isnan()) or bool(hi_q.isnan()):  # aminmax propagates NaN
        return _general(xc, g, y, q, lo, hi, qmax)
    if bool(lo_q >= 0) and bool(hi_q <= qmax):  # no code saturates (the usual case at the start)
        gs = torch.dot(g.reshape(-1), q.sub_(y).reshape(-1))
        g_in, gz = g, torch.zeros_like(gs)
    else:
        qc = q.clamp(0, qmax)
        g_in = q.sub_(qc).abs_().sign_().neg_().add_(1).mul_(g)  # g where the code is in range, else 0
        g_sat = g_in.neg().add_(g)
        gs = torch.sub(qc, y).mul_(g_in).add_(qc.mul_(g_sat)).sum()
        gz = g_sat.sum()
    del q, y
    gl_clip = side.clamp(max=0).mul_(g_in).sum().neg_()  # sum(-t) == -sum(t) exactly
    gu_clip = side.clamp(min=0).mul_(g_in).sum()  # not total - rest: that cancels catastrophically
    return g_in * side.abs_().neg_().add_(1), gs, gz, gl_clip, gu_clip


def _masked_backward(xc, g, lo, hi, s, z, qmax):
    """The gradients from boolean masks (what CUDA runs): :func:`_cpu_backward`'s reference."""
    y = _clamp(xc, lo, hi).sub_(z).div_(s)
    return _general(xc, g, y, torch.round(y), lo, hi, qmax)


def _general(xc, g, y, q, lo, hi, qmax):
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
    return gx, gs, gz, gl_clip, gu_clip


def fake_quant_lean(x: Tensor, lower: Tensor, upper: Tensor, bits: int, step_extra: Tensor | None = None,
                    zero_extra: Tensor | None = None, dc_dim: int | None = None) -> Tensor:
    """Matches :func:`compsrt.kernels.fake_quant_ref` (values and gradients), saving one tensor."""
    s, z = step_and_zero(lower, upper, bits, step_extra, zero_extra)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return _LeanFakeQuant.apply(x, lower.to(cdt), upper.to(cdt), s.to(cdt), z.to(cdt), 2 ** bits - 1, dc_dim)
