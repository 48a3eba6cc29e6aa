"""Per-architecture quantization plans: *which* modules are quantized, as data.

A plan lists the quantized Linear layers (with their row splits: SwinIR's qkv is quantized as
three products, q, k and v, each with its own weight and input quantizer, as 2DQuant does)
and the attention sites (the ``Attend`` modules holding the two attention products). Every
stage reads the same plan: :func:`compsrt.quant.compress.compress_` swaps the sites for
fake-quant modules, :mod:`compsrt.quant.pack` writes their codes in plan order, and
:mod:`compsrt.runtime` rebuilds integer modules at the same sites. What the sites mean for
the maths is fixed by the module kinds and the QuantConfig:

- a Linear's product contracts over its input features, rotated (zero-padded to the next
  power of two) with ``rotation="deploy"``, as is the weight, offline;
- an attention site's q.k^T contracts over the head dim (q, k rotated along their last axis,
  10 -> 16 for SwinIR-light) and attn.v over the window's tokens (attn along its last axis,
  v along its token axis, 64 -> 64).

To quantize a new architecture, write its ``*_plan`` function and add it to :func:`plan_for`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..model.swinir import SwinIRLight

PLAN_VERSION = 1


@dataclass(frozen=True)
class LinearSite:
    path: str        # dotted module path of an nn.Linear
    splits: int = 1  # row blocks quantized as separate products (qkv: 3)


@dataclass(frozen=True)
class AttentionSite:
    path: str        # dotted module path of an Attend (softmax(q k^T s + bias) v)


@dataclass(frozen=True)
class QuantPlan:
    arch: str
    linears: tuple[LinearSite, ...]
    attentions: tuple[AttentionSite, ...]
    version: int = PLAN_VERSION


def swinir_plan(model: SwinIRLight) -> QuantPlan:
    """SwinIR-light (FP, compressed or packed: the plan follows the structure): in every Swin block, qkv (3 splits), proj, fc1, fc2 and the attention products.
    Convs, LayerNorms, biases and the relative-position bias stay FP."""
    linears, attentions = [], []
    for i, layer in enumerate(model.layers):
        for j, _ in enumerate(layer.residual_group.blocks):
            blk = f"layers.{i}.residual_group.blocks.{j}"
            linears += [LinearSite(f"{blk}.attn.qkv", 3), LinearSite(f"{blk}.attn.proj"),
                        LinearSite(f"{blk}.mlp.fc1"), LinearSite(f"{blk}.mlp.fc2")]
            attentions.append(AttentionSite(f"{blk}.attn.attend"))
    return QuantPlan("swinir-light", tuple(linears), tuple(attentions))


def plan_for(model: nn.Module) -> QuantPlan:
    """The plan of a supported FP model; ValueError for an architecture without one."""
    if isinstance(model, SwinIRLight):
        return swinir_plan(model)
    raise ValueError(f"no quantization plan for {type(model).__name__}; write one in compsrt/quant/plan.py")
