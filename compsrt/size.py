"""``python -m compsrt.size CKPT...``: what a packed checkpoint really stores, component by component.

Per file: bytes of the weight codes, the pruning masks, the quantizer parameters, the
weights' FP offset columns (exact DC or row means), the FP parts (convs, norms, biases,
relative-position bias) and the safetensors index + JSON header (the file size minus the
tensors); bits per quantized weight (codes + masks over the FP model's quantized weights, the
rotation's zero-padding included) and per parameter overall (the whole file over every FP parameter); the ratio to the FP32
size (4 bytes per parameter); the padding's share of the coefficient grid. Beside them the
paper's accounting (Table 4 / 11): b bits per quantized weight, 0.6 b + 1 at 40% pruning,
nothing else counted.

Effective bits (:func:`effective_bits`), what a method comparison at equal footing needs: per
product kind (each Linear site kind, q k^T, attn v) and overall, for the weights and for the
activation operands, ``(b x coded values + mask bits + FP offset bits) / original values``.
Coded values include the rotation's zero-padding (and exclude the exact-DC coefficient and
pruned weights, which have no code); the FP offsets are the per-row exact-DC coefficients
(rotation "deploy") or row means (``row_mean``), one per operand row along the contraction
axis, counted at the runtime's dtype: a weight's at the stored ``quant.dc`` dtype (fp16 by
default, fp32 with ``--fp-dtype fp32``), an activation's at 32 bits (computed at run time in
fp32). Activations are counted per token of a forward pass (each site sees every token once;
per window, attn v's v operand has one offset per head channel and window).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .cli_errors import run_cli
from .errors import ArgumentParser, CompsrtError


def _kind(path: str) -> str:
    """A site's kind: its module name (qkv, proj, fc1, fc2; route.0 for a Sequential's member) or a
    weight site's parameter name (x_proj_weight)."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def _tally(table: dict, kind: str, original: float, coded: float, offset_bits: float, mask_bits: float = 0.0) -> None:
    t = table.setdefault(kind, {"original": 0.0, "coded": 0.0, "offset_bits": 0.0, "mask_bits": 0.0})
    t["original"] += original
    t["coded"] += coded
    t["offset_bits"] += offset_bits
    t["mask_bits"] += mask_bits


def _with_bits(table: dict, b: int) -> dict:
    """Each kind's tallies with its ``bits`` and an ``overall`` row."""
    rows = dict(table)
    if rows:
        rows["overall"] = {k: sum(r[k] for r in table.values()) for k in ("original", "coded", "offset_bits", "mask_bits")}
    for r in rows.values():
        r["bits"] = (b * r["coded"] + r["mask_bits"] + r["offset_bits"]) / r["original"]
    return rows


def effective_bits(pm, skeleton) -> dict:
    """Bits per original weight and per original activation value, per product kind and overall
    (see the module docstring), of a validated packed model ``pm`` whose FP model (shapes only)
    is ``skeleton``. Per kind: ``original``, ``coded``, ``offset_bits``, ``mask_bits`` and ``bits``;
    activation counts are per token."""
    from .kernels.hadamard import next_pow2
    from .quant.pack import has_fp_offsets
    from .quant.plan import plan_for

    cfg, b = pm.quant, pm.quant.bits
    offsets = has_fp_offsets(pm.grids, cfg)
    w_off = {"fp16": 16, "fp32": 32}[pm.header["fp_dtype"]] if offsets else 0
    a_off = 32 if offsets else 0          # activation DC / row means: fp32, computed at run time
    rotate = cfg.rotation == "deploy"
    dc = int(rotate and cfg.exact_dc)     # the exact-DC coefficient has no code
    weights, acts = {}, {}
    for g, codes, mask in zip(pm.grids, pm.codes, pm.masks):
        in_f = skeleton.get_parameter(g.key).shape[-1]
        coded = g.rows * g.cols if mask is None else int(mask.sum())
        _tally(weights, _kind(g.key if g.weight_only else g.path), g.rows * in_f, coded, g.rows * w_off, 0 if mask is None else g.rows * g.cols)
        if not g.weight_only:   # a weight site's product takes an FP activation
            _tally(acts, _kind(g.path), g.splits * in_f, g.splits * (g.n - dc), g.splits * a_off)
    tokens = pm.model_cfg.window_size ** 2
    n_tok = next_pow2(tokens) if rotate else tokens
    for site in plan_for(skeleton, cfg.layers).attentions:
        attn = skeleton.get_submodule(site.path.rsplit(".", 1)[0])
        h, d = attn.heads, attn.head_dim
        n_d = next_pow2(d) if rotate else d
        # per token: q and k rows (h each, d values); attn rows (h, N values); v's columns are per
        # window (h d of them, N values each), so 1/N of one per token
        _tally(acts, "q k^T", 2 * h * d, 2 * h * (n_d - dc), 2 * h * a_off)
        _tally(acts, "attn v", h * tokens + h * d, h * (n_tok - dc) + h * d * (n_tok - dc) / tokens,
               h * a_off + h * d * a_off / tokens)
    return {"weights": _with_bits(weights, b), "activations": _with_bits(acts, b),
            "weight_offset_bits": w_off, "activation_offset_bits": a_off}


