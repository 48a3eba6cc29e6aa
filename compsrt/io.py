"""Images in and out (Pillow), uint8 <-> float conversion in one place, atomic writes.

An image in memory is an ``Image`` record: RGB float32 in [0, 1] as (3, H, W), an optional
alpha plane (1, H, W), a flag saying whether it was grayscale, and its bit depth, so that
saving the upscaled result gives back the same kind of file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image as PILImage, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import CompsrtError

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 100_000_000   # default input limit (--max-pixels): 100 megapixels


@dataclass
class Image:
    rgb: Tensor                 # (3, H, W) float32 in [0, 1]
    alpha: Tensor | None = None  # (1, H, W) float32 in [0, 1]
    gray: bool = False          # the file had one colour channel
    bits: int = 8               # 8 or 16 bits per sample in the file


def to_float(a: np.ndarray, bits: int = 8) -> Tensor:
    """uint8/uint16 HWC array -> float32 CHW tensor in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(a).astype(np.float32) / float(2 ** bits - 1))
    return t.permute(2, 0, 1).contiguous() if t.ndim == 3 else t[None]


def to_uint(x: Tensor, bits: int = 8) -> np.ndarray:
    """float CHW tensor -> clamped, rounded uint8/uint16 HWC array (the protocol's quantization)."""
    peak = 2 ** bits - 1
    a = (x.detach().float().clamp(0, 1) * peak).round().cpu().numpy()
    a = a.astype(np.uint16 if bits == 16 else np.uint8)
    return a.transpose(1, 2, 0) if a.ndim == 3 else a


def check_image_path(path: Path) -> None:
    """Fail early, with the reason, on a missing or unsupported input path."""
    path = Path(path)
    if not path.exists():
        raise CompsrtError(f"{path}: no such file")
    if not path.is_file():
        raise CompsrtError(f"{path}: not a file")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise CompsrtError(f"{path}: unsupported format '{path.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def load_image(path: Path, max_pixels: int = MAX_PIXELS) -> Image:
    """Read PNG/JPEG/BMP/TIFF: grayscale, RGB, RGBA, palette, 8- or 16-bit; EXIF orientation applied.

    The size is checked against ``max_pixels`` from the header, before anything is decoded (0 = no limit).

    Raises:
        CompsrtError: missing, empty, truncated, too large or non-image file.
    """
    path = Path(path)
    check_image_path(path)
    if path.stat().st_size == 0:
        raise CompsrtError(f"{path}: empty file (0 bytes)")
    pillow_limit = PILImage.MAX_IMAGE_PIXELS
    try:
        # Our limit replaces Pillow's bomb check (which would refuse > 179 MP whatever the user asks).
        PILImage.MAX_IMAGE_PIXELS = None
        with PILImage.open(path) as im:
            w, h = im.size
            if max_pixels and w * h > max_pixels:
                raise CompsrtError(f"{path}: {w}x{h} is {w * h / 1e6:.0f} megapixels, over the {max_pixels / 1e6:g} MP "
                                   "input limit; pass --max-pixels N to allow it")
            im.load()
            return _from_pil(ImageOps.exif_transpose(im))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CompsrtError(f"{path}: cannot decode image ({str(e).splitlines()[0][:120]}); is it truncated or not an image?") from None
    finally:
        PILImage.MAX_IMAGE_PIXELS = pillow_limit


def _from_pil(im: PILImage.Image) -> Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.uint16) if mode != "I" else np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        g = to_float(a, 16)
        return Image(rgb=g.expand(3, -1, -1).contiguous(), gray=True, bits=16)
    if mode in ("L", "1"):
        g = to_float(np.asarray(im.convert("L")))
        return Image(rgb=g.expand(3, -1, -1).contiguous(), gray=True)
    if mode == "LA":
        a = np.asarray(im)
        g = to_float(a[..., 0])
        return Image(rgb=g.expand(3, -1, -1).contiguous(), alpha=to_float(a[..., 1]), gray=True)
    if mode in ("RGBA", "PA") or (mode == "P" and "transparency" in im.info):
        a = np.asarray(im.convert("RGBA"))
        return Image(rgb=to_float(a[..., :3]), alpha=to_float(a[..., 3]))
    if mode.startswith("RGB") and im.getbands() == ("R", "G", "B") and np.asarray(im).dtype == np.uint16:
        return Image(rgb=to_float(np.asarray(im), 16), bits=16)
    return Image(rgb=to_float(np.asarray(im.convert("RGB"))))


@contextlib.contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """Yield a temp path beside ``dst``; rename it onto ``dst`` only if the block succeeds."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp" + dst.suffix, dir=dst.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_image(img: Image, path: Path) -> None:
    """Write atomically; the format follows the suffix. Grayscale/alpha/16-bit kept where the format allows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise CompsrtError(f"{path}: unsupported output format '{path.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    jpeg = suffix in (".jpg", ".jpeg")
    bits = img.bits if suffix in (".png", ".tif", ".tiff") else 8
    if img.gray:
        y = img.rgb.mean(0, keepdim=True)
        if bits == 16 and img.alpha is None:
            # A 2-D uint16 array becomes "I;16" by itself; Pillow 13 rejects an explicit mode="I;16".
            pil = PILImage.fromarray(np.ascontiguousarray(to_uint(y, 16)[..., 0]))
        elif img.alpha is not None and not jpeg and suffix != ".bmp":  # Pillow cannot write LA as BMP
            pil = PILImage.fromarray(np.concatenate([to_uint(y), to_uint(img.alpha)], axis=2), mode="LA")
        else:
            pil = PILImage.fromarray(to_uint(y)[..., 0], mode="L")
    elif img.alpha is not None and not jpeg:
        pil = PILImage.fromarray(np.concatenate([to_uint(img.rgb), to_uint(img.alpha)], axis=2), mode="RGBA")
    else:
        # 16-bit RGB has no Pillow write mode; it is saved as 8-bit RGB.
        pil = PILImage.fromarray(to_uint(img.rgb), mode="RGB")
    with atomic_path(path) as tmp:
        pil.save(tmp, format=_FORMATS[suffix], **({"quality": 95} if jpeg else {}))


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def read_rgb_uint8(path: Path) -> np.ndarray:
    """HWC uint8 RGB array (grayscale replicated): for datasets, where files are plain 8-bit."""
    with PILImage.open(path) as im:
        return np.asarray(im.convert("RGB"))
