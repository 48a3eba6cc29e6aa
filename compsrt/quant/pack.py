"""``pack``: a calibrated fake-quant model -> the packed checkpoint the integer runtime runs.

One safetensors file (format "compsrt-packed", no pickle) holding only what the runtime needs:

- ``quant.codes`` int32 (1, bits, W): the b-bit weight codes of every quantized weight, in plan
  order (Linear sites, then weight sites; per site split, then row), as one bit-plane stream
  (:func:`~compsrt.kernels.bitpack.pack_flat`).
  Per layer the coefficient grid is its rotated, padded weight (out x n) without the exact-DC
  column when that is kept FP: all of the grid's codes, or with pruning only the kept ones.
- ``quant.masks`` int32 (1, 1, W'): the 1-bit keep-masks of the pruned grids, same order
  (absent without pruning). Pruned coefficients have no code: they dequantize to exactly 0.
- ``quant.qparams`` fp32 (Q, 4): every quantizer's ``[l, u, s2, z2]`` (s2, z2 = 0 where the
  method does not learn them), in plan order: per Linear site its weight quantizers, then its
  input quantizers; per weight site its weight quantizer; per attention site q, k, attn, v.
- ``quant.dc`` (fp dtype): the per-row FP offset of every quantized weight, row order as the
  codes (:meth:`~compsrt.quant.qmodules.WeightQuantizer.fp_offset`): its exact-DC column
  (rotation "deploy" with ``exact_dc``), or sqrt(n) x its row mean (``row_mean``); absent without.
- ``fp.values`` (fp16 by default, or fp32): every FP tensor (convs, norms, biases,
  relative-position bias) flattened and concatenated in the FP model's state-dict order, the
  quantized weights left out. One tensor instead of ~230 named ones keeps the safetensors
  index at a few hundred bytes instead of ~26 KB (3% of a 4-bit file); the names and shapes
  come from the architecture config, as the codes' layout comes from the plan.

The JSON header (``compsrt`` metadata key) holds the format, version, architecture, its config
("model"; files of the first packed version name SwinIR-light's "swinir"), the layer set, the quantization config,
bits, method, rotation, pruning, the source weights' sha256, the command, and a sha256 over the
header's other fields and every tensor's name, dtype, shape and bytes; :func:`read_packed`
refuses a file whose sha256 does not match, then checks every tensor's dtype and size.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..config import QuantConfig
from ..errors import CompsrtError
from ..kernels.bitpack import pack_flat, unpack_flat
from ..kernels.fake_quant import fake_quant_ref
from ..kernels.hadamard import next_pow2
from ..model.archs import ARCHS, arch_of, build, config_dict
from .compress import model_config
from .plan import QuantPlan, check_layers, plan_for
from .qmodules import Quantizer, QuantAttend, QuantLinear, QuantWeightParam, WeightQuantizer

FORMAT = "compsrt-packed"
VERSION = 2                 # version 1 is the calibrated (fake-quant) format it is made from
FP_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


@dataclass
class LayerGrid:
    """Where one quantized weight's codes live: ``rows`` x ``cols`` coefficients starting at
    column ``dc`` (1 with the exact DC) of its rotated (``n`` wide) weight ``<path>.<param>``:
    a Linear site's weight (``param`` "weight", with input quantizers) or a weight site's raw
    (1, rows, in) parameter (``weight_only``)."""
    path: str
    splits: int
    rows: int
    n: int
    dc: int
    param: str = "weight"
    weight_only: bool = False

    @property
    def key(self) -> str:
        """The state-dict name of the FP tensor the codes replace."""
        return f"{self.path}.{self.param}"

    @property
    def n_quantizers(self) -> int:
        return self.splits if self.weight_only else 2 * self.splits

    @property
    def cols(self) -> int:
        return self.n - self.dc


def _quantizer_params(q: Quantizer) -> Tensor:
    s2, z2 = q.extras()
    zero = torch.zeros((), dtype=torch.float32)
    return torch.stack([q.lower.detach().float(), q.upper.detach().float(),
                        zero if s2 is None else s2.detach().float(), zero if z2 is None else z2.detach().float()])


def layer_grids(model: nn.Module, plan: QuantPlan, cfg: QuantConfig) -> list[LayerGrid]:
    """The coefficient grid of every Linear and weight site, from the FP (or fake-quant) model's shapes."""
    dc = int(cfg.exact_dc and cfg.rotation == "deploy")
    width = lambda in_f: in_f if cfg.rotation == "none" else next_pow2(in_f)   # noqa: E731
    grids = []
    for site in plan.linears:
        out_f, in_f = model.get_submodule(site.path).weight.shape
        grids.append(LayerGrid(site.path, site.splits, out_f, width(in_f), dc))
    for site in plan.weights:
        holder = model.get_submodule(site.path)
        quantized = parametrize.is_parametrized(holder, site.param)   # the FP parameter, not its fake quantization
        shape = (holder.parametrizations[site.param].original if quantized else getattr(holder, site.param)).shape
        grids.append(LayerGrid(site.path, 1, shape[1], width(shape[2]), dc, site.param, True))
    return grids


