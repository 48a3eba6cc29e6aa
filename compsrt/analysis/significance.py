"""``python -m compsrt.analysis significance A.json B.json``: is model A ahead of model B?

A and B are ``python -m compsrt.eval --json`` results; images are matched by set and name.
Two paired tests (:mod:`.paired`), in PSNR and in SSIM, of A - B:

- per dataset, the paper's test (its Table 5): one pair per set (the means over the matched
  images), one-sided Wilcoxon signed-rank and Cohen's d_z. With n sets the exact one-sided p
  cannot go below 2^-n (1/8 for Set5, Set14, B100; 1/32 for the paper's 5), however large the gap;
  the floor is printed beside it.
- per image, for each set and for all images together: mean and median of A - B, on how many
  images A is ahead, Wilcoxon (two-sided and one-sided each way), d_z and the sign test. The unit
  is the image, so the test speaks of these two models on these images; seed-to-seed variation
  of a calibration is not in it (that needs several runs per method).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CompsrtError
from .paired import Paired, fmt_dz, fmt_p, paired

METRICS = (("psnr_db", "PSNR (dB)"), ("ssim", "SSIM"))


def load_eval(path: Path) -> dict:
    """A ``compsrt.eval --json`` result, checked for the fields the tests read."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise CompsrtError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise CompsrtError(f"{path}: not JSON ({e}); pass a file written by python -m compsrt.eval --json") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not all(
            isinstance(r, dict) and isinstance(r.get("images"), list) for r in results.values()):
        raise CompsrtError(f"{path}: no per-set 'results' with 'images'; pass a file written by "
                           "python -m compsrt.eval --json")
    for name, r in results.items():
        for row in r["images"]:
            if not isinstance(row, dict) or not {"image", "psnr_db", "ssim"} <= row.keys():
                raise CompsrtError(f"{path}: set {name}: an image row lacks image, psnr_db or ssim")
    return data


def per_image(ev: dict, metric: str = "psnr_db") -> dict[tuple[str, str], float]:
    """(set, image) -> ``metric`` of one :func:`load_eval` result."""
    return {(s, row["image"]): row[metric] for s, r in ev["results"].items() for row in r["images"]}


def matched(a: dict, b: dict) -> dict[str, dict[str, np.ndarray]]:
    """Per shared set, the per-image differences A - B of each metric, matched by image name."""
    out = {}
    for name, res in a["results"].items():
        if name not in b["results"]:
            continue
        other = {i["image"]: i for i in b["results"][name]["images"]}
        common = [i for i in res["images"] if i["image"] in other]
        if common:
            out[name] = {m: np.array([i[m] - other[i["image"]][m] for i in common], dtype=np.float64)
                         for m, _ in METRICS}
    return out


def per_dataset(diffs: dict[str, dict[str, np.ndarray]], metric: str) -> Paired:
    """The paper's test: one pair per set, the mean difference over its matched images."""
    return paired([d[metric].mean() for d in diffs.values()])


def per_image_line(d: np.ndarray) -> str:
    t = paired(d)
    return (f"mean {t.mean:+.5f}, median {t.median:+.5f}, A ahead on {t.ahead}/{t.n}; Wilcoxon p {fmt_p(t.p_two)} "
            f"(A < B: {fmt_p(t.p_less)}, A > B: {fmt_p(t.p_greater)}); d_z {fmt_dz(t.dz)}; "
            f"sign test A > B: {fmt_p(t.sign_greater)}, A < B: {fmt_p(t.sign_less)}")


def report(a_path: Path, b_path: Path) -> tuple[str, dict]:
    """The printed report and its numbers as a dict."""
    a, b = load_eval(a_path), load_eval(b_path)
    diffs = matched(a, b)
    if not diffs:
        raise CompsrtError(f"{a_path} and {b_path} share no set with a common image; compare evaluations "
                           "of the same sets")
    lines = [f"A = {a.get('weights')} ({a_path})", f"B = {b.get('weights')} ({b_path})"]
    numbers: dict = {"sets": {n: len(d["psnr_db"]) for n, d in diffs.items()}, "metrics": {}}
    for metric, label in METRICS:
        ds = per_dataset(diffs, metric)
        lines += [f"\n{label}, A - B",
                  f"  per dataset ({ds.n} sets, the paper's test): mean {ds.mean:+.5f}, A ahead on {ds.ahead}/{ds.n}; "
                  f"one-sided Wilcoxon A > B p {fmt_p(ds.p_greater)}, A < B p {fmt_p(ds.p_less)} "
                  f"(floor 2^-{ds.n} = {fmt_p(ds.p_floor)}); d_z {fmt_dz(ds.dz)}"]
        per_set = {name: paired(d[metric]) for name, d in diffs.items()}
        for name, d in diffs.items():
            lines.append(f"  {name} per image: {per_image_line(d[metric])}")
        everything = np.concatenate([d[metric] for d in diffs.values()])
        if len(diffs) > 1:
            lines.append(f"  all {len(everything)} images: {per_image_line(everything)}")
        numbers["metrics"][metric] = {"per_dataset": ds.as_dict(),
                                      "per_set": {n: t.as_dict() for n, t in per_set.items()},
                                      "all_images": paired(everything).as_dict()}
    return "\n".join(lines), numbers
