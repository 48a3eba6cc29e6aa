"""Fit a run's length to a wall-clock budget (``--minutes`` of training and calibration).

Why: warmup and cosine schedules need the run's length up front, but a lent GPU (or a CI slot)
gives minutes, not iterations, and nobody knows the speed of a machine before running on it.
So the run times its first ``probe`` iterations and sets its iteration count so that it ends
inside the budget (never beyond the count asked for); the schedule has barely moved by then. It
re-fits after 4x and 16x ``probe`` iterations, because the first steps of a GPU run are slow
(compilation, allocator warm-up: on an H200 a single early fit stopped a 5-minute run at 3.6).
A hard stop at the budget catches a run that slows down later (another job on the same GPU).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, TypeVar

C = TypeVar("C")


class TimeBudget:
    """Call :meth:`loop_started` before the first iteration and :meth:`fit` after each one.

    ``minutes <= 0`` disables it: :meth:`fit` returns ``iters`` unchanged.
    """

    def __init__(self, minutes: float, probe: int = 30, margin: float = 0.92) -> None:
        self.seconds = minutes * 60.0
        self.probe, self.margin = probe, margin
        self.t0 = time.perf_counter()   # the budget counts from here: data loading included
        self.loop_t0 = self.t0
        self.steps = 0
        self.cap: int | None = None   # the run's length as asked, never exceeded

    def loop_started(self) -> None:
        self.loop_t0 = time.perf_counter()
        self.steps = 0

    def fit(self, done: int, iters: int) -> int:
        """The run's iteration count after ``done`` iterations: ``iters`` or fewer, never below ``done``."""
        if self.seconds <= 0:
            return iters
        self.steps += 1
        now = time.perf_counter()
        if now - self.t0 >= self.seconds:
            return done
        if self.cap is None:
            self.cap = iters
        if self.steps in (self.probe, 4 * self.probe, 16 * self.probe):  # re-fit: warm-up steps are slow
            per_iter = (now - self.loop_t0) / self.steps
            left = self.seconds * self.margin - (now - self.t0)
            return max(done, min(self.cap, done + int(left / per_iter)))
        return iters

    def shorten(self, cfg: C, done: int, bar: Any = None) -> C:
        """``cfg`` (a frozen dataclass with ``iters``) fitted after ``done`` iterations: the same
        object when its length stands, else a copy with the new ``iters`` (and ``bar``'s total)."""
        fitted = self.fit(done, cfg.iters)
        if fitted == cfg.iters:
            return cfg
        if bar is not None:
            bar.total = fitted
        return replace(cfg, iters=fitted)
