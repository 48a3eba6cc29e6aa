"""compsrt-infer (compsrt.cli.main) and the upscaling it runs (compsrt.infer): errors, formats, tiling."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import save_file
from torch import nn

from compsrt.cli import main
from compsrt.config import SwinIRConfig
from compsrt.infer import tile_boxes, upscale, upscale_tensor
from compsrt.io import Image, load_image, to_float, to_uint
from compsrt.model.swinir import SwinIRLight
from compsrt.resize import imresize

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_X2 = ROOT / "compsrt" / "weights" / "swinir_light_x2.safetensors"


def _run(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _error_line(err: str) -> str:
    """The one line a user mistake prints (progress bars aside)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("compsrt-infer: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _stray(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture
def small_png(tmp_path, make_rgb, write_png) -> Path:
    return write_png(tmp_path / "in" / "small.png", make_rgb(12, 17, seed=0))


# -- user mistakes: exit 2, one line, nothing written ---------------------------------------

def _x4_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "x4.safetensors"
    save_file(SwinIRLight(SwinIRConfig(scale=4)).state_dict(), str(path))
    return path


def _edited_weights(tmp_path: Path, state_dict_x2: dict, edit: str) -> Path:
    sd = dict(state_dict_x2)
    key = "layers.3.residual_group.blocks.5.mlp.fc2.weight"
    if edit == "removed":
        del sd[key]
    else:
        sd[key] = torch.zeros(60, 121)
    path = tmp_path / f"{edit}.safetensors"
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize("case, expected", [
    ("missing_input", "no such file"),
    ("zero_byte", "empty file"),
    ("text_as_png", "cannot decode"),
    ("truncated_png", "cannot decode"),
    ("gif_input", "unsupported format '.gif'"),
    ("txt_input", "unsupported format '.txt'"),
    ("gif_output", "unsupported output format '.gif'"),
    ("x4_weights", "x4 weights but --scale 2"),
    ("tensor_removed", "missing 1 tensor(s), e.g. ['layers.3.residual_group.blocks.5.mlp.fc2.weight']"),
    ("wrong_shape", "layers.3.residual_group.blocks.5.mlp.fc2.weight: file (60, 121) vs model (60, 120)"),
    ("missing_weights", "weights file not found"),
    ("not_weights", "not a readable safetensors"),
    ("output_is_input", "output path is the input file"),
    ("bad_tiling", "--tile 16 --tile-overlap 16"),
])
def test_user_mistakes_exit_2_with_one_line(capsys, tmp_path, make_rgb, write_png, test_weights, state_dict_x2,
                                            case, expected):
    src = write_png(tmp_path / "in.png", make_rgb(8, 8))
    dst = tmp_path / "out" / "out.png"
    weights, extra = test_weights, []
    if case == "missing_input":
        src = tmp_path / "nope.png"
    elif case == "zero_byte":
        src = tmp_path / "zero.png"
        src.write_bytes(b"")
    elif case == "text_as_png":
        src = tmp_path / "text.png"
        src.write_text("hello, I am text\n")
    elif case == "truncated_png":
        full = write_png(tmp_path / "full.png", make_rgb(40, 40))
        src = tmp_path / "trunc.png"
        src.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    elif case == "gif_input":
        src = tmp_path / "in.gif"
        PILImage.fromarray(make_rgb(8, 8)).save(src)
    elif case == "txt_input":
        src = tmp_path / "in.txt"
        src.write_text("x")
    elif case == "gif_output":
        dst = tmp_path / "out" / "out.gif"
    elif case == "x4_weights":
        weights = _x4_weights(tmp_path)
    elif case in ("tensor_removed", "wrong_shape"):
        weights = _edited_weights(tmp_path, state_dict_x2, "removed" if case == "tensor_removed" else "shape")
    elif case == "missing_weights":
        weights = tmp_path / "none.safetensors"
    elif case == "not_weights":
        weights = tmp_path / "w.safetensors"
        weights.write_text("nope")
    elif case == "output_is_input":
        dst = src
    elif case == "bad_tiling":
        extra = ["--tile", "16", "--tile-overlap", "16"]
    before = src.read_bytes() if src.is_file() else None
    rc, err = _run(capsys, src, dst, "--scale", "2", "--weights", weights, "--quiet", *extra)
    assert rc == 2
    line = _error_line(err)
    assert expected in line, line
    if case != "output_is_input":
        assert not dst.exists()
    if before is not None:
        assert src.read_bytes() == before  # the input is never touched


def test_golden_x3_weights_with_scale_2(capsys, tmp_path, golden_dir, small_png):
    x3 = golden_dir / "swinir_light_x3_params.safetensors"
    rc, err = _run(capsys, small_png, tmp_path / "o.png", "--weights", x3, "--scale", "2", "--quiet")
    assert rc == 2 and "x3 weights but --scale 2" in _error_line(err)


def test_folder_errors(capsys, tmp_path, make_rgb, write_png, test_weights):
    src = tmp_path / "imgs"
    src.mkdir()
    rc, err = _run(capsys, src, tmp_path / "o", "--weights", test_weights)
    assert rc == 2 and "no images" in _error_line(err)
    write_png(src / "a.png", make_rgb(6, 6))
    rc, err = _run(capsys, src, src, "--weights", test_weights)
    assert rc == 2 and "output folder is the input folder" in _error_line(err)
    (tmp_path / "file.png").write_bytes(b"x")
    rc, err = _run(capsys, src, tmp_path / "file.png", "--weights", test_weights)
    assert rc == 2 and "not a folder" in _error_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(capsys, small_png, tmp_path, test_weights):
    rc, err = _run(capsys, small_png, tmp_path / "o.png", "--weights", test_weights, "--device", "cuda")
    assert rc == 2 and "no CUDA GPU" in _error_line(err)


def test_usage_error_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["a.png", "b.png", "--scale", "5"])
    assert e.value.code == 2


