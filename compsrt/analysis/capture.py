"""Which tensors the analysis looks at, their three views, and the hooks that stream them.

The tensors come from the model's quantization plan (:func:`compsrt.quant.plan.plan_for`):

- weights: every quantized weight, a Linear's weight split into its ``splits`` row blocks (each
  block has its own quantizer: qkv -> q, k, v) and every weight-only parameter (MambaIRv2's scan
  projections, (1, out, in) -> (out, in)); contraction axis: the last;
- activations: the input of every quantized Linear, once (its ``splits`` input quantizers see the
  same tensor: the exact duplicates are dropped, :func:`quantizer_counts`), and the four operands of
  every attention site: q*scale and k (contraction: the head dim, last axis), the softmax
  attention (last axis) and v (its token axis, -2).

Views of a tensor x with contraction length C, n = C zero-padded to a power of two:

- ``before``: the C entries of each contraction vector as they are (no padding);
- ``after``: the rotation H_n pad(x) along the contraction axis, its coefficient 0 (the DC: the
  scaled sum) dropped: the n - 1 coefficients the deployable quantizer codes
  (``QuantConfig.exact_dc`` keeps the DC in FP);
- ``after_dc``: all n rotated coefficients (a rotation without exact DC).

The padding zeros are inputs of the rotation, never entries of a view: after the rotation they
are spread into the n coefficients, which carry exactly the energy of the C entries, and no
coefficient is a padding zero. (The official scripts padded the tensors along every axis and
counted the zeros that stayed: a concentration near zero the rotation did not make.)
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..kernels.hadamard import hadamard, next_pow2
from ..model.swinir import with_shift_mask
from ..quant.plan import QuantPlan, plan_for
from .stream import SAMPLE_SIZE, TensorStats

PER_CHUNK = 16384   # default entries sampled per activation and forward pass (before rotation)

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Spec:
    name: str    # unique: module path + which tensor ("...attn.qkv.weight[q]", "...attn.attend.attn")
    kind: str    # "weight" or "activation"
    group: str   # the name without its block prefix ("attn.qkv.weight[q]"): what tables and figures pool by
    dim: int     # the contraction axis, which the rotation acts on: -1 or -2


def model_plan(model: nn.Module, arch: str) -> tuple[QuantPlan, str]:
    """The model's quantization plan and its name: MambaIRv2-light's "official" layer set (what the
    official CompSRT code quantizes), SwinIR-light's only one."""
    layers = "official" if arch == "mambairv2-light" else ""
    plan = plan_for(model, layers)
    return plan, f'compsrt.quant.plan, layer set "{plan.layers}"'


def group_of(path: str) -> str:
    """A module ``path`` without its block prefix: everything up to the last index followed by a name
    ("layers.0.residual_group.layers.2.assm.route.0" -> "assm.route.0")."""
    parts = path.split(".")
    cut = max((i + 1 for i in range(len(parts) - 1) if parts[i].isdigit() and not parts[i + 1].isdigit()),
              default=0)
    return ".".join(parts[cut:])


def _spec(path: str, what: str, kind: str, dim: int) -> Spec:
    """The tensor ``what`` (".weight[q]", ".input", ".attn", ...) of the module at ``path``."""
    return Spec(path + what, kind, group_of(path) + what, dim)


def weight_tensors(model: nn.Module, plan: QuantPlan) -> list[tuple[Spec, Tensor]]:
    """Every quantized weight as a 2-D (rows, contraction) tensor, in plan order."""
    out = []
    for site in plan.linears:
        w = model.get_submodule(site.path).weight.detach()
        for i, block in enumerate(w.chunk(site.splits, 0)):
            tag = "" if site.splits == 1 else f"[{QKV[i] if site.splits == 3 else i}]"
            out.append((_spec(site.path, f".weight{tag}", "weight", -1), block))
    for site in plan.weights:
        p = getattr(model.get_submodule(site.path), site.param).detach()
        out.append((_spec(site.path, f".{site.param}", "weight", -1), p.reshape(-1, p.shape[-1])))
    return out


def activation_specs(plan: QuantPlan) -> list[Spec]:
    """Every distinct activation entering a quantizer, in plan order."""
    specs = [_spec(s.path, ".input", "activation", -1) for s in plan.linears]
    for s in plan.attentions:
        specs += [_spec(s.path, f".{op}", "activation", dim) for op, dim in (("q", -1), ("k", -1), ("attn", -1),
                                                                              ("v", -2))]
    return specs


