"""Data-parallel calibration on this machine's CPU: the finetuning step of SwinIR-light x2 W4 (bundled
weights and calibration crops, 64 px patches, block recompute as the CPU default) with the global
batch in one process and split over 2 gloo ranks, and the all-reduce the step adds.

    python benchmarks/dist_scaling.py [--batch 2] [--steps 4] [--repeats 3] [--json out.json]

Three configurations, alternated ``--repeats`` times so that load from other jobs hits all alike:
``1 proc x 1 thread`` (batch B), ``1 proc x 2 threads`` (batch B, intra-op threads: the fair
one-process use of 2 cores) and ``2 ranks x 1 thread`` (B/2 each, the data-parallel step of
compsrt.calib.calibrate, torchrun's environment, gloo). Each run times ``--steps`` steps after one
warm-up step (the bounds come from a small DOBI: they change what is computed, not how much).
Prints medians and ranges over the repeats. Also times the step's all-reduce alone (1537 float32:
SwinIR-light's 1536 quantizer scalars and the loss) between 2 ranks. Used by docs/distributed.md.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(batch: int, steps: int, out: Path) -> None:
    import copy

    import numpy as np
    import torch

    from compsrt.calib.__main__ import bundled_calib_images
    from compsrt.calib.calibrate import data_parallel_step_, quant_optimizer, search_bounds_
    from compsrt.calib.step import finetune_step_
    from compsrt.config import CalibConfig, QuantConfig
    from compsrt.data import load_training_pairs, random_patches
    from compsrt.distributed import session
    from compsrt.load import load_model
    from compsrt.quant.compress import compress_
    from compsrt.quant.qmodules import quantizers

    cfg = CalibConfig(batch=batch, calib_batch=1, search_candidates=10, search_max_elems=1 << 12)
    fp = load_model(None, 2)
    pairs = load_training_pairs([bundled_calib_images()], 2, progress=False)
    with session(torch.device("cpu")) as dist:
        teacher = copy.deepcopy(fp).eval()
        student = compress_(copy.deepcopy(fp), QuantConfig(bits=4)).eval().recompute_blocks(cfg.recompute)
        search_bounds_(student, pairs, cfg, torch.device("cpu"))
        dist.broadcast_([p for q in quantizers(student) for p in (q.lower, q.upper, q.step_extra, q.zero_extra)], "b")
        opt, qs = quant_optimizer(student, cfg), quantizers(student)
        part = dist.batch_slice(batch)
        times, reduce_times = [], []
        for it in range(steps + 1):
            lr, _ = random_patches(pairs, np.random.default_rng([cfg.seed, it]), batch, cfg.patch, 2)
            x = torch.from_numpy(lr[part]).float().div_(255.0)
            dist.barrier("b")
            t0 = time.perf_counter()
            if dist.joined:
                data_parallel_step_(student, teacher, x, opt, qs, cfg, dist, (part.stop - part.start) / batch)
            else:
                finetune_step_(student, teacher, x, opt, qs, cfg)
            if it:
                times.append(time.perf_counter() - t0)
        if dist.joined:   # the all-reduce alone, on the step's vector size
            v = torch.zeros(len(opt.params) + 1)
            for _ in range(200):
                dist.barrier("b")
                t0 = time.perf_counter()
                dist.all_reduce_(v, "b")
                reduce_times.append(time.perf_counter() - t0)
        if dist.is_main:
            out.write_text(json.dumps({"step_s": times, "allreduce_s": reduce_times, "params": len(opt.params)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(kind: str, batch: int, steps: int, tmp: Path) -> dict:
    out = tmp / f"{kind}.json"
    cmd = [sys.executable, __file__, "--worker", str(batch), str(steps), str(out)]
    threads = "2" if kind == "1 proc x 2 threads" else "1"
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    base["OMP_NUM_THREADS"] = threads
    if kind != "2 ranks x 1 thread":
        subprocess.run(cmd, env=base, check=True)
    else:
        port = _free_port()
        procs = [subprocess.Popen(cmd, env={**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                            "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                            "LOCAL_WORLD_SIZE": "2"}) for r in range(2)]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"a rank failed ({p.returncode})")
    return json.loads(out.read_text())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    kinds = ("1 proc x 1 thread", "1 proc x 2 threads", "2 ranks x 1 thread")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeats):
            for k in kinds:
                runs[k].append(_run(k, a.batch, a.steps, Path(tmp)))
    summary = {"batch": a.batch, "steps": a.steps, "repeats": a.repeats, "load_average": os.getloadavg()}
    for k in kinds:
        per_run = [statistics.median(r["step_s"]) for r in runs[k]]
        summary[k] = {"median_step_s": statistics.median(per_run), "min": min(per_run), "max": max(per_run),
                      "per_run": per_run}
        print(f"{k:>20}: {statistics.median(per_run):.3f} s/step (runs {min(per_run):.3f}-{max(per_run):.3f})")
    red = [t for r in runs["2 ranks x 1 thread"] for t in r["allreduce_s"]]
    summary["allreduce"] = {"floats": runs["2 ranks x 1 thread"][0]["params"] + 1,
                            "median_s": statistics.median(red), "p90_s": sorted(red)[int(0.9 * len(red))]}
    print(f"all-reduce of {summary['allreduce']['floats']} float32 (gloo, 2 ranks): "
          f"median {summary['allreduce']['median_s'] * 1e6:.0f} us, p90 {summary['allreduce']['p90_s'] * 1e6:.0f} us")
    for k in kinds[1:]:
        print(f"speed-up of {k} over 1 proc x 1 thread: "
              f"{summary[kinds[0]]['median_step_s'] / summary[k]['median_step_s']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
