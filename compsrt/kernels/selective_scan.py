"""Mamba selective scan (variable B/C shared by all channels, no z gate), in plain PyTorch.

``selective_scan_ref`` is the spec: a loop over every token. ``selective_scan`` is the fast path
used by MambaIRv2: a two-level chunked scan (short loops inside chunks, vectorised over all
chunks, and a log-depth scan over the chunk carries). It multiplies only decays in (0, 1], so
nothing can overflow; the "log-space cumsum" closed form ``e^{S_t} cumsum(e^{-S_s} ...)`` is
deliberately not used, because e^{-S} overflows within a few tokens for trained A (down to -24).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(u: Tensor, delta: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> None:
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (B, L, C), got {tuple(u.shape)} and {tuple(delta.shape)}")
    bt, length, ch = u.shape
    if a.ndim != 2 or a.shape[0] != ch:
        raise ValueError(f"A must be (C={ch}, N), got {tuple(a.shape)}")
    n = a.shape[1]
    for name, t in (("B", b), ("C", c)):
        if tuple(t.shape) != (bt, length, n):
            raise ValueError(f"{name} must be (B, L, N) = {(bt, length, n)}, got {tuple(t.shape)}")
    if tuple(d.shape) != (ch,):
        raise ValueError(f"D must be (C={ch},), got {tuple(d.shape)}")


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def selective_scan_ref(u: Tensor, delta: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """The recurrence, one token at a time (slow; the definition the fast path is tested against).

    With h_0 = 0, for t = 1..L, channel c and state n::

        h_t[c, n] = exp(delta_t[c] * A[c, n]) * h_{t-1}[c, n] + delta_t[c] * B_t[n] * u_t[c]
        y_t[c]    = sum_n C_t[n] * h_t[c, n] + D[c] * u_t[c]

    Args:
        u: (B, L, C) input sequence.
        delta: (B, L, C) step sizes, already through softplus (>= 0).
        a: (C, N) state matrix diagonal, negative.
        b, c: (B, L, N) input and output projections, shared by all C channels.
        d: (C,) skip weights.
    Returns:
        y: (B, L, C) in float32, or float64 for float64 inputs.
    """
    _check(u, delta, a, b, c, d)
    u, delta, a, b, c, d = (t.to(_compute_dtype(u)) for t in (u, delta, a, b, c, d))
    h = u.new_zeros(u.shape[0], u.shape[2], a.shape[1])
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * a) * h + (delta[:, t] * u[:, t])[:, :, None] * b[:, t, None, :]
        ys.append((h * c[:, t, None, :]).sum(-1) + d * u[:, t])
    return torch.stack(ys, 1)


def _scan_carries(decay: Tensor, inc: Tensor) -> Tensor:
    """States entering each step k of s_k = decay_k * s_{k-1} + inc_k, with s_{-1} = 0, on axis 0.

    Hillis-Steele: log2(K) full-tensor steps. Only products of decays in (0, 1] are formed, so
    this is as safe as the sequential loop. Returns a (K, ...) tensor, zeros first.
    """
    a, x = decay, inc
    step = 1
    while step < x.shape[0]:
        # x[t] += a[t] * x[t - step]; a[t] *= a[t - step] (out of place: autograd-friendly)
        x = torch.cat([x[:step], torch.addcmul(x[step:], a[step:], x[:-step])])
        a = torch.cat([a[:step], a[step:] * a[:-step]])
        step *= 2
    return torch.cat([torch.zeros_like(x[:1]), x[:-1]])


def selective_scan(u: Tensor, delta: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor,
                   chunk: int = 32) -> Tensor:
    """Matches ``selective_scan_ref``; a two-level chunked scan, no per-token Python loop.

    The sequence is cut into chunks of ``chunk`` tokens (the last one padded with delta = 0:
    decay 1, input 0, harmless because the scan is causal). Three steps, each vectorised over
    all chunks, so the Python loops run 2 * chunk + log2(L / chunk) times:

    1. a ``chunk``-step loop from a zero state gives each chunk's end state;
    2. a log-depth scan over those, with each chunk's total decay exp(A * sum(delta)), gives the
       state entering each chunk;
    3. the ``chunk``-step loop again, from the entering states, emits y.

    The state never exists for all tokens at once: memory is a few (B, L, C) tensors, and each
    step touches one (B, L / chunk, N, C) slab that stays in cache. (Storing the states of step 1
    and fixing them up afterwards needs several (B, L, N, C) passes and was 3x slower on CPU.)

    Differentiable: with autograd on, the same loops run out of place (slower, more memory).

    Args:
        as ``selective_scan_ref``; chunk: tokens per chunk (>= 1).
    Returns:
        y: (B, L, C) in float32 (float64 for float64 inputs).
    """
    _check(u, delta, a, b, c, d)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    u, delta, a, b, c, d = (t.to(_compute_dtype(u)) for t in (u, delta, a, b, c, d))
    bt, length, ch = u.shape
    n = a.shape[1]
    t_len = min(chunk, length)
    n_chunks = -(-length // t_len)
    pad = n_chunks * t_len - length

    def blocks(x: Tensor) -> Tensor:
        """(B, L, K) -> (T, B, nc, K), contiguous, so that each loop step reads one slab."""
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(bt, n_chunks, t_len, x.shape[-1]).permute(2, 0, 1, 3).contiguous()

    dl, ub, bb, cb = blocks(delta), blocks(u), blocks(b), blocks(c)
    dlu = dl * ub
    # exp(x) = exp2(x * log2(e)): exp2 is about 2x faster on CPU. (N, C): C innermost keeps
    # the broadcasts vectorised.
    a2_t = (a * math.log2(math.e)).t().contiguous()
    # In inference the loops update one state slab in place; with autograd they run out of place.
    inplace = not (torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, a, b, c, d)))
    state = u.new_zeros(bt, n_chunks, n, ch)
    buf = torch.empty_like(state)

    def step(state: Tensor, t: int) -> Tensor:
        """state = exp(delta_t * A) * state + delta_t * u_t * B_t, for every chunk at once."""
        if not inplace:
            return torch.exp2(dl[t][..., None, :] * a2_t) * state + bb[t][..., :, None] * dlu[t][..., None, :]
        torch.mul(dl[t][..., None, :], a2_t, out=buf).exp2_()
        return state.mul_(buf).addcmul_(bb[t][..., :, None], dlu[t][..., None, :])

    for t in range(t_len):
        state = step(state, t)
    total = torch.exp2(dl.sum(0)[..., None, :] * a2_t)  # each chunk's decay, in (0, 1]
    state = _scan_carries(total.transpose(0, 1), state.transpose(0, 1)).transpose(0, 1).contiguous()
    y = torch.empty_like(ub)
    ys = []
    for t in range(t_len):
        state = step(state, t)
        # y_t = sum_n C_t[n] h_t[n, :]; mul + sum into a reused buffer is ~5x faster than bmm here
        if inplace:
            torch.sum(torch.mul(state, cb[t][..., :, None], out=buf), -2, out=y[t])
        else:
            ys.append((state * cb[t][..., :, None]).sum(-2))
    y = y.addcmul_(ub, d) if inplace else torch.stack(ys) + ub * d
    y = y.permute(1, 2, 0, 3).reshape(bt, n_chunks * t_len, ch)
    return y[:, :length] if pad else y
