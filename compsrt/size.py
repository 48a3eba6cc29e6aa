"""``python -m compsrt.size CKPT...``: what a packed checkpoint really stores, component by component.

Per file: bytes of the weight codes, the pruning masks, the quantizer parameters, the
exact-DC columns, the FP parts (convs, norms, biases, relative-position bias) and the
safetensors index + JSON header (the file size minus the tensors); bits per quantized weight
(codes + masks over the FP model's quantized weights, the rotation's zero-padding included)
and per parameter overall (the whole file over every FP parameter); the ratio to the FP32
size (4 bytes per parameter); the padding's share of the coefficient grid. Beside them the
paper's accounting (Table 4 / 11): b bits per quantized weight, 0.6 b + 1 at 40% pruning,
nothing else counted.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import CompsrtError


def size_report(path: Path) -> dict:
    """The size breakdown of one packed file (validated by :func:`compsrt.quant.pack.read_packed`)."""
    import torch
    from safetensors import safe_open

    from .model.swinir import SwinIRLight
    from .quant.pack import read_packed

    pm = read_packed(path)
    elem = {"I32": 4, "F32": 4, "F16": 2}
    with safe_open(str(path), "pt") as f:
        tb = {k: math.prod(f.get_slice(k).get_shape()) * elem[f.get_slice(k).get_dtype()] for k in f.keys()}
    total = Path(path).stat().st_size
    with torch.device("meta"):   # shapes only
        skeleton = SwinIRLight(pm.swinir)
    fp_params = sum(p.numel() for p in skeleton.parameters())
    q_weights = sum(skeleton.get_submodule(g.path).weight.numel() for g in pm.grids)
    grid = sum(g.rows * g.n for g in pm.grids)
    comp = {"codes": tb["quant.codes"], "masks": tb.get("quant.masks", 0), "quantizer_params": tb["quant.qparams"],
            "exact_dc_columns": tb.get("quant.dc", 0), "fp_parts": tb["fp.values"]}
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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compsrt.size", description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", type=Path, nargs="+", help="packed checkpoints (.safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    a = p.parse_args(argv)
    try:
        reports = []
        for path in a.checkpoints:
            if not path.is_file():
                raise CompsrtError(f"{path}: file not found")
            reports.append(size_report(path))
    except (CompsrtError, OSError) as e:
        print(f"compsrt.size: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(reports, indent=1) if a.json else "\n\n".join(format_report(r) for r in reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
