"""Seconds and peak memory of one finetuning step, with and without block recompute.

    python benchmarks/calib_step_memory.py [--batch 4] [--steps 3] [--rounds 2] [--method compsrt]
    python benchmarks/calib_step_memory.py --batch 16 --only on

Each measurement runs in its own process (peak resident memory is per process): the shipped
x2 weights compressed at 2 bits, bounds searched on the batch, then ``--steps`` timed steps
of calibrate()'s training step (``finetune_step_``: teacher forward, student forward + backward,
Adam, projection) on random 64x64 LR patches (the median step is reported: the first includes
warm-up). The modes alternate (off, on, off, on, ...) so that machine noise hits both; the
ratio of the medians is the figure to quote.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def dobi_student(method: str, x, recompute: bool = True, max_elems: int = 1 << 16):
    """The shipped x2 weights compressed at 2 bits by ``method``, bounds searched (DOBI) on the
    batch ``x``, on its device: the start every step benchmark here measures from."""
    import torch

    from compsrt.calib.methods import method_config
    from functools import partial

    from compsrt.calib.dobi import dobi
    from compsrt.quant.compress import compress_, set_calibrating
    from compsrt.load import load_model

    student = compress_(load_model(None, 2), method_config(method, 2)).eval().recompute_blocks(recompute).to(x.device)
    set_calibrating(student, partial(dobi, n=100, max_elems=max_elems, seed=0))
    with torch.no_grad():
        student(x)
    set_calibrating(student, None)
    return student


def one_run(batch: int, steps: int, method: str, recompute: bool, device: str = "cpu", profile: int = 0) -> dict:
    import torch

    from compsrt.calib.calibrate import quant_optimizer
    from compsrt.calib.step import finetune_step_
    from compsrt.config import CalibConfig
    from compsrt.load import load_model
    from compsrt.quant.qmodules import quantizers

    torch.manual_seed(0)
    dev = torch.device(device)
    fp = load_model(None, 2).eval().to(dev)
    x = torch.rand(batch, 3, 64, 64, device=dev)
    student = dobi_student(method, x, recompute)
    cfg = CalibConfig()
    opt, qs = quant_optimizer(student, cfg), quantizers(student)

    def step() -> None:
        finetune_step_(student, fp, x, opt, qs, cfg)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if profile:
        print_profile(step, profile, dev)
    if dev.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB
    return {"recompute": recompute, "s_per_step": statistics.median(times), "peak_gb": peak_gb}


def print_profile(step, steps: int, dev) -> None:
    """Where a step's time goes: the top operators by self time over ``steps`` steps (to stderr)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)
    print(f"profile of {steps} steps, sorted by {key}:\n{table}", file=sys.stderr)
    if dev.type == "cuda":
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60),
              file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--method", default="compsrt")
    p.add_argument("--device", default="cpu", help="cpu (peak: resident memory) or cuda (peak: allocated)")
    p.add_argument("--only", choices=("on", "off"),
                   help="measure one mode in this process (batch 16 without recompute needs over 24 GB)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="with --only: also profile STEPS more steps and print the top operators to stderr")
    a = p.parse_args()
    if a.only:
        print(json.dumps(one_run(a.batch, a.steps, a.method, a.only == "on", a.device, a.profile)))
        return
    rows = []
    for _ in range(a.rounds):
        for mode in ("off", "on"):
            cmd = [sys.executable, __file__, "--batch", str(a.batch), "--steps", str(a.steps), "--method", a.method,
                   "--device", a.device, "--only", mode]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"recompute {mode}: failed (exit {out.returncode}; killed for memory?)")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"recompute {mode:3s}: {r['s_per_step']:.2f} s/step, peak {r['peak_gb']:.2f} GB", flush=True)
    med = {m: statistics.median([r["s_per_step"] for r in rows if r["recompute"] == m]) for m in (False, True)
           if any(r["recompute"] == m for r in rows)}
    if len(med) == 2:
        print(f"batch {a.batch}, {a.method}: recompute costs x{med[True] / med[False]:.2f} time per step")


if __name__ == "__main__":
    main()
