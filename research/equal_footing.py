"""Equal footing for the method comparison (issue 26, item 4): CompSRT with and without the exact DC,
2DQuant with and without the row mean, at W4 and W2, two seeds each, on Set5 / Set14 / B100.

    python research/equal_footing.py run --data BENCH [--out runs/equal_footing]   # 16 runs, resumable
    python research/equal_footing.py commands --data BENCH                          # what run would do next
    python research/equal_footing.py table [--out runs/equal_footing] [--md FILE]   # the markdown table
    python research/equal_footing.py fill --md docs/calib/equal_footing.md          # refresh a doc's tables

``run`` calibrates each of the 16 configurations with the quick default (``python -m compsrt.calib
--scale 2 --bits B --method M [--exact-dc | --no-exact-dc | --row-mean] --seed S``) into its own
folder ``OUT/x2_wB_<variant>_sS``, then writes beside it ``size.json`` (``python -m compsrt.size
--json``: the effective bits) and ``eval.json`` (``python -m compsrt.eval --json``: per-image PSNR /
SSIM of the packed model). Each step is skipped when its output exists, a calibration left with a
``calib_state.safetensors`` is resumed (``--resume``), so the same command continues after an
interruption; a failed step stops the run with its exit code. ``--arch mambairv2-light --bits 2``
runs the same four variants on MambaIRv2-light (its calibration needs ``--arch`` in
``python -m compsrt.calib``); ``--variants`` keeps only some of the four (two processes can then share
the runs without touching the same folder).

``table`` reads those files and prints, per bit width and variant: the effective bits per weight and
per activation value (overall, FP offsets and padding included), the held-out fidelity of the
calibration (report.json), and the mean PSNR / SSIM per set over the seeds present (with the
seed-to-seed half range); then the per-image paired comparisons of CompSRT against 2DQuant at equal
footing (both with a per-row FP offset, both without) and as the presets stand (CompSRT's exact DC
against plain 2DQuant): per image the PSNR averaged over the seeds both have, the mean difference
per set and over all images, on how many images CompSRT is ahead and a two-sided paired Wilcoxon
signed-rank test (the project's per-image test, :func:`compsrt.analysis.paired.paired`, which
``python -m compsrt.analysis significance`` runs). The unit is the image: seed-to-seed variation
of a calibration is only in the half ranges.

``fill`` rewrites, in the markdown file ``--md``, every block between ``<!-- table: OPTIONS -->`` and
``<!-- /table -->`` with ``table``'s output for those options (``--arch``, ``--scale``, ``--bits``,
``--seeds``), leaving the prose around them as it is.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compsrt.analysis.paired import fmt_p, paired as paired_test
from compsrt.analysis.significance import per_image
from compsrt.io import atomic_path

SETS = ("Set5", "Set14", "B100")
# variant -> (label, calibration options)
VARIANTS = {
    "compsrt-dc": ("compsrt, exact DC", ["--method", "compsrt", "--exact-dc"]),
    "compsrt-nodc": ("compsrt, no exact DC", ["--method", "compsrt", "--no-exact-dc"]),
    "2dquant-rowmean": ("2dquant, row mean", ["--method", "2dquant", "--row-mean"]),
    "2dquant": ("2dquant", ["--method", "2dquant"]),
}
# (A, B, what the pair compares): CompSRT against 2DQuant
PAIRS = (("compsrt-dc", "2dquant-rowmean", "equal footing, both with an FP offset per row"),
         ("compsrt-nodc", "2dquant", "equal footing, neither with an FP offset"),
         ("compsrt-dc", "2dquant", "the presets as they stand (exact DC against none)"))


@dataclass(frozen=True)
class Run:
    arch: str
    scale: int
    bits: int
    variant: str
    seed: int

    @property
    def name(self) -> str:
        prefix = "" if self.arch == "swinir-light" else f"{self.arch}_"
        return f"{prefix}x{self.scale}_w{self.bits}_{self.variant}_s{self.seed}"


def runs(arch: str, scale: int, bits: list[int], seeds: list[int], variants=tuple(VARIANTS)) -> list[Run]:
    return [Run(arch, scale, b, v, s) for b in bits for v in VARIANTS if v in variants for s in seeds]


def _arch_args(run: Run) -> list[str]:
    return [] if run.arch == "swinir-light" else ["--arch", run.arch]


def pending_steps(run: Run, out: Path, data: Path, python: str = sys.executable) -> list[tuple[list[str], Path | None]]:
    """The commands still needed for ``run`` (calibrate, size, evaluate), each with the file its
    stdout goes to (None: the command writes its own output)."""
    d = out / run.name
    model = d / "model.safetensors"
    steps: list[tuple[list[str], Path | None]] = []
    if not (model.is_file() and (d / "report.json").is_file()):
        cmd = [python, "-m", "compsrt.calib", "--scale", str(run.scale), "--bits", str(run.bits),
               *VARIANTS[run.variant][1], "--seed", str(run.seed), *_arch_args(run), "--out", str(d), "--quiet"]
        if (d / "calib_state.safetensors").is_file():
            cmd.append("--resume")
        steps.append((cmd, None))
    if not (d / "size.json").is_file():
        steps.append(([python, "-m", "compsrt.size", str(model), "--json"], d / "size.json"))
    if not (d / "eval.json").is_file():
        steps.append(([python, "-m", "compsrt.eval", "--weights", str(model), "--scale", str(run.scale),
                       *_arch_args(run), "--data", str(data), "--sets", *SETS, "--json", str(d / "eval.json"),
                       "--quiet"], None))
    return steps


def _run_step(cmd: list[str], stdout_to: Path | None) -> int:
    if stdout_to is None:
        return subprocess.run(cmd).returncode
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if res.returncode == 0:
        with atomic_path(stdout_to) as tmp:   # a half-written size.json never exists
            tmp.write_text(res.stdout)
    return res.returncode


# -- the table ---------------------------------------------------------------------------------------

def _load(d: Path) -> dict | None:
    """A finished run's report, size and eval JSONs, or None while any is missing."""
    files = {k: d / f"{k}.json" for k in ("report", "size", "eval")}
    if not all(f.is_file() for f in files.values()):
        return None
    out = {k: json.loads(f.read_text()) for k, f in files.items()}
    out["size"] = out["size"][0] if isinstance(out["size"], list) else out["size"]
    return out


