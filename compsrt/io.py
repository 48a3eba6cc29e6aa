"""Images in and out (Pillow; pypng for 16-bit colour PNG), uint <-> float conversion in one place, atomic writes.

An image in memory is an ``Image`` record: RGB float32 in [0, 1] as (3, H, W), an optional
alpha plane (1, H, W), a flag saying whether it was grayscale, its bit depth and its ICC
profile, so that saving the upscaled result gives back the same kind of file.

Pillow decodes 16-bit RGB, RGBA and gray+alpha PNG to 8 bits and cannot write them, so those
go through pypng (pure Python), both ways; 16-bit gray PNG and everything else stay with Pillow.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image as PILImage, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import CompsrtError

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 100_000_000   # default input limit (--max-pixels): 100 megapixels


@dataclass
class Image:
    rgb: Tensor                 # (3, H, W) float32 in [0, 1]
    alpha: Tensor | None = None  # (1, H, W) float32 in [0, 1]
    gray: bool = False          # the file had one colour channel
    bits: int = 8               # 8 or 16 bits per sample in the file
    icc: bytes | None = None    # the file's ICC profile, written back where the format allows


def to_float(a: np.ndarray, bits: int = 8) -> Tensor:
    """uint8/uint16 HWC array -> float32 CHW tensor in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(a).astype(np.float32) / float(2 ** bits - 1))
    return t.permute(2, 0, 1).contiguous() if t.ndim == 3 else t[None]


def to_uint(x: Tensor, bits: int = 8) -> np.ndarray:
    """float CHW tensor -> clamped, rounded uint8/uint16 HWC array (the protocol's quantization)."""
    peak = 2 ** bits - 1
    a = x.detach().float().clamp(0, 1).mul_(peak).round_().cpu().numpy()   # one float copy, not three
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
    """Read PNG/JPEG/BMP/TIFF: grayscale, RGB, RGBA, palette, 8- or 16-bit; EXIF orientation applied,
    the ICC profile kept in :attr:`Image.icc`.

    The size is checked against ``max_pixels`` from the header, before anything is decoded (0 = no limit).

    Raises:
        CompsrtError: missing, empty, truncated, too large, animated or non-image file.
    """
    path = Path(path)
    check_image_path(path)
    if path.stat().st_size == 0:
        raise CompsrtError(f"{path}: empty file (0 bytes)")
    pillow_limit = PILImage.MAX_IMAGE_PIXELS
    try:
        # Our limit replaces Pillow's bomb check (which would refuse > 179 MP whatever the user asks).
        PILImage.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = _decode(path, max_pixels)
        truncated = [w for w in caught if "truncated" in str(w.message).lower()]
        if truncated:   # Pillow's TIFF reader only warns about a cut directory, and decodes what it has
            raise ValueError(str(truncated[0].message))
        return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
        raise CompsrtError(f"{path}: cannot decode image ({_first_line(e)}); is it truncated or not an image?") from None
    finally:
        PILImage.MAX_IMAGE_PIXELS = pillow_limit


def _decode(path: Path, max_pixels: int) -> Image:
    with PILImage.open(path) as im:
        w, h = im.size
        if max_pixels and w * h > max_pixels:
            raise CompsrtError(f"{path}: {w}x{h} is {w * h / 1e6:.0f} megapixels, over the {max_pixels / 1e6:g} MP "
                               "input limit; pass --max-pixels N to allow it")
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            raise CompsrtError(f"{path}: animated or multi-page image with {frames} frames; compsrt-infer "
                               "upscales single images (extract the frames first)")
        icc = im.info.get("icc_profile") or None
        if im.format == "PNG" and _png_depth_and_type(path) in ((16, 2), (16, 4), (16, 6)):
            img = _read_png16(path, _orientation(im))
        else:
            im.load()
            img = _from_pil(ImageOps.exif_transpose(im))
        img.icc = icc
        return img


def _first_line(e: BaseException) -> str:
    lines = str(e).splitlines()
    return (lines[0] if lines else type(e).__name__)[:120]


