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


def _png16_pypng(path, a: np.ndarray) -> None:
    """A 16-bit PNG with pypng: (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) RGB or (H, W, 4) RGBA."""
    import png

    a = a if a.ndim == 3 else a[..., None]
    h, w, c = a.shape
    with open(path, "wb") as f:
        png.Writer(w, h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16).write(f, a.reshape(h, w * c).tolist())


def _read_pypng(path) -> tuple[np.ndarray, dict]:
    import png

    w, h, rows, info = png.Reader(filename=str(path)).asDirect()
    return np.array([list(r) for r in rows], np.uint16).reshape(h, w, info["planes"]), info


def _low_bytes_vary(h, w, c, seed) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 65536, (h, w, c)).astype(np.uint16)
    a.flat[0], a.flat[1] = 0, 65535
    assert len(np.unique(a & 0xFF)) > 50
    return a


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_16bit_colour_and_alpha_png_exact_both_ways(tmp_path, channels):
    """16-bit RGB, RGBA and gray+alpha PNG (which Pillow cuts to 8 bits) keep every value, low bytes included."""
    a = _low_bytes_vary(7, 9, channels, seed=8)
    src = tmp_path / "in16.png"
    _png16_pypng(src, a)
    img = load_image(src)
    assert img.bits == 16 and img.gray == (channels == 2) and (img.alpha is not None) == (channels in (2, 4))
    colour = a[..., :1] if channels == 2 else a[..., :3]
    np.testing.assert_array_equal(to_uint(img.rgb, 16)[..., : colour.shape[-1]], colour)
    if img.alpha is not None:
        np.testing.assert_array_equal(to_uint(img.alpha, 16)[..., 0], a[..., -1])
    dst = tmp_path / "out16.png"
    save_image(img, dst)
    back, info = _read_pypng(dst)
    assert info["bitdepth"] == 16 and info["planes"] == channels
    np.testing.assert_array_equal(back, a)
    assert load_image(dst).bits == 16


def test_16bit_rgb_png_to_8bit_formats(tmp_path):
    a = _low_bytes_vary(5, 6, 3, seed=9)
    _png16_pypng(tmp_path / "rgb16.png", a)
    img = load_image(tmp_path / "rgb16.png")
    for suffix in (".jpg", ".bmp", ".tif"):   # no 16-bit colour writer there: 8 bits, the nearest level
        save_image(img, tmp_path / f"o{suffix}")
        with PILImage.open(tmp_path / f"o{suffix}") as im:
            assert im.mode == "RGB" and im.size == (6, 5)
    np.testing.assert_array_equal(np.asarray(PILImage.open(tmp_path / "o.bmp")),
                                  np.round(a.astype(np.float64) / 65535 * 255).astype(np.uint8))


def test_16bit_png_with_exif_orientation_is_turned(tmp_path, make_rgb):
    """The pypng path honours EXIF orientation (an eXIf chunk) as the Pillow path does."""
    a = _low_bytes_vary(4, 7, 3, seed=10)
    plain = tmp_path / "plain.png"
    _png16_pypng(plain, a)
    exif = PILImage.Exif()
    exif[0x0112] = 6
    body = exif.tobytes()
    body = body[6:] if body.startswith(b"Exif\x00\x00") else body
    data = plain.read_bytes()
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    (tmp_path / "turned.png").write_bytes(data[:33] + chunk + data[33:])
    img = load_image(tmp_path / "turned.png")
    np.testing.assert_array_equal(to_uint(img.rgb, 16), np.rot90(a, -1))


def test_orient_matches_pillow_exif_transpose(make_rgb):
    from PIL import ImageOps

    from compsrt.io import orient

    a = make_rgb(5, 8, seed=11)
    for value in range(1, 9):
        im = PILImage.fromarray(a)
        exif = im.getexif()
        exif[0x0112] = value
        im.info["exif"] = exif.tobytes()
        want = np.asarray(ImageOps.exif_transpose(im))
        np.testing.assert_array_equal(orient(a, value), want, err_msg=f"orientation {value}")


# -- ICC profiles -----------------------------------------------------------------------------

def _icc(space: bytes) -> bytes:
    """A stand-in ICC profile: 128-byte header with the colour space at offset 16 (writers embed it as is)."""
    head = bytearray(128)
    head[0:4] = struct.pack(">I", 128)
    head[12:16] = b"mntr"
    head[16:20] = space
    head[36:40] = b"acsp"
    return bytes(head) + b"\x00\x00\x00\x00"


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_icc_profile_is_kept(tmp_path, make_rgb, suffix):
    icc = _icc(b"RGB ")
    src = tmp_path / f"in{suffix}"
    PILImage.fromarray(make_rgb(6, 7)).save(src, icc_profile=icc)
    img = load_image(src)
    assert img.icc == icc
    save_image(img, tmp_path / f"out{suffix}")
    with PILImage.open(tmp_path / f"out{suffix}") as im:
        assert im.info.get("icc_profile") == icc
    save_image(img, tmp_path / "out.bmp")   # BMP has no ICC: written without it
    gray = tmp_path / f"g{suffix}"
    PILImage.fromarray(make_rgb(6, 7)[..., 0], mode="L").save(gray, icc_profile=_icc(b"GRAY"))
    save_image(load_image(gray), tmp_path / f"g_out{suffix}")
    with PILImage.open(tmp_path / f"g_out{suffix}") as im:
        assert im.mode == "L" and im.info.get("icc_profile") == _icc(b"GRAY")


def test_icc_profile_kept_on_16bit_png_and_dropped_when_it_does_not_fit(tmp_path, make_rgb):
    icc = _icc(b"RGB ")
    img = Image(rgb=to_float(_low_bytes_vary(4, 5, 3, seed=12), 16), bits=16, icc=icc)
    save_image(img, tmp_path / "o16.png")
    with PILImage.open(tmp_path / "o16.png") as im:
        assert im.info.get("icc_profile") == icc
    assert load_image(tmp_path / "o16.png").icc == icc
    assert _read_pypng(tmp_path / "o16.png")[1]["bitdepth"] == 16
    # a CMYK profile does not describe the RGB the CMYK input became: not written
    save_image(Image(rgb=img.rgb, icc=_icc(b"CMYK")), tmp_path / "cmyk.png")
    with PILImage.open(tmp_path / "cmyk.png") as im:
        assert "icc_profile" not in im.info


# -- animated and multi-page inputs ------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_animated_or_multipage_input_is_refused(tmp_path, make_rgb, suffix):
    frames = [PILImage.fromarray(make_rgb(6, 6, seed=s)) for s in range(3)]
    p = tmp_path / f"anim{suffix}"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    with pytest.raises(CompsrtError) as e:
        load_image(p)
    assert str(p) in str(e.value) and "3 frames" in str(e.value) and "\n" not in str(e.value)


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