# -- success cases --------------------------------------------------------------------------

def test_one_pixel_image(capsys, tmp_path, write_png, test_weights):
    src = write_png(tmp_path / "one.png", np.array([[[200, 30, 90]]], np.uint8))
    rc, err = _run(capsys, src, tmp_path / "one_x2.png", "--weights", test_weights, "--quiet")
    assert rc == 0, err
    with PILImage.open(tmp_path / "one_x2.png") as im:
        assert im.size == (2, 2) and im.mode == "RGB"


def test_small_image_matches_the_model(capsys, small_png, tmp_path, test_weights, model_x2):
    dst = tmp_path / "out" / "small_x2.png"
    rc, err = _run(capsys, small_png, dst, "--weights", test_weights, "--quiet")
    assert rc == 0, err
    got = np.asarray(PILImage.open(dst))
    assert got.shape == (24, 34, 3)
    with torch.no_grad():
        want = to_uint(model_x2(load_image(small_png).rgb[None])[0])
    np.testing.assert_array_equal(got, want)
    assert _stray(dst.parent, {"small_x2.png"}) == []  # atomic: no temp files left


def test_grayscale_and_16bit_kept(capsys, tmp_path, make_rgb, test_weights):
    g = make_rgb(9, 11)[..., 0]
    PILImage.fromarray(g, mode="L").save(tmp_path / "g.png")
    PILImage.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    for name, mode in (("g", "L"), ("g16", "I;16")):
        rc, err = _run(capsys, tmp_path / f"{name}.png", tmp_path / f"{name}_x2.png", "--weights", test_weights,
                       "--quiet")
        assert rc == 0, err
        with PILImage.open(tmp_path / f"{name}_x2.png") as im:
            assert im.mode == mode and im.size == (22, 18)


def test_rgba_alpha_upscaled_with_bicubic(tmp_path, make_rgb, model_x2):
    rgb = to_float(make_rgb(10, 14, seed=1))
    alpha = to_float(make_rgb(10, 14, seed=2)[..., 0])
    out = upscale(model_x2, Image(rgb=rgb, alpha=alpha), 2)
    plain = upscale(model_x2, Image(rgb=rgb), 2)
    assert torch.equal(out.rgb, plain.rgb)  # alpha does not reach the network
    torch.testing.assert_close(out.alpha, imresize(alpha, size=(20, 28)).clamp(0, 1), atol=0, rtol=0)
    assert out.alpha.shape == (1, 20, 28)


def test_rgba_file_round_trip(capsys, tmp_path, make_rgb, test_weights):
    rgba = np.concatenate([make_rgb(10, 14, seed=1), make_rgb(10, 14, seed=2)[..., :1]], -1)
    PILImage.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    rc, err = _run(capsys, tmp_path / "a.png", tmp_path / "a_x2.png", "--weights", test_weights, "--quiet")
    assert rc == 0, err
    with PILImage.open(tmp_path / "a_x2.png") as im:
        assert im.mode == "RGBA" and im.size == (28, 20)