def grid_quantizers(model: nn.Module, grid: LayerGrid) -> tuple[list[WeightQuantizer], list[Quantizer]]:
    """A compressed model's weight quantizers (one per split) and input quantizers (none for a
    weight site) of ``grid``."""
    if grid.weight_only:
        param: QuantWeightParam = model.get_submodule(grid.path).parametrizations[grid.param][0]
        return [param.wq], []
    lin: QuantLinear = model.get_submodule(grid.path)
    return list(lin.wq), list(lin.aq)


def has_fp_offsets(grids: list[LayerGrid], cfg: QuantConfig) -> bool:
    """Whether the file stores a per-row FP offset per weight row (``quant.dc``): the exact DC
    (a grid starting at column 1) or the row mean."""
    return cfg.row_mean or any(g.dc for g in grids)


def pack_model(model: nn.Module, fp_dtype: str = "fp16", provenance: dict | None = None,
               source_sha256: str = "", command: str = "") -> tuple[dict[str, Tensor], dict]:
    """The packed tensors and header of a calibrated model (see the module docstring).

    Raises:
        CompsrtError: a configuration the integer runtime cannot run (8 bits, official rotation).
    """
    cfg: QuantConfig = model.quant_cfg
    if cfg.bits not in (2, 3, 4):
        raise CompsrtError(f"packing supports 2, 3 and 4 bits, this model has {cfg.bits}; 8 bits is a "
                           "fake-quant sanity check only")
    if cfg.rotation == "official":
        raise CompsrtError("the official rotate-back mode quantizes operands that are rotated back before the "
                           "product, which no integer product can run; calibrate with the deployable rotation")
    if fp_dtype not in FP_DTYPES:
        raise ValueError(f"fp_dtype must be one of {list(FP_DTYPES)}, got {fp_dtype!r}")
    plan = plan_for(model, cfg.layers)
    codes, masks, qparams, dcs = [], [], [], []
    for grid in layer_grids(model, plan, cfg):
        wqs, aqs = grid_quantizers(model, grid)
        for wq in wqs:
            part = wq.quantized_part()
            s2, z2 = wq.extras()
            _, q = fake_quant_ref(part, wq.lower, wq.upper, cfg.bits, s2, z2, return_codes=True)
            if wq.mask is not None:
                masks.append(wq.mask.reshape(-1))
                q = q[wq.mask]
            codes.append(q.reshape(-1))
            offset = wq.fp_offset()   # the exact-DC column or sqrt(n) x the row mean
            if offset is not None:
                dcs.append(offset)
        qparams += [_quantizer_params(q) for q in wqs + aqs]
    for site in plan.attentions:
        att: QuantAttend = model.get_submodule(site.path)
        qparams += [_quantizer_params(q) for q in (att.q, att.k, att.a, att.v)]
    dt = FP_DTYPES[fp_dtype]
    tensors = {"quant.codes": pack_flat(torch.cat(codes), cfg.bits),
               "quant.qparams": torch.stack(qparams).contiguous()}
    if masks:
        tensors["quant.masks"] = pack_flat(torch.cat(masks).to(torch.uint8), 1)
    if dcs:
        tensors["quant.dc"] = torch.cat(dcs).to(dt).contiguous()
    sd = model.state_dict()
    arch = arch_of(model)
    skeleton, _, grids = skeleton_and_grids(arch, model.cfg, cfg)   # the FP names, in the FP order
    layout = fp_layout(skeleton, grids)
    tensors["fp.values"] = torch.cat([sd[k].detach().cpu().reshape(-1).to(dt) for k in layout])
    prov = provenance or getattr(model, "provenance", {}) or {}
    header = {"format": FORMAT, "version": VERSION, "arch": arch, "plan_version": plan.version,
              "model": config_dict(model), "layers": plan.layers, "quant": asdict(cfg), "bits": cfg.bits,
              "method": prov.get("method", "unknown"), "rotation": cfg.rotation,
              "pruning": {"fraction": cfg.prune, "mode": cfg.prune_mode if cfg.prune else "none"},
              "fp_dtype": fp_dtype, "source_sha256": source_sha256, "command": command, "provenance": prov}
    return tensors, header


