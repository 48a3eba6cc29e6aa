"""compsrt-infer --compare: panels at output scale (bicubic, FP, each model), the centre crop,
labels with PSNR/SSIM against FP (and HR), the zoomed region where the models differ most."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from cli_helpers import error_line, run, stray  # tests/cli_helpers.py
from compsrt.compare import BOX, CROP, GAP, Panel, centre_box, compose, differ_most, make_comparison, resolve_models
from compsrt.errors import CompsrtError
from compsrt.infer import upscale_tensor
from compsrt.io import load_image, to_uint
from compsrt.load import bundled_models
from compsrt.metrics import psnr, ssim
from compsrt.resize import imresize

ROOT = Path(__file__).resolve().parents[1]
PACKED_X2 = ["swinir_light_x2_w2", "swinir_light_x2_w4", "swinir_light_x2_w4_p40"]
needs_bundled_x2 = pytest.mark.skipif(not {"swinir_light_x2", *PACKED_X2} <= set(bundled_models()),
                                      reason="the bundled x2 models are not all present")


def test_centre_box():
    assert centre_box(96, 96) == (0, 0, 96, 96)                  # at most CROP a side: the whole image
    assert centre_box(150, 200) == (11, 36, CROP, CROP)
    assert centre_box(100, 300) == (0, 86, 100, CROP)


def test_differ_most_finds_the_blob():
    ref = np.zeros((40, 40, 3), np.uint8)
    other = ref.copy()
    other[25:30, 5:10] = 200
    y, x = differ_most(ref, [other, ref], side=8)
    assert 22 <= y <= 25 and 2 <= x <= 5                          # the 8x8 square covers the 5x5 blob


@needs_bundled_x2
def test_default_models_are_the_bundled_packed_ones_of_the_scale():
    scale, arch, specs = resolve_models(None, None, None)
    assert (scale, arch) == (2, "swinir-light") and [n for n, _ in specs] == PACKED_X2
    if "swinir_light_x3_w4" in bundled_models():
        assert [n for n, _ in resolve_models(None, 3, None)[2]] == ["swinir_light_x3_w4"]
    scale, _, specs = resolve_models(["swinir_light_x4_w4"], None, None)    # the scale from the named models
    assert scale == 4 and specs == [("swinir_light_x4_w4", bundled_models()["swinir_light_x4_w4"])]


@pytest.mark.parametrize("names, scale, expected", [
    (["swinir_light_x2_w4", "swinir_light_x4_w4"], None, "compare models of one scale"),
    (["swinir_light_x2_w4"], 3, "is an x2 model but --scale 3"),
    (["nope"], None, "--models nope: neither a bundled model"),
])
def test_model_mistakes(names, scale, expected):
    with pytest.raises(CompsrtError) as e:
        resolve_models(names, scale, None)
    assert expected in str(e.value)


def test_a_file_is_a_model_too(test_weights):
    assert resolve_models([str(test_weights)], None, None) == (2, "swinir-light", [(test_weights.name, test_weights)])


@needs_bundled_x2
def test_panels_are_the_models_outputs_on_the_centre_crop(tmp_path, make_rgb, write_png, test_weights):
    from compsrt.model.weights import load_swinir

    src = write_png(tmp_path / "tall.png", make_rgb(140, 20, seed=3))     # 140 rows: the centre 128 are taken
    hr = write_png(tmp_path / "hr.png", make_rgb(281, 41, seed=4))        # x2 plus one pixel (not mod-cropped)
    panels, where = make_comparison(src, 2, "swinir-light", [("test", test_weights)], torch.device("cpu"), hr)
    assert where == {"input_size": [20, 140], "crop": {"x": 0, "y": 6, "w": 20, "h": 128}}
    lr = load_image(src).rgb[None, :, 6:134]
    fp = to_uint(upscale_tensor(load_swinir(bundled_models()["swinir_light_x2"], 2), lr, 2)[0])
    want = [to_uint(imresize(lr[0], size=(256, 40)).clamp(0, 1)), fp,
            to_uint(upscale_tensor(load_swinir(test_weights, 2), lr, 2)[0])]
    assert [p.name for p in panels] == ["bicubic", "swinir_light_x2 (FP)", "test"]
    for panel, pixels in zip(panels, want):
        np.testing.assert_array_equal(panel.pixels, pixels)           # native output scale, exact
    truth = to_uint(load_image(hr).rgb[:, 12:268, :40])
    for panel in panels:
        assert panel.metrics["psnr_vs_hr"] == psnr(panel.pixels, truth, 2)
        assert panel.metrics["ssim_vs_hr"] == ssim(panel.pixels, truth, 2)
    assert "psnr_vs_fp" not in panels[1].metrics                      # the reference itself
    assert panels[2].metrics["psnr_vs_fp"] == psnr(want[2], fp, 2) and panels[2].file == test_weights


def test_compose_puts_panels_at_native_scale():
    rng = np.random.default_rng(0)
    panels = [Panel(f"p{i}", rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)) for i in range(3)]
    panels[1].metrics = {"psnr_vs_fp": 30.0, "ssim_vs_fp": 0.9}
    y, x, side, zoom = 10, 12, 7, 4
    picture, corners = compose(panels, (y, x, side), zoom, "a title long enough to be wrapped " * 5, hr=False)
    a = np.asarray(picture)
    ring = np.zeros((40, 30), bool)
    ring[max(y - 1, 0):y + side + 1, max(x - 1, 0):x + side + 1] = True
    ring[y:y + side, x:x + side] = False
    for panel, (left, top) in zip(panels, corners):
        got = a[top:top + 40, left:left + 30]
        np.testing.assert_array_equal(got[~ring], panel.pixels[~ring])   # every pixel, not resampled
        assert (got[ring] == BOX).all()                                   # the box around the region
        inset_top = top + 40 + GAP // 2
        inset = a[inset_top:inset_top + side * zoom, left:left + side * zoom]
        np.testing.assert_array_equal(inset, panel.pixels[y:y + side, x:x + side].repeat(zoom, 0).repeat(zoom, 1))
    assert corners[0][0] < corners[1][0] < corners[2][0] and len({top for _, top in corners}) == 1


@needs_bundled_x2
def test_compare_cli_writes_the_picture_and_json(capsys, tmp_path, make_rgb, write_png):
    src = write_png(tmp_path / "in.png", make_rgb(20, 24, seed=1))
    hr = write_png(tmp_path / "hr.png", make_rgb(40, 48, seed=2))
    out, report = tmp_path / "cmp.png", tmp_path / "cmp.json"
    rc, err = run(capsys, "--compare", src, out, "--hr", hr, "--json", report)
    assert rc == 0, err
    r = json.loads(report.read_text())
    assert [p["panel"] for p in r["panels"]] == ["bicubic", "swinir_light_x2 (FP)", *PACKED_X2]
    for p in r["panels"][2:]:
        assert p["bytes"] == bundled_models()[p["panel"]].stat().st_size
        assert 20 < p["psnr_vs_fp"] < 80 and 0 < p["ssim_vs_fp"] <= 1 and "psnr_vs_hr" in p
    with PILImage.open(out) as im:
        assert im.format == "PNG" and im.width >= 5 * 48 and im.height >= 48 + r["region"]["side"] * r["region"]["zoom"]
    assert stray(tmp_path, {"in.png", "hr.png", "cmp.png", "cmp.json"}) == []


@pytest.mark.parametrize("case, expected", [
    ("jpg_out", "--compare writes one PNG"),
    ("hr_size", "is not x2 of the 24x20 input"),
    ("out_is_input", "the output is an input"),
    ("missing", "no such file"),
])
def test_compare_mistakes_are_one_line(capsys, tmp_path, make_rgb, write_png, test_weights, case, expected):
    src = write_png(tmp_path / "in.png", make_rgb(20, 24))
    out, extra = tmp_path / "c.png", ["--models", test_weights]
    if case == "jpg_out":
        out = tmp_path / "c.jpg"
    elif case == "hr_size":
        extra += ["--hr", write_png(tmp_path / "hr.png", make_rgb(30, 48))]
    elif case == "out_is_input":
        out = src
    elif case == "missing":
        src = tmp_path / "none.png"
    rc, err = run(capsys, "--compare", src, out, *extra, "--quiet")
    assert rc == 2 and expected in error_line(err)
    assert case == "out_is_input" or not out.exists()


@pytest.mark.slow
@needs_bundled_x2
def test_compare_256_under_a_minute(tmp_path):
    """The issue's target: --compare on a 256x256 input with the default models, loading
    included (a fresh process), in under a minute here."""
    g = torch.Generator().manual_seed(0)
    src = tmp_path / "in.png"
    PILImage.fromarray((torch.rand(256, 256, 3, generator=g) * 255).byte().numpy()).save(src)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "compsrt.cli", "--compare", str(src), str(tmp_path / "c.png"),
                           "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"--compare 256x256, default models (3 packed + FP), fresh process: {seconds:.1f} s")
    assert seconds < 60
