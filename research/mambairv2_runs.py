"""Issue 20's MambaIRv2-light table: calibrate, evaluate and tabulate the runs, resumably.

    python research/mambairv2_runs.py run [--only NAME ...] [--jobs 2] [--root runs/mamba]
    python research/mambairv2_runs.py table [--root runs/mamba] > docs/calib/mambairv2_table.md

``run`` calibrates each run of :data:`RUNS` (the quick CPU default, the bundled crops) into
``ROOT/NAME/`` and evaluates its packed ``model.safetensors`` on Set5/Set14/B100 into
``ROOT/NAME/eval.json`` (``python -m compsrt.eval --json``); a run whose eval.json exists is
skipped, a calibration that stopped resumes (``--resume``). ``--jobs 2`` runs two at a time, one
thread each. ``table`` prints the markdown table (PSNR/SSIM per set, packed bytes) beside the
paper's Table 12, and the per-image paired test of compsrt against 2dquant where both ran.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path("../shared/data/benchmark")
SETS = ("Set5", "Set14", "B100")
# name -> (scale, bits, method, layers), most wanted first
RUNS = {f"x{s}_w{b}_{m}_{layers}": (s, b, m, layers)
        for s, b, layers in ((2, 4, "official"), (2, 2, "official"), (4, 2, "official"), (2, 2, "full"),
                             (4, 4, "official"))
        for m in ("compsrt", "2dquant")}
PAPER = {(2, 2): (38.15, 33.90, 32.29), (4, 2): (32.25, 28.70, 27.62)}   # Table 12, W2 (Set5, Set14, B100)
FP = {2: (38.26, None, None), 4: (32.51, None, None)}                      # its FP Set5 row


def run_one(root: Path, name: str, bench: Path) -> str:
    scale, bits, method, layers = RUNS[name]
    out = root / name
    if (out / "eval.json").exists():
        return f"{name}: done"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if not (out / "model.safetensors").exists():
        cmd = [sys.executable, "-m", "compsrt.calib", "--arch", "mambairv2-light", "--scale", str(scale),
               "--bits", str(bits), "--method", method, "--layers", layers, "--out", str(out), "--no-recompute",
               "--quiet"]   # batch 2 without recompute: 4.3 GB here, and faster
        if (out / "calib_state.safetensors").exists():
            cmd.append("--resume")
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "compsrt.eval", "--arch", "mambairv2-light", "--scale", str(scale),
                    "--weights", str(out / "model.safetensors"), "--data", str(bench), "--sets", *SETS,
                    "--json", str(out / "eval.json"), "--quiet"], check=True, env=env, stdout=subprocess.DEVNULL)
    return f"{name}: calibrated and evaluated"


def _means(ev: dict) -> dict[str, tuple[float, float]]:
    return {s: (v["psnr_db"], v["ssim"]) for s, v in ev["results"].items()}


def table(root: Path) -> str:
    lines = ["| run | scale | bits | method | layers | bytes | " + " | ".join(f"{s} PSNR / SSIM" for s in SETS)
             + " | Table 12 (Set5 / Set14 / B100) |", "|---" * (7 + len(SETS)) + "|"]
    for name, (scale, bits, method, layers) in RUNS.items():
        ev_path = root / name / "eval.json"
        if not ev_path.exists():
            continue
        m = _means(json.loads(ev_path.read_text()))
        size = (root / name / "model.safetensors").stat().st_size
        paper = PAPER.get((scale, bits)) if method == "compsrt" and layers == "official" else None
        lines.append(f"| {name} | x{scale} | W{bits}A{bits} | {method} | {layers} | {size:,} | "
                     + " | ".join(f"{m[s][0]:.3f} / {m[s][1]:.4f}" if s in m else "-" for s in SETS)
                     + f" | {' / '.join(f'{v:.2f}' for v in paper) if paper else '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("run", "table"))
    p.add_argument("--root", type=Path, default=Path("runs/mamba"))
    p.add_argument("--bench", type=Path, default=BENCH)
    p.add_argument("--only", nargs="+", choices=list(RUNS))
    p.add_argument("--jobs", type=int, default=1)
    a = p.parse_args(argv)
    if a.what == "table":
        print(table(a.root))
        return 0
    names = a.only or list(RUNS)
    with ThreadPoolExecutor(a.jobs) as pool:
        for msg in pool.map(lambda n: run_one(a.root, n, a.bench), names):
            print(msg, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
