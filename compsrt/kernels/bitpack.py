"""Dense bit-plane packing of 1-4-bit codes along the contraction axis.

Layout (one format for every bit width, 3 bits included, no bit wasted): codes (R, K) with
K a multiple of 32 become ``bits`` planes of int32 words, shape (R, bits, K // 32), where bit
j of word ``[r, p, w]`` is bit p of ``codes[r, 32 w + j]``. A GPU kernel reads the 32 codes of
one K-slice of a row from ``bits`` words (gemlite's 3-bit layout is of this kind). A flat
vector (the kept codes of a pruned weight, or a 1-bit mask) is packed as one row, padded with
zero codes to a multiple of 32. Pure PyTorch, identical on every device: packing runs once, at
pack time, and unpacking once, when a packed file is loaded.
"""
from __future__ import annotations

import torch
from torch import Tensor

_SHIFTS = torch.arange(32, dtype=torch.int64)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack ``codes`` (R, K) of values < 2^bits (K % 32 == 0) into (R, bits, K // 32) int32."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if codes.ndim != 2 or codes.shape[1] % 32:
        raise ValueError(f"codes must be (R, K) with K a multiple of 32, got {tuple(codes.shape)}")
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for {bits} bits")
    r, k = c.shape
    c = c.view(r, 1, k // 32, 32)
    planes = (c >> torch.arange(bits, dtype=torch.int64, device=c.device).view(1, bits, 1, 1)) & 1
    words = (planes << _SHIFTS.to(c.device)).sum(-1)       # (R, bits, K/32), in [0, 2^32)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def unpack_bits(planes: Tensor, bits: int) -> Tensor:
    """Inverse of :func:`pack_bits`: (R, bits, W) int32 -> (R, 32 W) uint8."""
    if planes.dtype != torch.int32 or planes.ndim != 3 or planes.shape[1] != bits:
        raise ValueError(f"planes must be (R, {bits}, W) int32, got {tuple(planes.shape)} {planes.dtype}")
    w = planes.to(torch.int64) & 0xFFFFFFFF
    b = (w[..., None] >> _SHIFTS.to(w.device)) & 1                       # (R, bits, W, 32)
    codes = (b << torch.arange(bits, device=w.device).view(1, bits, 1, 1)).sum(1)
    return codes.reshape(planes.shape[0], -1).to(torch.uint8)


def pack_flat(values: Tensor, bits: int) -> Tensor:
    """A 1-d vector of codes as one packed row (1, bits, ceil(len / 32)), zero-padded."""
    v = values.reshape(-1)
    pad = (-v.numel()) % 32
    if pad:
        v = torch.cat([v, v.new_zeros(pad)])
    return pack_bits(v.view(1, -1), bits)


def unpack_flat(planes: Tensor, bits: int, length: int) -> Tensor:
    """Inverse of :func:`pack_flat`: the first ``length`` codes, uint8."""
    return unpack_bits(planes, bits).reshape(-1)[:length]