def skeleton_and_grids(arch: str, mcfg, qcfg: QuantConfig) -> tuple[nn.Module, QuantPlan, list[LayerGrid]]:
    """The FP model of ``arch`` with config ``mcfg`` on the meta device (shapes only: nothing
    allocated), its plan for ``qcfg.layers`` and its grids."""
    with torch.device("meta"):
        skeleton = build(arch, mcfg)
    plan = plan_for(skeleton, qcfg.layers)
    return skeleton, plan, layer_grids(skeleton, plan, qcfg)


def fp_layout(skeleton: nn.Module, grids: list[LayerGrid]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the FP tensors stored in ``fp.values``, in their order."""
    quantized = {g.key for g in grids}
    return {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if k not in quantized}


def content_sha256(tensors: dict[str, Tensor], header: dict) -> str:
    """sha256 over the header (without this field) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_packed(tensors: dict[str, Tensor], header: dict, path: Path) -> None:
    """Write a packed checkpoint atomically, its sha256 in the header."""
    from safetensors.torch import save_file

    from ..io import atomic_path

    header = {**header, "sha256": content_sha256(tensors, header)}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={"compsrt": json.dumps(header)})


def _bad(path: Path, what: str) -> CompsrtError:
    return CompsrtError(f"{path}: {what}; the packed file is damaged or not a compsrt packed model "
                        "(re-run python -m compsrt.pack or calibration)")


def _configs(path: Path, h: dict) -> tuple[str, object, QuantConfig]:
    """The header's architecture, model and quantization configs, validated before anything is built
    (each model config bounds its own sizes)."""
    try:
        arch, mcfg = model_config(h)
        qcfg = QuantConfig(**h["quant"])
        plan_layers = qcfg.layers
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise _bad(path, f"invalid model or quantization configuration ({e})") from None
    if qcfg.bits not in (2, 3, 4) or qcfg.rotation == "official":
        raise _bad(path, f"bits {qcfg.bits} / rotation {qcfg.rotation!r} cannot be packed")
    try:
        check_layers(arch, plan_layers)
    except ValueError as e:
        raise _bad(path, str(e)) from None
    return arch, mcfg, qcfg


