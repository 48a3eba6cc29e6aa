"""Host time of a finetuning step's bookkeeping, per-quantizer against batched, side by side.

    python benchmarks/calib_step_bookkeeping.py [--device cpu] [--repeats 50]

The x2 model compressed at 2 bits (384 quantizers, 1536 trainable scalars) with random gradients.
"per quantizer" is what calibrate() did until 2026-11-28: torch.optim.Adam with a group per
rate (768 groups), ``Quantizer.project_`` one by one, a clone of every scalar as the last good
state (it also walked the model's state dict for them, not counted here). "batched" is what it
does now: ScalarAdam, ``project_quantizers_``, one foreach copy. On an H100 a whole step takes
0.57 s with its kernels' GPU time well under that
(docs/gpu_lease_2026-11-28.md): the host bounds the step, and this is host time.
"""
from __future__ import annotations

import argparse
import time

import torch


def per_call_ms(fn, repeats: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    from calib_step_memory import dobi_student
    from compsrt.calib.calibrate import quant_optimizer
    from compsrt.config import CalibConfig
    from compsrt.quant.qmodules import project_quantizers_, quantizers

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=50)
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = dobi_student("compsrt", torch.rand(1, 3, 16, 16, device=dev), max_elems=1 << 12)
    qs = quantizers(model)
    new = quant_optimizer(model, CalibConfig())
    params = new.params
    for prm in params:
        prm.grad = torch.randn_like(prm) * 1e-3
    rates = new.base_lrs.tolist()
    old = torch.optim.Adam([{"params": [prm], "lr": r} for prm, r in zip(params, rates)], betas=(0.9, 0.99))
    last = [prm.detach().clone() for prm in params]

    def old_project() -> None:
        for q in qs:
            q.project_()

    def new_copy() -> None:
        with torch.no_grad():
            torch._foreach_copy_(last, params)

    rows = [("Adam update", old.step, new.step),
            ("projection", old_project, lambda: project_quantizers_(qs)),
            ("last good state", lambda: [prm.detach().clone() for prm in params], new_copy)]
    print(f"{len(qs)} quantizers, {len(params)} scalars, {a.device}, ms per call (mean of {a.repeats})")
    tot_old = tot_new = 0.0
    for name, f_old, f_new in rows:
        t_old, t_new = per_call_ms(f_old, a.repeats, dev), per_call_ms(f_new, a.repeats, dev)
        tot_old, tot_new = tot_old + t_old, tot_new + t_new
        print(f"  {name:16s} per quantizer {t_old:7.2f}   batched {t_new:6.2f}   x{t_old / t_new:.1f}")
    print(f"  {'all three':16s} per quantizer {tot_old:7.2f}   batched {tot_new:6.2f}   x{tot_old / tot_new:.1f}")


if __name__ == "__main__":
    main()
