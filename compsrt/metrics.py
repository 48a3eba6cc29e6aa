"""PSNR and SSIM exactly as the official SwinIR test protocol computes them.

Inputs are uint8 images (the model output is clamped and rounded first); the Y channel is
computed in float without rounding (BT.601: 16 + 65.481 R + 128.553 G + 24.966 B on [0, 1]);
``crop_border`` pixels (= the scale) are removed from every side; SSIM uses an 11x11 Gaussian
(sigma 1.5) over the valid region only, as ``cv2.filter2D(...)[5:-5, 5:-5]`` does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """HWC uint8 RGB (or HW gray, returned as float) -> HW float64 Y in 0..255 units."""
    a = img.astype(np.float64)
    if a.ndim == 2:
        return a
    if a.shape[2] == 1:
        return a[..., 0]
    a = a / 255.0
    return 16.0 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]


def _prepare(img1: np.ndarray, img2: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    if img1.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img1.shape} vs {img2.shape}")
    if y_channel:
        a, b = rgb_to_y(img1), rgb_to_y(img2)
    else:
        a, b = img1.astype(np.float64), img2.astype(np.float64)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr(img1: np.ndarray, img2: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """PSNR in dB of two uint8 images (HWC RGB or HW gray); inf when identical."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 20.0 * math.log10(255.0 / math.sqrt(mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    return torch.outer(g, g)[None, None]


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    win = _gaussian_window()
    x = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(b))[None, None]
    blur = lambda t: F.conv2d(t, win)  # noqa: E731  (valid region == filter2D then [5:-5])
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2)
    return float((num / den).mean())


def ssim(img1: np.ndarray, img2: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """SSIM of two uint8 images; on the Y channel by default, else the mean over channels."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    if a.ndim == 2:
        return _ssim_plane(a, b)
    return float(np.mean([_ssim_plane(a[..., c], b[..., c]) for c in range(a.shape[2])]))
