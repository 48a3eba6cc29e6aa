"""TimeBudget: the run's length fitted to a wall-clock budget, with a fake clock."""
from __future__ import annotations

import pytest

import compsrt.budget as budget_mod
from compsrt.budget import TimeBudget


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: now[0])
    return now


def _run(b: TimeBudget, clock, iters: int, seconds_per_iter, setup: float = 0.0) -> int:
    """Drive a loop as train() does; returns the iterations it ran."""
    clock[0] += setup
    b.loop_started()
    done = 0
    while done < iters:
        clock[0] += seconds_per_iter(done)
        done += 1
        iters = b.fit(done, iters)
    return done


def test_disabled_budget_keeps_the_length(clock):
    assert _run(TimeBudget(0), clock, 500, lambda i: 1.0) == 500


def test_fits_inside_the_budget_setup_included(clock):
    b = TimeBudget(minutes=1, probe=10, margin=0.9)
    done = _run(b, clock, 10_000, lambda i: 0.1, setup=6.0)
    # 6 s of setup, then 0.1 s per iteration up to 90% of the minute: ~480 iterations
    assert clock[0] <= 60.0 and abs(done - (54.0 - 6.0) / 0.1) <= 1


def test_never_longer_than_asked(clock):
    assert _run(TimeBudget(minutes=10, probe=5), clock, 50, lambda i: 0.1) == 50


def test_slow_warmup_is_refitted_upwards(clock):
    """The first steps are slow (compilation, caches): the later re-fit takes the length back up."""
    b = TimeBudget(minutes=1, probe=10, margin=1.0)
    done = _run(b, clock, 10_000, lambda i: 2.0 if i < 5 else 0.05)
    assert done > 400 and clock[0] <= 60.0


def test_hard_stop_when_the_run_slows_down(clock):
    b = TimeBudget(minutes=1, probe=10)
    done = _run(b, clock, 10_000, lambda i: 0.01 if i < 200 else 5.0)
    assert clock[0] <= 60.0 + 5.0 and done < 10_000
