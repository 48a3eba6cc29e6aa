"""Benchmark evaluation: ``python -m compsrt.eval --weights W --scale S --data DIR --sets Set5``.

Protocol (the official SwinIR test protocol, which 2DQuant and CompSRT report with): LR images from
``LR_bicubic/X{s}`` are fed to the model as they are (the model pads internally to a
multiple of its window and crops: this is our padding rule, not the official test script's
always-pad-1..8 flip padding), the output is clamped and rounded to uint8, PSNR/SSIM are
computed on the Y channel with ``crop_border = scale``, and averaged per set.

Under torchrun (``torchrun --nproc-per-node N -m compsrt.eval ...``) each rank loads and runs
its own images of every set (rank r takes images r, r + N, ...: disjoint, covering the set),
the per-image figures are gathered exactly (each lands unchanged in a zero-filled table summed
over the ranks) and every mean is taken over the whole set in image order, as one process takes
it; rank 0 alone shows the progress bar (its share), prints the table and writes the JSON.
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
from .data import benchmark_hr_paths, load_benchmark_pair
from .errors import ArgumentParser, CompsrtError
from .io import atomic_path, to_float, to_uint
from .metrics import psnr, ssim
from .device import parse_device
from .distributed import Dist, prog_name, session
from .load import ARCHS, bundled_model, load_model


@torch.no_grad()
def evaluate(model: nn.Module, data: Path, sets: list[str], scale: int, device: str | torch.device = "cpu",
             progress: bool = True, limit: int = 0, dist: Dist | None = None) -> dict[str, dict]:
    """Per-set means and per-image rows: ``{set: {"psnr_db", "ssim", "seconds_per_image", "images": [...]}}``.

    ``dist`` (several ranks): each rank runs its :meth:`~compsrt.distributed.Dist.shard` of every
    set and every rank returns the whole table, each row with the ``rank`` that ran it.
    """
    from tqdm import tqdm

    dist = dist or Dist()
    model = model.to(device).eval()
    results = {}
    for name in sets:
        paths = benchmark_hr_paths(data, name)[: limit or None]
        rows: list[dict | None] = [None] * len(paths)
        desc = f"{name} x{scale}" + (f" [rank 0 of {dist.world}]" if dist.joined else "")
        for i in tqdm(dist.shard(len(paths)), desc=desc, disable=not progress or not dist.is_main, leave=False):
            pair = load_benchmark_pair(data, name, paths[i], scale)
            x = to_float(pair.lr)[None].to(device)
            t0 = time.perf_counter()
            y = model(x)
            if y.is_cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            sr = to_uint(y[0])
            rows[i] = {"image": pair.name, "psnr_db": psnr(sr, pair.hr, scale), "ssim": ssim(sr, pair.hr, scale),
                       "seconds": dt}
        if dist.joined:
            rows = gather_rows(dist, rows, [p.stem for p in paths], f"gathering the {name} metrics")
        results[name] = {"psnr_db": float(np.mean([r["psnr_db"] for r in rows])),
                         "ssim": float(np.mean([r["ssim"] for r in rows])),
                         "seconds_per_image": float(np.mean([r["seconds"] for r in rows])), "images": rows}
    return results


_FIGURES = ("psnr_db", "ssim", "seconds")


def gather_rows(dist: Dist, rows: list[dict | None], names: list[str], what: str) -> list[dict]:
    """Every rank's rows (None where another rank ran the image) as the whole set's, exactly: each
    rank writes its figures, its rank + 1 and a 1 into a zero table of float64 and the tables are
    summed, so each figure arrives unchanged (x + 0 = x) with the rank that ran it."""
    table = torch.zeros(len(rows), len(_FIGURES) + 2, dtype=torch.float64)
    for i, row in enumerate(rows):
        if row is not None:
            table[i] = torch.tensor([*(row[k] for k in _FIGURES), dist.rank + 1, 1], dtype=torch.float64)
    table = dist.all_reduce_(table.to(dist.comm_device), what).cpu()
    runs = table[:, -1]
    if not bool((runs == 1).all()):   # Dist.shard gives each image to exactly one rank
        bad = [names[i] for i in range(len(names)) if runs[i] != 1]
        raise RuntimeError(f"{what}: images not run by exactly one rank: {', '.join(bad[:5])}")
    return [{"image": n, **{k: float(v) for k, v in zip(_FIGURES, t[:len(_FIGURES)])}, "rank": int(t[-2]) - 1}
            for n, t in zip(names, table.tolist())]


def markdown_table(results: dict[str, dict], label: str = "model") -> str:
    lines = ["| model | set | PSNR (dB) | SSIM | s/image |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {label} | {name} | {r['psnr_db']:.3f} | {r['ssim']:.4f} | {r['seconds_per_image']:.3f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m compsrt.eval", description="PSNR/SSIM on benchmark sets.")
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
    return run_cli(prog_name("compsrt.eval"), lambda: _main(a), interrupted="nothing written")


def _main(a: argparse.Namespace) -> int:
    if not a.data.is_dir():
        raise CompsrtError(f"{a.data}: not a folder; expected <data>/<Set>/HR/*.png")
    for s in a.sets:
        if not (a.data / s / "HR").is_dir():
            raise CompsrtError(f"{a.data / s / 'HR'}: missing; check --data and --sets")
    if a.model is not None and a.weights is not None:
        raise CompsrtError("--model and --weights both given; pick one")
    with session(parse_device(a.device)) as dist:
        model = load_model(bundled_model(a.model) if a.model else a.weights, a.scale, a.arch, dist.device)
        results = evaluate(model, a.data, a.sets, a.scale, dist.device, progress=not a.quiet, limit=a.limit,
                           dist=dist)
        if dist.is_main:
            _report(a, results, dist)
        dist.barrier("waiting for rank 0 to write the results")
    return 0


def _report(a: argparse.Namespace, results: dict[str, dict], dist: Dist) -> None:
    """The table on stdout and the per-image JSON (rank 0's job)."""
    label = a.model or (a.weights.name if a.weights else f"bundled {a.arch} x{a.scale}")
    print(markdown_table(results, label))
    out = a.json or Path(f"eval_{a.model or (a.weights.stem if a.weights else a.arch)}_x{a.scale}.json")
    record = {"weights": str(a.model or a.weights or "bundled"), "arch": a.arch, "scale": a.scale}
    if dist.joined:
        record["ranks"] = dist.world
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({**record, "results": results}, indent=1))
    print(f"per-image results: {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
