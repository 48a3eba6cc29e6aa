"""python -m compsrt.calib --exact-dc / --no-exact-dc and --row-mean: parsed, refused in one line
where they do not apply (exit 2), and recorded in the packed checkpoint and the report."""
from __future__ import annotations

import json

import pytest
import torch
from test_calibrate import fit_tiny_model, write_tiny_inputs

from compsrt.calib.__main__ import _parser, main
from compsrt.pack import pack_file
from compsrt.quant.compress import load_calibrated
from compsrt.quant.pack import read_packed
from compsrt.runtime import PackedLinear, load_packed


def _args(*argv: str):
    return _parser().parse_args(["--scale", "2", "--out", "o", *argv])


def test_the_flags_parse():
    assert _args().exact_dc is None and not _args().row_mean   # default: the method's own
    assert _args("--exact-dc").exact_dc is True and _args("--no-exact-dc").exact_dc is False
    assert _args("--row-mean").row_mean


@pytest.mark.parametrize("argv, name", [
    (["--method", "2dquant", "--no-exact-dc"], "--exact-dc/--no-exact-dc"),
    (["--method", "decomposition-only", "--exact-dc"], "--exact-dc/--no-exact-dc"),
    (["--official-rotation", "--no-exact-dc"], "--official-rotation"),
    (["--row-mean"], "--row-mean"),
    (["--method", "rotation-only", "--row-mean"], "--row-mean"),
])
def test_a_flag_of_the_other_kind_is_a_one_line_error(tmp_path, capsys, argv, name):
    assert main(["--scale", "2", "--out", str(tmp_path / "c"), *argv]) == 2
    err = capsys.readouterr().err
    assert name in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv, quant", [
    (["--method", "2dquant", "--row-mean"], {"rotation": "none", "row_mean": True}),
    (["--no-exact-dc"], {"rotation": "deploy", "exact_dc": False, "row_mean": False}),
])
def test_recorded_in_the_checkpoint_and_the_report(tmp_path, capsys, argv, quant):
    weights, data = write_tiny_inputs(tmp_path, fit_tiny_model(), 3)
    out = tmp_path / "c"
    assert main(["--scale", "2", "--bits", "3", "--weights", str(weights), "--data", str(data), "--val-images", "1",
                 "--iters", "1", "--batch", "1", "--calib-batch", "2", "--val-every", "1", "--out", str(out),
                 "--quiet", *argv]) == 0
    capsys.readouterr()
    header = read_packed(out / "model.safetensors").header
    report = json.loads((out / "report.json").read_text())
    for k, v in quant.items():
        assert header["quant"][k] == v and report["config"]["quant"][k] == v
    assert f'"row_mean": {json.dumps(quant["row_mean"])}' in (out / "report.md").read_text()
    assert " ".join(argv) in header["command"]
    rt = load_packed(out / "model.safetensors")
    lin = next(m for m in rt.modules() if isinstance(m, PackedLinear))
    assert lin.row_mean == quant["row_mean"] and bool(lin.dc) == quant.get("exact_dc", False)
    fake = load_calibrated(out / "calibrated.safetensors")   # the training form keeps them too
    assert all(getattr(fake.quant_cfg, k) == v for k, v in quant.items())
    pack_file(out / "calibrated.safetensors", tmp_path / "repacked.safetensors")   # python -m compsrt.pack
    assert (tmp_path / "repacked.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():   # fp16 FP parts: close, not equal
        assert (fake(x).clamp(0, 1) - rt(x).clamp(0, 1)).abs().max() < 0.02
