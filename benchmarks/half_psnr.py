"""What ``compsrt-infer --half`` costs: Set5 PSNR/SSIM (and seconds per image) of each bundled model
in fp32 and under fp16 / bf16 autocast, side by side.

    python benchmarks/half_psnr.py --data DATA [--scale 2] [--sets Set5] [--json half_psnr.json]

DATA holds ``Set5/HR`` and ``Set5/LR_bicubic/X2`` (compsrt.data.load_benchmark's layout). The
models are the bundled ones of the scale (FP and packed), each evaluated as compsrt-infer runs it
(:func:`compsrt.infer.prepare_half`: the packed runtime's integer sites stay fp32, its FP parts and
the whole FP model are autocast). ``--half`` is a CUDA option, so this runs on a GPU by default;
``--device cpu --dtypes bf16 --limit 1`` is a quick check of the script itself (CPU autocast).
Prints a markdown table: PSNR/SSIM per precision and the change against fp32.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

from compsrt.device import parse_device
from compsrt.errors import CompsrtError
from compsrt.eval import evaluate
from compsrt.infer import prepare_half
from compsrt.io import atomic_path
from compsrt.load import bundled_models, describe_weights, load_model

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def measure(name: str, path: Path, scale: int, data: Path, sets: list[str], device: torch.device,
            dtypes: list[str], limit: int) -> dict:
    """{precision: {set: {"psnr_db", "ssim", "seconds_per_image"}}} of one model."""
    arch, _ = describe_weights(path)
    model = prepare_half(load_model(path, scale, arch, device))
    rows = {}
    for precision in ["fp32", *dtypes]:
        ctx = contextlib.nullcontext() if precision == "fp32" else torch.autocast(device.type, dtype=DTYPES[precision])
        with ctx:
            res = evaluate(model, data, sets, scale, device, progress=False, limit=limit)
        rows[precision] = {s: {k: r[k] for k in ("psnr_db", "ssim", "seconds_per_image")} for s, r in res.items()}
        print(f"{name} {precision}: " + ", ".join(f"{s} {r['psnr_db']:.3f} dB" for s, r in rows[precision].items()),
              file=sys.stderr)
    return rows


def table(results: dict, sets: list[str], dtypes: list[str]) -> str:
    lines = ["| model | set | fp32 PSNR / SSIM | " + " | ".join(f"{d} PSNR / SSIM (change)" for d in dtypes) + " |",
             "|---" * (3 + len(dtypes)) + "|"]
    for name, rows in results.items():
        for s in sets:
            base = rows["fp32"][s]
            cells = [f"{base['psnr_db']:.3f} / {base['ssim']:.4f}"]
            for d in dtypes:
                r = rows[d][s]
                cells.append(f"{r['psnr_db']:.3f} / {r['ssim']:.4f} ({r['psnr_db'] - base['psnr_db']:+.3f} dB)")
            lines.append(f"| `{name}` | {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder holding <Set>/HR and <Set>/LR_bicubic")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=2)
    p.add_argument("--sets", nargs="+", default=["Set5"])
    p.add_argument("--models", nargs="+", help="bundled model names (default: every bundled model of the scale)")
    p.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=int, default=0, help="only the first N images of each set")
    p.add_argument("--json", type=Path, help="write the results here too")
    a = p.parse_args(argv)
    try:
        device = parse_device(a.device)
        models = {n: f for n, f in bundled_models().items() if describe_weights(f)[1] == a.scale}
        if a.models:
            unknown = [n for n in a.models if n not in models]
            if unknown:
                raise CompsrtError(f"--models {unknown[0]}: the bundled x{a.scale} models are {', '.join(models)}")
            models = {n: models[n] for n in a.models}
        results = {n: measure(n, f, a.scale, a.data, a.sets, device, a.dtypes, a.limit) for n, f in models.items()}
    except CompsrtError as e:
        print(f"half_psnr: error: {e}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, x{a.scale}")
    print(table(results, a.sets, a.dtypes))
    if a.json:
        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps({"device": name, "scale": a.scale, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
