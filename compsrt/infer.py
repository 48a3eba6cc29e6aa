"""Upscaling an image with a model: whole, or in blended tiles to bound memory.

Tiles are ``tile`` LR pixels square, step ``tile - overlap``, the last one flush with the
border. Each tile's output is weighted by a separable ramp that rises across the overlap on
sides shared with a neighbour and is flat (1) on image borders, then the weighted sum is
normalised. A tile at least as large as the image is therefore the untiled forward, exactly.

``--tile auto`` (:func:`auto_tile`): a whole-image forward's peak memory grows linearly with
the pixels (the attention is windowed); when its estimate (:func:`estimate_bytes`) exceeds half
of the memory available (:func:`available_bytes`), the image is tiled with the largest tiles
whose estimate stays under 4 GB.

Several images of one size run as one batch (:func:`upscale_many`, ``stack=True``; one forward
per image otherwise); ``half`` runs the FP parts under ``torch.autocast`` (fp16 or bf16) while a
packed model's integer sites stay fp32 (:func:`prepare_half`); :func:`resample` is
``--outscale``'s resize of the model's output.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CompsrtError
from .io import Image
from .resize import imresize

GIB = 1 << 30
TILE_BYTES = 4 * GIB      # --tile auto: each tile's estimated peak stays under this
AUTO_OVERLAP = 32         # the default --tile-overlap, which auto tiles are sized with
MIN_AUTO_TILE = 128       # smaller tiles lose too much context (and 2 x the overlap must fit)


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


# Peak-RSS growth of a whole-image x2 forward on the CPU, measured here (torch 2.13, 2 threads),
# for LR inputs of 128^2, 256^2, 384^2, 512^2, 768^2 pixels:
#   FP SwinIR-light         188, 598, 1029, 1822, 4109 MB  (7.3 KB per LR pixel from 512^2 on)
#   packed W4 (runtime)     116, 553,  876, 1454, 2542 MB  (5.8 KB at 512^2, 4.5 KB at 768^2)
#   calibrated (fake-quant)   -, 846, 1392 MB at 256^2, 384^2  (9.9 KB at 384^2: x1.5 below)
#   MambaIRv2-light           -, 361,  774 MB at 256^2, 384^2  (5.5 KB)
# The estimate, BASE_BYTES + SWINIR_BYTES_PER_PIXEL per LR pixel (+ HR_BYTES_PER_PIXEL per output
# pixel), lies above every one of them, by 20-40% at the larger sizes.
SWINIR_BYTES_PER_PIXEL = 9000
BASE_BYTES = 256 << 20    # fixed part: buffers and allocator slack that do not grow with the image
HR_BYTES_PER_PIXEL = 64   # per output pixel: the model's output, clamping, the blend buffers, the save


def bytes_per_pixel(model: nn.Module) -> float:
    """Estimated peak bytes per LR pixel of a whole-image forward of ``model``.

    SwinIR-light's figure (reference: width 60, 6 heads, 8x8 windows, MLP 120) is scaled by the
    largest of the model's widths relative to it (attention maps: heads x window^2, features,
    MLP), and by 1.5 for a fake-quant (calibrated) model, whose quantizers make extra copies.
    Other architectures (MambaIRv2-light) get the SwinIR-light figure.
    """
    from .config import SwinIRConfig

    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, SwinIRConfig):
        return float(SWINIR_BYTES_PER_PIXEL)
    ratio = max(max(cfg.num_heads) * cfg.window_size ** 2 / (6 * 64), cfg.embed_dim / 60, cfg.mlp_hidden / 120, 1.0)
    fake_quant = 1.5 if any(type(m).__name__ == "QuantLinear" for m in model.modules()) else 1.0
    return SWINIR_BYTES_PER_PIXEL * ratio * fake_quant


def estimate_bytes(h: int, w: int, scale: int, per_pixel: float = SWINIR_BYTES_PER_PIXEL, window: int = 8) -> int:
    """Estimated peak memory (bytes) of a whole-image forward on an h x w LR input (padded to the window)."""
    ph, pw = -(-h // window) * window, -(-w // window) * window
    return int(BASE_BYTES + per_pixel * ph * pw + HR_BYTES_PER_PIXEL * h * w * scale * scale)


def auto_tile(h: int, w: int, scale: int, budget_bytes: int, per_pixel: float = SWINIR_BYTES_PER_PIXEL,
              overlap: int = AUTO_OVERLAP, tile_bytes: int = TILE_BYTES) -> int:
    """``--tile auto``: 0 (whole image) when the estimate fits ``budget_bytes``, else the tile side.

    The tile is the largest multiple of 8 whose own estimate stays under ``min(budget_bytes,
    tile_bytes)``, and at least ``MIN_AUTO_TILE`` and ``2 * overlap + 16`` (a tile must see past its
    overlap), however small the budget.

    Example:
        >>> auto_tile(2000, 3000, 2, budget_bytes=10 * GIB)   # a 6 MP photo with 20 GB free
        656
    """
    if estimate_bytes(h, w, scale, per_pixel) <= budget_bytes:
        return 0
    limit = min(budget_bytes, tile_bytes)
    room = max(limit - BASE_BYTES, 0) / (per_pixel + HR_BYTES_PER_PIXEL * scale * scale)
    tile = int(math.isqrt(int(room))) // 8 * 8
    return max(tile, MIN_AUTO_TILE, 2 * overlap + 16)


def available_bytes(device: str | torch.device = "cpu") -> int | None:
    """Memory this process can still take on ``device``: free GPU memory on CUDA; on the CPU
    MemAvailable from /proc/meminfo (capped by a cgroup v2 limit), else ``os.sysconf``'s available
    pages; None when nothing says."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail


