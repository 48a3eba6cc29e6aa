"""``pack``: a calibrated fake-quant model -> the packed checkpoint the integer runtime runs.

One safetensors file (format "compsrt-packed", no pickle) holding only what the runtime needs:

- ``quant.codes`` int32 (1, bits, W): the b-bit weight codes of every quantized product, in plan
  order (site, then split, then row), as one bit-plane stream (:func:`~compsrt.kernels.bitpack.pack_flat`).
  Per layer the coefficient grid is its rotated, padded weight (out x n) without the exact-DC
  column when that is kept FP: all of the grid's codes, or with pruning only the kept ones.
- ``quant.masks`` int32 (1, 1, W'): the 1-bit keep-masks of the pruned grids, same order
  (absent without pruning). Pruned coefficients have no code: they dequantize to exactly 0.
- ``quant.qparams`` fp32 (Q, 4): every quantizer's ``[l, u, s2, z2]`` (s2, z2 = 0 where the
  method does not learn them), in plan order: per Linear site its weight quantizers, then its
  input quantizers; per attention site q, k, attn, v.
- ``quant.dc`` (fp dtype): the FP exact-DC column of every quantized weight, row order as the codes.
- ``fp.values`` (fp16 by default, or fp32): every FP tensor (convs, norms, biases,
  relative-position bias) flattened and concatenated in the FP model's state-dict order, the
  quantized weights left out. One tensor instead of ~230 named ones keeps the safetensors
  index at a few hundred bytes instead of ~26 KB (3% of a 4-bit file); the names and shapes
  come from the architecture config, as the codes' layout comes from the plan.

The JSON header (``compsrt`` metadata key) holds the format, version, architecture, configs,
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

from ..config import QuantConfig, SwinIRConfig
from ..errors import CompsrtError
from ..kernels.bitpack import pack_flat, unpack_flat
from ..kernels.fake_quant import fake_quant_ref
from ..kernels.hadamard import next_pow2
from ..model.swinir import SwinIRLight
from .plan import QuantPlan, plan_for
from .qmodules import Quantizer, QuantAttend, QuantLinear

FORMAT = "compsrt-packed"
VERSION = 2                 # version 1 is the calibrated (fake-quant) format it is made from
FP_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
_LIMITS = {"embed_dim": 1024, "window_size": 64, "blocks": 256, "heads": 64, "in_chans": 4, "mlp_ratio": 8.0}


@dataclass
class LayerGrid:
    """Where one quantized Linear's codes live: ``rows`` x ``cols`` coefficients starting at
    column ``dc`` (1 with the exact DC) of its rotated (``n`` wide) weight."""
    path: str
    splits: int
    rows: int
    n: int
    dc: int

    @property
    def cols(self) -> int:
        return self.n - self.dc


def _quantizer_params(q: Quantizer) -> Tensor:
    s2, z2 = q.extras()
    zero = torch.zeros((), dtype=torch.float32)
    return torch.stack([q.lower.detach().float(), q.upper.detach().float(),
                        zero if s2 is None else s2.detach().float(), zero if z2 is None else z2.detach().float()])


def layer_grids(model: nn.Module, plan: QuantPlan, cfg: QuantConfig) -> list[LayerGrid]:
    """The coefficient grid of every Linear site, from the FP (or fake-quant) model's shapes."""
    grids = []
    for site in plan.linears:
        out_f, in_f = model.get_submodule(site.path).weight.shape
        n = in_f if cfg.rotation == "none" else next_pow2(in_f)
        grids.append(LayerGrid(site.path, site.splits, out_f, n, int(cfg.exact_dc and cfg.rotation == "deploy")))
    return grids


