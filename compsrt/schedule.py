"""The cosine decay shared by FP training (:mod:`compsrt.train`) and calibration (:mod:`compsrt.calib.calibrate`)."""
from __future__ import annotations

import math


def cosine(done: float, total: float, start: float, end: float) -> float:
    """The value after ``done`` of ``total``: ``start`` at 0, falling along a half cosine to ``end``
    at ``total`` (``done <= total``; the caller clamps).

    Calibration passes iterations (``cosine(it, iters, 1.0, 0.01)``: a rate factor from 1 to 1%);
    training its fraction of the decay after warmup (``cosine(t, 1, lr, min_lr)``). Each keeps its
    own float order of operations that way, so neither schedule changed when they were merged.
    """
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * done / total))