def test_folder_in_folder_out(capsys, tmp_path, make_rgb, write_png, test_weights):
    src = tmp_path / "imgs"
    write_png(src / "a.png", make_rgb(7, 9, seed=1))
    write_png(src / "b.bmp", make_rgb(5, 6, seed=2))
    (src / "readme.txt").write_text("not an image")
    dst = tmp_path / "ups"
    rc, err = _run(capsys, src, dst, "--weights", test_weights, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in dst.iterdir()) == ["a.png", "b.bmp"]
    assert PILImage.open(dst / "a.png").size == (18, 14) and PILImage.open(dst / "b.bmp").size == (12, 10)


def test_folder_with_a_bad_image_finishes_the_others(capsys, tmp_path, make_rgb, write_png, test_weights):
    src = tmp_path / "imgs"
    write_png(src / "a.png", make_rgb(6, 6))
    (src / "b.png").write_bytes(b"")
    write_png(src / "c.png", make_rgb(6, 7))
    dst = tmp_path / "ups"
    rc, err = _run(capsys, src, dst, "--weights", test_weights, "--quiet")
    assert rc == 2 and "b.png" in _error_line(err)
    assert "2 written, 1 failed: b.png" in err
    assert _stray(dst, {"a.png", "c.png"}) == [] and (dst / "c.png").is_file()


def test_folder_ignores_hidden_files_and_our_temp_leftovers(capsys, tmp_path, make_rgb, write_png, test_weights):
    src, dst = tmp_path / "imgs", tmp_path / "ups"
    write_png(src / "a.png", make_rgb(6, 6))
    write_png(src / ".hidden.png", make_rgb(6, 6))
    write_png(src / ".a.png.x1y2.tmp.png", make_rgb(6, 6))      # a killed run's temp file among inputs
    write_png(dst / ".a.png.k3j4.tmp.png", make_rgb(6, 6))      # and in the output folder
    write_png(dst / "keep.png", make_rgb(6, 6))
    rc, err = _run(capsys, src, dst, "--weights", test_weights, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in dst.iterdir()) == ["a.png", "keep.png"]
    assert (src / ".a.png.x1y2.tmp.png").is_file()              # inputs are never touched


def test_interrupt_is_one_line_exit_130_and_leaves_no_output(capsys, tmp_path, small_png, test_weights, monkeypatch):
    import compsrt.cli as cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "upscale", interrupted)
    rc, err = _run(capsys, small_png, tmp_path / "o.png", "--weights", test_weights, "--quiet")
    assert rc == 130 and err.count("\n") == 1 and "interrupted" in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("device", ["mps", "xpu", "meta", "cpu:1", "cuda:7", "nope"])
def test_unusable_devices_are_one_line(capsys, tmp_path, small_png, test_weights, device):
    rc, err = _run(capsys, small_png, tmp_path / "o.png", "--weights", test_weights, "--device", device)
    assert rc == 2 and "--device" in _error_line(err)


@pytest.mark.parametrize("tile", ["1", "7", "15"])
def test_tiles_smaller_than_two_windows_are_refused(capsys, tmp_path, small_png, test_weights, tile):
    rc, err = _run(capsys, small_png, tmp_path / "o.png", "--weights", test_weights, "--tile", tile,
                   "--tile-overlap", "0")
    assert rc == 2 and "at least 16" in _error_line(err)


def test_non_finite_weights_are_refused(capsys, tmp_path, small_png, state_dict_x2):
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in state_dict_x2.items()}
    sd["conv_first.weight"][0, 0, 0, 0] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    rc, err = _run(capsys, small_png, tmp_path / "o.png", "--weights", tmp_path / "nan.safetensors")
    assert rc == 2 and "NaN or Inf" in _error_line(err)


def test_pixel_limit_is_checked_before_decoding(capsys, tmp_path, test_weights):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"   # a 60000 x 60000 RGB header, a few hundred bytes
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    rc, err = _run(capsys, bomb, tmp_path / "o.png", "--weights", test_weights)
    assert rc == 2 and "--max-pixels" in _error_line(err)
    rc, err = _run(capsys, bomb, tmp_path / "o.png", "--weights", test_weights, "--max-pixels", "1000")
    assert rc == 2 and "over the 0.001 MP" in _error_line(err)


