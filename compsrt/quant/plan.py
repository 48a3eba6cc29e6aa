"""Per-architecture quantization plans: *which* modules are quantized, as data.

A plan lists three kinds of sites:

- Linear layers (:class:`LinearSite`, with their row splits: a qkv Linear is quantized as three
  products, q, k and v, each with its own weight and input quantizer, as 2DQuant does);
- attention sites (:class:`AttentionSite`: the ``Attend`` modules holding the two attention
  products);
- raw weight parameters quantized weight-only (:class:`WeightSite`: MambaIRv2's scan
  projections, which the model multiplies with an FP activation itself).

Every stage reads the same plan: :func:`compsrt.quant.compress.compress_` swaps the sites for
fake-quant modules, :mod:`compsrt.quant.pack` writes their codes in plan order, and
:mod:`compsrt.runtime` rebuilds integer modules at the same sites. What the sites mean for
the maths is fixed by the module kinds and the QuantConfig:

- a Linear's product contracts over its input features, rotated (zero-padded to the next
  power of two) with ``rotation="deploy"``, as is the weight, offline;
- an attention site's q.k^T contracts over the head dim (q, k rotated along their last axis,
  10 -> 16 for SwinIR-light) and attn.v over the window's tokens (attn along its last axis,
  v along its token axis, 64 -> 64);
- a weight site's parameter (1, out, in) contracts over its last axis; with a rotation it is
  quantized rotated and rotated back, which equals rotating its FP activation with it exactly
  (the Hadamard transform is orthogonal); the runtime dequantizes it once, at load.

Layer sets (``QuantConfig.layers``, :data:`LAYER_SETS`): SwinIR-light has one, "full". For
MambaIRv2-light, "official" is what the official CompSRT code quantizes (its
``basicsr/models/mambaquant_model.py`` with the shipped options, ``qkv_separation: True``:
wqkv as q, k, v); docs/mambairv2_quant.md has the table and what its forward really calls.

To quantize a new architecture, write its ``*_plan`` function and add it to :func:`plan_for`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..model.archs import arch_of
from ..model.mambairv2 import MambaIRv2Light
from ..model.swinir import SwinIRLight

PLAN_VERSION = 1

# architecture -> its layer sets, the default first
LAYER_SETS = {"swinir-light": ("full",), "mambairv2-light": ("official", "full")}


@dataclass(frozen=True)
class LinearSite:
    path: str        # dotted module path of an nn.Linear
    splits: int = 1  # row blocks quantized as separate products (qkv: 3)


@dataclass(frozen=True)
class AttentionSite:
    path: str        # dotted module path of an Attend (softmax(q k^T s + bias) v)


@dataclass(frozen=True)
class WeightSite:
    path: str        # dotted path of the module holding the parameter
    param: str       # its name there; shape (1, out, in), contracted over the last axis


@dataclass(frozen=True)
class QuantPlan:
    arch: str
    linears: tuple[LinearSite, ...]
    attentions: tuple[AttentionSite, ...]
    weights: tuple[WeightSite, ...] = ()
    layers: str = "full"
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


def mambairv2_plan(model: MambaIRv2Light, layers: str = "official") -> QuantPlan:
    """MambaIRv2-light, layer set "official" (what the official CompSRT code quantizes): in every
    AttentiveLayer, wqkv (3 splits: q, k, v), win_mhsa.proj, both GatedMLPs' fc1 and fc2, the ASSM's
    out_proj and its router's two Linears (weight and input quantizers), and the scan's
    x_proj_weight and dt_projs_weight (weight-only). The attention products, the scan, in_proj,
    convs, norms, biases, embeddings and the routing stay FP.

    Layer set "full": "official" plus the window attention's two products (q k^T over the head
    dim, attn v over the window's 256 tokens, as SwinIR-light's) and the ASSM's in_proj (a 1x1
    conv officially, a Linear on the tokens here); the selective scan stays FP."""
    linears, weights, attentions = [], [], []
    for i, block in enumerate(model.layers):
        for j, _ in enumerate(block.residual_group.layers):
            lay = f"layers.{i}.residual_group.layers.{j}"
            linears += [LinearSite(f"{lay}.wqkv", 3), LinearSite(f"{lay}.win_mhsa.proj"),
                        LinearSite(f"{lay}.convffn1.fc1"), LinearSite(f"{lay}.convffn1.fc2"),
                        LinearSite(f"{lay}.convffn2.fc1"), LinearSite(f"{lay}.convffn2.fc2"),
                        LinearSite(f"{lay}.assm.out_proj"), LinearSite(f"{lay}.assm.route.0"),
                        LinearSite(f"{lay}.assm.route.2")]
            weights += [WeightSite(f"{lay}.assm.selectiveScan", "x_proj_weight"),
                        WeightSite(f"{lay}.assm.selectiveScan", "dt_projs_weight")]
            if layers == "full":
                linears.append(LinearSite(f"{lay}.assm.in_proj.0"))
                attentions.append(AttentionSite(f"{lay}.win_mhsa.attend"))
    return QuantPlan("mambairv2-light", tuple(linears), tuple(attentions), tuple(weights), layers)


def check_layers(arch: str, layers: str) -> str:
    """The layer set ``layers`` resolved for ``arch`` ("" = its default); ValueError if it has no such set."""
    sets = LAYER_SETS[arch]
    if layers and layers not in sets:
        raise ValueError(f"--layers {layers} does not exist for {arch}; choose {' or '.join(sets)}")
    return layers or sets[0]


def plan_for(model: nn.Module, layers: str = "") -> QuantPlan:
    """The plan of a supported FP model (or its compressed or packed form) for the layer set
    ``layers`` ("" = the architecture's default); ValueError for an architecture without one or
    a layer set it does not have."""
    try:
        arch = arch_of(model)
    except ValueError:
        raise ValueError(f"no quantization plan for {type(model).__name__}; write one in compsrt/quant/plan.py") from None
    layers = check_layers(arch, layers)
    if arch == "swinir-light":
        return swinir_plan(model)
    return mambairv2_plan(model, layers)
