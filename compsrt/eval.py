"""Benchmark evaluation: ``python -m compsrt.eval --weights W --scale S --data DIR --sets Set5``.

Protocol (the official SwinIR test protocol, which 2DQuant and CompSRT report with): LR images from
``LR_bicubic/X{s}`` are fed to the model as they are (the model pads internally to a
multiple of its window and crops: this is our padding rule, not the official test script's
always-pad-1..8 flip padding), the output is clamped and rounded to uint8, PSNR/SSIM are
computed on the Y channel with ``crop_border = scale``, and averaged per set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cli_errors import run_cli
from .data import load_benchmark
from .errors import CompsrtError
from .io import atomic_path, to_float, to_uint
from .metrics import psnr, ssim
from .device import parse_device
from .load import ARCHS, bundled_model, load_model


@torch.no_grad()
def evaluate(model: nn.Module, data: Path, sets: list[str], scale: int, device: str | torch.device = "cpu",
             progress: bool = True, limit: int = 0) -> dict[str, dict]:
    """Per-set means and per-image rows: ``{set: {"psnr_db", "ssim", "seconds_per_image", "images": [...]}}``."""
    from tqdm import tqdm

    model = model.to(device).eval()
    results = {}
    for name in sets:
        pairs = load_benchmark(data, name, scale)[: limit or None]
        rows = []
        for pair in tqdm(pairs, desc=f"{name} x{scale}", disable=not progress, leave=False):
            x = to_float(pair.lr)[None].to(device)
            t0 = time.perf_counter()
            y = model(x)
            if y.is_cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            sr = to_uint(y[0])
            rows.append({"image": pair.name, "psnr_db": psnr(sr, pair.hr, scale), "ssim": ssim(sr, pair.hr, scale),
                         "seconds": dt})
        results[name] = {"psnr_db": float(np.mean([r["psnr_db"] for r in rows])),
                         "ssim": float(np.mean([r["ssim"] for r in rows])),
                         "seconds_per_image": float(np.mean([r["seconds"] for r in rows])), "images": rows}
    return results


def markdown_table(results: dict[str, dict], label: str = "model") -> str:
    lines = ["| model | set | PSNR (dB) | SSIM | s/image |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {label} | {name} | {r['psnr_db']:.3f} | {r['ssim']:.4f} | {r['seconds_per_image']:.3f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compsrt.eval", description="PSNR/SSIM on benchmark sets.")
    p.add_argument("--weights", type=Path, help="FP weights or compressed checkpoint (default: bundled)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--arch", choices=ARCHS, default="swinir-light")
    p.add_argument("--data", type=Path, required=True, help="folder holding <Set>/HR and <Set>/LR_bicubic")
    p.add_argument("--sets", nargs="+", default=["Set5", "Set14", "B100"])
    p.add_argument("--json", type=Path, help="per-image results (default: eval_<weights>_x<S>.json)")
    p.add_argument("--model", help="a bundled model by name (compsrt-infer --list-models); default: the FP weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images of each set")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    return run_cli("compsrt.eval", lambda: _main(a), interrupted="nothing written")


def _main(a: argparse.Namespace) -> int:
    if not a.data.is_dir():
        raise CompsrtError(f"{a.data}: not a folder; expected <data>/<Set>/HR/*.png")
    for s in a.sets:
        if not (a.data / s / "HR").is_dir():
            raise CompsrtError(f"{a.data / s / 'HR'}: missing; check --data and --sets")
    if a.model is not None and a.weights is not None:
        raise CompsrtError("--model and --weights both given; pick one")
    model = load_model(bundled_model(a.model) if a.model else a.weights, a.scale, a.arch, parse_device(a.device))
    results = evaluate(model, a.data, a.sets, a.scale, a.device, progress=not a.quiet, limit=a.limit)
    label = a.model or (a.weights.name if a.weights else f"bundled {a.arch} x{a.scale}")
    print(markdown_table(results, label))
    out = a.json or Path(f"eval_{a.model or (a.weights.stem if a.weights else a.arch)}_x{a.scale}.json")
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"weights": str(a.model or a.weights or "bundled"), "arch": a.arch, "scale": a.scale,
                                   "results": results}, indent=1))
    print(f"per-image results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
