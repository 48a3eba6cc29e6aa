"""The DQC finetuning step as one CUDA graph replay.

On an H100 a batch-16 step is host-bound: about 22,000 kernel launches a step, whose host cost
outweighs the GPU's own work several times (docs/gpu_lease_2026-11-28.md: 0.57 s a step, the
paper's 4000 iterations in 38 minutes). Captured once in a CUDA graph, a step's launches are
one replay. The step's device work (teacher and student forward, loss, backward, gradient
clipping, the Adam update, the step guard) is written without host reads for this
(:func:`.step.backward_update_`); what stays on the host each iteration is drawing the batch
(copied into the graph's static input), :meth:`ScalarAdam.advance` (this step's rate and bias
corrections, written into device scalars the graph reads) and reading the loss back for the
non-finite check. DOBI and the keep-best validation run eagerly on the same parameters, which
the graph reads and updates in place.

Building a graph runs a few warm-up steps first (Triton compiles its kernels, autograd and cuBLAS
set up; on a side stream, as capture requires), and they move the parameters, so the state is
put back afterwards. The captured step is then checked once against the first warm-up step, an
eager step from the same state (loss and gradients). A failed capture or a mismatch leaves the state as it was and the
caller runs the eager step, with the reason in the report: a graph may make a run faster, never
different.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from ..config import CalibConfig
from ..quant.qmodules import Quantizer
from .scalar_adam import ScalarAdam
from .step import backward_update_, distill_loss

WARMUP_STEPS = 3


class Graph(Protocol):
    """What :class:`GraphedStep` needs of a graph: record ``fn`` once, then run it again."""

    def capture(self, fn: Callable[[], None]) -> None: ...

    def replay(self) -> None: ...


class CudaGraph:
    """``torch.cuda.CUDAGraph`` behind :class:`Graph`."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], None]) -> None:
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


def routing_rng(model: torch.nn.Module) -> bool:
    """Whether the model draws random numbers in its forward (MambaIRv2-light's seeded routing:
    a torch.Generator seeded afresh per forward, which a graph replay would not re-seed)."""
    return getattr(model, "routing", None) == "seeded"


def graph_unsupported(cfg: CalibConfig, have_graphs: bool, draws_rng: bool = False) -> str:
    """Why the step is not graphed under ``cfg`` ("" when it can be); ``have_graphs``: the
    device has CUDA graphs (or a test supplies a stand-in); ``draws_rng``: the model draws
    random numbers in its forward (:func:`routing_rng`)."""
    if not cfg.cuda_graph:
        return "turned off by --no-cuda-graph"
    if not have_graphs:
        return "CUDA graphs need a CUDA device"
    if draws_rng:
        return ("the seeded routing draws from a torch.Generator seeded afresh each forward, which a CUDA graph "
                "replay would not re-seed")
    if cfg.recompute:
        return "block recompute is on (--no-recompute allows the graph)"
    if cfg.feature_loss > 0:
        return "the feature loss records features with Python hooks"
    return ""


class GraphedStep:
    """One DQC step, :func:`.step.distill_loss` + :func:`.step.backward_update_`,
    replayed from a graph on a static input batch.

    ``build`` warms up, captures and checks; afterwards ``step(x)`` does what ``finetune_step_``
    does for a finite loss (after a non-finite one the parameters have been updated too; the
    caller stops and keeps its best state, as it does when a parameter goes non-finite).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, opt: ScalarAdam, qs: list[Quantizer],
                 cfg: CalibConfig, x: Tensor, graph: Graph) -> None:
        self.student, self.teacher, self.opt, self.qs, self.cfg = student, teacher, opt, qs, cfg
        self.x = x.detach().clone()                       # the static input
        self.loss = torch.zeros((), device=x.device)      # the static loss
        self.graph = graph

    def _body(self) -> None:
        loss = distill_loss(self.student, self.teacher, self.x, self.cfg)
        backward_update_(loss, self.opt, self.qs, self.cfg)
        self.loss.copy_(loss.detach())

    def _state(self) -> list[Tensor]:
        """What a step changes on the device: the quantizer scalars and Adam's moments."""
        return [*self.opt.params, self.opt.exp_avg, self.opt.exp_avg_sq]

    def _snapshot(self) -> tuple[list[Tensor], int]:
        return [t.detach().clone() for t in self._state()], self.opt.steps

    def _restore(self, snap: tuple[list[Tensor], int]) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self._state(), snap[0])
        self.opt.steps = snap[1]

    def build(self, x: Tensor) -> str:
        """Warm up, capture, and check the graph's step against the first (eager) warm-up step on
        batch ``x``; the state is left as it was. Returns "" when the graph is ready, else why it
        is not (then do not use it). The check reuses a warm-up step rather than running one
        more eager step beside the captured graph, whose memory pool would double the peak."""
        snap = self._snapshot()
        self.x.copy_(x)
        side = torch.cuda.Stream() if x.is_cuda else None
        try:
            if side is not None:
                side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for i in range(WARMUP_STEPS):
                    self.opt.advance()
                    self._body()
                    if i == 0:
                        loss_e, grads_e = float(self.loss), self.opt.grads()
            if side is not None:
                torch.cuda.current_stream().wait_stream(side)
            self._restore(snap)
            self.graph.capture(self._body)
            self.opt.advance()
            self.graph.replay()
            loss_g, grads_g = float(self.loss), self.opt.grads()
        except Exception as e:   # capture refused something: the finding, not a crash
            self._restore(snap)
            return f"capture failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        self._restore(snap)
        tol = 1e-4 * float(grads_e.abs().max()) if grads_e.numel() else 0.0
        if abs(loss_g - loss_e) > 1e-5 * abs(loss_e) or not torch.allclose(grads_g, grads_e, rtol=1e-3, atol=tol):
            return (f"the graph's step differs from the eager one (loss {loss_g:.7g} vs {loss_e:.7g}, "
                    f"largest gradient difference {float((grads_g - grads_e).abs().max()):.3g})")
        return ""

    def step(self, x: Tensor) -> Tensor:
        """One step on batch ``x`` (same shape as the captured one); returns the (static) loss."""
        self.x.copy_(x)
        self.opt.advance()
        self.graph.replay()
        return self.loss
