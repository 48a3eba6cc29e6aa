"""One DQC finetuning step: the distillation loss, then backward and the quantizer update.

Split in two so that the device half (:func:`backward_update_`, no host synchronization on CUDA) can be
captured in a CUDA graph (:mod:`.graphed_step`), while :func:`finetune_step_`, the eager step,
checks the loss on the host before updating anything.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CalibConfig
from ..quant.qmodules import Quantizer, project_quantizers_
from .scalar_adam import ScalarAdam


class StageTaps:
    """Forward hooks on the four stages' Swin-block outputs (tokens), for the feature loss
    (SwinIR-light's ``layers[i].residual_group``; the calibration CLI refuses it for other models).

    They record only while ``recording`` is set, i.e. during the training forward: the
    validation and DOBI forwards run other batches through the same modules."""

    def __init__(self, model: nn.Module) -> None:
        self.feats: list[Tensor] = []
        self.recording = False
        self.handles = [layer.residual_group.register_forward_hook(self._hook) for layer in model.layers]

    def _hook(self, module: torch.nn.Module, inputs: tuple, out: Tensor) -> None:
        if self.recording:
            self.feats.append(out)

    def pop(self) -> list[Tensor]:
        f, self.feats = self.feats, []
        return f


def feature_loss(fs: list[Tensor], ft: list[Tensor]) -> Tensor:
    """Mean over stages of ||f_s/|f_s| - f_t/|f_t|||^2 per sample (norms per sample, detached).

    The official version broadcasts a (B,1,1,1) norm against 3-D tokens and divides by numel
    twice, which makes it ~1e-8 of the pixel loss (so it barely trains anything there); this is the
    intended normalized loss, O(1) in size (docs/method_notes.md).
    """
    total = 0.0
    for s, t in zip(fs, ft):
        ns = s.flatten(1).norm(dim=1).detach().clamp_min(1e-12).view(-1, 1, 1)
        nt = t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        total = total + ((s / ns - t / nt) ** 2).flatten(1).sum(1).mean()
    return total / len(fs)


def distill_loss(student: nn.Module, teacher: nn.Module, x: Tensor, cfg: CalibConfig,
                 taps: tuple[StageTaps, StageTaps] | None = None) -> Tensor:
    """The DQC objective on the LR batch ``x``: the student's distance to the teacher's output."""
    if taps is not None:
        taps[0].recording = taps[1].recording = True
    with torch.no_grad():
        target = teacher(x)
    loss = (F.l1_loss if cfg.loss == "l1" else F.mse_loss)(student(x), target)
    if taps is not None:
        taps[0].recording = taps[1].recording = False
        loss = loss + cfg.feature_loss * feature_loss(taps[0].pop(), taps[1].pop())
    return loss


def backward_update_(loss: Tensor, opt: ScalarAdam, qs: list[Quantizer], cfg: CalibConfig) -> None:
    """Backward, then :func:`update_`: no host synchronization on CUDA, so :mod:`.graphed_step`
    captures it; call ``opt.advance()`` first."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    update_(opt, qs, cfg)


def update_(opt: ScalarAdam, qs: list[Quantizer], cfg: CalibConfig) -> None:
    """Gradient value clipping, the device half of the Adam step and the step guard; reads no
    host value that changes between steps (tested), as a graph replay requires."""
    torch.nn.utils.clip_grad_value_(opt.params, cfg.clip)
    opt.update()
    project_quantizers_(qs)


def finetune_step_(student: nn.Module, teacher: nn.Module, x: Tensor, opt: ScalarAdam, qs: list[Quantizer],
                   cfg: CalibConfig, taps: tuple[StageTaps, StageTaps] | None = None) -> Tensor:
    """One DQC update on the LR batch ``x``; returns the loss, and updates nothing when it is not
    finite (the caller stops). Shared with benchmarks/calib_step_memory.py, which times it."""
    loss = distill_loss(student, teacher, x, cfg, taps)
    if not torch.isfinite(loss):
        return loss
    opt.advance()
    backward_update_(loss, opt, qs, cfg)
    return loss
