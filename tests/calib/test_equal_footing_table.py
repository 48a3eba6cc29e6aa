"""research/equal_footing.py (issue 26, item 4) on FABRICATED inputs: the run plan (16 runs, each
in its own folder, resumable) and the table maker. Every number below is made up for the test
(random PSNRs of fake images); none of it is a measurement and none of it belongs in docs."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ef():
    spec = importlib.util.spec_from_file_location("research_equal_footing", ROOT / "research" / "equal_footing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


FAKE_SETS = {"Set5": 5, "Set14": 3, "B100": 4}   # fake images per set


def fake_run(folder: Path, seed: int, offset: float, rng: np.random.Generator, weight_bits: float,
             act_bits: float, fidelity: float) -> dict:
    """Write a fabricated report.json / size.json / eval.json; returns the fake per-image PSNRs."""
    folder.mkdir(parents=True, exist_ok=True)
    psnr = {}
    results = {}
    for s, n in FAKE_SETS.items():
        imgs = []
        for i in range(n):
            p = 30.0 + i + offset + float(rng.normal(0, 0.05))
            psnr[(s, f"fake{i}")] = p
            imgs.append({"image": f"fake{i}", "psnr_db": p, "ssim": 0.9 + offset / 100, "seconds": 0.0})
        results[s] = {"psnr_db": float(np.mean([r["psnr_db"] for r in imgs])), "ssim": 0.9 + offset / 100,
                      "seconds_per_image": 0.0, "images": imgs}
    (folder / "eval.json").write_text(json.dumps({"weights": "FAKE", "arch": "swinir-light", "scale": 2,
                                                  "results": results}))
    eb = {"weights": {"overall": {"bits": weight_bits}}, "activations": {"overall": {"bits": act_bits}}}
    (folder / "size.json").write_text(json.dumps([{"file": "FAKE", "effective_bits": eb}]))
    (folder / "report.json").write_text(json.dumps({"calibration": {"best_fidelity_db": fidelity}}))
    (folder / "model.safetensors").write_bytes(b"FAKE")
    return psnr


def test_run_plan_is_sixteen_resumable_runs(ef, tmp_path):
    data = tmp_path / "bench"
    runs = ef.runs("swinir-light", 2, [4, 2], [0, 1])
    assert len(runs) == 16 and len({r.name for r in runs}) == 16
    steps = ef.pending_steps(runs[0], tmp_path, data, python="PY")
    assert [s[0][:3] for s in steps] == [["PY", "-m", "compsrt.calib"], ["PY", "-m", "compsrt.size"],
                                         ["PY", "-m", "compsrt.eval"]]
    calib = steps[0][0]
    assert calib[calib.index("--out") + 1] == str(tmp_path / runs[0].name) and "--resume" not in calib
    assert steps[1][1] == tmp_path / runs[0].name / "size.json"
    by_variant = {r.variant: ef.pending_steps(r, tmp_path, data)[0][0] for r in runs if r.bits == 2 and r.seed == 1}
    assert "--no-exact-dc" in by_variant["compsrt-nodc"] and "--exact-dc" in by_variant["compsrt-dc"]
    assert "--row-mean" in by_variant["2dquant-rowmean"] and "--row-mean" not in by_variant["2dquant"]
    assert all(c[c.index("--seed") + 1] == "1" and c[c.index("--bits") + 1] == "2" for c in by_variant.values())
    d = tmp_path / runs[0].name
    d.mkdir()
    (d / "calib_state.safetensors").write_bytes(b"FAKE")   # an interrupted calibration is resumed
    assert "--resume" in ef.pending_steps(runs[0], tmp_path, data)[0][0]
    fake_run(d, 0, 0.0, np.random.default_rng(0), 4.0, 4.0, 40.0)   # a finished run: nothing left
    assert ef.pending_steps(runs[0], tmp_path, data) == []
    mamba = ef.runs("mambairv2-light", 2, [2], [0])[0]
    assert "--arch" in ef.pending_steps(mamba, tmp_path, data)[0][0] and mamba.name.startswith("mambairv2-light_")


def test_commands_and_run_refuse_a_missing_benchmark_in_one_line(ef, tmp_path, capsys):
    assert ef.main(["commands", "--out", str(tmp_path), "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and err.count("\n") == 1
    (tmp_path / "bench").mkdir()
    assert ef.main(["commands", "--out", str(tmp_path / "o"), "--data", str(tmp_path / "bench")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 16 * 3
    # --variants splits the runs between processes: disjoint folders
    assert ef.main(["commands", "--out", str(tmp_path / "o"), "--data", str(tmp_path / "bench"), "--bits", "2",
                    "--seeds", "1", "--variants", "2dquant", "2dquant-rowmean"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2 * 3 and "--row-mean" in out and "compsrt-" not in out


def test_table_from_fabricated_runs(ef, tmp_path, capsys):
    rng = np.random.default_rng(7)
    offsets = {"compsrt-dc": 0.30, "compsrt-nodc": -0.20, "2dquant-rowmean": 0.10, "2dquant": 0.0}
    fake = {}
    for v, off in offsets.items():
        for seed in (0, 1):
            name = ef.Run("swinir-light", 2, 4, v, seed).name
            fake[(v, seed)] = fake_run(tmp_path / name, seed, off + 0.01 * seed, rng, 4.5 if "dc" in v else 4.0,
                                       5.1, 40.0 + seed)
    # W2: only compsrt-dc seed 0 finished; the others pending
    fake_run(tmp_path / ef.Run("swinir-light", 2, 2, "compsrt-dc", 0).name, 0, 0.0, rng, 2.5, 3.0, 33.0)
    md = tmp_path / "t.md"
    assert ef.main(["table", "--out", str(tmp_path), "--md", str(md)]) == 0
    text = capsys.readouterr().out
    assert md.read_text() == text
    first, second = text.split("Per image")
    rows = {line.split(" | ")[1]: line for line in first.splitlines() if line.startswith("| W4A4 | ")}
    assert len(rows) == 4
    # the per-set mean over both seeds and its half range
    set5 = [np.mean([p for (s, _), p in fake[("compsrt-dc", seed)].items() if s == "Set5"]) for seed in (0, 1)]
    want = f"{np.mean(set5):.3f} ±{abs(set5[1] - set5[0]) / 2:.3f}"
    assert want in rows["compsrt, exact DC"]
    assert "| 4.500 | 5.100 | 40.50 ±0.50 |" in rows["compsrt, exact DC"]
    assert "| W2A2 | compsrt, exact DC | 0 | 2.500 | 3.000 | 33.00 |" in text
    assert "| W2A2 | 2dquant | - |" in text   # pending runs are shown as such
    # the paired test: per image the mean over seeds, A - B, Wilcoxon over all 12 fake images
    pair_rows = [line for line in second.splitlines() if line.startswith("| W4A4 | compsrt")]
    assert len(pair_rows) == 3 and "| W2A2 |" not in second   # W2 has no pair with both sides finished
    for line, (va, vb, _) in zip(pair_rows, ef.PAIRS):
        keys = sorted(fake[(va, 0)])
        d = np.array([np.mean([fake[(va, s)][k] for s in (0, 1)]) - np.mean([fake[(vb, s)][k] for s in (0, 1)])
                      for k in keys])
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == ef.VARIANTS[va][0] and cells[2] == ef.VARIANTS[vb][0]
        assert cells[-3] == f"{d.mean():+.3f}"
        assert cells[-2] == f"{int((d > 0).sum())}/{len(d)}"
        p = wilcoxon(d).pvalue   # two-sided, scipy's defaults
        assert cells[-1] == (f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}")
        set14 = np.array([x for k, x in zip(keys, d) if k[0] == "Set14"])
        assert cells[5] == f"{set14.mean():+.3f}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_fill_refreshes_only_the_marked_tables(ef, tmp_path, capsys):
    rng = np.random.default_rng(3)
    fake_run(tmp_path / ef.Run("swinir-light", 2, 2, "compsrt-dc", 0).name, 0, 0.0, rng, 2.5, 3.0, 33.0)
    md = tmp_path / "doc.md"
    md.write_text("# Title\n\nprose before\n\n<!-- table: --bits 2 --seeds 0 -->\nSTALE TABLE\n<!-- /table -->\n\n"
                  "prose after\n")
    assert ef.main(["fill", "--out", str(tmp_path), "--md", str(md)]) == 0
    text = md.read_text()
    assert "STALE" not in text and text.startswith("# Title\n\nprose before\n\n<!-- table: --bits 2 --seeds 0 -->\n")
    assert text.endswith("<!-- /table -->\n\nprose after\n")
    assert "| W2A2 | compsrt, exact DC | 0 | 2.500 | 3.000 | 33.00 |" in text and "W4A4" not in text
    assert ef.main(["fill", "--out", str(tmp_path), "--md", str(tmp_path / "missing.md")]) == 2
    assert "missing.md" in capsys.readouterr().err
