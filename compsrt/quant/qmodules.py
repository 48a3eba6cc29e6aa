"""Quantized building blocks (any architecture's plan): quantizers, QuantLinear, quantized attention,
weight-only parameters.

Every quantized product ``y = a @ b`` goes through two quantizers, one per operand. With
``rotation="deploy"`` both operands are rotated along the contraction axis and stay rotated
(``Q(pad(x) H) @ Q(pad(W) H)^T``: equal to ``x W^T`` when quantization is off); with
"official" each operand is quantized in the rotated domain, then rotated back and cropped;
with "none" (2DQuant) nothing is rotated. Two per-row FP offsets can stay out of the codes:
the exact DC (``QuantConfig.exact_dc``, rotated coefficient 0) with "deploy", and its unrotated
counterpart the row mean (``QuantConfig.row_mean``: ``mean(r) + Q(r - mean(r))`` per operand
row along the contraction axis) with "none".

While calibration sets a bound search on it (:func:`compsrt.quant.compress.set_calibrating`,
DOBI in practice), a quantizer searches its bounds on every tensor it receives, then
fake-quantizes with them; its four scalars (l, u, s2, z2) are the trainable parameters.

A quantizer's :attr:`Quantizer.override` (None normally) swaps its fake quantization for another
function of the same input: what diagnostics use to run some quantizers unquantized, clipped
only, or with another formula (:func:`compsrt.quant.compress.overriding` sets and restores it).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..config import QuantConfig
from ..kernels import fake_quant, hadamard, hadamard_fake_quant
from ..model.swinir import with_shift_mask

STEP_EPS = 1e-8

# search(tensor in the quantization domain, bits, one_sided=...) -> (lower, upper): a bound search.
BoundSearch = Callable[..., tuple[float, float]]
# override(quantizer, tensor in its quantization domain, dc_dim) -> what the quantizer returns instead.
QuantOverride = Callable[["Quantizer", Tensor, "int | None"], Tensor]


class Quantizer(nn.Module):
    """Per-tensor asymmetric quantizer with learned bounds and decomposition extras.

    ``override`` (a plain function, not a Module; None = normal): when set, wherever the
    quantizer would fake-quantize a tensor ``t`` it returns ``override(self, t, dc_dim)``
    instead. ``t`` is in the quantizer's own domain (rotated where the method rotates, padded
    to the rotated size); ``dc_dim`` is the axis whose coefficient 0 the quantizer would pass
    through in FP (exact DC), or None; for a pruned weight ``t`` is the quantized part and the
    keep-mask is applied to the result afterwards; with ``row_mean`` ``t`` is the centred part
    (the row mean along ``dim`` is added back afterwards); with ``rotation="official"`` the result is
    rotated back and cropped, as a fake-quantized tensor would be. While calibrating, the bound
    search has already run on ``t``. Every path honours it: an activation quantizer with an
    override leaves the fused rotate + quantize call (Triton on CUDA) for the unfused one.
    Normally it costs one attribute check per call.
    """

    override: QuantOverride | None = None

    def __init__(self, cfg: QuantConfig) -> None:
        super().__init__()
        self.bits = cfg.bits
        self.one_sided = cfg.one_sided
        self.lower = nn.Parameter(torch.tensor(0.0), requires_grad=cfg.train_bounds)
        self.upper = nn.Parameter(torch.tensor(1.0), requires_grad=cfg.train_bounds)
        self.step_extra = nn.Parameter(torch.tensor(0.0), requires_grad=cfg.decompose)
        self.zero_extra = nn.Parameter(torch.tensor(0.0), requires_grad=cfg.decompose)
        self.searcher: BoundSearch | None = None   # set while calibrating
        self.dim = -1
        # In the deployable rotation, coefficient 0 of the rotated axis (the scaled sum, "DC")
        # stays FP: it is where a shared offset concentrates (softmax rows sum to 1, post-GELU
        # channels share a positive mean, v is smooth over a window's tokens), and it would set
        # the whole tensor's range. The product is still exact: DC x DC + Q(AC) Q(AC)^T.
        self.exact_dc = cfg.exact_dc and cfg.rotation == "deploy"
        # Without rotation, the same offset kept FP directly: each row's mean along ``dim``.
        self.row_mean = cfg.row_mean
        self.override = None

    def extras(self) -> tuple[Tensor | None, Tensor | None]:
        if self.step_extra.requires_grad:
            return self.step_extra, self.zero_extra
        return None, None

    @torch.no_grad()
    def search(self, t: Tensor) -> None:
        """Set (l, u) by the bound search on ``t`` (already in the quantization domain); extras reset to 0."""
        one_sided = self.one_sided and bool(t.min() >= 0)
        lo, hi = self.searcher(t, self.bits, one_sided=one_sided)
        self.lower.fill_(lo)
        self.upper.fill_(hi)
        self.step_extra.zero_()
        self.zero_extra.zero_()

    @property
    def calibrating(self) -> bool:
        return self.searcher is not None

    def step(self) -> Tensor:
        return (self.upper - self.lower) / (2 ** self.bits - 1) + self.step_extra

    @torch.no_grad()
    def project_(self) -> None:
        """Keep u > l and the step positive after an optimizer update (the guard, not an error).

        The reference form; calibration runs its batched twin :func:`project_quantizers_`."""
        qmax = 2 ** self.bits - 1
        self.upper.copy_(torch.maximum(self.upper, self.lower + qmax * STEP_EPS))
        base = (self.upper - self.lower) / qmax
        self.step_extra.copy_(torch.maximum(self.step_extra, STEP_EPS - base))

    def fake(self, t: Tensor, dc_dim: int | None = None) -> Tensor:
        if self.override is not None:
            return self.override(self, t, dc_dim)
        s2, z2 = self.extras()
        return fake_quant(t, self.lower, self.upper, self.bits, s2, z2, dc_dim=dc_dim)

    def quantize_domain(self, t: Tensor, mask: Tensor | None = None) -> Tensor:
        """Fake-quantize ``t`` (already in the quantization domain), searching the bounds first
        when calibrating; with ``exact_dc`` coefficient 0 along ``dim`` passes through in FP; with
        ``row_mean`` the mean along ``dim`` stays FP and the centred rest is quantized (and searched).
        ``mask`` (kept coefficients of the quantized part) zeroes pruned entries exactly (with
        ``row_mean``: pruned entries of the centred rest, which then dequantize to the mean)."""
        if self.row_mean:
            m = t.mean(self.dim, keepdim=True)
            return m + self._quantize(t - m, mask)
        if not self.exact_dc:
            return self._quantize(t, mask)
        n = t.shape[self.dim]
        if mask is not None:  # a pruned weight: the mask covers the n - 1 quantized coefficients
            dc, ac = t.narrow(self.dim, 0, 1), t.narrow(self.dim, 1, n - 1)
            return torch.cat([dc.to(ac.dtype), self._quantize(ac, mask)], self.dim)
        if self.calibrating:
            self.search(t.narrow(self.dim, 1, n - 1))
        return self.fake(t, dc_dim=self.dim)  # DC passed through inside the quantizer: no copies

    def _quantize(self, t: Tensor, mask: Tensor | None) -> Tensor:
        if self.calibrating:
            self.search(t if mask is None else t[mask])
        t = self.fake(t)
        return t if mask is None else t * mask


class ActQuantizer(Quantizer):
    """Quantizer of an activation operand, rotating along ``dim`` as the config says."""

    def __init__(self, cfg: QuantConfig, dim: int = -1) -> None:
        super().__init__(cfg)
        self.dim = dim
        self.rotation = cfg.rotation if cfg.rotate_acts else "none"

    def to_domain(self, x: Tensor) -> Tensor:
        return x if self.rotation == "none" else hadamard(x, self.dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.rotation == "deploy" and not self.calibrating and self.override is None:
            s2, z2 = self.extras()  # the fused path (Triton on CUDA)
            return hadamard_fake_quant(x, self.lower, self.upper, self.bits, s2, z2, dim=self.dim,
                                       keep_dc=self.exact_dc)
        t = self.quantize_domain(self.to_domain(x))
        if self.rotation == "official":  # rotate back (H is its own inverse) and crop the padding
            t = hadamard(t, self.dim)
            t = t[..., : x.shape[-1]] if self.dim == -1 else t[..., : x.shape[-2], :]
        return t


@torch.no_grad()
def project_quantizers_(qs: Sequence[Quantizer]) -> None:
    """:meth:`Quantizer.project_` for many quantizers in a few foreach calls, bit for bit the same.

    One call per quantizer is ~8 small operations: 384 quantizers cost 10-15 ms of host time per
    step on this CPU (benchmarks/calib_step_bookkeeping.py) and ~3000 kernel launches on a GPU,
    where the host bounds the step.
    """
    if not qs:
        return
    lo, up, s2 = [q.lower for q in qs], [q.upper for q in qs], [q.step_extra for q in qs]
    qmax = [float(2 ** q.bits - 1) for q in qs]
    torch._foreach_maximum_(up, torch._foreach_add(lo, [m * STEP_EPS for m in qmax]))
    floor = torch._foreach_sub(up, lo)
    torch._foreach_div_(floor, qmax)
    torch._foreach_neg_(floor)
    torch._foreach_add_(floor, STEP_EPS)   # STEP_EPS - (u - l) / qmax
    torch._foreach_maximum_(s2, floor)


class WeightQuantizer(Quantizer):
    """Quantizer of a frozen weight (out, in): rotated once, pruned by a fixed mask.

    ``w_dom`` is the weight in the quantization domain (rotated for deploy/official);
    ``mask`` (shaped like :meth:`quantized_part`, or None) marks kept coefficients: pruned
    ones dequantize to 0 exactly and DOBI searches only over the kept ones.
    """

    def __init__(self, cfg: QuantConfig, weight: Tensor) -> None:
        super().__init__(cfg)
        self.rotation = cfg.rotation
        self.in_features = weight.shape[1]
        self.register_buffer("w_dom", self.to_domain(weight.detach()), persistent=False)
        self.register_buffer("mask", None)

    def to_domain(self, w: Tensor) -> Tensor:
        return w if self.rotation == "none" else hadamard(w, -1)

    def set_mask(self, mask: Tensor | None) -> None:
        self.mask = None if mask is None else mask.to(torch.bool)

    def quantized_part(self) -> Tensor:
        """The coefficients that get codes (and a pruning mask): all but the FP DC column, or with
        ``row_mean`` the weight less its row means."""
        if self.row_mean:
            return self.w_dom - self.w_dom.mean(-1, keepdim=True)
        return self.w_dom[:, 1:] if self.exact_dc else self.w_dom

    def fp_offset(self) -> Tensor | None:
        """(rows,) the per-row FP offset stored beside the codes: the exact-DC column (its scaled
        sum), or with ``row_mean`` the row mean times sqrt(n) (the same scale: a DC coefficient is
        sum / sqrt(n) = mean x sqrt(n)); None without either."""
        if self.exact_dc:
            return self.w_dom[:, 0]
        if self.row_mean:
            return self.w_dom.mean(-1) * self.w_dom.shape[-1] ** 0.5
        return None

    def forward(self) -> Tensor:
        t = self.quantize_domain(self.w_dom, self.mask)
        if self.rotation == "official":
            t = hadamard(t, -1)[:, : self.in_features]
        return t


class QuantLinear(nn.Module):
    """A Linear whose input and weight are quantized; ``splits`` row blocks (qkv -> 3) each
    get their own weight and input quantizer, as 2DQuant splits qkv into q, k and v.

    Keeps ``weight``/``bias`` under their original names so FP keys stay official.
    """

    def __init__(self, linear: nn.Linear, cfg: QuantConfig, splits: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.splits = splits
        rows = self.weight.shape[0] // splits
        self.wq = nn.ModuleList(WeightQuantizer(cfg, self.weight[i * rows:(i + 1) * rows]) for i in range(splits))
        self.aq = nn.ModuleList(ActQuantizer(cfg, -1) for _ in range(splits))
        self.acts_rotated = cfg.rotation == "deploy"

    def forward(self, x: Tensor) -> Tensor:
        if self.splits > 1 and self.acts_rotated and (not x.is_cuda or self.aq[0].calibrating):
            # q, k and v see the same input: rotate it once for their three quantizers, unless
            # each can run the fused rotate+quantize kernel (CUDA), which is cheaper than
            # storing the rotation.
            t = self.aq[0].to_domain(x)
            xs = [aq.quantize_domain(t) for aq in self.aq]
        else:
            xs = [aq(x) for aq in self.aq]
        outs = [xq @ wq().to(x.dtype).T for xq, wq in zip(xs, self.wq)]
        y = outs[0] if self.splits == 1 else torch.cat(outs, -1)
        return y + self.bias.to(y.dtype)


class QuantAttend(nn.Module):
    """softmax(Q(q*scale) Q(k)^T + bias) -> Q(attn) Q(v): the two quantized attention products.

    Rotation axes: q and k along the head dim (10 -> 16); attn along its last axis and v
    along its token axis (-2) in deploy mode; v along its head dim in official mode (as the
    official code does: then attn @ v is not a rotated-domain product). With ``row_mean`` the
    means are taken along the same contraction axes as the deploy mode's rotations.
    """

    def __init__(self, cfg: QuantConfig) -> None:
        super().__init__()
        self.q = ActQuantizer(cfg, -1)
        self.k = ActQuantizer(cfg, -1)
        self.a = ActQuantizer(cfg, -1)
        # attn v contracts over v's token axis: its DC / row mean is along -2 (with "official"
        # v is rotated along its head dim, as the official code does)
        self.v = ActQuantizer(cfg, -2 if cfg.rotation == "deploy" or cfg.row_mean else -1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float,
                mask: Tensor | None = None) -> Tensor:
        bias = with_shift_mask(bias, mask)   # as compsrt.model.swinir.Attend
        logits = self.q(q * scale) @ self.k(k).transpose(-2, -1) + bias.to(q.dtype)
        attn = logits.softmax(-1).to(v.dtype)
        return self.a(attn) @ self.v(v)


def quantizers(model: nn.Module) -> list[Quantizer]:
    return [m for m in model.modules() if isinstance(m, Quantizer)]


class QuantWeightParam(nn.Module):
    """Weight-only fake quantization of a raw (1, out, in) parameter, as a parametrization
    (``torch.nn.utils.parametrize``): reading the parameter gives its fake-quantized value.

    The weight is quantized along its contraction axis (the last) in the quantization domain, then,
    with a rotation, rotated back and cropped: ``x @ (Q(W H) H)^T = (x H) @ Q(W H)^T``, i.e. the FP
    activation is rotated with it, exactly. No activation quantizer: the product stays FP.
    """

    def __init__(self, weight: Tensor, cfg: QuantConfig) -> None:
        super().__init__()
        if weight.dim() != 3 or weight.shape[0] != 1:
            raise ValueError(f"a weight site needs a (1, out, in) parameter, got {tuple(weight.shape)}")
        self.wq = WeightQuantizer(cfg, weight.detach()[0])
        self.in_features = weight.shape[-1]

    def refresh(self, weight: Tensor) -> None:
        """Recompute the quantizer's rotated copy from the parameter's current FP value."""
        self.wq.w_dom = self.wq.to_domain(weight.detach()[0])

    def forward(self, original: Tensor) -> Tensor:
        t = self.wq()
        if self.wq.rotation != "official" and self.wq.rotation != "none":   # deploy: rotate back, crop
            t = hadamard(t, -1)[:, : self.in_features]
        return t.to(original.dtype)[None]
