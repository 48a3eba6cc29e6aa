"""Seconds per finetuning step, eager against replayed from a CUDA graph (GPU only).

    python benchmarks/calib_step_graph.py [--batch 16] [--steps 20] [--method compsrt]

The H100 lease of 2026-11-28 found the batch-16 step host-bound (0.57 s without recompute, the
GPU busy a fraction of it; docs/gpu_lease_2026-11-28.md). calibrate() now replays the step from
a CUDA graph where it can (compsrt/calib/graphed_step.py). This builds that graph for the shipped
x2 weights at 2 bits (DOBI on the batch, recompute off) and times whole steps (teacher forward,
student forward and backward, clipping, Adam, step guard) both ways, alternating rounds of
``--steps`` in one process: the ratio of the medians is the figure. If the graph cannot be built,
it prints why (the build's own check against the eager step included). On a machine without
CUDA it says so and exits.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--method", default="compsrt")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("calib_step_graph: needs a CUDA device (CUDA graphs); nothing measured", file=sys.stderr)
        return 0

    from calib_step_memory import dobi_student
    from compsrt.calib.calibrate import quant_optimizer
    from compsrt.calib.graphed_step import CudaGraph, GraphedStep
    from compsrt.calib.step import finetune_step_
    from compsrt.config import CalibConfig
    from compsrt.load import load_model
    from compsrt.quant.qmodules import quantizers

    torch.manual_seed(0)
    dev = torch.device("cuda")
    fp = load_model(None, 2).eval().to(dev)
    x = torch.rand(a.batch, 3, 64, 64, device=dev)
    student = dobi_student(a.method, x, recompute=False)
    cfg = CalibConfig(recompute=False)
    opt, qs = quant_optimizer(student, cfg), quantizers(student)
    graphed = GraphedStep(student, fp, opt, qs, cfg, x, CudaGraph())
    t0 = time.perf_counter()
    why = graphed.build(x)
    print(f"graph build (3 warm-up steps, capture, one checked replay): {time.perf_counter() - t0:.2f} s")
    if why:
        print(f"no graph: {why}")
        return 1

    def timed(step) -> list[float]:
        times = []
        for _ in range(a.steps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            step(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return times

    eager, graph = [], []
    for _ in range(a.rounds):
        eager += timed(lambda b: finetune_step_(student, fp, b, opt, qs, cfg))
        graph += timed(graphed.step)
    e, g = statistics.median(eager), statistics.median(graph)
    print(f"batch {a.batch}, {a.method}, median of {len(eager)} steps each: eager {e:.4f} s, graph {g:.4f} s "
          f"(x{e / g:.2f}); peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GB; "
          f"4000 iterations: eager {4000 * e / 60:.1f} min, graph {4000 * g / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
