"""Upscaling an image with a model: whole, or in blended tiles to bound memory.

Tiles are ``tile`` LR pixels square, step ``tile - overlap``, the last one flush with the
border. Each tile's output is weighted by a separable ramp that rises across the overlap on
sides shared with a neighbour and is flat (1) on image borders, then the weighted sum is
normalised. A tile at least as large as the image is therefore the untiled forward, exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .io import Image
from .resize import imresize


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(n: int, overlap: int, rise_start: bool, rise_end: bool) -> Tensor:
    w = torch.ones(n)
    k = min(overlap, n)
    if k > 0:
        r = (torch.arange(k, dtype=torch.float32) + 0.5) / k
        if rise_start:
            w[:k] = torch.minimum(w[:k], r)
        if rise_end:
            w[n - k:] = torch.minimum(w[n - k:], r.flip(0))
    return w


def tile_boxes(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(y, x, th, tw) LR boxes covering an h x w image."""
    step = tile - overlap
    return [(y, x, min(tile, h), min(tile, w)) for y in _starts(h, tile, step) for x in _starts(w, tile, step)]


@torch.no_grad()
def upscale_tensor(model: nn.Module, x: Tensor, scale: int, tile: int = 0, overlap: int = 0,
                   progress: bool = False) -> Tensor:
    """(1, 3, H, W) in [0, 1] -> (1, 3, H*s, W*s) clamped to [0, 1]; tile=0 runs whole."""
    from tqdm import tqdm

    h, w = x.shape[-2:]
    if tile <= 0 or (tile >= h and tile >= w):
        return model(x).clamp_(0, 1)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap {overlap} with tile {tile}")
    s = scale
    out = torch.zeros(1, x.shape[1], h * s, w * s, device=x.device)
    norm = torch.zeros(1, 1, h * s, w * s, device=x.device)
    boxes = tile_boxes(h, w, tile, overlap)
    for y0, x0, th, tw in tqdm(boxes, desc="tiles", disable=not progress or len(boxes) < 2, leave=False):
        y = model(x[..., y0:y0 + th, x0:x0 + tw]).float()
        wy = _ramp(th * s, overlap * s, y0 > 0, y0 + th < h)
        wx = _ramp(tw * s, overlap * s, x0 > 0, x0 + tw < w)
        wt = (wy[:, None] * wx[None, :]).to(x.device)
        out[..., y0 * s:(y0 + th) * s, x0 * s:(x0 + tw) * s] += y * wt
        norm[..., y0 * s:(y0 + th) * s, x0 * s:(x0 + tw) * s] += wt
    return (out / norm).clamp_(0, 1)


def upscale(model: nn.Module, img: Image, scale: int, tile: int = 0, overlap: int = 0,
            device: str | torch.device = "cpu", progress: bool = False) -> Image:
    """Super-resolve an :class:`Image`; alpha (if any) is upscaled with bicubic on its own.

    Example:
        >>> out = upscale(load_model(None, 2), load_image("in.png"), 2, tile=256, overlap=32)
    """
    x = img.rgb[None].to(device)
    if img.gray:  # one plane in, one plane out: run it as three equal channels
        x = img.rgb[:1].expand(3, -1, -1)[None].to(device)
    y = upscale_tensor(model, x, scale, tile, overlap, progress)[0].cpu()
    alpha = None
    if img.alpha is not None:
        h, w = img.alpha.shape[-2:]
        alpha = imresize(img.alpha, size=(h * scale, w * scale)).clamp(0, 1)
    return Image(rgb=y, alpha=alpha, gray=img.gray, bits=img.bits)
