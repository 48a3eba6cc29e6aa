"""compsrt.io: reading and writing PNG/JPEG/BMP/TIFF, grayscale, alpha, 16 bits, atomic writes."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from compsrt.errors import CompsrtError
from compsrt.io import Image, atomic_path, load_image, read_rgb_uint8, save_image, to_float, to_uint
from compsrt.metrics import psnr

LOSSLESS = (".png", ".bmp", ".tif", ".tiff")
ALL_FORMATS = LOSSLESS + (".jpg", ".jpeg")


def _u8(img: Image) -> np.ndarray:
    return to_uint(img.rgb)


def _png16(a: np.ndarray) -> bytes:
    """A minimal 16-bit PNG (grayscale if 2-D, RGB if 3-D), written by hand: Pillow cannot write 16-bit RGB."""
    color_type = 0 if a.ndim == 2 else 2
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _stray_files(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# -- uint <-> float ---------------------------------------------------------------------------

def test_uint8_float_round_trip_is_exact():
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([a, a.T, a[::-1]], -1)
    t = to_float(rgb)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert t.min() == 0 and t.max() == 1
    np.testing.assert_array_equal(to_uint(t), rgb)
    np.testing.assert_array_equal(to_uint(to_float(a)), a[..., None])  # HW -> (1, H, W) -> HW1


def test_uint16_float_round_trip_is_exact():
    a = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    back = to_uint(to_float(a, 16), 16)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back[..., 0], a)


def test_to_uint_clamps_and_rounds():
    x = torch.tensor([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 7.0]).view(1, 1, 6)
    np.testing.assert_array_equal(to_uint(x)[..., 0], [[0, 0, 0, 1, 255, 255]])


# -- formats ----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ALL_FORMATS)
def test_rgb_write_read_each_format(tmp_path, make_rgb, suffix):
    rgb = make_rgb(32, 48, seed=3)
    path = tmp_path / f"im{suffix}"
    save_image(Image(rgb=to_float(rgb)), path)
    with PILImage.open(path) as im:
        assert im.mode == "RGB" and im.size == (48, 32)
    back = load_image(path)
    assert back.rgb.shape == (3, 32, 48) and not back.gray and back.alpha is None and back.bits == 8
    if suffix in LOSSLESS:
        np.testing.assert_array_equal(_u8(back), rgb)
    else:  # JPEG q95 (chroma subsampled): luma stays close
        assert psnr(_u8(back), rgb) > 38


@pytest.mark.parametrize("suffix", ALL_FORMATS)
def test_grayscale_in_grayscale_out(tmp_path, make_rgb, suffix):
    g = make_rgb(11, 9, seed=4)[..., 1]
    src = tmp_path / f"g_src{suffix}"
    PILImage.fromarray(g, mode="L").save(src)
    img = load_image(src)
    assert img.gray and img.bits == 8 and img.rgb.shape == (3, 11, 9)
    assert torch.equal(img.rgb[0], img.rgb[1]) and torch.equal(img.rgb[0], img.rgb[2])
    dst = tmp_path / f"g_dst{suffix}"
    save_image(img, dst)
    with PILImage.open(dst) as im:
        assert im.mode == "L"
        out = np.asarray(im)
    if suffix in LOSSLESS:
        np.testing.assert_array_equal(out, np.asarray(PILImage.open(src)))


def test_read_rgb_uint8_replicates_gray(tmp_path, make_rgb):
    g = make_rgb(5, 6)[..., 0]
    p = tmp_path / "g.png"
    PILImage.fromarray(g, mode="L").save(p)
    a = read_rgb_uint8(p)
    assert a.shape == (5, 6, 3) and a.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(a[..., c], g)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_rgba_alpha_is_kept(tmp_path, make_rgb, suffix):
    rgba = np.concatenate([make_rgb(7, 10, seed=5), make_rgb(7, 10, seed=6)[..., :1]], -1)
    src = tmp_path / f"a{suffix}"
    PILImage.fromarray(rgba, mode="RGBA").save(src)
    img = load_image(src)
    assert not img.gray and img.alpha is not None and img.alpha.shape == (1, 7, 10)
    np.testing.assert_array_equal(_u8(img), rgba[..., :3])
    np.testing.assert_array_equal(to_uint(img.alpha)[..., 0], rgba[..., 3])
    dst = tmp_path / f"b{suffix}"
    save_image(img, dst)
    with PILImage.open(dst) as im:
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im), rgba)


def test_gray_alpha_and_palette_transparency(tmp_path, make_rgb):
    la = np.stack([make_rgb(6, 8)[..., 0], make_rgb(6, 8, seed=1)[..., 0]], -1)
    PILImage.fromarray(la, mode="LA").save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert img.gray and img.alpha is not None
    np.testing.assert_array_equal(to_uint(img.alpha)[..., 0], la[..., 1])
    save_image(img, tmp_path / "la_out.png")
    with PILImage.open(tmp_path / "la_out.png") as im:
        assert im.mode == "LA"
        np.testing.assert_array_equal(np.asarray(im), la)
    # Formats without gray+alpha drop the alpha instead of failing (BMP could not write LA).
    for suffix in (".jpg", ".bmp"):
        save_image(img, tmp_path / f"la_out{suffix}")
        with PILImage.open(tmp_path / f"la_out{suffix}") as im:
            assert im.mode == "L"
    pal = PILImage.fromarray(make_rgb(6, 8)).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    img = load_image(tmp_path / "p.png")
    assert img.alpha is not None and not img.gray


def test_16bit_gray_png_read_scaled_and_written_back_16bit(tmp_path):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 65536, (9, 12)).astype(np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    src = tmp_path / "g16.png"
    src.write_bytes(_png16(a))
    img = load_image(src)
    assert img.bits == 16 and img.gray
    torch.testing.assert_close(img.rgb[0].double(), torch.from_numpy(a / 65535.0), atol=1e-7, rtol=0)
    assert img.rgb.min() == 0 and img.rgb.max() == 1
    dst = tmp_path / "g16_out.png"
    save_image(img, dst)
    with PILImage.open(dst) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im).astype(np.uint16), a)
    save_image(img, tmp_path / "g16_out.tif")  # TIFF keeps 16 bits too
    back = load_image(tmp_path / "g16_out.tif")
    assert back.bits == 16 and torch.equal(back.rgb, img.rgb)


def test_16bit_rgb_png_reads_within_one_8bit_level(tmp_path):
    # Pillow decodes 16-bit RGB PNG to 8-bit RGB; the values must still land on the right scale.
    a = np.random.default_rng(8).integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_png16(a))
    img = load_image(tmp_path / "rgb16.png")
    ref = torch.from_numpy(a.astype(np.float32) / 65535).permute(2, 0, 1)
    assert (img.rgb - ref).abs().max() <= 1 / 255 + 1e-6


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "empty", "text", "truncated", "gif", "txt", "folder"])
def test_load_image_errors_name_the_file(tmp_path, make_rgb, case):
    p = tmp_path / "bad.png"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("this is not a PNG\n")
    elif case == "truncated":
        PILImage.fromarray(make_rgb(32, 32)).save(tmp_path / "ok.png")
        p.write_bytes((tmp_path / "ok.png").read_bytes()[:200])
    elif case in ("gif", "txt"):
        p = tmp_path / f"bad.{case}"
        PILImage.fromarray(make_rgb(4, 4)).save(p, format="GIF") if case == "gif" else p.write_text("x")
    elif case == "folder":
        p = tmp_path / "dir.png"
        p.mkdir()
    with pytest.raises(CompsrtError) as e:
        load_image(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg
    expected = {"missing": "no such file", "empty": "empty", "text": "cannot decode", "truncated": "cannot decode",
                "gif": "unsupported format", "txt": "unsupported format", "folder": "not a file"}[case]
    assert expected in msg


def test_save_unsupported_suffix(tmp_path):
    with pytest.raises(CompsrtError, match="unsupported output format"):
        save_image(Image(rgb=torch.zeros(3, 2, 2)), tmp_path / "x.gif")
    assert list(tmp_path.iterdir()) == []


# -- atomic writes ----------------------------------------------------------------------------

def test_atomic_path_success_leaves_only_the_file(tmp_path):
    dst = tmp_path / "sub" / "out.png"
    with atomic_path(dst) as tmp:
        assert tmp.parent == dst.parent and tmp != dst
        tmp.write_bytes(b"data")
        assert not dst.exists()  # nothing visible until the block succeeds
    assert dst.read_bytes() == b"data"
    assert oct(dst.stat().st_mode & 0o777) == "0o644"
    assert _stray_files(dst.parent, {"out.png"}) == []


def test_atomic_path_failure_leaves_no_temp_and_keeps_old_file(tmp_path):
    dst = tmp_path / "out.png"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(dst) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert dst.read_bytes() == b"old"
    assert _stray_files(tmp_path, {"out.png"}) == []


def test_save_image_failure_midway_leaves_no_temp(tmp_path, monkeypatch, make_rgb):
    dst = tmp_path / "out.png"
    save_image(Image(rgb=to_float(make_rgb(4, 4))), dst)
    before = dst.read_bytes()

    def failing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(PILImage.Image, "save", failing_save)
    with pytest.raises(OSError):
        save_image(Image(rgb=to_float(make_rgb(4, 4, seed=1))), dst)
    assert dst.read_bytes() == before
    assert _stray_files(tmp_path, {"out.png"}) == []
    assert not any(n.endswith(".tmp.png") for n in os.listdir(tmp_path))
