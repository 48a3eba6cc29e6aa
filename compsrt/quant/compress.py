"""``compress_(model, cfg)``: turn an FP model into its fake-quantized (and pruned) form.

The model's :class:`~compsrt.quant.plan.QuantPlan` names the sites: each Linear becomes a
:class:`QuantLinear` (qkv split into q, k, v, each with its own weight and input quantizer),
each attention site a :class:`QuantAttend`. Convs, norms, biases and the relative-position
bias stay FP.

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

from ..config import QuantConfig, SwinIRConfig
from ..errors import CompsrtError
from ..model.swinir import Attend, SwinIRLight
from .plan import plan_for
from .qmodules import BoundSearch, QuantAttend, QuantLinear, QuantOverride, Quantizer, WeightQuantizer, quantizers

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


def compress_(model: SwinIRLight, cfg: QuantConfig) -> SwinIRLight:
    """Swap the plan's sites for fake-quant modules in place (FP weights frozen); returns ``model``.

    Pruning masks are fixed here, from the FP weights in the quantization domain, before any
    bound search.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    plan = plan_for(model)
    for site in plan.linears:
        fp = model.get_submodule(site.path)
        if not isinstance(fp, nn.Linear):
            raise ValueError(f"{site.path}: expected an FP nn.Linear, got {type(fp).__name__} (compressed twice?)")
        model.set_submodule(site.path, QuantLinear(fp, cfg, splits=site.splits))
    for site in plan.attentions:
        if not isinstance(model.get_submodule(site.path), Attend):
            raise ValueError(f"{site.path}: expected an FP Attend")
        model.set_submodule(site.path, QuantAttend(cfg))
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


def save_calibrated(model: SwinIRLight, path: Path, provenance: dict | None = None) -> None:
    """Write a calibrated model as one safetensors file with a JSON header, atomically."""
    from safetensors.torch import save_file

    from ..io import atomic_path

    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        sd[k] = v.to(torch.uint8) if v.dtype == torch.bool else v.float().contiguous()
    header = {"format": FORMAT, "version": VERSION, "arch": "swinir-light", "swinir": asdict(model.cfg),
              "quant": asdict(model.quant_cfg), "provenance": provenance or {}}
    with atomic_path(Path(path)) as tmp:
        save_file(sd, str(tmp), metadata={"compsrt": json.dumps(header)})


def _header(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    try:
        h = json.loads(meta["compsrt"])
        if h["format"] != FORMAT or h["arch"] != "swinir-light":
            raise ValueError("format/arch")
        if int(h["version"]) > VERSION:
            raise CompsrtError(f"{path}: checkpoint format version {h['version']} is newer than this compsrt "
                               f"({VERSION}); upgrade compsrt")
        sw = h["swinir"]
        sw["depths"], sw["num_heads"], sw["rgb_mean"] = tuple(sw["depths"]), tuple(sw["num_heads"]), tuple(sw["rgb_mean"])
        return {"swinir": SwinIRConfig(**sw), "quant": QuantConfig(**h["quant"]), "provenance": h.get("provenance", {})}
    except CompsrtError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise CompsrtError(f"{path}: malformed compsrt header ({e}); the file is damaged or not ours") from None


def load_calibrated(path: Path, scale: int | None = None) -> SwinIRLight:
    """Rebuild a calibrated model from :func:`save_calibrated`'s file, validating every tensor."""
    from safetensors.torch import load_file

    from ..model.weights import load_into

    h = _header(path)
    cfg: SwinIRConfig = h["swinir"]
    if scale is not None and cfg.scale != scale:
        raise CompsrtError(f"{path}: this is an x{cfg.scale} checkpoint but --scale {scale} was asked; "
                           f"use --scale {cfg.scale}")
    sd = load_file(str(path))
    bad = next((k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CompsrtError(f"{path}: tensor {bad} holds NaN or Inf; the checkpoint is damaged")
    model = compress_(SwinIRLight(cfg), h["quant"])
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
