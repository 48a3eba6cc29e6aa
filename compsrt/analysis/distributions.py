"""``python -m compsrt.analysis distributions``: the paper's Table 1, epsilon table and Figure 2, measured.

Every quantized weight and every distinct activation entering a quantizer of an FP model
(:mod:`.capture`) is streamed over the images (weights once), before and after the Hadamard
rotation along its contraction axis, padding zeros never counted (definitions: :mod:`.capture`;
statistics: :mod:`.stream`). The main "after" view drops the DC coefficient, which the deployable
rotation keeps in FP; ``after_dc`` (all n coefficients) is in the JSON and the second table.

Across tensors, weights and activations apart, each claim is a paired one-sided test of
after against before (:mod:`.paired`): Shapiro-Wilk W higher (more Gaussian), range lower,
the share within +-eps higher (more mass near zero), kurtosis lower (lighter tails) and the
per-tensor ``bits``-bit quantization error lower. W and the shares are compared as differences,
range, kurtosis and error as log ratios (scale-free: the tensors' scales differ by orders of
magnitude). A claim holds when its one-sided Wilcoxon p is below :data:`ALPHA`.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data import list_images, make_pair
from ..errors import CompsrtError
from ..io import atomic_path, load_image, to_float, to_uint
from .capture import PER_CHUNK, Views, activation_specs, model_plan, quantizer_counts, streaming, weight_views
from .paired import fmt_dz, fmt_p, paired
from .stream import EPSILONS, SAMPLE_SIZE, SHAPIRO_SIZE

ALPHA = 0.05
KINDS = ("weight", "activation")
VIEW_TITLES = {"after": "after rotation, DC coefficient excluded (what the deployable quantizer codes)",
               "after_dc": "after rotation, all n coefficients (DC included)"}


@dataclass(frozen=True)
class Claim:
    key: str         # the per-view statistic
    label: str
    direction: str   # "higher" or "lower": what the paper's claim says rotation does
    log: bool        # compare log(after / before) rather than after - before


def claims(eps: float, bits: int) -> tuple[Claim, ...]:
    return (Claim("shapiro_w", "Shapiro-Wilk W (Gaussian-ness)", "higher", False),
            Claim("range", "range (max - min)", "lower", True),
            Claim(f"within:{eps}", f"share within +-{eps}", "higher", False),
            Claim("kurtosis", "kurtosis (Gaussian 3)", "lower", True),
            Claim("quant_error", f"{bits}-bit error (DOBI, per tensor)", "lower", True))


@dataclass
class Analysis:
    meta: dict
    tensors: list[dict]                            # per tensor: spec fields and the three views' statistics
    views: list[Views] = field(repr=False)        # for the figures (their samples)


def image_inputs(folder: Path, scale: int, hr: bool, limit: int = 0) -> tuple[list[Path], Iterator[Tensor]]:
    """The images of ``folder`` (the first ``limit``; 0 = all) and a lazy stream of model inputs
    (1, 3, H, W): each image as it is, or with ``hr`` its bicubic LR at ``scale``."""
    paths = list_images(folder)[: limit or None]
    if not paths:
        raise CompsrtError(f"{folder}: no images (PNG, JPEG, BMP, TIFF) in this folder; pass --images DIR")

    def stream() -> Iterator[Tensor]:
        for p in paths:
            rgb = load_image(p).rgb
            if hr:
                if min(rgb.shape[1:]) < scale:
                    raise CompsrtError(f"{p}: {rgb.shape[2]}x{rgb.shape[1]} is too small for --hr at x{scale}")
                rgb = to_float(make_pair(to_uint(rgb), scale).lr)
            yield rgb[None]

    return paths, stream()


@torch.no_grad()
def analyse(model: nn.Module, arch: str, inputs: Iterator[Tensor], n_inputs: int | None = None, bits: int = 2,
            seed: int = 0, sample_size: int = SAMPLE_SIZE, per_image: int = PER_CHUNK,
            progress: bool = True) -> Analysis:
    """Stream every quantized tensor of ``model`` over ``inputs`` and summarize its three views
    (activations: ``per_image`` entries sampled per image, ``sample_size`` kept; weights: whole)."""
    from tqdm import tqdm

    plan, source = model_plan(model, arch)
    weights = weight_views(model, plan, seed)
    acts = {s.name: Views(s, sample_size, seed, len(weights) + i, per_image)
            for i, s in enumerate(activation_specs(plan))}
    model.eval()
    n = 0
    with streaming(model, plan, lambda name, x: acts[name].add(x)):
        for x in tqdm(inputs, total=n_inputs, desc="images", disable=not progress, leave=False):
            model(x)
            n += 1
    if n == 0:
        raise CompsrtError("no input images to stream")
    silent = [name for name, v in acts.items() if v.before.count == 0]
    if silent:
        raise ValueError(f"{len(silent)} planned activation sites never ran (first: {silent[0]}): "
                         "plan and model disagree")
    views = weights + list(acts.values())
    tensors = []
    for v in tqdm(views, desc="statistics", disable=not progress, leave=False):
        tensors.append({"name": v.spec.name, "kind": v.spec.kind, "group": v.spec.group, "dim": v.spec.dim,
                        **v.summary(bits)})
    meta = {"arch": arch, "plan": source, **quantizer_counts(plan), "weights_analysed": len(weights),
            "activations_analysed": len(acts), "images": n, "bits": bits, "seed": seed,
            "per_image": per_image, "sample_size": sample_size, "shapiro_size": SHAPIRO_SIZE}
    return Analysis(meta, tensors, views)


def _value(view: dict, key: str) -> float:
    if key.startswith("within:"):
        return view["within"][key.split(":", 1)[1]]
    return view[key]


def claim_test(tensors: list[dict], kind: str, claim: Claim, view: str = "after") -> dict | None:
    """The paired test of one claim over the tensors of ``kind`` (None when no tensor has both values)."""
    rows = [(_value(t["before"], claim.key), _value(t[view], claim.key)) for t in tensors if t["kind"] == kind]
    rows = [(b, a) for b, a in rows if math.isfinite(b) and math.isfinite(a) and (not claim.log or (a > 0 and b > 0))]
    if not rows:
        return None
    b, a = (np.array(c) for c in zip(*rows))
    d = np.log(a / b) if claim.log else a - b
    test = paired(d)
    p, sign_p = test.one_sided(claim.direction)
    p_opp, _ = test.one_sided("lower" if claim.direction == "higher" else "higher")
    toward = test.ahead if claim.direction == "higher" else test.behind
    if p < ALPHA:
        verdict = "holds"
    elif p_opp < ALPHA:
        verdict = "does not hold (opposite)"
    else:
        verdict = "does not hold (n.s.)"
    return {"n": len(rows), "median_before": float(np.median(b)), "median_after": float(np.median(a)),
            "change": float(np.exp(d.mean())) if claim.log else float(d.mean()), "log": claim.log,
            "p": p, "p_opposite": p_opp, "dz": test.dz, "sign_k": toward, "sign_n": test.ahead + test.behind,
            "sign_p": sign_p, "verdict": verdict, "test": test.as_dict()}


def all_tests(tensors: list[dict], eps: float, bits: int) -> dict:
    """{view: {kind: {claim key: claim_test}}} for both rotated views, and the epsilon table's tests."""
    out = {view: {kind: {c.key: claim_test(tensors, kind, c, view) for c in claims(eps, bits)} for kind in KINDS}
           for view in VIEW_TITLES}
    out["epsilon"] = {view: {kind: {str(e): claim_test(tensors, kind, Claim(f"within:{e}", "", "higher", False), view)
                                    for e in EPSILONS} for kind in KINDS} for view in VIEW_TITLES}
    return out


