"""python -m compsrt.eval: a markdown table on stdout, per-image JSON, one-line errors."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from compsrt.data import load_benchmark
from compsrt.eval import evaluate, main, markdown_table
from compsrt.io import to_float, to_uint
from compsrt.metrics import psnr, ssim


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("compsrt.eval: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_eval_main_table_and_json(capsys, tmp_path, tiny_benchmark, test_weights, model_x2):
    out_json = tmp_path / "res" / "eval.json"
    rc = main(["--weights", str(test_weights), "--scale", "2", "--data", str(tiny_benchmark), "--sets", "Tiny",
               "--json", str(out_json), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert lines[0] == "| model | set | PSNR (dB) | SSIM | s/image |" and lines[1] == "|---|---|---|---|---|"
    assert len(lines) == 3 and lines[2].startswith(f"| {test_weights.name} | Tiny | ")
    data = json.loads(out_json.read_text())
    assert data["scale"] == 2 and data["arch"] == "swinir-light"
    res = data["results"]["Tiny"]
    rows = res["images"]
    assert [r["image"] for r in rows] == ["a", "b"]
    # Each row is the official protocol: uint8 output, Y channel, crop_border = scale.
    with torch.no_grad():
        for row, pair in zip(rows, load_benchmark(tiny_benchmark, "Tiny", 2)):
            sr = to_uint(model_x2(to_float(pair.lr)[None])[0])
            assert row["psnr_db"] == pytest.approx(psnr(sr, pair.hr, crop_border=2), abs=1e-9)
            assert row["ssim"] == pytest.approx(ssim(sr, pair.hr, crop_border=2), abs=1e-9)
            assert math.isfinite(row["psnr_db"]) and row["seconds"] > 0
    assert res["psnr_db"] == pytest.approx(np.mean([r["psnr_db"] for r in rows]))
    assert f"{res['psnr_db']:.3f}" in lines[2] and f"{res['ssim']:.4f}" in lines[2]
    assert [p.name for p in out_json.parent.iterdir()] == ["eval.json"]  # atomic: no temp left


def test_eval_limit_and_several_sets(tmp_path, tiny_benchmark, model_x2):
    for name in ("Tiny", "Tiny2"):
        shutil.copytree(tiny_benchmark / "Tiny", tmp_path / name)
    res = evaluate(model_x2, tmp_path, ["Tiny", "Tiny2"], 2, progress=False, limit=1)
    assert list(res) == ["Tiny", "Tiny2"]
    assert [len(r["images"]) for r in res.values()] == [1, 1]
    assert res["Tiny"]["psnr_db"] == res["Tiny2"]["psnr_db"]
    table = markdown_table(res, "m")
    assert table.count("\n") == 3 and "| m | Tiny2 |" in table


@pytest.mark.parametrize("case, expected", [("missing_data", "not a folder"), ("missing_set", "missing"),
                                            ("missing_weights", "weights file not found"),
                                            ("wrong_scale", "x2 weights but --scale 3")])
def test_eval_user_mistakes_exit_2(capsys, tmp_path, tiny_benchmark, test_weights, case, expected):
    data, sets, weights, scale = tiny_benchmark, ["Tiny"], test_weights, "2"
    if case == "missing_data":
        data = tmp_path / "no_such_folder"
    elif case == "missing_set":
        sets = ["Set5"]
    elif case == "missing_weights":
        weights = tmp_path / "w.safetensors"
    else:
        scale = "3"
    out_json = tmp_path / "e.json"
    rc = main(["--weights", str(weights), "--scale", scale, "--data", str(data), "--sets", *sets,
               "--json", str(out_json), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    assert expected in _error_line(cap.err)
    assert not out_json.exists()