def _mean_spread(values: list[float], digits: int) -> str:
    v = np.array(values)
    cell = f"{v.mean():.{digits}f}"
    return cell + (f" ±{(v.max() - v.min()) / 2:.{digits}f}" if len(v) > 1 else "")


def collect(out: Path, arch: str, scale: int, bits: list[int], seeds: list[int]) -> dict[tuple[int, str], list[dict]]:
    """(bits, variant) -> the finished runs' loaded files, in seed order."""
    got: dict[tuple[int, str], list[dict]] = {}
    for run in runs(arch, scale, bits, seeds):
        r = _load(out / run.name)
        if r is not None:
            r["seed"] = run.seed
            got.setdefault((run.bits, run.variant), []).append(r)
    return got


def paired(a: list[dict], b: list[dict]) -> dict[str, np.ndarray]:
    """Per set and "all": per-image PSNR differences A - B, each image's PSNR averaged over the
    seeds both A and B have."""
    seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
    if not seeds:
        return {}
    ia = [per_image(r["eval"]) for r in a if r["seed"] in seeds]
    ib = [per_image(r["eval"]) for r in b if r["seed"] in seeds]
    keys = sorted(set.intersection(*(set(m) for m in ia + ib)))
    diff = {k: np.mean([m[k] for m in ia]) - np.mean([m[k] for m in ib]) for k in keys}
    out = {s: np.array([d for (ss, _), d in diff.items() if ss == s]) for s in SETS}
    out = {s: v for s, v in out.items() if len(v)}
    out["all"] = np.array(list(diff.values()))
    return out


def _test_cell(d: np.ndarray) -> str:
    return fmt_p(paired_test(d).p_two) if len(d) >= 6 else "-"


