"""Adam over the quantizer scalars, a rate per scalar, as one flat update.

``torch.optim.Adam`` runs its update once per parameter group, and calibration gives each
quantizer its own rates (``CalibConfig.lr_unit``): 768 groups for SwinIR-light, 55-70 ms of
host time per step on this CPU for what is 1536 scalar updates
(``benchmarks/calib_step_bookkeeping.py``). On an H100 the host, not the GPU, bounds a
finetuning step (docs/gpu_lease_2026-11-28.md), so the update is written once over a flat
vector: ``torch.optim.Adam``'s arithmetic, the same bits on the CPU (tested), a dozen launches
per step whatever the number of quantizers.

A step is split in two so that its device half can be captured in a CUDA graph
(:mod:`compsrt.calib.graphed_step`): :meth:`ScalarAdam.advance` counts the step and writes the
schedule's scale and the bias corrections, computed on the host in double precision as
``torch.optim.Adam`` computes them, into three 0-d device tensors; :meth:`ScalarAdam.update`
reads them there, so a graph replay sees this step's values, not the ones of its capture.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class ScalarAdam:
    """Adam over one-element tensors, one base rate each; ``scale`` (the schedule) multiplies all.

    The moments live in two flat vectors, so a step is one gather of the gradients, a few vector
    operations and one scatter back into the parameters. A missing gradient counts as zero (a
    parameter the loss never reaches never moves; calibration reaches every quantizer scalar).
    One step count for all parameters.
    """

    def __init__(self, params: Sequence[Tensor], base_lrs: Sequence[float], betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-8) -> None:
        if len(params) != len(base_lrs):
            raise ValueError(f"{len(params)} parameters but {len(base_lrs)} rates")
        if any(p.ndim != 0 for p in params):
            raise ValueError("ScalarAdam takes 0-d parameters (the quantizer scalars)")
        self.params = list(params)
        self.betas, self.eps = betas, eps
        self.scale = 1.0
        self.steps = 0
        like = self.params[0] if self.params else torch.zeros(())
        self.base_lrs = torch.tensor([float(r) for r in base_lrs], dtype=torch.float64, device=like.device)
        self.exp_avg = torch.zeros(len(self.params), dtype=like.dtype, device=like.device)
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        # this step's scale, 1 - beta1^t and sqrt(1 - beta2^t), written by advance()
        self._scale_t, self._bc1_t, self._bc2_sqrt_t = (torch.ones((), dtype=torch.float64, device=like.device)
                                                        for _ in range(3))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self) -> None:
        self.advance()
        self.update()

    def advance(self) -> None:
        """Host half of a step: count it and write this step's scale and bias corrections."""
        self.steps += 1
        b1, b2 = self.betas
        self._scale_t.fill_(self.scale)
        self._bc1_t.fill_(1 - b1 ** self.steps)
        self._bc2_sqrt_t.fill_((1 - b2 ** self.steps) ** 0.5)

    @torch.no_grad()
    def grads(self) -> Tensor:
        """The gradients as one vector, a missing one as zero."""
        zero = self.exp_avg.new_zeros(())
        return torch.stack([zero if p.grad is None else p.grad for p in self.params])

    @torch.no_grad()
    def update(self) -> None:
        """Device half of a step (no host value read or synchronization): capturable."""
        if not self.params:
            return
        g = self.grads()
        b1, b2 = self.betas
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        # torch.optim.Adam's CPU arithmetic, operation for operation, so that a group-per-rate Adam
        # and this one give the same bits (calibration is chaotic: 1-ulp differences grow); a 0-d
        # double divisor is rounded to float first, as Adam's Python-number divisor is
        denom = (self.exp_avg_sq.sqrt() / self._bc2_sqrt_t).add_(self.eps)
        rates = ((self.base_lrs * self._scale_t) / self._bc1_t).neg_().to(g.dtype)
        new = torch.stack(self.params).add_(rates.mul_(self.exp_avg).div_(denom))   # p + (-step * m) / denom
        torch._foreach_copy_(self.params, new.unbind())

    def state_tensors(self) -> dict[str, Tensor]:
        """The state as CPU tensors (for a safetensors checkpoint; no pickle)."""
        return {"adam.exp_avg": self.exp_avg.cpu(), "adam.exp_avg_sq": self.exp_avg_sq.cpu(),
                "adam.steps": torch.tensor([self.steps], dtype=torch.int64), "adam.base_lrs": self.base_lrs.cpu()}

    def load_state_tensors(self, t: dict[str, Tensor]) -> None:
        n = len(self.params)
        if any(t[k].numel() != n for k in ("adam.exp_avg", "adam.exp_avg_sq", "adam.base_lrs")):
            raise ValueError(f"optimizer state for {t['adam.base_lrs'].numel()} parameters, this model has {n}")
        self.exp_avg.copy_(t["adam.exp_avg"])
        self.exp_avg_sq.copy_(t["adam.exp_avg_sq"])
        self.base_lrs.copy_(t["adam.base_lrs"])
        self.steps = int(t["adam.steps"].item())
