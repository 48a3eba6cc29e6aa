"""Learning-rate units on the test suite's tiny model: does every method still train?

    python research/calib_tiny_rates.py [--steps 25] [--methods compsrt 2dquant ...]

The tiny SwinIR-light of tests/calib/test_calibrate.py at 3 bits, --steps Adam steps on one fixed
batch with calibrate()'s cosine schedule, for each method and for --lr-unit range (lr 1e-2, the
default) and step (lr 0.15). Prints the L1 distillation loss (x 1e-3) every third step and the
best of the last five. Why the default stays "range" though "step" finetunes the full x2 model
further (docs/calib/experiments.md): here "step" moves the extras 15x faster and tuning-only
gets worse.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "calib"))
import test_calibrate as T  # noqa: E402  (the tiny model and images the tests use)

from compsrt.calib.methods import METHODS  # noqa: E402
from compsrt.config import CalibConfig  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    a = p.parse_args(argv)
    fp, batch = T.fit_tiny_model(), T.tiny_batch()
    for unit, lr in (("range", 1e-2), ("step", 0.15)):
        for method in a.methods:
            losses = T.distill_losses(fp, batch, method, CalibConfig(lr=lr, lr_unit=unit), a.steps, cosine=True)
            trace = " ".join(f"{v * 1e3:.3f}" for v in losses[::3])
            print(f"{unit:5s} {method:18s} {trace}  best of last 5: {min(losses[-5:]) * 1e3:.3f}")


if __name__ == "__main__":
    main()