def read_header(path: Path) -> dict:
    """The JSON header of a packed file (not yet checked against its data)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for every malformed byte
        raise _bad(path, f"not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    try:
        h = json.loads(meta["compsrt"])
        if not isinstance(h, dict):
            raise ValueError("not an object")
    except (KeyError, ValueError, TypeError) as e:
        raise _bad(path, f"malformed compsrt header ({e})") from None
    if h.get("format") != FORMAT:
        raise _bad(path, f"format {h.get('format')!r} is not {FORMAT!r}")
    v = h.get("version")
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(path, f"format version {v!r} is not an integer")
    if v > VERSION:
        raise CompsrtError(f"{path}: packed format version {v} is newer than this compsrt's ({VERSION}); "
                           "upgrade compsrt")
    if v < VERSION:
        raise _bad(path, f"packed format version {v} is not supported")
    if h.get("arch") not in ARCHS:
        raise _bad(path, f"architecture {h.get('arch')!r} has no packed runtime")
    return h


@dataclass
class PackedModel:
    """A validated packed file: configs, header, and per-layer codes ready for the runtime."""
    arch: str
    model_cfg: object            # SwinIRConfig or MambaIRv2Config
    quant: QuantConfig
    header: dict
    grids: list[LayerGrid]
    codes: list[Tensor]          # per grid: uint8 (rows, cols) codes, pruned ones 0
    masks: list[Tensor | None]   # per grid: bool (rows, cols) keep-mask, or None (all kept)
    dc: list[Tensor | None]      # per grid: fp (rows,) exact-DC column or sqrt(n) x row mean, or None
    qparams: Tensor              # (Q, 4) fp32 [l, u, s2, z2]
    fp: dict[str, Tensor]        # FP tensors by official name (views into fp.values)


def read_packed(path: Path) -> PackedModel:
    """Load and validate a packed file (sha256, then every tensor's dtype and size).

    Raises:
        CompsrtError: one line for anything malformed, damaged, newer, or inconsistent.
    """
    from safetensors.torch import load_file

    path = Path(path)
    h = read_header(path)
    arch, mcfg, qcfg = _configs(path, h)
    try:
        t = load_file(str(path))
    except Exception as e:
        raise _bad(path, f"unreadable tensor data ({str(e).splitlines()[0][:120]})") from None
    if h.get("sha256") != content_sha256(t, h):
        raise _bad(path, "sha256 mismatch: its bytes changed since it was written")
    fp_dt = FP_DTYPES.get(h.get("fp_dtype"))
    if fp_dt is None:
        raise _bad(path, f"fp_dtype {h.get('fp_dtype')!r} unknown")
    skeleton, plan, grids = skeleton_and_grids(arch, mcfg, qcfg)
    n_q = sum(g.n_quantizers for g in grids) + 4 * len(plan.attentions)
    layout = fp_layout(skeleton, grids)
    n_fp = sum(math.prod(s) for s in layout.values())
    expect = {"quant.qparams": (torch.float32, (n_q, 4)), "fp.values": (fp_dt, (n_fp,))}
    pruned = qcfg.prune > 0
    offsets = has_fp_offsets(grids, qcfg)
    need = set(expect) | {"quant.codes"} | ({"quant.masks"} if pruned else set()) | ({"quant.dc"} if offsets else set())
    if set(t) != need:
        missing, extra = sorted(need - set(t)), sorted(set(t) - need)
        raise _bad(path, f"tensor set differs from the plan (missing {missing}, unexpected {extra[:3]})")
    for k, (want_dt, shape) in expect.items():
        if t[k].dtype != want_dt or tuple(t[k].shape) != shape:
            raise _bad(path, f"{k} is {t[k].dtype} {tuple(t[k].shape)}, expected {want_dt} {shape}")
        if not bool(torch.isfinite(t[k]).all()):
            raise _bad(path, f"{k} holds NaN or Inf")
    qp = t["quant.qparams"]
    rows = sum(g.rows for g in grids)
    if offsets and (t["quant.dc"].dtype != fp_dt or tuple(t["quant.dc"].shape) != (rows,)
                    or not bool(torch.isfinite(t["quant.dc"]).all())):
        raise _bad(path, f"quant.dc is {t['quant.dc'].dtype} {tuple(t['quant.dc'].shape)}, expected {fp_dt} ({rows},)")
    cells = [g.rows * g.cols for g in grids]
    masks: list[Tensor | None] = [None] * len(grids)
    kept = cells
    if pruned:
        m = t["quant.masks"]
        if m.dtype != torch.int32 or tuple(m.shape) != (1, 1, -(-sum(cells) // 32)):
            raise _bad(path, f"quant.masks is {m.dtype} {tuple(m.shape)}, expected int32 (1, 1, {-(-sum(cells) // 32)})")
        flat = unpack_flat(m, 1, sum(cells)).bool()
        masks = [c.view(g.rows, g.cols) for c, g in zip(flat.split(cells), grids)]
        kept = [int(c.sum()) for c in masks]
    c = t["quant.codes"]
    words = -(-sum(kept) // 32)
    if c.dtype != torch.int32 or tuple(c.shape) != (1, qcfg.bits, words):
        raise _bad(path, f"quant.codes is {c.dtype} {tuple(c.shape)}, expected int32 (1, {qcfg.bits}, {words})")
    flat_codes = unpack_flat(c, qcfg.bits, sum(kept))
    codes = []
    for part, g, mk in zip(flat_codes.split(kept), grids, masks):
        if mk is None:
            codes.append(part.view(g.rows, g.cols))
        else:
            full = torch.zeros(g.rows, g.cols, dtype=torch.uint8)
            full[mk] = part
            codes.append(full)
    s = (qp[:, 1] - qp[:, 0]) / (2 ** qcfg.bits - 1) + qp[:, 2]
    if not bool((qp[:, 1] > qp[:, 0]).all()) or not bool((s > 0).all()):
        raise _bad(path, "a quantizer has upper <= lower or a non-positive step")
    dc = [None] * len(grids)
    if offsets:
        dc = list(t["quant.dc"].split([g.rows for g in grids]))
    fp = {k: v.view(s) for (k, s), v in zip(layout.items(), t["fp.values"].split([math.prod(s) for s in layout.values()]))}
    return PackedModel(arch, mcfg, qcfg, h, grids, codes, masks, dc, qp, fp)