def quantizer_counts(plan: QuantPlan) -> dict[str, int]:
    """How many weight and activation quantizers the plan has, and the exact duplicates among the
    activations (the ``splits - 1`` extra quantizers of each split Linear's one input)."""
    splits = sum(s.splits for s in plan.linears)
    return {"weight_quantizers": splits + len(plan.weights),
            "activation_quantizers": splits + 4 * len(plan.attentions),
            "duplicates_dropped": splits - len(plan.linears)}


class Views:
    """The ``before``, ``after`` (AC) and DC statistics of one tensor, fed chunk by chunk.

    Count, min and max are over every entry of every chunk. The moments, shares and samples are
    over a seeded uniform random subset of each chunk's entries (before and rotated alike): a
    fixed fraction, set by the first chunk so that it gives ``per_chunk`` entries before rotation
    (0 = every entry, the weights' case).
    """

    def __init__(self, spec: Spec, sample_size: int = SAMPLE_SIZE, seed: int = 0, index: int = 0,
                 per_chunk: int = PER_CHUNK) -> None:
        self.spec = spec
        self.before, self.ac, self.dc = (TensorStats(sample_size, [seed, index, v]) for v in range(3))
        self.rng = np.random.default_rng([seed, index, 3])
        self.per_chunk = per_chunk
        self.rate: float | None = None

    def _pick(self, n: int) -> Tensor | None:
        """Indices of the entries of an n-entry chunk to sample (None = all of them)."""
        m = round(n * self.rate)
        return None if m >= n else torch.from_numpy(self.rng.choice(n, m, replace=False))

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        if self.rate is None:
            self.rate = 1.0 if self.per_chunk <= 0 else min(1.0, self.per_chunk / max(x.numel(), 1))
        d = self.spec.dim
        self.before.observe(x)
        idx = self._pick(x.numel())
        self.before.add_sample(x.reshape(-1).float() if idx is None else torch.take(x, idx).float())
        r = hadamard(x.float(), d)
        n = r.shape[d]
        self.dc.observe(r.narrow(d, 0, 1))
        self.ac.observe(r.narrow(d, 1, n - 1))
        idx = self._pick(r.numel())
        if idx is None:
            idx = torch.arange(r.numel())
        values = r.reshape(-1)[idx]
        is_dc = (idx // r.stride(d)) % n == 0   # r is contiguous: the coefficient index along d
        self.dc.add_sample(values[is_dc])
        self.ac.add_sample(values[~is_dc])

    def summary(self, bits: int) -> dict:
        """The three views' statistics; ``quant_error``: the total squared error of quantizing the
        view per tensor at ``bits`` over the tensor's energy (the rotation keeps energy, and the
        exact DC adds no error), so before and after compare directly."""
        views = {"before": self.before.summary(bits), "after": self.ac.summary(bits),
                 "after_dc": self.ac.merge(self.dc).summary(bits)}
        energy = views["before"]["mean_square"] * views["before"]["count"]
        for v in views.values():
            v["quant_error"] = v["mse"] * v["count"] / energy if energy > 0 else float("nan")
        return views


def weight_views(model: nn.Module, plan: QuantPlan, seed: int = 0) -> list[Views]:
    """Statistics of every quantized weight, each kept whole (its sample is the whole tensor)."""
    out = []
    for i, (spec, w) in enumerate(weight_tensors(model, plan)):
        views = Views(spec, w.shape[0] * next_pow2(w.shape[1]), seed, i, per_chunk=0)
        views.add(w)
        out.append(views)
    return out


@contextmanager
def streaming(model: nn.Module, plan: QuantPlan, sink: Callable[[str, Tensor], None]) -> Iterator[None]:
    """While inside, every forward pass of ``model`` hands each activation of
    :func:`activation_specs` to ``sink(name, tensor)`` (forward pre-hooks, removed on exit)."""
    hooks = []

    def linear_hook(name: str):
        return lambda mod, args: sink(name, args[0])

    def attend_hook(path: str):
        def hook(mod, args):
            q, k, v, bias, scale = args[:5]
            bias = with_shift_mask(bias, args[5] if len(args) > 5 else None)   # a shifted block's mask
            qs = q * scale
            sink(f"{path}.q", qs)
            sink(f"{path}.k", k)
            sink(f"{path}.attn", (qs @ k.transpose(-2, -1) + bias.to(q.dtype)).softmax(-1))
            sink(f"{path}.v", v)
        return hook

    try:
        for s in plan.linears:
            hooks.append(model.get_submodule(s.path).register_forward_pre_hook(linear_hook(f"{s.path}.input")))
        for s in plan.attentions:
            hooks.append(model.get_submodule(s.path).register_forward_pre_hook(attend_hook(s.path)))
        yield
    finally:
        for h in hooks:
            h.remove()