def test_exif_orientation_is_applied(tmp_path, make_rgb):
    from compsrt.io import load_image

    a = make_rgb(6, 10, seed=3)
    im = PILImage.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6          # "rotate 90 CW to view": a phone photo held upright
    im.save(tmp_path / "p.jpg", exif=exif, quality=100)
    img = load_image(tmp_path / "p.jpg")
    assert tuple(img.rgb.shape[1:]) == (10, 6)


# -- tiling ---------------------------------------------------------------------------------

def test_tile_boxes_cover_the_image():
    for h, w, tile, overlap in [(40, 50, 24, 8), (40, 50, 16, 0), (9, 100, 32, 4), (5, 5, 8, 2)]:
        cover = torch.zeros(h, w, dtype=torch.int32)
        for y, x, th, tw in tile_boxes(h, w, tile, overlap):
            assert 0 <= y and y + th <= h and 0 <= x and x + tw <= w and th <= tile and tw <= tile
            cover[y:y + th, x:x + tw] += 1
        assert (cover > 0).all()


def test_tile_covering_the_image_is_the_untiled_output(capsys, tmp_path, small_png, test_weights, model_x2):
    x = load_image(small_png).rgb[None]
    whole = upscale_tensor(model_x2, x, 2)
    for tile in (17, 64):  # tile >= both sides (12 x 17)
        assert torch.equal(upscale_tensor(model_x2, x, 2, tile=tile, overlap=8), whole)
    outs = []
    for extra in ([], ["--tile", "17", "--tile-overlap", "4"]):
        dst = tmp_path / f"o{len(extra)}.png"
        rc, err = _run(capsys, small_png, dst, "--weights", test_weights, "--quiet", *extra)
        assert rc == 0, err
        outs.append(dst.read_bytes())
    assert outs[0] == outs[1]


class _Nearest(nn.Module):
    """Pointwise x2 model: every tile sees what the whole image sees, so blending must be exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)


def _local_conv_model() -> nn.Module:
    """Shift-equivariant x2 model with a 2-pixel receptive radius: only seams can differ."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="replicate"), nn.GELU(),
                         nn.Conv2d(8, 12, 3, padding=1, padding_mode="replicate"), nn.PixelShuffle(2),
                         nn.Sigmoid()).eval()


@pytest.mark.parametrize("tile, overlap", [(24, 8), (16, 4), (16, 0), (7, 3)])
def test_tiled_blending_exact_for_a_pointwise_model(make_rgb, tile, overlap):
    x = to_float(make_rgb(40, 50, seed=5))[None]
    whole = upscale_tensor(_Nearest(), x, 2)
    torch.testing.assert_close(upscale_tensor(_Nearest(), x, 2, tile=tile, overlap=overlap), whole, atol=1e-6, rtol=0)


def test_tiled_blending_close_for_a_local_model(make_rgb):
    x = to_float(make_rgb(40, 50, seed=5))[None]
    model = _local_conv_model()
    whole = upscale_tensor(model, x, 2)
    db = {(t, o): _psnr_db(upscale_tensor(model, x, 2, tile=t, overlap=o), whole)
          for t, o in ((24, 8), (16, 4), (16, 0))}
    print("local conv model, tiled vs untiled PSNR (dB):", {k: round(v, 1) for k, v in db.items()})
    assert db[24, 8] > 70 and db[16, 4] > 65 and db[16, 0] > 50
    assert db[16, 4] > db[16, 0]  # the overlap ramps hide the seams


@pytest.mark.parametrize("tile, overlap", [(24, 8), (32, 8)])
def test_tiled_with_overlap_swinir_random_weights(make_rgb, model_x2, tile, overlap):
    # The test weights are random (golden) weights: their outputs swing over -3..4 before
    # clamping and depend on where the 8x8 window grid falls, which a tile moves. So tiled and
    # untiled differ far more than with trained weights (measured ~15-17 dB here, versus >= 50 dB
    # asked of trained weights in test_tiled_set14_matches_untiled_trained_weights); this is a
    # sanity floor on the full model path, the blending itself is checked on the models above.
    x = to_float(make_rgb(40, 50, seed=5))[None]
    whole = upscale_tensor(model_x2, x, 2)
    tiled = upscale_tensor(model_x2, x, 2, tile=tile, overlap=overlap)
    assert tiled.shape == whole.shape == (1, 3, 80, 100)
    assert 0 <= tiled.min() and tiled.max() <= 1
    db = _psnr_db(tiled, whole)
    print(f"SwinIR-light test weights, tile {tile} overlap {overlap}: tiled vs untiled PSNR {db:.2f} dB")
    assert math.isfinite(db) and db > 12


