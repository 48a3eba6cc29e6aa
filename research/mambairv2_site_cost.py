"""What each quantized site of a calibrated MambaIRv2-light costs, on held-out training images.

    python research/mambairv2_site_cost.py C/calibrated.safetensors [C2/...] --data TRAIN_DIR [--images 8] [--lr-size 96]
        [--weights FP]   # FP weights of the checkpoints' scale (default: the bundled official ones)

For each checkpoint (``python -m compsrt.calib --arch mambairv2-light``'s calibrated file): the
fidelity to the FP model's output (PSNR in dB, official protocol) and the PSNR against HR, with
everything quantized, then with one group of quantizers passed through unquantized (weights and
inputs of one kind of site, or all weights, or all inputs; the trained state of the others kept,
through ``compsrt.quant.compress.overriding``). The gain a group's release buys is what it costs.

The images: the first ``--images`` of ``--data`` (sorted) whose names are not among the bundled
calibration crops' sources, centre-cropped to ``--lr-size`` LR pixels a side. Training images, never a
test set: the figures may steer the method. The routing is the seeded draw of FP inference, so every
variant routes with the same noise.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch

from compsrt.calib.__main__ import bundled_calib_images
from compsrt.data import list_images, make_pair
from compsrt.io import read_rgb_uint8, to_float, to_uint
from compsrt.load import load_model
from compsrt.metrics import psnr
from compsrt.quant.compress import load_calibrated, overriding
from compsrt.quant.qmodules import Quantizer, WeightQuantizer

# group -> which quantizer names it holds (module names of compsrt.model.mambairv2)
GROUPS = {
    "wqkv (q, k, v)": r"\.wqkv\.",
    "win_mhsa.proj": r"\.win_mhsa\.proj\.",
    "x_proj_weight (weight only)": r"x_proj_weight",
    "dt_projs_weight (weight only)": r"dt_projs_weight",
    "assm.out_proj": r"\.out_proj\.",
    "route (both linears)": r"\.route\.",
    "fc1 (both GatedMLPs)": r"\.fc1\.",
    "fc2 (both GatedMLPs)": r"\.fc2\.",
    "all weights": None,
    "all inputs": None,
}


def _members(model: torch.nn.Module, group: str) -> list[Quantizer]:
    qs = [(n, q) for n, q in model.named_modules() if isinstance(q, Quantizer)]
    if group == "all weights":
        return [q for _, q in qs if isinstance(q, WeightQuantizer)]
    if group == "all inputs":
        return [q for _, q in qs if not isinstance(q, WeightQuantizer)]
    return [q for n, q in qs if re.search(GROUPS[group], n)]


def held_out_pairs(data: Path, n: int, lr_size: int, scale: int):
    bundled = {p.stem for p in list_images(bundled_calib_images())}
    paths = [p for p in list_images(data) if p.stem not in bundled][:n]
    pairs = []
    for p in paths:
        hr = read_rgb_uint8(p)
        side = lr_size * scale
        top, left = max(0, (hr.shape[0] - side) // 2), max(0, (hr.shape[1] - side) // 2)
        pairs.append(make_pair(hr[top:top + side, left:left + side], scale, p.stem))
    return pairs


def outputs(model: torch.nn.Module, pairs) -> list[np.ndarray]:
    with torch.no_grad():
        return [to_uint(model(to_float(p.lr)[None])[0]) for p in pairs]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--data", type=Path, required=True, help="a folder of HR training images")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--lr-size", type=int, default=96)
    p.add_argument("--weights", type=Path, help="FP MambaIRv2-light weights (default: the bundled ones)")
    a = p.parse_args(argv)
    first = load_calibrated(a.checkpoints[0], arch="mambairv2-light")
    scale = first.cfg.scale
    pairs = held_out_pairs(a.data, a.images, a.lr_size, scale)
    fp_out = outputs(load_model(a.weights, scale, "mambairv2-light").eval(), pairs)
    print(f"{len(pairs)} held-out images of {a.data} ({', '.join(q.name for q in pairs)}), "
          f"{a.lr_size}x{a.lr_size} LR, x{scale}; FP PSNR vs HR "
          f"{np.mean([psnr(y, q.hr, scale) for q, y in zip(pairs, fp_out)]):.3f}")
    for i, path in enumerate(a.checkpoints):
        model = (first if i == 0 else load_calibrated(path, scale, "mambairv2-light")).eval()
        print(f"\n{path}: fidelity to FP / PSNR vs HR (dB, means), with one group unquantized\n")
        print("| released | quantizers | fidelity | gain | PSNR vs HR |\n|---|---|---|---|---|")
        base = None
        for group in (None, *GROUPS):
            chosen = _members(model, group) if group else []
            with overriding(chosen, lambda q, t, dc: t):
                sr = outputs(model, pairs)
            fid = float(np.mean([psnr(y, f, scale) for y, f in zip(sr, fp_out)]))
            hr = float(np.mean([psnr(y, q.hr, scale) for q, y in zip(pairs, sr)]))
            base = fid if base is None else base
            print(f"| {group or 'nothing'} | {len(chosen)} | {fid:.3f} | {fid - base:+.3f} | {hr:.3f} |", flush=True)


if __name__ == "__main__":
    main()
