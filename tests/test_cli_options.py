"""compsrt-infer's everyday options: --ext/--quality, --suffix, --outscale, several inputs and
globs, --json, --batch (and its images/s bar), --half on the CPU, and the grouped --help."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from cli_helpers import error_line, run, stray  # tests/cli_helpers.py
from compsrt.cli import main, plan_jobs, same_size_groups
from compsrt.infer import outscale_size, resample, upscale
from compsrt.io import load_image, to_uint


@pytest.fixture
def folder(tmp_path, make_rgb, write_png):
    """imgs/: a.png (12x17), b.bmp (10x14), c.jpg (12x17)."""
    src = tmp_path / "imgs"
    write_png(src / "a.png", make_rgb(12, 17, seed=1))
    write_png(src / "b.bmp", make_rgb(10, 14, seed=2))
    PILImage.fromarray(make_rgb(12, 17, seed=3)).save(src / "c.jpg", quality=95)
    return src


def _size(path) -> tuple[int, int]:
    with PILImage.open(path) as im:
        return im.size


# -- --ext, --quality, --suffix -----------------------------------------------------------------

@pytest.mark.parametrize("ext, names, fmt", [
    ("auto", ["a.png", "b.bmp", "c.jpg"], {"a.png": "PNG", "b.bmp": "BMP", "c.jpg": "JPEG"}),
    ("webp", ["a.webp", "b.webp", "c.webp"], {"a.webp": "WEBP", "b.webp": "WEBP", "c.webp": "WEBP"}),
    ("jpg", ["a.jpg", "b.jpg", "c.jpg"], {"a.jpg": "JPEG", "b.jpg": "JPEG", "c.jpg": "JPEG"}),
])
def test_ext_sets_the_format_of_folder_outputs(capsys, tmp_path, folder, test_weights, ext, names, fmt):
    dst = tmp_path / "out"
    rc, err = run(capsys, folder, dst, "--weights", test_weights, "--ext", ext, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in dst.iterdir()) == names
    for name, want in fmt.items():
        with PILImage.open(dst / name) as im:
            assert im.format == want and im.size == ((34, 24) if name[0] != "b" else (28, 20))


def test_quality_sets_jpeg_and_webp_compression(capsys, tmp_path, folder, test_weights):
    sizes = {}
    for ext in ("jpg", "webp"):
        for q in (20, 95):
            dst = tmp_path / f"{ext}{q}"
            rc, err = run(capsys, folder / "a.png", folder / "c.jpg", dst, "--weights", test_weights, "--ext", ext,
                          "--quality", q, "--quiet")
            assert rc == 0, err
            sizes[ext, q] = (dst / f"a.{ext}").stat().st_size
    assert sizes["jpg", 20] < sizes["jpg", 95] and sizes["webp", 20] < sizes["webp", 95], sizes


@pytest.mark.parametrize("out, ext, ok", [("o.jpg", "jpg", True), ("o.jpeg", "jpg", True), ("o.webp", "webp", True),
                                          ("o.png", "jpg", False), ("o.jpg", "webp", False), ("o.webp", "png", False)])
def test_single_output_file_suffix_decides_and_ext_must_agree(capsys, tmp_path, folder, test_weights, out, ext, ok):
    rc, err = run(capsys, folder / "a.png", tmp_path / out, "--weights", test_weights, "--ext", ext, "--quiet")
    if ok:
        assert rc == 0 and _size(tmp_path / out) == (34, 24), err
    else:
        assert rc == 2 and f"--ext {ext} contradicts the output file" in error_line(err)
        assert not (tmp_path / out).exists()


def test_suffix_names_folder_outputs(capsys, tmp_path, folder, test_weights):
    dst = tmp_path / "out"
    rc, err = run(capsys, folder, dst, "--weights", test_weights, "--suffix", "_x2", "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in dst.iterdir()) == ["a_x2.png", "b_x2.bmp", "c_x2.jpg"]
    # into the input folder itself: allowed for several files when no name is an input's
    rc, err = run(capsys, folder / "a.png", folder / "b.bmp", folder, "--weights", test_weights, "--suffix", "_up",
                  "--quiet")
    assert rc == 0, err
    assert {"a_up.png", "b_up.bmp"} <= {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("argv, expected", [
    (["{a}", "{tmp}/o.png", "--suffix", "_x2"], "--suffix '_x2' names the outputs of a folder run"),
    (["{dir}", "{tmp}/o", "--suffix", "a/b"], "without path separators"),
    (["{a}", "{tmp}/o.png", "--quality", "0"], "--quality 0"),
    (["{a}", "{tmp}/o.png", "--outscale", "0"], "--outscale 0"),
    (["{a}", "{tmp}/o.png", "--outscale", "17"], "--outscale 17"),
    (["{a}", "{tmp}/o.png", "--batch", "0"], "--batch 0"),
    (["{a}", "{tmp}/o.png", "--half"], "--half needs a CUDA device"),
    (["{a}", "{tmp}/o.png", "--hr", "{a}"], "--hr goes with --compare"),
    (["{a}", "{tmp}/o.png", "--models", "swinir_light_x2_w4"], "--models goes with --compare"),
    (["{a}", "{tmp}/o.png", "--compare", "--ext", "jpg"], "--compare does not take --ext"),
    (["{a}", "{tmp}/o.png", "--compare"], "--compare does not take --weights"),   # (every case adds --weights)
    (["{a}", "{a}", "{tmp}/o.png", "--compare"], "--compare takes one image and one output PNG, got 3"),
    # --scale / --arch against what the file or the bundled name says
    (["{a}", "{tmp}/o.png", "--weights", "{x4}", "--scale", "2"],
     "{x4}: these are x4 weights but --scale 2 was asked; leave --scale out"),
    (["{a}", "{tmp}/o.png", "--weights", "{x4}", "--arch", "mambairv2-light"], "{x4}: swinir-light weights, but --arch mambairv2-light"),
    (["{a}", "{tmp}/o.png", "--model", "swinir_light_x3_w4", "--scale", "2"], "--model swinir_light_x3_w4 is an x3 model but --scale 2"),
    (["{a}", "{tmp}/o.png", "--model", "swinir_light_x2", "--arch", "mambairv2-light"],
     "is a swinir-light model but --arch mambairv2-light"),
    (["{a}", "{tmp}/o.png", "--model", "mambairv2_light_x2", "--scale", "3"], "--model mambairv2_light_x2 is an x2 model but --scale 3"),
])
def test_option_mistakes_are_one_line(capsys, tmp_path, folder, test_weights, x4_weights, argv, expected):
    """Each case runs with --weights (the test weights) unless it names its own model."""
    fill = {"a": folder / "a.png", "tmp": tmp_path, "dir": folder, "x4": x4_weights}
    model = [] if {"--weights", "--model"} & set(argv) else ["--weights", test_weights]
    rc, err = run(capsys, *[a.format(**fill) for a in argv], *model, "--quiet")
    assert rc == 2 and expected.format(**fill) in error_line(err), err
    assert stray(tmp_path, {"imgs"}) == []


# -- --outscale ----------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [1.5, 3.0, 2.0])
def test_outscale_resamples_the_model_output(capsys, tmp_path, folder, test_weights, model_x2, factor):
    dst = tmp_path / f"o{factor}.png"
    rc, err = run(capsys, folder / "a.png", dst, "--weights", test_weights, "--outscale", factor, "--quiet")
    assert rc == 0, err
    h, w = outscale_size(12, 17, factor)
    assert _size(dst) == (w, h) == {1.5: (26, 18), 3.0: (51, 36), 2.0: (34, 24)}[factor]
    out = upscale(model_x2, load_image(folder / "a.png"), 2)
    want = out if factor == 2 else resample(out, (h, w))      # x2 = the model's scale: the model's output as is
    np.testing.assert_array_equal(np.asarray(PILImage.open(dst)), to_uint(want.rgb))


# -- several inputs, globs -----------------------------------------------------------------------

def test_several_inputs_and_a_glob_go_to_a_folder(capsys, tmp_path, folder, test_weights):
    rc, err = run(capsys, folder / "a.png", folder / "b.bmp", tmp_path / "two", "--weights", test_weights, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["a.png", "b.bmp"]
    rc, err = run(capsys, f"{folder}/*.[pj][np]g", tmp_path / "glob", "--weights", test_weights, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "glob").iterdir()) == ["a.png", "c.jpg"]
    (tmp_path / "existing").mkdir()       # one file into an existing folder: written under its own name
    rc, err = run(capsys, folder / "a.png", tmp_path / "existing", "--weights", test_weights, "--quiet")
    assert rc == 0 and _size(tmp_path / "existing" / "a.png") == (34, 24), err


def test_several_inputs_report_a_bad_one_and_go_on(capsys, tmp_path, folder, test_weights):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rc, err = run(capsys, folder / "a.png", tmp_path / "bad.png", folder / "c.jpg", tmp_path / "out",
                  "--weights", test_weights, "--quiet")
    assert rc == 2 and "bad.png" in error_line(err)
    assert "compsrt-infer: 2 written, 1 failed: bad.png" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.jpg"]


def test_inputs_that_would_write_one_name_are_refused(capsys, tmp_path, folder, make_rgb, write_png, test_weights):
    other = write_png(tmp_path / "other" / "a.png", make_rgb(5, 5))
    rc, err = run(capsys, folder / "a.png", other, tmp_path / "out", "--weights", test_weights)
    assert rc == 2 and "would both write" in error_line(err) and str(other) in error_line(err)
    png = write_png(tmp_path / "x" / "c.png", make_rgb(5, 5))
    rc, err = run(capsys, folder / "c.jpg", png, tmp_path / "out", "--weights", test_weights, "--ext", "png")
    assert rc == 2 and "would both write" in error_line(err)
    assert not (tmp_path / "out").exists()


def test_plan_jobs_refuses_to_write_over_an_input(folder):
    from compsrt.errors import CompsrtError

    with pytest.raises(CompsrtError, match="would overwrite the input"):
        plan_jobs([str(folder / "a.png"), str(folder / "b.bmp")], folder)
    with pytest.raises(CompsrtError, match="matches no image"):
        plan_jobs([str(folder / "*.tif")], folder.parent / "o")
    jobs, folder_out = plan_jobs([str(folder / "a.png")], folder.parent / "o.webp")
    assert jobs == [(folder / "a.png", folder.parent / "o.webp")] and not folder_out


# -- --json --------------------------------------------------------------------------------------

def test_json_records_every_image(capsys, tmp_path, folder, test_weights):
    (folder / "d.png").write_bytes(b"")
    dst, report = tmp_path / "out", tmp_path / "run.json"
    (dst).mkdir()
    PILImage.new("RGB", (2, 2)).save(dst / "b.bmp")         # skipped
    rc, err = run(capsys, folder, dst, "--weights", test_weights, "--json", report, "--skip-existing", "--quiet")
    assert rc == 2
    records = {r["input"]: r for r in json.loads(report.read_text())["images"]}
    assert set(records) == {str(folder / n) for n in ("a.png", "b.bmp", "c.jpg", "d.png")}
    a, b, d = records[str(folder / "a.png")], records[str(folder / "b.bmp")], records[str(folder / "d.png")]
    assert a["status"] == "written" and a["output"] == str(dst / "a.png") and a["error"] is None
    assert a["model"] == str(test_weights) and a["seconds"] > 0
    assert b["status"] == "skipped" and b["output"] is None
    assert d["status"] == "failed" and "empty file" in d["error"] and d["output"] is None
    assert stray(tmp_path, {"imgs", "out", "run.json"}) == []     # written atomically


def test_json_of_a_failed_single_file_run(capsys, tmp_path, test_weights):
    src = tmp_path / "t.png"
    src.write_bytes(b"text")
    rc, err = run(capsys, src, tmp_path / "o.png", "--weights", test_weights, "--json", tmp_path / "r.json")
    assert rc == 2 and "cannot decode" in error_line(err)
    (record,) = json.loads((tmp_path / "r.json").read_text())["images"]
    assert record["status"] == "failed" and "cannot decode" in record["error"]


def test_json_names_the_default_model(capsys, tmp_path, folder):
    from compsrt.load import bundled_models

    if "swinir_light_x2_w4" not in bundled_models():
        pytest.skip("swinir_light_x2_w4 is not bundled")
    rc, err = run(capsys, folder / "b.bmp", tmp_path / "o.png", "--json", tmp_path / "r.json", "--quiet")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["images"][0]["model"] == "swinir_light_x2_w4"


# -- --batch and the images/s bar ------------------------------------------------------------------

def test_same_size_groups():
    assert list(same_size_groups([1, 1, 1, 2, 2, 1], lambda i: i, 2)) == [[1, 1], [1], [2, 2], [1]]
    assert list(same_size_groups([3, 3, 3], lambda i: i, 1)) == [[3], [3], [3]]
    assert list(same_size_groups([], lambda i: i, 4)) == []


def test_batch_gives_the_outputs_of_batch_1(capsys, tmp_path, make_rgb, write_png, test_weights):
    src = tmp_path / "imgs"
    for i in range(5):
        write_png(src / f"{i}.png", make_rgb(14, 18, seed=i) if i != 3 else make_rgb(9, 11, seed=i))
    outs = {}
    for n in (1, 3):
        rc, err = run(capsys, src, tmp_path / f"b{n}", "--weights", test_weights, "--batch", n, "--quiet")
        assert rc == 0, err
        outs[n] = {p.name: p.read_bytes() for p in (tmp_path / f"b{n}").iterdir()}
    assert len(outs[1]) == 5 and outs[1] == outs[3]


def test_progress_bar_counts_images_per_second(capsys, tmp_path, folder, test_weights):
    rc, err = run(capsys, folder, tmp_path / "out", "--weights", test_weights)
    assert rc == 0
    assert "images: 100%" in err and " img/s]" in err and "s/ img" not in err


# -- --help --------------------------------------------------------------------------------------

def test_help_is_grouped_and_short(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    print(f"--help: {len(lines)} lines at 100 columns")
    assert len(lines) <= 60 and max(map(len, lines)) <= 100
    heads = [i for i, ln in enumerate(lines) if ln in ("input/output:", "model:", "speed:", "compare:")]
    assert [lines[i] for i in heads] == ["input/output:", "model:", "speed:", "compare:"]

    def group_of(option: str) -> str:
        at = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith(option + " ") or ln.strip() == option)
        return lines[max(h for h in heads if h < at)]

    for option, group in [("--ext", "input/output:"), ("--suffix", "input/output:"), ("--outscale", "input/output:"),
                          ("--json", "input/output:"), ("--model", "model:"), ("--scale", "model:"),
                          ("--arch", "model:"), ("--half", "speed:"), ("--batch", "speed:"), ("--tile", "speed:"),
                          ("--compare", "compare:"), ("--hr", "compare:")]:
        assert group_of(option) == group, option


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal of --half")
def test_half_on_the_cpu_is_refused_before_loading(capsys, tmp_path, folder):
    rc, err = run(capsys, folder / "a.png", tmp_path / "o.png", "--half", "--weights", tmp_path / "missing.pth")
    assert rc == 2 and "--half needs a CUDA device" in error_line(err)
