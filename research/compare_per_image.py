"""Paired per-image comparison of two evaluations (``python -m compsrt.eval --json``).

    python research/compare_per_image.py A.json B.json

For each set and for all images together: the mean and median of A - B in PSNR and SSIM, on how
many images A is ahead, a paired Wilcoxon signed-rank test (two-sided, and one-sided each way)
and Cohen's d_z (mean difference over its standard deviation). The unit is the image, so the
test speaks of these two models on these images; seed-to-seed variation of a calibration is not
in it (that needs several runs per method).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon


def paired(a: dict, b: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per set, the per-image differences (PSNR, SSIM) of A minus B, matched by image name."""
    out = {}
    for name, res in a["results"].items():
        if name not in b["results"]:
            continue
        other = {i["image"]: i for i in b["results"][name]["images"]}
        common = [i for i in res["images"] if i["image"] in other]
        out[name] = (np.array([i["psnr_db"] - other[i["image"]]["psnr_db"] for i in common]),
                     np.array([i["ssim"] - other[i["image"]]["ssim"] for i in common]))
    return out


def summary(d: np.ndarray) -> str:
    line = f"mean {d.mean():+.5f}, median {np.median(d):+.5f}, A ahead on {int((d > 0).sum())}/{len(d)}"
    if len(d) >= 6 and np.any(d != 0):
        p2, pl, pg = (wilcoxon(d, alternative=alt).pvalue for alt in ("two-sided", "less", "greater"))
        dz = d.mean() / d.std(ddof=1)
        line += f"; Wilcoxon p {p2:.3g} (A < B: {pl:.3g}, A > B: {pg:.3g}); d_z {dz:+.3f}"
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    args = p.parse_args(argv)
    try:
        a, b = (json.loads(Path(f).read_text()) for f in (args.a, args.b))
    except (OSError, ValueError) as e:
        print(f"compare_per_image: {e}", file=sys.stderr)
        return 2
    diffs = paired(a, b)
    if not diffs:
        print("compare_per_image: the two files share no set", file=sys.stderr)
        return 2
    print(f"A = {a.get('weights')}\nB = {b.get('weights')}")
    for metric, k in (("PSNR (dB)", 0), ("SSIM", 1)):
        print(f"\n{metric}, A - B")
        for name, d in diffs.items():
            print(f"  {name}: {summary(d[k])}")
        if len(diffs) > 1:
            print(f"  all: {summary(np.concatenate([d[k] for d in diffs.values()]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
