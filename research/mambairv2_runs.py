"""Issue 20's MambaIRv2-light table: calibrate, evaluate and tabulate the runs, resumably.

    python research/mambairv2_runs.py run --bench BENCH [--only NAME ...] [--jobs 2] [--root runs/mamba]
    python research/mambairv2_runs.py table [--root runs/mamba] > docs/calib/mambairv2_table.md

``run`` calibrates each run of :data:`RUNS` (the quick CPU default, the bundled crops) into
``ROOT/NAME/`` and evaluates its packed ``model.safetensors`` on Set5/Set14/B100 into
``ROOT/NAME/eval.json`` (``python -m compsrt.eval --json``); a run whose eval.json exists is
skipped, a calibration that stopped resumes (``--resume``). ``--jobs 2`` runs two at a time, one
thread each; a failed run is named at the end (exit 1) and stops none of the others. ``table``
prints the markdown table (PSNR/SSIM per set, packed bytes) beside the
paper's Table 12, and the per-image paired test of compsrt against 2dquant where both ran.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

SETS = ("Set5", "Set14", "B100")
# name -> (scale, bits, method, layers), most wanted first
RUNS = {f"x{s}_w{b}_{m}_{layers}": (s, b, m, layers)
        for s, b, layers in ((2, 4, "official"), (2, 2, "official"), (4, 2, "official"), (2, 2, "full"),
                             (4, 4, "official"))
        for m in ("compsrt", "2dquant")}
PAPER = {(2, 2): (38.15, 33.90, 32.29), (4, 2): (32.25, 28.70, 27.62)}   # Table 12, W2 (Set5, Set14, B100)
FP = {2: (38.26, None, None), 4: (32.51, None, None)}                      # its FP Set5 row


def run_unclamped(root: Path, name: str, bench: Path) -> str:
    """The same calibration with the official code's unclamped codes (research/calib_unclamped_codes.py),
    evaluated in fake quantization with them: how much of a W2 row comes from the extra levels."""
    scale, bits, method, layers = RUNS[name]
    out = root / f"{name}_unclamped"
    if (out / "report.json").exists():
        return f"{name}_unclamped: done"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, str(Path(__file__).with_name("calib_unclamped_codes.py")), "--arch",
                    "mambairv2-light", "--scale", str(scale), "--bits", str(bits), "--method", method, "--layers",
                    layers, "--out", str(out), "--eval-data", str(bench), "--sets", *SETS, "--quiet"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return f"{name}_unclamped: calibrated and evaluated"


def run_one(root: Path, name: str, bench: Path) -> str:
    if name.endswith("_unclamped"):
        return run_unclamped(root, name.removesuffix("_unclamped"), bench)
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
    from compsrt.analysis.paired import fmt_dz, fmt_p, paired
    from compsrt.analysis.significance import per_image

    lines = ["| run | scale | bits | method | layers | bytes | " + " | ".join(f"{s} PSNR / SSIM" for s in SETS)
             + " | unclamped codes: PSNR (Set5 / Set14 / B100); levels | Table 12 (Set5 / Set14 / B100) |",
             "|---" * (8 + len(SETS)) + "|"]
    for name, (scale, bits, method, layers) in RUNS.items():
        ev_path = root / name / "eval.json"
        if not ev_path.exists():
            continue
        m = _means(json.loads(ev_path.read_text()))
        size = (root / name / "model.safetensors").stat().st_size
        paper = PAPER.get((scale, bits)) if method == "compsrt" and layers == "official" else None
        unc = root / f"{name}_unclamped" / "report.json"
        lv = json.loads(unc.read_text())["levels"] if unc.exists() else {}
        unc_ev = lv.get("eval", {})
        unclamped = " / ".join(f"{unc_ev[k]['psnr_db']:.3f}" for k in SETS if k in unc_ev) or "-"
        if lv:   # how many levels the unclamped quantizers span (a b-bit code holds 2^b)
            unclamped += (f"; median {lv['median_levels']:g}, max {lv['max_levels']}, mean "
                          f"{lv['mean_log2_levels']:.2f} bits")
        lines.append(f"| {name} | x{scale} | W{bits}A{bits} | {method} | {layers} | {size:,} | "
                     + " | ".join(f"{m[k][0]:.3f} / {m[k][1]:.4f}" if k in m else "-" for k in SETS)
                     + f" | {unclamped} | {' / '.join(f'{v:.2f}' for v in paper) if paper else '-'} |")
    lines += ["", "Per-image paired test of compsrt against 2dquant (PSNR, all images of the three sets; "
              "compsrt.analysis.paired: Wilcoxon two-sided, d_z, images where compsrt is ahead):", "",
              "| pair | images | mean diff (dB) | compsrt ahead | Wilcoxon p (two-sided) | d_z |", "|---|---|---|---|---|---|"]
    for name, (scale, bits, method, layers) in RUNS.items():
        other = root / name.replace("compsrt", "2dquant") / "eval.json"
        mine = root / name / "eval.json"
        if method != "compsrt" or not (mine.exists() and other.exists()):
            continue
        a, b = (per_image(json.loads(f.read_text())) for f in (mine, other))
        keys = sorted(a.keys() & b.keys())
        r = paired([a[k] - b[k] for k in keys])
        lines.append(f"| x{scale} W{bits} {layers} | {r.n} | {r.mean:+.3f} | {r.ahead} | {fmt_p(r.p_two)} | {fmt_dz(r.dz)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("run", "table"))
    p.add_argument("--root", type=Path, default=Path("runs/mamba"))
    p.add_argument("--bench", type=Path, help="benchmark folder (<Set>/HR, <Set>/LR_bicubic/X<s>); needed by run")
    p.add_argument("--only", nargs="+", choices=list(RUNS) + [f"{n}_unclamped" for n in RUNS if RUNS[n][1] == 2],
                   help="runs to do (NAME_unclamped: the unclamped-codes diagnostic of a W2 run)")
    p.add_argument("--jobs", type=int, default=1)
    a = p.parse_args(argv)
    if a.what == "table":
        print(table(a.root))
        return 0
    if a.bench is None or not a.bench.is_dir():
        p.error("run needs --bench, a benchmark folder holding Set5, Set14 and B100")
    names = a.only or list(RUNS)
    failed = []
    with ThreadPoolExecutor(a.jobs) as pool:   # the runs are independent: one failing stops none of the others
        futures = {pool.submit(run_one, a.root, n, a.bench): n for n in names}
        for fut in as_completed(futures):
            try:
                print(fut.result(), flush=True)
            except subprocess.CalledProcessError as e:
                failed.append(futures[fut])
                print(f"{futures[fut]}: failed (exit {e.returncode}: {' '.join(map(str, e.cmd[1:4]))} ...)", flush=True)
    if failed:
        print(f"failed: {' '.join(failed)} (run the same command again to resume them)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