def test_overlap_must_be_below_tile(model_x2):
    with pytest.raises(ValueError, match="overlap"):
        upscale_tensor(model_x2, torch.rand(1, 3, 20, 20), 2, tile=8, overlap=8)


@pytest.mark.slow
def test_large_image_tiled_peak_rss_under_4gb(tmp_path, make_rgb, default_weights_x2):
    src = tmp_path / "big.png"
    PILImage.fromarray(make_rgb(2000, 3000, seed=9)).save(src)
    dst = tmp_path / "big_x2.png"
    code = ("import resource, sys; from compsrt.cli import main; "
            "rc = main(sys.argv[1:]); "
            "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(dst), "--scale", "2", "--tile", "256",
                           "--weights", str(default_weights_x2), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rss_kb = int(proc.stderr.split("maxrss_kb")[1].split()[0])
    print(f"peak RSS {rss_kb / 2 ** 20:.2f} GiB")
    assert rss_kb < 4 * 2 ** 20
    with PILImage.open(dst) as im:
        assert im.size == (6000, 4000)
    assert _stray(tmp_path, {"big.png", "big_x2.png"}) == []


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED_X2.is_file(), reason="compsrt/weights/swinir_light_x2.safetensors not present")
def test_tiled_set14_matches_untiled_trained_weights(benchmark_dir):
    from compsrt.model.weights import load_swinir

    model = load_swinir(BUNDLED_X2, 2)
    x = load_image(benchmark_dir / "Set14" / "LR_bicubic" / "X2" / "ppt3x2.png").rgb[None]  # 328 x 264: 4 tiles
    whole = upscale_tensor(model, x, 2)
    tiled = upscale_tensor(model, x, 2, tile=256, overlap=32)
    db = _psnr_db(to_float(to_uint(tiled[0]))[None], to_float(to_uint(whole[0]))[None])
    print(f"Set14 ppt3 x2, tile 256 overlap 32 vs untiled: {db:.2f} dB")
    assert db >= 50


# -- bundled models: --model, --list-models, the packed default --------------------------------

def test_list_models_names_every_bundled_file_with_its_size(capsys):
    from compsrt.load import bundled_models

    assert main(["--list-models"]) == 0
    out = capsys.readouterr().out
    for name, path in bundled_models().items():
        line = next(ln for ln in out.splitlines() if ln.split()[0] == name)
        assert f"{path.stat().st_size:,}" in line


def test_model_option_errors_are_one_line(capsys, small_png, tmp_path, test_weights):
    rc, err = _run(capsys, small_png, tmp_path / "o.png", "--model", "nope", "--quiet")
    assert rc == 2 and "not bundled" in _error_line(err)
    rc, err = _run(capsys, small_png, tmp_path / "o.png", "--model", "swinir_light_x2", "--weights", test_weights)
    assert rc == 2 and "pick one" in _error_line(err)
    assert not (tmp_path / "o.png").exists()


def test_default_swinir_model_is_the_bundled_packed_w4():
    from compsrt.load import bundled_dir, checkpoint_kind, default_infer_model

    assert default_infer_model(2, "mambairv2-light") is None
    path = default_infer_model(3, "swinir-light")
    if not (bundled_dir() / "swinir_light_x3_w4.safetensors").is_file():
        pytest.skip("swinir_light_x3_w4 is not bundled")
    assert path.name == "swinir_light_x3_w4.safetensors" and checkpoint_kind(path) == "compsrt-packed"


@pytest.mark.parametrize("name", ["swinir_light_x2", "swinir_light_x2_w2"])
def test_model_option_runs_a_bundled_model(capsys, small_png, tmp_path, name):
    from compsrt.load import bundled_models

    if name not in bundled_models():
        pytest.skip(f"{name} is not bundled")
    rc, err = _run(capsys, small_png, tmp_path / "o.png", "--model", name, "--quiet")
    assert rc == 0, err
    assert PILImage.open(tmp_path / "o.png").size == (34, 24)
