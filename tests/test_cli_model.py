"""compsrt-infer's --scale and --arch taken from the weights file (compsrt.load.describe_weights)
or the bundled model's name, and a contradiction between them as one line."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import save_file

from cli_helpers import error_line, run  # tests/cli_helpers.py
from compsrt.cli import model_arch_scale
from compsrt.config import SwinIRConfig
from compsrt.errors import CompsrtError
from compsrt.load import bundled_models, describe_weights


def _with_header(tmp_path, name: str, header: dict):
    path = tmp_path / f"{name}.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"compsrt": json.dumps(header)})
    return path


def test_describe_fp_files(tmp_path, test_weights, x4_weights, state_dict_x2):
    assert describe_weights(test_weights) == ("swinir-light", 2)
    assert describe_weights(x4_weights) == ("swinir-light", 4)
    torch.save({"params": state_dict_x2}, tmp_path / "official.pth")       # the official .pth layout
    assert describe_weights(tmp_path / "official.pth") == ("swinir-light", 2)


@pytest.mark.parametrize("name", ["mambairv2_light_x2", "mambairv2_light_x4", "swinir_light_x3", "swinir_light_x4_w4"])
def test_describe_bundled_files_agrees_with_their_names(name):
    if name not in bundled_models():
        pytest.skip(f"{name} is not bundled")
    assert describe_weights(bundled_models()[name]) == model_arch_scale(name)


@pytest.mark.parametrize("key", ["model", "swinir"])   # new headers and files of the first format
@pytest.mark.parametrize("fmt", ["compsrt-packed", "compsrt-calibrated"])
@pytest.mark.parametrize("arch", ["swinir-light", "mambairv2-light"])
def test_describe_headers_without_building(tmp_path, key, fmt, arch):
    cfg = {**asdict(SwinIRConfig(scale=3)), "num_heads": [0]}    # unbuildable: only the header is read
    path = _with_header(tmp_path, "h", {"format": fmt, "version": 2, "arch": arch, key: cfg})
    assert describe_weights(path) == (arch, 3)


@pytest.mark.parametrize("header, expected", [
    ({"format": "compsrt-packed", "arch": "edsr", "model": {"scale": 2}}, "architecture 'edsr'"),
    ({"format": "compsrt-packed", "arch": "swinir-light", "model": {"scale": 5}}, "model scale 5"),
    ({"format": "compsrt-packed", "arch": "swinir-light", "model": {"scale": "2"}}, "model scale '2'"),
    ({"format": "compsrt-packed", "arch": "swinir-light", "model": [1, 2]}, "model scale None"),
    ({"format": "compsrt-packed", "arch": "swinir-light"}, "model scale None"),
])
def test_describe_malformed_headers_are_one_line(tmp_path, header, expected):
    path = _with_header(tmp_path, "bad", header)
    with pytest.raises(CompsrtError) as e:
        describe_weights(path)
    assert expected in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_describe_unreadable_files(tmp_path):
    with pytest.raises(CompsrtError, match="weights file not found"):
        describe_weights(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    for name in ("junk.safetensors", "junk.pth"):
        with pytest.raises(CompsrtError, match=str(tmp_path / name)):
            describe_weights(tmp_path / name)


def test_model_names():
    assert model_arch_scale("swinir_light_x2_w4") == ("swinir-light", 2)
    assert model_arch_scale("swinir_light_x3") == ("swinir-light", 3)
    assert model_arch_scale("mambairv2_light_x4") == ("mambairv2-light", 4)
    assert model_arch_scale("swinir_light_x24") is None and model_arch_scale("edsr_x2") is None


def test_scale_comes_from_the_weights(capsys, tmp_path, x4_weights, make_rgb, write_png):
    src = write_png(tmp_path / "in.png", make_rgb(7, 9))
    rc, err = run(capsys, src, tmp_path / "o.png", "--weights", x4_weights, "--quiet")   # no --scale: x4
    assert rc == 0, err
    assert PILImage.open(tmp_path / "o.png").size == (36, 28)


@pytest.mark.parametrize("name, size", [("swinir_light_x3_w4", (27, 21)), ("mambairv2_light_x4", (36, 28))])
def test_scale_and_arch_come_from_the_model_name(capsys, tmp_path, make_rgb, write_png, name, size):
    if name not in bundled_models():
        pytest.skip(f"{name} is not bundled")
    src = write_png(tmp_path / "in.png", make_rgb(7, 9))
    rc, err = run(capsys, src, tmp_path / "o.png", "--model", name, "--quiet")
    assert rc == 0, err
    assert PILImage.open(tmp_path / "o.png").size == size


# The contradictions between --scale/--arch and the file or name: in test_cli_options.py's table.


def test_packed_checkpoint_contradiction_says_checkpoint(capsys, tmp_path, make_calibrated, make_rgb, write_png):
    from compsrt.config import QuantConfig
    from compsrt.quant.pack import pack_model, save_packed

    save_packed(*pack_model(make_calibrated(QuantConfig(bits=4))), tmp_path / "p.safetensors")
    src = write_png(tmp_path / "in.png", make_rgb(7, 9))
    rc, err = run(capsys, src, tmp_path / "o.png", "--weights", tmp_path / "p.safetensors", "--scale", "4")
    assert rc == 2 and "this is an x2 checkpoint but --scale 4 was asked" in error_line(err)
    rc, err = run(capsys, src, tmp_path / "o.png", "--weights", tmp_path / "p.safetensors", "--quiet")
    assert rc == 0 and PILImage.open(tmp_path / "o.png").size == (18, 14), err


def test_default_is_x2_swinir_light(capsys, tmp_path, make_rgb, write_png):
    from compsrt.cli import _parser, resolve_model

    path, arch, scale, label = resolve_model(_parser().parse_args(["a.png", "b.png"]))
    assert (arch, scale) == ("swinir-light", 2)
    assert label == (path.stem if path is not None else "swinir_light_x2")
    path, arch, scale, label = resolve_model(_parser().parse_args(["a.png", "b.png", "--arch", "mambairv2-light"]))
    assert (path, arch, scale, label) == (None, "mambairv2-light", 2, "mambairv2_light_x2")
