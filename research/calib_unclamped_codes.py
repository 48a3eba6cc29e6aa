"""The official quantizer's unclamped codes: how many levels a "2-bit" CompSRT model then uses.

    python benchmarks/calib_unclamped_codes.py --out C [--bits 2] [--method compsrt]
        [--eval-data ../shared/data/benchmark --sets Set5 Set14 B100] [-- extra calib options]

The official code (reference-compsrt.md 1.3) rounds (clip(x, l, u) - Z) / s and never clamps
the code to [0, 2^b - 1]. Its step extra s2 shrinks the step s = (u - l) / qmax + s2 while the
clip range [l, u] stays, so codes run past qmax: the tensor gets more than 2^b levels, which
no b-bit storage holds. compsrt clamps (DESIGN.md). This diagnostic calibrates and evaluates
with compsrt's fake quantization patched to the official formula (codes unclamped, the
straight-through gradients of an in-range code everywhere, so z2 gets none, as there), then
prints each quantizer's level count round((u - z)/s) - round((l - z)/s) + 1. 2DQuant has no
s2, so its codes stay within 2^b levels either way. Not deployable; for the calibration notes.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

from compsrt.kernels import fake_quant_lean as lean

_LEAN = lean._LeanFakeQuant
UNBOUNDED = 2 ** 62


class _Unclamped:
    """``_LeanFakeQuant`` with no top code: its clamp_(0, qmax) and saturation test get an
    unbounded qmax, so codes run past 2^b - 1 and every gradient is the in-range one. The clamp
    at 0 stays but never acts: z2 then gets no gradient (stays 0), so z = l and no code is < 0."""

    @staticmethod
    def apply(x, lo, hi, s, z, qmax, dc_dim):
        return _LEAN.apply(x, lo, hi, s, z, UNBOUNDED, dc_dim)


@torch.no_grad()
def levels(model: torch.nn.Module) -> list[int]:
    """Codes each quantizer's clip range spans under the unclamped formula."""
    from compsrt.kernels.fake_quant import step_and_zero
    from compsrt.quant.qmodules import quantizers

    out = []
    for q in quantizers(model):
        s, z = (float(t) for t in step_and_zero(q.lower, q.upper, q.bits, *q.extras()))
        out.append(round((float(q.upper) - z) / s) - round((float(q.lower) - z) / s) + 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--method", default="compsrt")
    p.add_argument("--eval-data", type=Path)
    p.add_argument("--sets", nargs="+", default=["Set5"])
    p.add_argument("extra", nargs="*", help="more python -m compsrt.calib options (after --)")
    a = p.parse_args()
    lean._LeanFakeQuant = _Unclamped  # fake_quant_lean() looks the Function up at call time

    from compsrt.calib.__main__ import main as calib_main
    from compsrt.eval import evaluate, markdown_table
    from compsrt.load import load_model

    rc = calib_main(["--scale", "2", "--bits", str(a.bits), "--method", a.method, "--out", str(a.out), *a.extra])
    if rc:
        return rc
    model = load_model(a.out / "model.safetensors", 2)
    n = levels(model)
    qmax_levels = 2 ** a.bits
    print(f"\n{len(n)} quantizers; levels spanned (a {a.bits}-bit code holds {qmax_levels}): median "
          f"{statistics.median(n)}, max {max(n)}; more than {qmax_levels}: {sum(v > qmax_levels for v in n)}; "
          f"mean log2(levels) {statistics.mean(math.log2(v) for v in n):.2f} bits")
    if a.eval_data:
        print(markdown_table(evaluate(model, a.eval_data, a.sets, 2), f"{a.method} W{a.bits}, unclamped codes"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