def table(out: Path, arch: str = "swinir-light", scale: int = 2, bits: list[int] = (4, 2),
          seeds: list[int] = (0, 1)) -> str:
    """The markdown tables of the finished runs under ``out`` (see the module docstring)."""
    got = collect(out, arch, scale, list(bits), list(seeds))
    lines = [f"{arch} x{scale}; quick default calibration; mean over the seeds present ± half their range.", "",
             "| bits | method | seeds | bits/weight | bits/activation | held-out fidelity (dB) | "
             + " | ".join(f"{s} PSNR / SSIM" for s in SETS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(SETS)]
    for b in bits:
        for v, (label, _) in VARIANTS.items():
            rs = got.get((b, v))
            if not rs:
                lines.append(f"| W{b}A{b} | {label} | - | | | | " + " | ".join("" for _ in SETS) + " |")
                continue
            eb = [r["size"]["effective_bits"] for r in rs]
            cells = [f"W{b}A{b}", label, ", ".join(str(r["seed"]) for r in rs),
                     f"{eb[0]['weights']['overall']['bits']:.3f}", f"{eb[0]['activations']['overall']['bits']:.3f}",
                     _mean_spread([r["report"]["calibration"]["best_fidelity_db"] for r in rs], 2)]
            for s in SETS:
                if all(s in r["eval"]["results"] for r in rs):
                    cells.append(_mean_spread([r["eval"]["results"][s]["psnr_db"] for r in rs], 3) + " / "
                                 + f"{np.mean([r['eval']['results'][s]['ssim'] for r in rs]):.4f}")
                else:
                    cells.append("")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per image, PSNR of A - B (dB), each image averaged over the seeds both have; A ahead on k of n "
              "images; two-sided paired Wilcoxon p over all images:", "",
              "| bits | A | B | compares | " + " | ".join(f"{s} mean" for s in SETS)
              + " | all mean | A ahead | Wilcoxon p |", "|---|---|---|---|" + "---|" * len(SETS) + "---|---|---|"]
    for b in bits:
        for va, vb, what in PAIRS:
            d = paired(got.get((b, va), []), got.get((b, vb), []))
            if not d:
                continue
            per_set = [f"{d[s].mean():+.3f}" if s in d else "" for s in SETS]
            lines.append(f"| W{b}A{b} | {VARIANTS[va][0]} | {VARIANTS[vb][0]} | {what} | " + " | ".join(per_set)
                         + f" | {d['all'].mean():+.3f} | {int((d['all'] > 0).sum())}/{len(d['all'])} | "
                         + f"{_test_cell(d['all'])} |")
    return "\n".join(lines) + "\n"


TABLE_BLOCK = re.compile(r"(<!-- table:(?P<opts>[^>]*)-->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def fill(md: Path, out: Path) -> int:
    """Refresh every ``<!-- table: ... -->`` block of ``md`` from the runs under ``out``; returns how many."""
    text = md.read_text()

    def block(m: re.Match) -> str:
        a = _parser().parse_args(["table", *shlex.split(m["opts"])])
        return m.group(1) + table(out, a.arch, a.scale, a.bits, a.seeds) + m.group(4)

    new, n = TABLE_BLOCK.subn(block, text)
    with atomic_path(md) as tmp:
        tmp.write_text(new)
    return n


# -- the CLI -----------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("run", "commands", "table", "fill"))
    p.add_argument("--out", type=Path, default=Path("runs/equal_footing"), help="folder of the run folders")
    p.add_argument("--data", type=Path, help="benchmark folder (<Set>/HR, <Set>/LR_bicubic); run and commands")
    p.add_argument("--arch", default="swinir-light")
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4))
    p.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS),
                   help="run and commands: only these variants (e.g. to split the runs between two processes)")
    p.add_argument("--md", type=Path, help="table: also write it to this file; fill: the file whose tables to refresh")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.what == "fill":
        if a.md is None or not a.md.is_file():
            print(f"equal_footing: fill needs --md FILE, an existing markdown file (got {a.md})", file=sys.stderr)
            return 2
        print(f"{a.md}: {fill(a.md, a.out)} table(s) refreshed")
        return 0
    if a.what == "table":
        text = table(a.out, a.arch, a.scale, a.bits, a.seeds)
        print(text, end="")
        if a.md is not None:
            with atomic_path(a.md) as tmp:
                tmp.write_text(text)
        return 0
    if a.data is None or not a.data.is_dir():
        print(f"equal_footing: --data {a.data}: not a benchmark folder (needed by {a.what})", file=sys.stderr)
        return 2
    todo = [(run, step) for run in runs(a.arch, a.scale, a.bits, a.seeds, a.variants)
            for step in pending_steps(run, a.out, a.data)]
    if a.what == "commands":
        for _, (cmd, to) in todo:
            print(" ".join(cmd) + (f" > {to}" if to else ""))
        return 0
    from tqdm import tqdm

    try:
        for run, (cmd, to) in tqdm(todo, desc="equal footing steps"):
            (a.out / run.name).mkdir(parents=True, exist_ok=True)
            rc = _run_step(cmd, to)
            if rc != 0:
                print(f"equal_footing: {run.name}: '{' '.join(cmd)}' exited {rc}; run the same command again to "
                      "continue (finished steps are kept)", file=sys.stderr)
                return rc
    except KeyboardInterrupt:
        print("equal_footing: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