_OOM_WORDS = ("not enough memory", "can't allocate", "cannot allocate", "out of memory")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocator failure (CPU or CUDA), as torch and numpy raise them."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and any(word in str(e).lower() for word in _OOM_WORDS)


class FullPrecision(nn.Module):
    """Runs ``inner`` in fp32 with autocast off: a packed model's integer sites under ``half``, whose
    activation codes must come from the fp32 values they were calibrated on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        with torch.autocast(args[0].device.type, enabled=False):
            return self.inner(*(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args))


def prepare_half(model: nn.Module) -> nn.Module:
    """Ready ``model`` for ``half`` (in place): the packed runtime's integer modules (PackedLinear,
    PackedAttend) are wrapped in :class:`FullPrecision`, so only the FP parts (convs, norms, the
    residual stream) run in half precision; returns ``model`` (a second call changes nothing).

    Raises:
        CompsrtError: a calibrated (fake-quant) model, whose quantizers must see fp32 values.
    """
    from .quant.qmodules import Quantizer
    from .runtime.modules import PackedAttend, PackedLinear

    if any(isinstance(m, Quantizer) for m in model.modules()):
        raise CompsrtError("--half: a calibrated (fake-quant) checkpoint runs in fp32 only; pack it "
                           "(python -m compsrt.pack) or leave --half out")
    done = {id(m.inner) for m in model.modules() if isinstance(m, FullPrecision)}   # prepared before
    sites = [name for name, m in model.named_modules()
             if isinstance(m, (PackedLinear, PackedAttend)) and id(m) not in done]
    for name in sites:
        model.set_submodule(name, FullPrecision(model.get_submodule(name)))
    return model


def _precision(device: torch.device, half: torch.dtype | None):
    """autocast to ``half`` on ``device``, or nothing (fp32) when ``half`` is None."""
    return contextlib.nullcontext() if half is None else torch.autocast(device.type, dtype=half)


@torch.no_grad()
def upscale_tensor(model: nn.Module, x: Tensor, scale: int, tile: int = 0, overlap: int = 0,
                   progress: bool = False, half: torch.dtype | None = None) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, H*s, W*s) fp32 clamped to [0, 1]; tile=0 runs whole;
    ``half`` (torch.float16 / bfloat16) autocasts the forward."""
    from tqdm import tqdm

    def forward(t: Tensor) -> Tensor:
        with _precision(t.device, half):
            return model(t).float()

    h, w = x.shape[-2:]
    if tile <= 0 or (tile >= h and tile >= w):
        return forward(x).clamp_(0, 1)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap {overlap} with tile {tile}")
    s = scale
    out = torch.zeros(x.shape[0], x.shape[1], h * s, w * s, device=x.device)
    norm = torch.zeros(1, 1, h * s, w * s, device=x.device)
    boxes = tile_boxes(h, w, tile, overlap)
    for y0, x0, th, tw in tqdm(boxes, desc="tiles", disable=not progress or len(boxes) < 2, leave=False):
        y = forward(x[..., y0:y0 + th, x0:x0 + tw])
        wy = _ramp(th * s, overlap * s, y0 > 0, y0 + th < h)
        wx = _ramp(tw * s, overlap * s, x0 > 0, x0 + tw < w)
        wt = (wy[:, None] * wx[None, :]).to(x.device)
        out[..., y0 * s:(y0 + th) * s, x0 * s:(x0 + tw) * s] += y * wt
        norm[..., y0 * s:(y0 + th) * s, x0 * s:(x0 + tw) * s] += wt
    return out.div_(norm).clamp_(0, 1)