def _num(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.3e}"


def _verdict(r: dict) -> str:
    """The verdict, with the one-sided p of the other direction when that one is significant."""
    if r["verdict"].endswith("(opposite)"):
        return f"does not hold (opposite: p {fmt_p(r['p_opposite'])} the other way)"
    return r["verdict"]


def _change(r: dict) -> str:
    return f"x{r['change']:.3g}" if r["log"] else f"{r['change']:+.4g}"


def table1(tests: dict, eps: float, bits: int, view: str = "after") -> str:
    """The Table-1-shaped markdown: per kind of tensor and claim, before/after and the tests."""
    lines = [f"| tensors | statistic | claim | median before | median after | mean change | Wilcoxon p (one-sided) "
             f"| d_z | sign test | verdict (p < {ALPHA}) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        for c in claims(eps, bits):
            r = tests[view][kind][c.key]
            if r is None:
                continue
            lines.append(f"| {kind}s ({r['n']}) | {c.label} | {c.direction} | {_num(r['median_before'])} | "
                         f"{_num(r['median_after'])} | {_change(r)} | {fmt_p(r['p'])} | {fmt_dz(r['dz'])} | "
                         f"{r['sign_k']}/{r['sign_n']}, p {fmt_p(r['sign_p'])} | {_verdict(r)} |")
    return "\n".join(lines)


def epsilon_table(tests: dict, tensors: list[dict], view: str = "after") -> str:
    """Share within +-eps, mean over tensors before -> after, with the one-sided test (higher after)."""
    head = "| eps |" + "".join(f" {k}s: mean share before -> after | p | d_z | verdict |" for k in KINDS)
    lines = [head, "|---|" + "---|---|---|---|" * len(KINDS)]
    for e in EPSILONS:
        row = f"| {e} |"
        for kind in KINDS:
            r = tests["epsilon"][view][kind][str(e)]
            if r is None:
                row += " - | - | - | - |"
                continue
            sel = [t for t in tensors if t["kind"] == kind]
            before = np.mean([t["before"]["within"][str(e)] for t in sel])
            after = np.mean([t[view]["within"][str(e)] for t in sel])
            row += f" {before:.4f} -> {after:.4f} | {fmt_p(r['p'])} | {fmt_dz(r['dz'])} | {_verdict(r)} |"
        lines.append(row)
    return "\n".join(lines)


def groups_table(tensors: list[dict]) -> str:
    """Per kind of layer (the name without its block prefix): medians before -> after and the
    quantization-error ratio after / before."""
    lines = ["| tensor | n | W before -> after | kurtosis before -> after | range before -> after "
             "| error after / before: median (min, max) | error up |", "|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        for g in dict.fromkeys(t["group"] for t in tensors if t["kind"] == kind):
            sel = [t for t in tensors if t["kind"] == kind and t["group"] == g]

            def med(view: str, key: str) -> str:
                return _num(float(np.median([t[view][key] for t in sel])))

            ratio = np.array([t["after"]["quant_error"] / t["before"]["quant_error"] for t in sel])
            lines.append(f"| {g} | {len(sel)} | {med('before', 'shapiro_w')} -> {med('after', 'shapiro_w')} | "
                         f"{med('before', 'kurtosis')} -> {med('after', 'kurtosis')} | "
                         f"{med('before', 'range')} -> {med('after', 'range')} | "
                         f"{np.median(ratio):.3g} ({ratio.min():.3g}, {ratio.max():.3g}) | "
                         f"{int((ratio > 1).sum())}/{len(sel)} |")
    return "\n".join(lines)


def header(meta: dict) -> str:
    """One line saying what was analysed."""
    return (f"{meta['arch']} x{meta['scale']} ({meta['weights_file']}), {meta['images']} images: "
            f"{meta['weight_quantizers']} weight quantizers, {meta['activation_quantizers']} activation "
            f"quantizers -> {meta['weights_analysed']} weights and {meta['activations_analysed']} distinct "
            f"activations ({meta['duplicates_dropped']} exact duplicates dropped: the shared inputs of split "
            f"Linears); plan: {meta['plan']}")


def figures(analysis: Analysis, out: Path) -> list[Path]:
    """Figure-2-like histograms (one tensor per layer kind, the first; before and after, the
    whole tensor's min and max marked), one PNG per kind of tensor; [] without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for kind in KINDS:
        first = {}
        for v, t in zip(analysis.views, analysis.tensors):
            if t["kind"] == kind:
                first.setdefault(t["group"], (v, t))
        if not first:
            continue
        fig, axes = plt.subplots(len(first), 2, figsize=(10, 2.2 * len(first)), squeeze=False)
        for row, (v, t) in zip(axes, first.values()):
            for ax, (view, stats) in zip(row, (("before", v.before), ("after", v.ac))):
                s = t[view]
                ax.hist(stats.reservoir.sample(), bins=100, color="tab:blue" if view == "before" else "tab:orange")
                for x in (s["min"], s["max"]):
                    ax.axvline(x, color="k", ls="--", lw=0.8)
                ax.set_title(f"{t['name']} {view}: W {s['shapiro_w']:.3f}, range {s['range']:.3g}", fontsize=7)
                ax.tick_params(labelsize=6)
        fig.tight_layout()
        path = out / f"{kind}s.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
        written.append(path)
    return written


def write_outputs(analysis: Analysis, tests: dict, out: Path, eps: float) -> list[Path]:
    """table1.md, epsilon.md, groups.md and distributions.json in ``out`` (atomically), then the figures."""
    meta, bits = analysis.meta, analysis.meta["bits"]
    intro = header(meta) + "\n"
    texts = {
        "table1.md": intro + "".join(f"\n### {title}\n\n{table1(tests, eps, bits, view)}\n"
                                     for view, title in VIEW_TITLES.items()),
        "epsilon.md": intro + "".join(f"\n### {title}\n\n{epsilon_table(tests, analysis.tensors, view)}\n"
                                      for view, title in VIEW_TITLES.items()),
        "groups.md": intro + "\n" + groups_table(analysis.tensors) + "\n",
        "distributions.json": json.dumps({"meta": meta, "tests": tests, "tensors": analysis.tensors}, indent=1),
    }
    written = []
    for name, text in texts.items():
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
        written.append(out / name)
    return written + figures(analysis, out)


def run(model: nn.Module, arch: str, scale: int, weights_file: str, images: Path, out: Path, *, hr: bool = False,
        limit: int = 0, eps: float = 0.1, bits: int = 2, seed: int = 0, sample_size: int = SAMPLE_SIZE,
        per_image: int = PER_CHUNK, progress: bool = True) -> tuple[Analysis, dict, list[Path]]:
    """The whole subcommand: analyse, test, write. Returns the analysis, the tests and the files written."""
    t0 = time.perf_counter()
    paths, inputs = image_inputs(images, scale, hr, limit)
    analysis = analyse(model, arch, inputs, len(paths), bits, seed, sample_size, per_image, progress)
    analysis.meta.update({"scale": scale, "weights_file": weights_file, "images_dir": str(images), "hr": hr,
                          "image_names": [p.name for p in paths], "eps": eps})
    tests = all_tests(analysis.tensors, eps, bits)
    analysis.meta["seconds"] = round(time.perf_counter() - t0, 1)
    return analysis, tests, write_outputs(analysis, tests, out, eps)
