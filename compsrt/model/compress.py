"""``compress_(model, cfg)``: turn an FP SwinIR-light into its quantized (and pruned) form.

Per Swin block: qkv (split into q, k, v, each with its own weight and input quantizer),
proj, fc1, fc2 become :class:`QuantLinear`; the attention's two products go through
:class:`QuantAttend`. Convs, norms, biases and the relative-position bias stay FP.

A calibrated checkpoint is one safetensors file: the FP tensors under their official names,
every quantizer's l, u, s2, z2, the pruning masks (uint8), and a JSON header (``compsrt``
metadata key) holding the format, version, architecture and both configs. No pickle.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import QuantConfig, SwinIRConfig
from ..errors import CompsrtError
from .qmodules import QuantAttend, QuantLinear, WeightQuantizer, quantizers
from .swinir import SwinIRLight, WindowAttention

FORMAT = "compsrt-calibrated"
VERSION = 1


class QuantWindowAttention(WindowAttention):
    """WindowAttention whose q.k^T and attn.v products are quantized."""

    def __init__(self, fp: WindowAttention, cfg: QuantConfig) -> None:
        ws = int(round((fp.relative_position_index.shape[0]) ** 0.5))
        super().__init__(fp.qkv.in_features, ws, fp.heads)
        self.load_state_dict(fp.state_dict())
        self.qkv = QuantLinear(fp.qkv, cfg, splits=3)
        self.proj = QuantLinear(fp.proj, cfg)
        self.quant = QuantAttend(cfg)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        return self.quant(q, k, v, bias, self.scale)


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
    """Swap the quantized modules in place (FP weights frozen); returns ``model``.

    Pruning masks are fixed here, from the FP weights in the quantization domain, before any
    bound search.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for blk in layer.residual_group.blocks:
            blk.attn = QuantWindowAttention(blk.attn, cfg)
            blk.mlp.fc1 = QuantLinear(blk.mlp.fc1, cfg)
            blk.mlp.fc2 = QuantLinear(blk.mlp.fc2, cfg)
    if cfg.prune > 0:
        for m in model.modules():
            if isinstance(m, WeightQuantizer):
                m.set_mask(prune_mask(m.quantized_part(), cfg.prune, cfg.prune_mode))
    model.quant_cfg = cfg
    return model


def set_calibrating(model: nn.Module, on: bool, **search_kw) -> None:
    for q in quantizers(model):
        q.calibrating = on
        q.search_kw = search_kw


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

    from .weights import load_into

    h = _header(path)
    cfg: SwinIRConfig = h["swinir"]
    if scale is not None and cfg.scale != scale:
        raise CompsrtError(f"{path}: this is an x{cfg.scale} checkpoint but --scale {scale} was asked; "
                           f"use --scale {cfg.scale}")
    sd = load_file(str(path))
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
    sd = {k: (v != 0 if k.endswith(".mask") else v) for k, v in sd.items()}
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