def size_report(path: Path) -> dict:
    """The size breakdown of one packed file (validated by :func:`compsrt.quant.pack.read_packed`)."""
    import torch
    from safetensors import safe_open

    from .model.archs import build
    from .quant.pack import read_packed

    pm = read_packed(path)
    elem = {"I32": 4, "F32": 4, "F16": 2}
    with safe_open(str(path), "pt") as f:
        tb = {k: math.prod(f.get_slice(k).get_shape()) * elem[f.get_slice(k).get_dtype()] for k in f.keys()}
    total = Path(path).stat().st_size
    with torch.device("meta"):   # shapes only
        skeleton = build(pm.arch, pm.model_cfg)
    fp_params = sum(p.numel() for p in skeleton.parameters())
    q_weights = sum(skeleton.get_parameter(g.key).numel() for g in pm.grids)
    grid = sum(g.rows * g.n for g in pm.grids)
    comp = {"codes": tb["quant.codes"], "masks": tb.get("quant.masks", 0), "quantizer_params": tb["quant.qparams"],
            "fp_offset_columns": tb.get("quant.dc", 0), "fp_parts": tb["fp.values"]}
    comp["index_and_header"] = total - sum(comp.values())
    b, prune = pm.quant.bits, pm.quant.prune
    return {
        "file": str(path), "bytes": total, "components": comp,
        "bits": b, "method": pm.header.get("method"), "rotation": pm.quant.rotation, "prune": prune,
        "fp_dtype": pm.header.get("fp_dtype"),
        "quantized_weights": q_weights, "coefficient_grid": grid,
        "padding_share": (grid - q_weights) / grid,
        "bits_per_quantized_weight": 8 * (comp["codes"] + comp["masks"]) / q_weights,
        "bits_per_parameter": 8 * total / fp_params, "fp_parameters": fp_params,
        "fp32_bytes": 4 * fp_params, "ratio_to_fp32": total / (4 * fp_params),
        "paper_bits_per_quantized_weight": 0.6 * b + 1 if prune else float(b),
        "exact_dc": pm.quant.rotation == "deploy" and pm.quant.exact_dc, "row_mean": pm.quant.row_mean,
        "effective_bits": effective_bits(pm, skeleton),
    }


def format_report(r: dict) -> str:
    c = r["components"]
    lines = [f"{r['file']}: {r['bytes']:,} bytes, W{r['bits']}A{r['bits']} {r['method']} (rotation {r['rotation']}, "
             f"pruning {r['prune']:.0%}, FP parts {r['fp_dtype']})",
             f"  {'component':<20} {'bytes':>10} {'share':>7}"]
    for k, v in c.items():
        lines.append(f"  {k:<20} {v:>10,} {v / r['bytes']:>7.1%}")
    lines += [f"  bits per quantized weight: {r['bits_per_quantized_weight']:.3f} (codes + masks over "
              f"{r['quantized_weights']:,} weights; paper's accounting {r['paper_bits_per_quantized_weight']:.2f})",
              f"  rotation padding: {r['coefficient_grid'] - r['quantized_weights']:,} of {r['coefficient_grid']:,} "
              f"coefficients ({r['padding_share']:.1%} of the grid)",
              f"  bits per parameter overall: {r['bits_per_parameter']:.3f} ({r['fp_parameters']:,} FP parameters)",
              f"  ratio to FP32 ({r['fp32_bytes']:,} bytes): {r['ratio_to_fp32']:.3f} (x{1 / r['ratio_to_fp32']:.2f} smaller)"]
    return "\n".join(lines + format_effective_bits(r))


def format_effective_bits(r: dict) -> list[str]:
    e = r["effective_bits"]
    offsets = ("exact DC" if r["exact_dc"] else "row mean" if r["row_mean"] else "none")
    lines = [f"  effective bits per original value, (b x coded + masks + FP offsets) / original, padding included "
             f"(FP offsets: {offsets}; weights' at {e['weight_offset_bits']} bits, activations' at "
             f"{e['activation_offset_bits']} bits, computed at run time in fp32):",
             f"    {'product':<15} {'weights':>8} {'activations':>12}"]
    w, a = e["weights"], e["activations"]
    kinds = list(dict.fromkeys([*w, *a]))   # weight sites (FP activation) have no activation column
    for kind in [k for k in kinds if k != "overall"] + ["overall"]:
        wb = f"{w[kind]['bits']:.3f}" if kind in w else "-"
        ab = f"{a[kind]['bits']:.3f}" if kind in a else "-"
        lines.append(f"    {kind:<15} {wb:>8} {ab:>12}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m compsrt.size", description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", type=Path, nargs="+", help="packed checkpoints (.safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    a = p.parse_args(argv)
    return run_cli("compsrt.size", lambda: _main(a))


def _main(a: argparse.Namespace) -> int:
    reports = []
    for path in a.checkpoints:
        if not path.is_file():
            raise CompsrtError(f"{path}: file not found")
        reports.append(size_report(path))
    print(json.dumps(reports, indent=1) if a.json else "\n\n".join(format_report(r) for r in reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
