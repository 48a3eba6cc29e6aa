"""``compress_(model, cfg)``: turn an FP model into its fake-quantized (and pruned) form.

The model's :class:`~compsrt.quant.plan.QuantPlan` (for ``QuantConfig.layers``) names the sites:
each Linear becomes a :class:`QuantLinear` (qkv split into q, k, v, each with its own weight and
input quantizer), each attention site a :class:`QuantAttend`, each weight site's parameter gets a
:class:`QuantWeightParam` parametrization (its key in the state dict becomes
``<module>.parametrizations.<param>.original``). Everything else stays FP.

A calibrated checkpoint (format "compsrt-calibrated", the training form) is one safetensors
file: the FP tensors under their official names, every quantizer's l, u, s2, z2, the pruning
masks (uint8), and a JSON header (``compsrt`` metadata key) holding the format, version,
architecture and both configs. No pickle. What ships is the packed file made from it
(:mod:`compsrt.quant.pack`).
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from torch.nn.utils import parametrize

from ..config import QuantConfig
from ..errors import CompsrtError, check_asked
from ..model.archs import ARCHS, arch_of, build, config_dict, config_from_dict
from ..model.swinir import Attend
from .plan import plan_for
from .qmodules import (BoundSearch, QuantAttend, QuantLinear, QuantOverride, Quantizer, QuantWeightParam, WeightQuantizer,
                       quantizers)

FORMAT = "compsrt-calibrated"
VERSION = 1


def prune_mask(w_dom: Tensor, frac: float, mode: str) -> Tensor:
    """Keep-mask of a weight in its quantization domain: the ``frac`` smallest-magnitude
    coefficients of the whole out x n tensor (unstructured) or the ``frac`` output rows of
    smallest mean magnitude (channel) are pruned. Deterministic (a sort, no sampling)."""
    if mode == "channel":
        k = int(round(frac * w_dom.shape[0]))
        keep = torch.ones(w_dom.shape[0], dtype=torch.bool)
        keep[torch.argsort(w_dom.abs().mean(1), stable=True)[:k]] = False
        return keep[:, None].expand_as(w_dom).clone()
    k = int(round(frac * w_dom.numel()))
    keep = torch.ones(w_dom.numel(), dtype=torch.bool)
    keep[torch.argsort(w_dom.abs().reshape(-1), stable=True)[:k]] = False
    return keep.view_as(w_dom)


def compress_(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Swap the plan's sites for fake-quant modules in place (FP weights frozen); returns ``model``.

    Pruning masks are fixed here, from the FP weights in the quantization domain, before any
    bound search.

    Raises:
        ValueError: an architecture without a plan, a layer set it does not have, a model compressed twice.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    plan = plan_for(model, cfg.layers)
    for site in plan.linears:
        fp = model.get_submodule(site.path)
        if not isinstance(fp, nn.Linear):
            raise ValueError(f"{site.path}: expected an FP nn.Linear, got {type(fp).__name__} (compressed twice?)")
        model.set_submodule(site.path, QuantLinear(fp, cfg, splits=site.splits))
    for site in plan.attentions:
        if not isinstance(model.get_submodule(site.path), Attend):
            raise ValueError(f"{site.path}: expected an FP Attend")
        model.set_submodule(site.path, QuantAttend(cfg))
    for site in plan.weights:
        holder = model.get_submodule(site.path)
        if parametrize.is_parametrized(holder, site.param):
            raise ValueError(f"{site.path}.{site.param}: already quantized (compressed twice?)")
        parametrize.register_parametrization(holder, site.param, QuantWeightParam(getattr(holder, site.param), cfg),
                                             unsafe=True)
    if cfg.prune > 0:
        for m in model.modules():
            if isinstance(m, WeightQuantizer):
                m.set_mask(prune_mask(m.quantized_part(), cfg.prune, cfg.prune_mode))
    model.quant_cfg = cfg
    return model


def set_calibrating(model: nn.Module, search: BoundSearch | None) -> None:
    """Make every quantizer search its bounds with ``search`` on what it receives (DOBI:
    ``functools.partial(compsrt.calib.dobi.dobi, ...)``); None ends the search."""
    for q in quantizers(model):
        q.searcher = search


@contextlib.contextmanager
def overriding(target: nn.Module | Iterable[Quantizer], fn: QuantOverride | None) -> Iterator[list[Quantizer]]:
    """Within the block, every quantizer of ``target`` (a model, or the quantizers themselves)
    returns ``fn(quantizer, t, dc_dim)`` instead of fake-quantizing ``t`` (see
    :class:`~compsrt.quant.qmodules.Quantizer` ``.override``); on exit each gets back the
    override it had. Yields the quantizers."""
    qs = quantizers(target) if isinstance(target, nn.Module) else list(target)
    before = [q.override for q in qs]
    for q in qs:
        q.override = fn
    try:
        yield qs
    finally:
        for q, old in zip(qs, before):
            q.override = old


def site_inputs(model: nn.Module, x: Tensor) -> dict[str, tuple]:
    """The positional inputs of every QuantLinear and QuantAttend of ``model`` when it runs on
    ``x`` (without grad), by module name (forward hooks, removed afterwards)."""
    seen: dict[str, tuple] = {}
    hooks = [mod.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, args))
             for name, mod in model.named_modules() if isinstance(mod, (QuantLinear, QuantAttend))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def quant_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for q in quantizers(model) for p in (q.lower, q.upper, q.step_extra, q.zero_extra) if p.requires_grad]


def save_calibrated(model: nn.Module, path: Path, provenance: dict | None = None) -> None:
    """Write a calibrated model as one safetensors file with a JSON header, atomically."""
    from safetensors.torch import save_file

    from ..io import atomic_path

    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        sd[k] = v.to(torch.uint8) if v.dtype == torch.bool else v.float().contiguous()
    header = {"format": FORMAT, "version": VERSION, "arch": arch_of(model), "model": config_dict(model),
              "quant": asdict(model.quant_cfg), "provenance": provenance or {}}
    with atomic_path(Path(path)) as tmp:
        save_file(sd, str(tmp), metadata={"compsrt": json.dumps(header)})


def model_config(h: dict) -> tuple[str, object]:
    """(arch, validated model config) of a calibrated or packed header; files written before
    MambaIRv2-light could be quantized hold SwinIR-light's config under "swinir".
    Raises KeyError, TypeError or ValueError for a malformed one."""
    arch = h["arch"]
    if arch not in ARCHS:
        raise ValueError(f"architecture {arch!r} unknown")
    return arch, config_from_dict(arch, h["model"] if "model" in h else h["swinir"])


def _header(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    try:
        h = json.loads(meta["compsrt"])
        if h["format"] != FORMAT:
            raise ValueError("format")
        if int(h["version"]) > VERSION:
            raise CompsrtError(f"{path}: checkpoint format version {h['version']} is newer than this compsrt "
                               f"({VERSION}); upgrade compsrt")
        arch, cfg = model_config(h)
        return {"arch": arch, "model": cfg, "quant": QuantConfig(**h["quant"]), "provenance": h.get("provenance", {})}
    except CompsrtError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise CompsrtError(f"{path}: malformed compsrt header ({e}); the file is damaged or not ours") from None


def load_calibrated(path: Path, scale: int | None = None, arch: str | None = None) -> nn.Module:
    """Rebuild a calibrated model from :func:`save_calibrated`'s file, validating every tensor.

    Raises:
        CompsrtError: a damaged file, or one of another scale than ``scale`` or another
            architecture than ``arch`` (None: any).
    """
    from safetensors.torch import load_file

    from ..model.weights import load_into

    h = _header(path)
    cfg = h["model"]
    check_asked(path, "checkpoint", h["arch"], cfg.scale, arch, scale)
    sd = load_file(str(path))
    bad = next((k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CompsrtError(f"{path}: tensor {bad} holds NaN or Inf; the checkpoint is damaged")
    try:
        model = compress_(build(h["arch"], cfg), h["quant"])
    except ValueError as e:
        raise CompsrtError(f"{path}: {e}") from None
    for name, m in model.named_modules():
        if isinstance(m, WeightQuantizer):
            key = f"{name}.mask"
            if key in sd:
                want = m.quantized_part().shape
                if sd[key].shape != want:
                    raise CompsrtError(f"{path}: {key} has shape {tuple(sd[key].shape)}, expected {tuple(want)}")
                m.set_mask(sd[key] != 0)
            elif h["quant"].prune > 0:
                raise CompsrtError(f"{path}: pruning {h['quant'].prune} declared but {key} is missing")
    # Files written before the attention products became their own site named them attn.quant.*.
    sd = {k.replace(".attn.quant.", ".attn.attend."): (v != 0 if k.endswith(".mask") else v) for k, v in sd.items()}
    load_into(model, sd, str(path))
    refresh_weight_domains(model)  # the FP weights changed after construction
    model.provenance = h["provenance"]
    return model.eval()


def refresh_weight_domains(model: nn.Module) -> None:
    """Recompute each weight quantizer's rotated copy from its layer's current FP weight."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            rows = m.weight.shape[0] // m.splits
            for i, wq in enumerate(m.wq):
                wq.w_dom = wq.to_domain(m.weight.detach()[i * rows:(i + 1) * rows])
        if parametrize.is_parametrized(m):
            for name, plist in m.parametrizations.items():
                for p in plist:
                    if isinstance(p, QuantWeightParam):
                        p.refresh(plist.original)
