"""Normalized Sylvester-Hadamard rotation along one axis, with zero-padding to a power of two."""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


def next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


@lru_cache(maxsize=32)
def _sylvester(n: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n ** 0.5


@lru_cache(maxsize=64)
def _cached(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _sylvester(n).to(device=device, dtype=dtype)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """H_n / sqrt(n): symmetric, orthonormal (H H = I), natural (Sylvester) order. n a power of 2.

    Built once per (n, dtype, device) and cached: the official code rebuilds it with scipy and
    copies it to the GPU on every call, which dominates its quantizer's cost.
    """
    if n < 1 or n & (n - 1):
        raise ValueError(f"n must be a power of two, got {n}")
    return _cached(n, dtype, torch.device(device))


def hadamard_ref(x: Tensor, dim: int = -1) -> Tensor:
    """Zero-pad axis ``dim`` to the next power of two n and rotate it by H_n / sqrt(n).

    Args:
        x: (..., C) or (..., C, K) float tensor; any leading shape.
        dim: -1 or -2 (attn @ v contracts over v's token axis, the second-to-last).
    Returns:
        Tensor of x's dtype with axis ``dim`` of size n; computed in fp32 for half inputs.
        Rotating both operands of a product along its contraction axis leaves the product
        unchanged: (xH)(WH)^T = x W^T.
    """
    if dim not in (-1, -2, x.ndim - 1, x.ndim - 2):
        raise ValueError(f"dim must be the last or second-to-last axis, got {dim} for a {x.ndim}-d tensor")
    last = dim in (-1, x.ndim - 1)
    c = x.shape[-1 if last else -2]
    n = next_pow2(c)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(cdt)
    h = hadamard_matrix(n, cdt, x.device)
    if last:
        if n != c:
            xc = torch.nn.functional.pad(xc, (0, n - c))
        return (xc @ h).to(x.dtype)
    if n != c:
        xc = torch.nn.functional.pad(xc, (0, 0, 0, n - c))
    return (h @ xc).to(x.dtype)  # H is symmetric, so H @ x rotates axis -2


def hadamard(x: Tensor, dim: int = -1) -> Tensor:
    """Public name; the rotation alone is a matmul, so every device uses :func:`hadamard_ref`."""
    return hadamard_ref(x, dim)
