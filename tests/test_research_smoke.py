"""Every diagnostic in research/ runs, on the tiny SwinIR-light of tests/calib/test_calibrate.py,
so that none of them rots while the product moves (each a few seconds).

They are run in this process through their ``main(argv)``; what they print is checked only for
its shape: the numbers are for the notes in docs/, not for tests.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "calib"))
from test_calibrate import TINY, fit_tiny_model, quantized, smooth_images, tiny_batch, write_tiny_inputs  # noqa: E402

from compsrt.calib.methods import method_config  # noqa: E402
from compsrt.errors import CompsrtError  # noqa: E402
from compsrt.model.swinir import SwinIRLight  # noqa: E402
from compsrt.quant.compress import save_calibrated  # noqa: E402


def research(name: str):
    """research/<name>.py as a module (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"research_{name}", ROOT / "research" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """The tiny model's weights, five training images (LR 80 px: the quick default's 64 px
    patches fit), a one-set benchmark folder and two calibrated 2-bit checkpoints."""
    root = tmp_path_factory.mktemp("research")
    fp = fit_tiny_model()
    weights, data = write_tiny_inputs(root, fp, 5)
    bench = root / "bench" / "Tiny" / "HR"
    bench.mkdir(parents=True)
    for i, p in enumerate(smooth_images(2, 48, 11)):
        Image.fromarray(p.hr).save(bench / f"b{i}.png")
    ckpts = []
    for method in ("compsrt", "2dquant"):
        ckpts.append(root / f"{method}.safetensors")
        save_calibrated(quantized(copy.deepcopy(fp), method_config(method, 2), tiny_batch()), ckpts[-1])
    return {"weights": weights, "data": data, "bench": root / "bench", "ckpts": ckpts}


def start_argv(tiny, what: str, *more: str) -> list[str]:
    return [what, *more, "--weights", str(tiny["weights"]), "--data", str(tiny["data"])]


@pytest.mark.parametrize("what, more, expect", [
    ("dobi-error", ["--methods", "2dquant", "compsrt"], "error energy"),
    ("linesearch", ["--methods", "compsrt", "--batches", "1"], "sign step of 0.2"),
    ("grad-snr", ["--methods", "compsrt", "--batches", "2"], "|mean| / std"),
    ("attribution", ["--methods", "compsrt"], "fc2 input (post-GELU) at 8 bits"),
    ("train-group", ["--methods", "compsrt", "--iters", "2"], "training weights: fidelity"),
    ("ln-shift", ["--methods", "compsrt", "--iters", "2"], "centred:"),
    ("weight-shape", [], "quantized weights: kurtosis"),
])
def test_calib_start_diagnostics_on_training_data(tiny, capsys, what, more, expect):
    threads = torch.get_num_threads()
    research("calib_start_diagnostics").main(start_argv(tiny, what, "--bits", "2", *more))
    assert expect in capsys.readouterr().out
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("what, n, more, expect", [
    ("rescore", 2, ["--patches", "2"], "held-out patches, PSNR vs HR"),
    ("group-off", 1, ["--bench", "BENCH", "--set", "Tiny", "--clip"], "linear inputs clipped only"),
    ("clip-channels", 2, ["--bench", "BENCH", "--set", "Tiny"], "top-3 share"),
    ("widen", 2, ["--bench", "BENCH", "--set", "Tiny", "--alphas", "1", "1.2"], "x1.2: PSNR"),
])
def test_calib_start_diagnostics_on_checkpoints(tiny, capsys, what, n, more, expect):
    more = [str(tiny["bench"]) if m == "BENCH" else m for m in more]
    ckpts = tiny["ckpts"][:n]
    research("calib_start_diagnostics").main(start_argv(tiny, what, *map(str, ckpts), *more))
    out = capsys.readouterr().out
    assert expect in out and all(str(c) in out for c in ckpts)


def test_every_group_of_calib_start_diagnostics_names_quantizers():
    """The groups go by module name: a renamed module must not leave one empty (it once did)."""
    from compsrt.quant.compress import compress_

    diag = research("calib_start_diagnostics")
    model = compress_(SwinIRLight(TINY), method_config("compsrt", 2))
    sizes = {g: len(diag._group(model, g)) for g in diag.GROUPS}
    assert all(sizes.values()), sizes
    assert sum(sizes[g] for g in diag.TRAIN_GROUPS) == len(diag._group(model, None))   # a partition


def test_calib_start_diagnostics_asks_for_the_benchmark_folder(tiny, capsys):
    with pytest.raises(SystemExit):
        research("calib_start_diagnostics").main(start_argv(tiny, "widen", str(tiny["ckpts"][0])))
    assert "--bench" in capsys.readouterr().err


def test_calib_unclamped_codes(tiny, tmp_path, capsys):
    argv = ["--weights", str(tiny["weights"]), "--data", str(tiny["data"]), "--iters", "3", "--batch", "1",
            "--calib-batch", "2", "--patch", "16", "--val-every", "1", "--val-patches", "1", "--val-images", "1",
            "--eval-data", str(tiny["bench"]), "--sets", "Tiny", "--out", str(tmp_path / "c"), "--quiet"]
    assert research("calib_unclamped_codes").main(argv) == 0
    out = capsys.readouterr().out
    assert "codes unclamped: 32 quantizers" in out and "| Tiny |" in out
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["levels"]["median_levels"] >= 4 and report["calibration"]["iters_done"] == 3
    assert (tmp_path / "c" / "calibrated.safetensors").is_file()
    # The state beside it resumes: the same command continues (nothing left), other options are refused.
    assert (tmp_path / "c" / "calib_state.safetensors").is_file()
    assert research("calib_unclamped_codes").main(argv) == 0
    assert json.loads((tmp_path / "c" / "report.json").read_text())["calibration"]["iters_done"] == 3
    with pytest.raises(CompsrtError, match="different settings.*identity.method"):
        research("calib_unclamped_codes").main(argv + ["--method", "2dquant"])


def test_calib_tiny_rates(capsys):
    research("calib_tiny_rates").main(["--steps", "3", "--methods", "tuning-only"])
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2 and all("best of last 5" in r for r in rows)


def test_fake_quant_backward(capsys):
    research("fake_quant_backward").main(["--scale", "0.002", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| where(mask, g, 0) |" in out and "| fc2 input (8192, 128) |" in out


def test_mambairv2_runs_table(tmp_path, capsys):
    """research/mambairv2_runs.py: its run list and the table it makes from eval JSONs (fabricated
    figures here, only the shape is checked: a compsrt/2dquant pair gives a paired-test row)."""
    mod = research("mambairv2_runs")
    assert "x2_w4_compsrt_official" in mod.RUNS and "x2_w2_2dquant_full" in mod.RUNS
    for name, bump in (("x2_w2_compsrt_official", 0.1), ("x2_w2_2dquant_official", 0.0)):
        out = tmp_path / name
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"0" * 10)
        results = {s: {"psnr_db": 30 + bump, "ssim": 0.9, "images": [
            {"image": f"{i}.png", "psnr_db": 30 + bump + i / 10, "ssim": 0.9} for i in range(4)]} for s in mod.SETS}
        (out / "eval.json").write_text(json.dumps({"results": results}))
    unc = tmp_path / "x2_w2_compsrt_official_unclamped"   # the unclamped-codes diagnostic's report
    unc.mkdir()
    (unc / "report.json").write_text(json.dumps({"levels": {
        "median_levels": 6, "max_levels": 9, "mean_log2_levels": 2.5,
        "eval": {s: {"psnr_db": 31.0, "ssim": 0.91} for s in mod.SETS}}}))
    assert mod.main(["table", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| x2_w2_compsrt_official | x2 | W2A2 | compsrt | official | 10 | 30.100 / 0.9000" in out
    assert "| 31.000 / 31.000 / 31.000; median 6, max 9, mean 2.50 bits | 38.15 / 33.90 / 32.29 |" in out
    assert "| x2 W2 official | 12 | +0.100 | 12 |" in out


def test_mambairv2_runs_failure_stops_none(tmp_path, capsys, monkeypatch):
    """research/mambairv2_runs.py run: a failed run is named at the end with exit 1, the others still run."""
    import subprocess

    mod = research("mambairv2_runs")
    done = []

    def fake_run_one(root, name, bench):
        if name == "x2_w4_compsrt_official":
            raise subprocess.CalledProcessError(3, ["python", "-m", "compsrt.calib", "--arch"])
        done.append(name)
        return f"{name}: calibrated and evaluated"

    monkeypatch.setattr(mod, "run_one", fake_run_one)
    names = ["x2_w4_compsrt_official", "x2_w4_2dquant_official", "x2_w2_compsrt_official"]
    assert mod.main(["run", "--bench", str(tmp_path), "--only", *names, "--jobs", "2"]) == 1
    cap = capsys.readouterr()
    assert sorted(done) == sorted(names[1:])
    assert "x2_w4_compsrt_official: failed (exit 3" in cap.out
    assert "failed: x2_w4_compsrt_official" in cap.err


def test_mambairv2_site_cost(tmp_path, capsys):
    """research/mambairv2_site_cost.py on a tiny calibrated MambaIRv2-light: one row per group,
    each group releasing at least one quantizer of the official set."""
    from compsrt.model.mambairv2 import MambaIRv2Config, MambaIRv2Light
    from compsrt.model.weights import save_state_dict
    from compsrt.quant.compress import compress_

    torch.manual_seed(0)
    fp = MambaIRv2Light(MambaIRv2Config(scale=2, embed_dim=12, d_state=4, depths=(2,), num_heads=(2,),
                                        window_size=4, inner_rank=8, num_tokens=8)).eval()
    save_state_dict(fp, tmp_path / "fp.safetensors")
    save_calibrated(compress_(copy.deepcopy(fp), method_config("compsrt", 4)), tmp_path / "c.safetensors")
    data = tmp_path / "train"
    data.mkdir()
    for i, p in enumerate(smooth_images(2, 24, 5)):
        Image.fromarray(p.hr).save(data / f"t{i}.png")
    research("mambairv2_site_cost").main([str(tmp_path / "c.safetensors"), "--data", str(data), "--images", "2",
                                          "--lr-size", "8", "--weights", str(tmp_path / "fp.safetensors")])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r][1:]
    mod = research("mambairv2_site_cost")
    assert [r.split(" | ")[0][2:] for r in rows] == ["nothing", *mod.GROUPS]
    assert all(int(r.split(" | ")[1]) > 0 for r in rows[1:])


def test_row_mean_sites(tiny, capsys):
    """research/row_mean_sites.py on the tiny model: per bit width, one row per group, each group
    holding at least one quantizer."""
    mod = research("row_mean_sites")
    mod.main(["--data", str(tiny["data"]), "--images", "2", "--lr-size", "16", "--bits", "2",
              "--weights", str(tiny["weights"]), "--calib-data", str(tiny["data"]), "--probe-block", "0", "1"])
    out = capsys.readouterr().out
    rows = [r for r in out.splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert "W2A2: row mean nowhere" in out
    assert [r.split(" | ")[0][2:] for r in rows[:len(mod.GROUPS)]] == list(mod.GROUPS)
    assert all(int(r.split(" | ")[1]) > 0 for r in rows[:len(mod.GROUPS)])
    assert "probe: layers.0 block 1" in out and "| W2 | p - row mean (two-sided) |" in out
