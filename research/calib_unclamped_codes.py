"""The official quantizer's unclamped codes: how many levels a "2-bit" CompSRT model then uses.

    python research/calib_unclamped_codes.py [--bits 2] [--method compsrt] [--out C]
        [--eval-data B --sets Set5 Set14 B100] [--arch swinir-light|mambairv2-light] [--scale 2]
        [--layers L] [--weights W] [--data D ...] [--iters 100] [--quiet]

The official code rounds (clip(x, l, u) - Z) / s and never clamps the code to [0, 2^b - 1]
(docs/method_notes.md). Its step extra s2 shrinks the step s = (u - l) / qmax + s2 while the
clip range [l, u] stays, so codes run past qmax: the tensor gets more than 2^b levels, which no
b-bit storage holds. compsrt clamps. This diagnostic runs the quick default calibration (the
CLI's, on the bundled crops unless --data) with every quantizer's ``override`` set to the
official formula (codes unclamped; the straight-through gradients of an in-range code
everywhere, so z2 gets none, as there), prints each quantizer's level count
round((u - z)/s) - round((l - z)/s) + 1, and evaluates the model with the same formula (--eval-data,
a benchmark folder). 2DQuant has no s2, so its codes stay within 2^b levels either way.
Not deployable: --out writes the calibrated checkpoint (which loads with clamped codes) and a report.
With --out the finetuning checkpoints to OUT/calib_state.safetensors as it goes, and the same
command resumes a run that stopped (a state from other options is refused).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor

from compsrt.calib.__main__ import bundled_calib_images
from compsrt.calib.calibrate import calibrate
from compsrt.calib.methods import METHODS, method_config
from compsrt.config import CalibConfig
from compsrt.data import load_training_pairs, split_holdout
from compsrt.kernels.fake_quant import step_and_zero
from compsrt.load import ARCHS, load_model
from compsrt.quant.compress import compress_, overriding, save_calibrated
from compsrt.quant.plan import check_layers
from compsrt.quant.qmodules import Quantizer, quantizers


class _Unclamped(torch.autograd.Function):
    """round((clip(x, l, u) - z) / s) s + z, the code not clamped. Backward, an in-range code's
    straight-through gradients everywhere: x where l <= x <= u, l and u where x is clipped at
    them, s by round(y) - y, z none (subtracted before the round, added back after)."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: Tensor, hi: Tensor, s: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(x, lo, hi, s, z)
        return x.clamp(lo, hi).sub_(z).div_(s).round_().mul_(s).add_(z)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, lo, hi, s, z = ctx.saved_tensors
        y = x.clamp(lo, hi).sub_(z).div_(s)
        below, above = x < lo, x > hi
        return (torch.where(below | above, 0, g), torch.where(below, g, 0).sum(), torch.where(above, g, 0).sum(),
                (g * (y.round() - y)).sum(), torch.zeros_like(z))


def unclamped(q: Quantizer, t: Tensor, dc_dim: int | None) -> Tensor:
    """A quantizer's ``override``: the official formula in its domain, the exact-DC coefficient in FP."""
    s, z = step_and_zero(q.lower, q.upper, q.bits, *q.extras())
    if dc_dim is None:
        return _Unclamped.apply(t, q.lower, q.upper, s, z)
    n = t.shape[dc_dim]
    ac = _Unclamped.apply(t.narrow(dc_dim, 1, n - 1), q.lower, q.upper, s, z)
    return torch.cat([t.narrow(dc_dim, 0, 1), ac], dc_dim)


@torch.no_grad()
def levels(model: torch.nn.Module) -> list[int]:
    """Codes each quantizer's clip range spans under the unclamped formula."""
    out = []
    for q in quantizers(model):
        s, z = (float(t) for t in step_and_zero(q.lower, q.upper, q.bits, *q.extras()))
        out.append(round((float(q.upper) - z) / s) - round((float(q.lower) - z) / s) + 1)
    return out


def main(argv: list[str] | None = None) -> int:
    d = CalibConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--method", choices=list(METHODS), default="compsrt")
    p.add_argument("--out", type=Path, help="folder for calibrated.safetensors and report.json")
    p.add_argument("--eval-data", type=Path, help="benchmark folder to evaluate on, codes unclamped")
    p.add_argument("--sets", nargs="+", default=["Set5"])
    p.add_argument("--arch", choices=ARCHS, default="swinir-light")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=2)
    p.add_argument("--layers", default="", help="the layer set (compsrt/quant/plan.py; default: the arch's)")
    p.add_argument("--weights", type=Path, help="FP weights (default: the bundled ones of --arch and --scale)")
    p.add_argument("--data", type=Path, nargs="+", help="training images (default: the bundled calibration crops)")
    p.add_argument("--val-images", type=int, default=3, help="training images held out for keep-best (the CLI's)")
    for name in ("iters", "batch", "calib_batch", "patch", "val_every", "val_patches"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    cfg = CalibConfig(iters=a.iters, batch=a.batch, calib_batch=a.calib_batch, patch=a.patch, val_every=a.val_every,
                      val_patches=a.val_patches)
    fp = load_model(a.weights, a.scale, arch=a.arch)
    pairs = [x for x in load_training_pairs(a.data or [bundled_calib_images()], a.scale, progress=not a.quiet)
             if min(x.lr.shape[:2]) >= cfg.patch]
    train, val = split_holdout(pairs, a.val_images)
    quant = replace(method_config(a.method, a.bits), layers=check_layers(a.arch, a.layers))
    student = compress_(copy.deepcopy(fp), quant)
    state = None
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        state = a.out / "calib_state.safetensors"
    identity = {"diagnostic": "unclamped codes", "arch": a.arch, "scale": a.scale, "method": a.method,
                "bits": a.bits, "layers": quant.layers, "weights": str(a.weights or "bundled"),
                "data": [str(d) for d in a.data or ["bundled"]], "val_images": a.val_images}
    with overriding(student, unclamped):
        model, rep = calibrate(fp, train, val, quant, cfg, state, state is not None and state.exists(),
                               progress=not a.quiet, identity=identity, student=student)
        n = levels(model)
        summary = {"quantizers": len(n), "median_levels": statistics.median(n), "max_levels": max(n),
                   f"more_than_{2 ** a.bits}": sum(v > 2 ** a.bits for v in n),
                   "mean_log2_levels": statistics.mean(math.log2(v) for v in n)}
        print(f"{a.method} W{a.bits}, codes unclamped: {len(n)} quantizers; levels spanned (a {a.bits}-bit code "
              f"holds {2 ** a.bits}): median {summary['median_levels']}, max {summary['max_levels']}; more than "
              f"{2 ** a.bits}: {summary[f'more_than_{2 ** a.bits}']}; mean log2(levels) "
              f"{summary['mean_log2_levels']:.2f} bits; held-out fidelity {rep.start_fidelity_db:.2f} after DOBI, "
              f"{rep.best_fidelity_db:.2f} dB kept")
        if a.eval_data:
            from compsrt.eval import evaluate, markdown_table

            results = evaluate(model, a.eval_data, a.sets, a.scale, progress=not a.quiet)
            print(markdown_table(results, f"{a.method} W{a.bits}, unclamped codes"))
            summary["eval"] = {k: {"psnr_db": r["psnr_db"], "ssim": r["ssim"]} for k, r in results.items()}
    if a.out:
        save_calibrated(model, a.out / "calibrated.safetensors",
                        {"note": "calibrated with unclamped codes (research/calib_unclamped_codes.py); "
                                 "loads with clamped ones"})
        (a.out / "report.json").write_text(json.dumps({"levels": summary, "calibration": asdict(rep)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
