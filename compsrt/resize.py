"""MATLAB-compatible ``imresize(img, scale, 'bicubic')`` in PyTorch (antialiased downscale).

The benchmark LR images were made with MATLAB, whose bicubic differs from torch's
``interpolate``: it widens the kernel by 1/scale when shrinking (antialiasing), mirrors the
border samples, and renormalises each row of weights. Each axis becomes one dense
(out, in) weight matrix, so a resize is two small matmuls, computed in float64.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel with a = -0.5, as MATLAB uses."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@lru_cache(maxsize=64)
def _weights(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """(out_len, in_len) float64 matrix M such that out = M @ in along one axis."""
    aa = scale < 1  # antialias only when shrinking
    width = 4.0 / scale if aa else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)          # output pixel centre in input coordinates (1-based)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # (out, taps), 1-based
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if aa else _cubic(dist)
    w /= w.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])  # symmetric border
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    m = np.zeros((out_len, in_len))
    np.add.at(m, (np.repeat(np.arange(out_len), taps), src.ravel()), w.ravel())
    return m


def imresize(x: Tensor, scale: float | None = None, size: tuple[int, int] | None = None) -> Tensor:
    """Bicubic resize of (..., H, W) float images, MATLAB-compatible.

    Args:
        x: float tensor (..., H, W), any range (no clamping, no rounding: callers round).
        scale: resize factor (e.g. 1/2 to make x2 LR). Output size is ceil(H*scale).
        size: explicit (out_h, out_w) instead of ``scale``; the factor is then out/in per axis,
            as MATLAB computes it from an output size.
    Returns:
        float tensor (..., out_h, out_w) in x's dtype.
    """
    h, w = x.shape[-2:]
    if size is None:
        if scale is None:
            raise ValueError("give scale or size")
        size = (math.ceil(h * scale), math.ceil(w * scale))
        sh = sw = scale
    else:
        sh, sw = size[0] / h, size[1] / w
    mh = torch.from_numpy(_weights(h, size[0], sh))
    mw = torch.from_numpy(_weights(w, size[1], sw))
    y = mh @ x.double() @ mw.T  # MATLAB resizes rows then columns; in float64 the order is immaterial
    return y.to(x.dtype)


def downscale_uint8(hr: np.ndarray, s: int) -> np.ndarray:
    """HWC uint8 HR image -> HWC uint8 LR image by 1/s, as the benchmark LR files are made.

    HR must already be mod-cropped to a multiple of s.
    """
    t = torch.from_numpy(hr.astype(np.float64)).permute(2, 0, 1)
    lr = imresize(t, 1.0 / s).round().clamp(0, 255)
    return lr.permute(1, 2, 0).numpy().astype(np.uint8)
