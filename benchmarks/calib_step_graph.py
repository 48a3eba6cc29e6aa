"""Probe (GPU only): how fast would a finetuning step be without its host cost?

    python benchmarks/calib_step_graph.py [--batch 16] [--steps 20] [--method compsrt]

The H100 lease of 2026-11-28 found the batch-16 step host-bound (0.57 s, of which the GPU is busy
a fraction; docs/gpu_lease_2026-11-28.md). This captures the step's forward and backward
(teacher forward, student forward, L1 loss, backward into the quantizer scalars) in one CUDA
graph and times its replays against the same work run eagerly, side by side in one process.
The optimizer update is left out of the graph (ScalarAdam keeps its step count on the host),
so the ratio is an upper bound of what graph capture of the whole step could give; a failed
capture prints why, which is the other thing this probe is for. Nothing here is used by
calibrate(); on a machine without CUDA it says so and exits.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> int:
    import torch
    import torch.nn.functional as F

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--method", default="compsrt")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("calib_step_graph: needs a CUDA device (CUDA graphs); nothing measured", file=sys.stderr)
        return 0

    from calib_step_memory import dobi_student
    from compsrt.model.compress import quant_parameters
    from compsrt.model.load import load_model

    torch.manual_seed(0)
    dev = torch.device("cuda")
    fp = load_model(None, 2).eval().to(dev)
    x = torch.rand(a.batch, 3, 64, 64, device=dev)
    student = dobi_student(a.method, x, recompute=False)
    params = quant_parameters(student)

    def fwd_bwd() -> torch.Tensor:
        with torch.no_grad():
            target = fp(x)
        loss = F.l1_loss(student(x), target)
        loss.backward()
        return loss

    def timed(fn) -> float:
        times = []
        for _ in range(a.steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    for prm in params:
        prm.grad = None
    eager = timed(fwd_bwd)
    print(f"eager forward + backward, batch {a.batch}: {eager:.4f} s (median of {a.steps})")

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):   # warm-up on a side stream, as capture requires (Triton compiles here)
        for _ in range(3):
            for prm in params:
                prm.grad = None
            fwd_bwd()
    torch.cuda.current_stream().wait_stream(side)
    for prm in params:
        prm.grad = None
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static_loss = fwd_bwd()
    except Exception as e:  # the finding, not a crash: what stops capture today
        print(f"capture failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return 1
    replay = timed(graph.replay)
    fresh = torch.stack([prm.grad for prm in params]).clone()
    for prm in params:
        prm.grad = None
    ref = fwd_bwd()
    same = torch.allclose(torch.stack([prm.grad for prm in params]), fresh, rtol=1e-3, atol=1e-6)
    print(f"graph replay of the same work: {replay:.4f} s (x{eager / replay:.2f} faster); loss "
          f"{static_loss.item():.6f} vs eager {ref.item():.6f}, gradients {'match' if same else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
