"""Property test of compsrt-infer over random tiny inputs: sizes, modes, bit depths, formats, damage.

Every input gives exit 0 with an output of twice the size and the kind of file the rules promise
(gray stays gray, alpha stays where the format has it, 16 bits stay 16 bits in PNG), or, for a
damaged file, exit 2 with one line; never a traceback. Tiny images (<= 24 px a side) and 30
examples keep it to seconds.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from unittest import mock
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

hypothesis = pytest.importorskip("hypothesis")
png = pytest.importorskip("png")
from hypothesis import given, settings, strategies as st  # noqa: E402

import compsrt.cli as cli  # noqa: E402
from compsrt.cli import main  # noqa: E402

_MODELS: dict = {}


def _load_once(weights, scale, arch, device):
    """compsrt.cli's load_model, cached: the examples differ in their images, not their weights."""
    key = (str(weights), scale, arch, str(device))
    if key not in _MODELS:
        _MODELS[key] = _real_load_model(weights, scale, arch, device)
    return _MODELS[key]


_real_load_model = cli.load_model

# kind: (file mode, gray, alpha, bits); the formats that can hold it
KINDS = {
    "L": (True, False, 8), "LA": (True, True, 8), "RGB": (False, False, 8), "RGBA": (False, True, 8),
    "P": (False, False, 8), "PT": (False, True, 8), "I;16": (True, False, 16),
    "RGB16": (False, False, 16), "RGBA16": (False, True, 16), "LA16": (True, True, 16),
}
FORMATS = {
    "L": (".png", ".bmp", ".tif", ".jpg"), "LA": (".png", ".tif"), "RGB": (".png", ".bmp", ".tif", ".jpg"),
    "RGBA": (".png", ".tif"), "P": (".png", ".bmp", ".tif"), "PT": (".png",), "I;16": (".png", ".tif"),
    "RGB16": (".png",), "RGBA16": (".png",), "LA16": (".png",),
}
CASES = [(kind, suffix) for kind, suffixes in FORMATS.items() for suffix in suffixes]


def _write(path: Path, kind: str, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind in ("RGB16", "RGBA16", "LA16"):
        c = {"RGB16": 3, "RGBA16": 4, "LA16": 2}[kind]
        a = rng.integers(0, 65536, (h, w * c)).astype(np.uint16)
        with open(path, "wb") as f:
            png.Writer(w, h, greyscale=c == 2, alpha=c != 3, bitdepth=16).write(f, a.tolist())
        return
    if kind == "I;16":
        im = PILImage.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    elif kind in ("P", "PT"):
        im = PILImage.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).convert("P")
    else:
        c = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[kind]
        a = rng.integers(0, 256, (h, w, c)).astype(np.uint8)
        im = PILImage.fromarray(a[..., 0] if c == 1 else a, mode=kind)
    im.save(path, **({"transparency": 0} if kind == "PT" else {}))


def _expected(kind: str, suffix: str) -> tuple[bool, bool, int]:
    """(gray, alpha, bits) the output must have, by the writing rules of compsrt.io.save_image."""
    gray, alpha, bits = KINDS[kind]
    if suffix == ".jpg":
        return gray, False, 8
    if suffix == ".bmp":
        return gray, alpha and not gray, 8
    if suffix == ".tif":
        return gray, alpha, 16 if (bits == 16 and gray and not alpha) else 8
    return gray, alpha, bits


def _described(path: Path) -> tuple[tuple[int, int], bool, bool, int]:
    """((w, h), gray, alpha, bits) of a written file: pypng for PNG (it sees 16 bits), else Pillow."""
    if path.suffix == ".png":
        w, h, _, info = png.Reader(filename=str(path)).read()
        return (w, h), info["greyscale"], info["alpha"], info["bitdepth"]
    with PILImage.open(path) as im:
        mode = im.mode
        size = im.size
    table = {"L": (True, False, 8), "LA": (True, True, 8), "RGB": (False, False, 8), "RGBA": (False, True, 8),
             "I;16": (True, False, 16)}
    assert mode in table, mode
    return (size, *table[mode])


@settings(max_examples=30, deadline=None, database=None)   # no example database: a failure prints its example
@given(case=st.sampled_from(CASES), h=st.integers(1, 24), w=st.integers(1, 24), seed=st.integers(0, 2 ** 16),
       damage=st.sampled_from(["none", "none", "truncate", "flip"]), where=st.floats(0.0, 1.0))
def test_every_input_gives_a_right_output_or_one_line(test_weights, case, h, w, seed, damage, where):
    kind, suffix = case
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / f"in{suffix}", Path(tmp) / "out" / f"out{suffix}"
        _write(src, kind, h, w, seed)
        data = bytearray(src.read_bytes())
        if damage == "truncate":
            data = data[: int(where * len(data))]
        elif damage == "flip":
            i = min(int(where * len(data)), len(data) - 1)
            data[i] ^= 0x5A
        src.write_bytes(bytes(data))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), mock.patch.object(cli, "load_model", _load_once):
            rc = main([str(src), str(dst), "--weights", str(test_weights), "--quiet"])
        err = err.getvalue()
        assert "Traceback" not in err
        if rc == 2:
            assert damage != "none", err                       # an intact file must be upscaled
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("compsrt-infer: error:") and str(src) in lines[0], err
            assert not dst.exists()
            return
        assert rc == 0, err
        size, gray, alpha, bits = _described(dst)
        if damage == "none":
            assert size == (2 * w, 2 * h)
            assert (gray, alpha, bits) == _expected(kind, suffix), (kind, suffix)
        else:   # a damaged file that still decodes: some image, upscaled twice
            assert size[0] % 2 == 0 and size[1] % 2 == 0