def _png_depth_and_type(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR, the first chunk after the 8-byte signature."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 26 or head[12:16] != b"IHDR":
        return 0, 0
    return head[24], head[25]


def _orientation(im: PILImage.Image) -> int:
    """The EXIF orientation tag (1..8; 1 = as stored)."""
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:   # an unreadable EXIF block is ignored, as Pillow's exif_transpose does
        return 1
    return value if 1 <= value <= 8 else 1


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, ...) array turned the way EXIF ``orientation`` says to view it (Pillow's exif_transpose)."""
    swap = (1, 0) + tuple(range(2, a.ndim))
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.transpose(swap)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a[::-1, ::-1].transpose(swap)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _pypng(path: Path):
    try:
        import png
    except ImportError:
        raise CompsrtError(f"{path}: 16-bit colour PNG needs the pypng package (pip install pypng)") from None
    return png


def _read_png16(path: Path, orientation: int) -> Image:
    """16-bit RGB, RGBA or gray+alpha PNG at full precision (pypng; Pillow would cut it to 8 bits).

    Raises:
        ValueError: the file is damaged (pypng's own errors, re-raised as ValueError).
    """
    png = _pypng(path)
    try:
        w, h, rows, info = png.Reader(filename=str(path)).asDirect()
        planes, depth = info["planes"], info["bitdepth"]   # depth < 16 only when an sBIT chunk says so
        a = np.empty((h, w * planes), np.uint16)
        n = 0
        for n, row in enumerate(rows, 1):
            a[n - 1] = row
    except png.Error as e:
        raise ValueError(_first_line(e)) from None
    if n != h:
        raise ValueError(f"{n} of {h} rows")
    a = orient(a.reshape(h, w, planes), orientation)
    alpha = to_float(a[..., -1], depth) if info["alpha"] else None
    if info["greyscale"]:
        g = to_float(a[..., 0], depth)
        return Image(rgb=g.expand(3, -1, -1).contiguous(), alpha=alpha, gray=True, bits=16)
    return Image(rgb=to_float(a[..., :3], depth), alpha=alpha, bits=16)


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


def save_image(img: Image, path: Path, quality: int = 95) -> None:
    """Write atomically; the format follows the suffix. Grayscale/alpha/16-bit and the ICC profile
    kept where the format allows (16 bits: PNG for every kind, TIFF for plain gray; ICC: PNG, JPEG,
    TIFF, colour WebP; WebP has no gray mode: gray is written as RGB). ``quality``: JPEG and WebP."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise CompsrtError(f"{path}: unsupported output format '{path.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    jpeg = suffix in (".jpg", ".jpeg")
    bits = img.bits if suffix in (".png", ".tif", ".tiff") else 8
    if bits == 16 and suffix == ".png" and (not img.gray or img.alpha is not None):
        _write_png16(img, path)
        return
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
        # 16-bit RGB(A) goes to PNG through pypng above; TIFF/BMP/JPEG get 8-bit RGB.
        pil = PILImage.fromarray(to_uint(img.rgb), mode="RGB")
    options = {"quality": quality} if jpeg or suffix == ".webp" else {}
    icc = _icc_for(img)
    if icc is not None and suffix != ".bmp" and not (suffix == ".webp" and img.gray):
        options["icc_profile"] = icc
    with atomic_path(path) as tmp:
        pil.save(tmp, format=_FORMATS[suffix], **options)


def _icc_for(img: Image) -> bytes | None:
    """The image's ICC profile if it describes what is written: a gray profile for gray output,
    an RGB one for colour (a CMYK input's profile does not fit the RGB it was converted to)."""
    if not img.icc or len(img.icc) < 20:
        return None
    space = img.icc[16:20]
    return img.icc if space == (b"GRAY" if img.gray else b"RGB ") else None


def _write_png16(img: Image, path: Path) -> None:
    """16-bit RGB, RGBA or gray+alpha PNG with pypng (Pillow has no such write mode), ICC profile kept."""
    png = _pypng(path)
    planes = [img.rgb.mean(0, keepdim=True) if img.gray else img.rgb]
    if img.alpha is not None:
        planes.append(img.alpha)
    a = to_uint(torch.cat(planes), 16)            # (H, W, C) uint16
    h, w, c = a.shape
    writer = png.Writer(width=w, height=h, greyscale=img.gray, alpha=img.alpha is not None, bitdepth=16)
    buf = io.BytesIO()
    rows = a.reshape(h, w * c).astype(">u2")
    writer.write_packed(buf, (rows[i].tobytes() for i in range(h)))
    data = buf.getvalue()
    icc = _icc_for(img)
    if icc is not None:   # iCCP must come before IDAT: right after IHDR (8-byte signature + 25-byte IHDR)
        body = b"ICC profile\x00\x00" + zlib.compress(icc)
        chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
        data = data[:33] + chunk + data[33:]
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
            ".webp": "WEBP"}


def read_rgb_uint8(path: Path) -> np.ndarray:
    """HWC uint8 RGB array (grayscale replicated): for datasets, where files are plain 8-bit."""
    with PILImage.open(path) as im:
        return np.asarray(im.convert("RGB"))
