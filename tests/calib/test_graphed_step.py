"""The graphed finetuning step (compsrt.calib.graphed_step) on the CPU.

CUDA graphs need a GPU, so these tests run the graphed path with stand-in graphs: one that
replays by calling the captured function again (what a correct capture does), one whose replay
differs from the eager step, one whose capture fails. What they check is everything around the
capture: the warm-up steps leave no trace, the static input and the host half of the Adam step
are fed each iteration, a bad or failed graph falls back to the eager step with the reason, and
the update after backward (clipping, Adam, step guard) reads no host value that changes between
steps (the condition for a captured step to be a correct replay of later ones; the model's own
CUDA forward and backward can only be checked by a capture on a GPU).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from compsrt.calib.calibrate import calibrate, cosine_lr_, quant_optimizer, search_bounds_
from compsrt.calib.graphed_step import graph_unsupported
from compsrt.calib.step import update_
from compsrt.config import CalibConfig, QuantConfig
from compsrt.quant.compress import compress_, quant_parameters
from compsrt.quant.qmodules import quantizers
from test_calibrate import fit_tiny_model, smooth_images


@pytest.fixture(scope="module")
def fp_model():
    return fit_tiny_model()


class ReplayGraph:
    """A correct graph, as far as the CPU can tell: replay runs what was captured."""

    def capture(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


class DriftingGraph(ReplayGraph):
    """A graph whose replay is not the eager step (as if a value had been baked in at capture)."""

    def replay(self):
        with torch.no_grad():
            for q in self.fn.__self__.qs:   # nudge the bounds before the step
                q.upper.add_(0.05 * (q.upper - q.lower))
        self.fn()


class RefusingGraph(ReplayGraph):
    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


CFG = CalibConfig(iters=5, batch=2, patch=16, calib_batch=2, val_every=2, val_patches=1, recompute=False)


def _run(fp, graph=None, cfg=CFG):
    pairs = smooth_images(4, 64, 7)
    return calibrate(fp, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, progress=False, graph=graph)


def test_graphed_calibration_is_the_eager_one_bit_for_bit(fp_model):
    eager, rep_e = _run(fp_model)
    graphed, rep_g = _run(fp_model, ReplayGraph)
    assert rep_e.step_mode == "eager (CUDA graphs need a CUDA device)"
    assert rep_g.step_mode == "cuda graph"
    assert rep_g.history == rep_e.history and rep_g.iters_done == 5
    for a, b in zip(quant_parameters(eager), quant_parameters(graphed)):
        assert torch.equal(a, b)


def test_a_differing_or_failed_graph_falls_back_to_the_eager_step(fp_model):
    eager, rep_e = _run(fp_model)
    for graph, why in ((DriftingGraph, "the graph's step differs from the eager one"),
                       (RefusingGraph, "capture failed (RuntimeError: operation not permitted when stream is capturing)")):
        model, rep = _run(fp_model, graph)
        assert rep.step_mode.startswith(f"eager ({why}"), rep.step_mode
        assert rep.history == rep_e.history   # the build left no trace
        for a, b in zip(quant_parameters(eager), quant_parameters(model)):
            assert torch.equal(a, b)


def test_where_the_graph_is_not_used(fp_model):
    assert graph_unsupported(CFG, True) == ""
    assert "CUDA device" in graph_unsupported(CFG, False)
    assert "--no-cuda-graph" in graph_unsupported(CalibConfig(cuda_graph=False), True)
    assert "recompute" in graph_unsupported(CalibConfig(recompute=True), True)
    assert "feature loss" in graph_unsupported(CalibConfig(recompute=False, feature_loss=0.1), True)
    _, rep = _run(fp_model, ReplayGraph, CalibConfig(**{**CFG.__dict__, "recompute": True}))
    assert rep.step_mode.startswith("eager (block recompute")


class _OpLog(TorchDispatchMode):
    """Every aten op with its non-tensor arguments, in order."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = torch.utils._pytree.tree_leaves((args, kwargs or {}))
        self.ops.append((str(func), tuple(a for a in flat if not isinstance(a, torch.Tensor))))
        return func(*args, **(kwargs or {}))


def test_the_update_reads_no_changing_host_value(fp_model):
    """A CUDA graph replays the kernels of its capture with the scalars they were launched with:
    the update (clip, Adam, step guard) must launch the same ops with the same non-tensor
    arguments at every step, whatever the schedule's rate and the step count, and never read a
    device value back on the host (``_local_scalar_dense``: .item(), bool(), float())."""
    x = torch.rand(2, 3, 16, 16)
    student = compress_(copy.deepcopy(fp_model), QuantConfig(bits=3))
    search_bounds_(student, smooth_images(3, 64, 2), CFG, torch.device("cpu"))
    opt, qs = quant_optimizer(student, CFG), quantizers(student)
    logs, params = [], []
    for it in range(3):
        opt.zero_grad()
        torch.nn.functional.l1_loss(student(x), fp_model(x).detach()).backward()
        cosine_lr_(opt, it, 3)
        opt.advance()
        with _OpLog() as log:
            update_(opt, qs, CFG)
        logs.append(log.ops)
        params.append(torch.stack([p.detach() for p in opt.params]))
    assert logs[0] == logs[1] == logs[2]
    names = [name for name, _ in logs[0]]
    assert not any("_local_scalar_dense" in n for n in names)
    assert any("_foreach_maximum_" in n for n in names) and any("lerp_" in n for n in names)
    assert not torch.equal(params[1], params[2])   # the steps did update
    assert opt.steps == 3 and not math.isclose(float(opt._scale_t), 1.0)


def test_a_non_finite_loss_stops_the_graphed_run(fp_model, monkeypatch):
    """The graph's step updates before the loss is read: the run stops with finite parameters."""
    import compsrt.calib.step as step

    real, calls = torch.nn.functional.l1_loss, {"n": 0}

    def poisoned(a, b):
        calls["n"] += 1   # 3 warm-up steps and the checked replay, then iterations 0, 1, ...
        return real(a, b) * (float("nan") if calls["n"] == 6 else 1.0)

    monkeypatch.setattr(step.F, "l1_loss", poisoned)
    model, rep = _run(fp_model, ReplayGraph)
    assert rep.step_mode == "cuda graph" and rep.iters_done == 1
    assert rep.stopped == "non-finite loss at iteration 1; kept the last finite state"
    assert all(torch.isfinite(p) for p in quant_parameters(model))