def upscale(model: nn.Module, img: Image, scale: int, tile: int = 0, overlap: int = 0,
            device: str | torch.device = "cpu", progress: bool = False, half: torch.dtype | None = None) -> Image:
    """Super-resolve an :class:`Image`; alpha (if any) is upscaled with bicubic on its own.

    Raises:
        CompsrtError: the allocator failed (CPU or GPU); the message names ``--tile``.

    Example:
        >>> out = upscale(load_model(None, 2), load_image("in.png"), 2, tile=256, overlap=32)
    """
    return upscale_many(model, [img], scale, tile, overlap, device, progress, half=half)[0]


def upscale_many(model: nn.Module, imgs: list[Image], scale: int, tile: int = 0, overlap: int = 0,
                 device: str | torch.device = "cpu", progress: bool = False, stack: bool = False,
                 half: torch.dtype | None = None) -> list[Image]:
    """:func:`upscale` for images of one size: with ``stack`` one forward over the (N, 3, H, W)
    batch (fast on a GPU), else one forward per image (bit-identical to :func:`upscale` of each:
    a batched convolution may sum in another order, and the packed runtime's activation
    quantizers can turn such last-bit differences into a level or more at some pixels).

    Raises:
        CompsrtError: the allocator failed (CPU or GPU); the message names ``--tile``.
        ValueError: images of different sizes.
    """
    h, w = imgs[0].rgb.shape[-2:]
    if any(tuple(i.rgb.shape[-2:]) != (h, w) for i in imgs):
        raise ValueError("upscale_many takes images of one size")
    try:
        # a gray image is one plane in, one plane out: it runs as three equal channels
        xs = [(i.rgb[:1].expand(3, -1, -1) if i.gray else i.rgb)[None].to(device) for i in imgs]
        if stack:
            ys = list(upscale_tensor(model, torch.cat(xs), scale, tile, overlap, progress, half).cpu())
        else:
            ys = [upscale_tensor(model, x, scale, tile, overlap, progress, half)[0].cpu() for x in xs]
        alphas = [None if i.alpha is None else imresize(i.alpha, size=(h * scale, w * scale)).clamp(0, 1) for i in imgs]
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        how = f"in {tile}x{tile} tiles" if 0 < tile < max(h, w) else "whole"
        many = f" x{len(imgs)} (--batch)" if stack and len(imgs) > 1 else ""
        smaller = max(64, (min(tile, h, w) if tile > 0 else min(h, w, 512)) // 2 // 8 * 8)
        why = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise CompsrtError(f"out of memory upscaling {w}x{h}{many} {how} on {torch.device(device).type} ({why}); "
                           f"pass --tile {smaller} (smaller tiles use less memory)") from None
    return [Image(rgb=y, alpha=a, gray=i.gray, bits=i.bits, icc=i.icc) for y, a, i in zip(ys, alphas, imgs)]


def outscale_size(h: int, w: int, factor: float) -> tuple[int, int]:
    """``--outscale``'s output size: round(h x factor), round(w x factor), halves up, at least 1."""
    return max(1, math.floor(h * factor + 0.5)), max(1, math.floor(w * factor + 0.5))


def resample(img: Image, size: tuple[int, int]) -> Image:
    """``img`` resized to ``size`` (h, w): bicubic with Keys' a = -0.5 (the kernel of MATLAB's
    imresize and Pillow's BICUBIC), antialiased (the kernel widened) when shrinking, clamped to
    [0, 1]; alpha alike."""
    def resize(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        return F.interpolate(t[None].float(), size=size, mode="bicubic", align_corners=False,
                             antialias=True)[0].clamp_(0, 1)

    return Image(rgb=resize(img.rgb), alpha=resize(img.alpha), gray=img.gray, bits=img.bits, icc=img.icc)
