"""DOBI: distribution-oriented bound initialization (2DQuant's bound search), made robust.

For each quantizer, try ``n`` candidate ranges that shrink the observed [min, max] from
both ends in equal steps (the last keeps 1% of the range), or only from the top for a
non-negative tensor (one-sided), and keep the one with the smallest L2 quantization error.
Ties keep the earlier, wider candidate. The candidate ranges come from the whole tensor's
min and max; the error of large tensors is scored on a seeded subsample (``max_elems``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _finite_flat(x: Tensor) -> Tensor:
    flat = x.detach().reshape(-1).float()
    return flat if bool(torch.isfinite(flat).all()) else flat[torch.isfinite(flat)]


def _subsample(flat: Tensor, max_elems: int, seed: int) -> Tensor:
    if flat.numel() <= max_elems:
        return flat
    g = torch.Generator(device="cpu").manual_seed(seed)
    return flat[torch.randint(flat.numel(), (max_elems,), generator=g).to(flat.device)]


def dobi(x: Tensor, bits: int, n: int = 100, one_sided: bool = False, max_elems: int = 1 << 20,
         seed: int = 0, chunk: int = 10) -> tuple[float, float]:
    """Best (lower, upper) for quantizing ``x`` per tensor at ``bits``.

    Args:
        x: any float tensor; non-finite values are ignored.
        one_sided: keep the lower bound at min(x) and shrink only the upper (meant for tensors
            with min >= 0, e.g. softmax outputs).
    Returns:
        (lower, upper) with upper > lower. A constant tensor c gets a tiny range around c; a
        tensor with no finite value gets (0, 1).
    """
    flat = _finite_flat(x)
    if flat.numel() == 0:
        return 0.0, 1.0
    lo, hi = flat.min().item(), flat.max().item()  # the range of the whole tensor
    flat = _subsample(flat, max_elems, seed)        # the objective on a subsample
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        eps = max(abs(lo) * 1e-3, 1e-6)
        return lo - eps, lo + eps
    qmax = 2 ** bits - 1
    i = torch.arange(n, dtype=torch.float64, device=flat.device)
    if one_sided:
        ls = torch.full_like(i, lo)
        us = hi - i * (hi - lo) / n
    else:
        ls = lo + i * (hi - lo) / (2 * n)
        us = hi - i * (hi - lo) / (2 * n)
    errs = []
    for a in range(0, n, chunk):
        l = ls[a:a + chunk, None].float()
        u = us[a:a + chunk, None].float()
        s = (u - l) / qmax
        e = torch.minimum(torch.maximum(flat[None], l), u).sub_(l).div_(s).round_().clamp_(0, qmax)
        e.mul_(s).add_(l).sub_(flat[None])
        errs.append(e.square_().sum(1))
    best = int(torch.argmin(torch.cat(errs)).item())  # first minimum: the wider range wins ties
    return float(ls[best]), float(us[best])