def pack_model(model: SwinIRLight, fp_dtype: str = "fp16", provenance: dict | None = None,
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
    plan = plan_for(model)
    codes, masks, qparams, dcs = [], [], [], []
    for grid in layer_grids(model, plan, cfg):
        lin: QuantLinear = model.get_submodule(grid.path)
        for wq in lin.wq:
            part = wq.quantized_part()
            s2, z2 = wq.extras()
            _, q = fake_quant_ref(part, wq.lower, wq.upper, cfg.bits, s2, z2, return_codes=True)
            if wq.mask is not None:
                masks.append(wq.mask.reshape(-1))
                q = q[wq.mask]
            codes.append(q.reshape(-1))
            if grid.dc:
                dcs.append(wq.w_dom[:, 0])
        qparams += [_quantizer_params(q) for q in lin.wq] + [_quantizer_params(q) for q in lin.aq]
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
    skeleton, _, grids = skeleton_and_grids(model.cfg, cfg)   # the FP names, in the FP order
    layout = fp_layout(skeleton, grids)
    tensors["fp.values"] = torch.cat([sd[k].detach().cpu().reshape(-1).to(dt) for k in layout])
    prov = provenance or getattr(model, "provenance", {}) or {}
    header = {"format": FORMAT, "version": VERSION, "arch": plan.arch, "plan_version": plan.version,
              "swinir": asdict(model.cfg), "quant": asdict(cfg), "bits": cfg.bits,
              "method": prov.get("method", "unknown"), "rotation": cfg.rotation,
              "pruning": {"fraction": cfg.prune, "mode": cfg.prune_mode if cfg.prune else "none"},
              "fp_dtype": fp_dtype, "source_sha256": source_sha256, "command": command, "provenance": prov}
    return tensors, header


def skeleton_and_grids(scfg: SwinIRConfig, qcfg: QuantConfig) -> tuple[SwinIRLight, QuantPlan, list[LayerGrid]]:
    """The FP model of ``scfg`` on the meta device (shapes only: nothing allocated), its plan and grids."""
    with torch.device("meta"):
        skeleton = SwinIRLight(scfg)
    plan = plan_for(skeleton)
    return skeleton, plan, layer_grids(skeleton, plan, qcfg)


def fp_layout(skeleton: SwinIRLight, grids: list[LayerGrid]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the FP tensors stored in ``fp.values``, in their order."""
    quantized = {f"{g.path}.weight" for g in grids}
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


def _configs(path: Path, h: dict) -> tuple[SwinIRConfig, QuantConfig]:
    """The header's model and quantization configs, validated before anything is built."""
    try:
        sw = dict(h["swinir"])
        sw["depths"], sw["num_heads"], sw["rgb_mean"] = tuple(sw["depths"]), tuple(sw["num_heads"]), tuple(sw["rgb_mean"])
        scfg, qcfg = SwinIRConfig(**sw), QuantConfig(**h["quant"])
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise _bad(path, f"invalid model or quantization configuration ({e})") from None
    ints = [scfg.embed_dim, scfg.window_size, scfg.in_chans, *scfg.depths, *scfg.num_heads]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ints) or not scfg.depths:
        raise _bad(path, "model sizes must be positive integers")
    if (scfg.embed_dim > _LIMITS["embed_dim"] or scfg.window_size > _LIMITS["window_size"]
            or sum(scfg.depths) > _LIMITS["blocks"] or max(scfg.num_heads) > _LIMITS["heads"]
            or scfg.in_chans > _LIMITS["in_chans"] or not 0 < scfg.mlp_ratio <= _LIMITS["mlp_ratio"]
            or scfg.mlp_hidden < 1 or not all(math.isfinite(v) for v in (*scfg.rgb_mean, scfg.img_range))
            or scfg.img_range <= 0):
        raise _bad(path, f"model configuration out of bounds ({asdict(scfg)})")
    if qcfg.bits not in (2, 3, 4) or qcfg.rotation == "official":
        raise _bad(path, f"bits {qcfg.bits} / rotation {qcfg.rotation!r} cannot be packed")
    return scfg, qcfg


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
    if h.get("arch") != "swinir-light":
        raise _bad(path, f"architecture {h.get('arch')!r} has no packed runtime")
    return h


@dataclass
class PackedModel:
    """A validated packed file: configs, header, and per-layer codes ready for the runtime."""
    swinir: SwinIRConfig
    quant: QuantConfig
    header: dict
    grids: list[LayerGrid]
    codes: list[Tensor]          # per grid: uint8 (rows, cols) codes, pruned ones 0
    masks: list[Tensor | None]   # per grid: bool (rows, cols) keep-mask, or None (all kept)
    dc: list[Tensor | None]      # per grid: fp (rows,) exact-DC column, or None
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
    scfg, qcfg = _configs(path, h)
    try:
        t = load_file(str(path))
    except Exception as e:
        raise _bad(path, f"unreadable tensor data ({str(e).splitlines()[0][:120]})") from None
    if h.get("sha256") != content_sha256(t, h):
        raise _bad(path, "sha256 mismatch: its bytes changed since it was written")
    fp_dt = FP_DTYPES.get(h.get("fp_dtype"))
    if fp_dt is None:
        raise _bad(path, f"fp_dtype {h.get('fp_dtype')!r} unknown")
    skeleton, plan, grids = skeleton_and_grids(scfg, qcfg)
    n_q = sum(2 * g.splits for g in grids) + 4 * len(plan.attentions)
    layout = fp_layout(skeleton, grids)
    n_fp = sum(math.prod(s) for s in layout.values())
    expect = {"quant.qparams": (torch.float32, (n_q, 4)), "fp.values": (fp_dt, (n_fp,))}
    pruned = qcfg.prune > 0
    need = set(expect) | {"quant.codes"} | ({"quant.masks"} if pruned else set()) | ({"quant.dc"} if grids[0].dc else set())
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
    if grids[0].dc and (t["quant.dc"].dtype != fp_dt or tuple(t["quant.dc"].shape) != (rows,)
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
    if grids[0].dc:
        dc = list(t["quant.dc"].split([g.rows for g in grids]))
    fp = {k: v.view(s) for (k, s), v in zip(layout.items(), t["fp.values"].split([math.prod(s) for s in layout.values()]))}
    return PackedModel(scfg, qcfg, h, grids, codes, masks, dc, qp, fp)
