"""``python -m compsrt.analysis {distributions,significance}``: the paper's analyses, measured.

    python -m compsrt.analysis distributions --arch swinir-light --scale 2 --images DIR [--hr] [--out DIR]
    python -m compsrt.analysis significance A.json B.json

distributions: statistics of every quantized weight and activation before and after the Hadamard
rotation, with paired tests across tensors (Table 1 to stdout; table1.md, epsilon.md, groups.md,
distributions.json and, with matplotlib, weights.png / activations.png in --out).
significance: paired tests between two ``python -m compsrt.eval --json`` results.
Results and definitions: docs/analysis.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..errors import ArgumentParser, CompsrtError
from ..io import atomic_path
from ..load import ARCHS, checkpoint_kind, load_model
from .capture import PER_CHUNK
from .stream import EPSILONS, SAMPLE_SIZE

PROG = "python -m compsrt.analysis"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distributions", help="weight and activation statistics before/after rotation (Table 1)")
    d.add_argument("--arch", choices=ARCHS, default="swinir-light")
    d.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    d.add_argument("--images", type=Path, required=True, help="folder of images fed to the model")
    d.add_argument("--hr", action="store_true",
                   help="the images are HR: feed their bicubic LR at --scale (as calibration does with its crops)")
    d.add_argument("--weights", type=Path, help="FP weights (default: the bundled ones of --arch and --scale)")
    d.add_argument("--out", type=Path, help="output folder (default: analysis_<arch>_x<S>)")
    d.add_argument("--limit", type=int, default=0, help="use only the first N images (default: all)")
    d.add_argument("--eps", type=float, choices=EPSILONS, default=0.1, help="the epsilon of Table 1's near-zero share")
    d.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=2,
                   help="bits of the per-tensor quantization error")
    d.add_argument("--sample", type=int, default=SAMPLE_SIZE,
                   help=f"entries kept per tensor and view for Shapiro-Wilk, the quantization error and the "
                        f"figures (default {SAMPLE_SIZE}; weights are kept whole)")
    d.add_argument("--per-image", type=int, default=PER_CHUNK,
                   help=f"entries of each activation sampled per image for the moments, shares and samples "
                        f"(default {PER_CHUNK}; 0 = every entry, slow); count, min and max see every entry")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=1,
                   help="torch threads for the run (default 1: the statistics are many small operations; on a "
                        "busy 2-core CPU, 2 threads ran the defaults 2.6x to 6x slower)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    s = sub.add_parser("significance", help="paired tests between two compsrt.eval --json results")
    s.add_argument("a", type=Path, help="evaluation A (python -m compsrt.eval --json)")
    s.add_argument("b", type=Path, help="evaluation B")
    s.add_argument("--json", type=Path, help="also write the numbers here")
    return p


def distributions(a: argparse.Namespace) -> int:
    from .distributions import VIEW_TITLES, header, run, table1

    if a.limit < 0:
        raise CompsrtError(f"--limit {a.limit}: must be >= 0 (0 = every image)")
    if a.per_image < 0:
        raise CompsrtError(f"--per-image {a.per_image}: must be >= 0 (0 = every entry)")
    if a.threads < 1:
        raise CompsrtError(f"--threads {a.threads}: must be >= 1")
    if a.sample < 3:
        raise CompsrtError(f"--sample {a.sample}: must be >= 3 (Shapiro-Wilk needs 3 entries)")
    if not a.images.is_dir():
        raise CompsrtError(f"--images {a.images}: not a folder; pass a folder of images")
    if a.weights is not None and a.weights.is_file() and checkpoint_kind(a.weights) != "fp":
        raise CompsrtError(f"--weights {a.weights}: a {checkpoint_kind(a.weights)} checkpoint; the analysis "
                           "needs FP weights (the quantized tensors are measured before quantization)")
    model = load_model(a.weights, a.scale, a.arch)
    out = a.out or Path(f"analysis_{a.arch}_x{a.scale}")
    weights = str(a.weights) if a.weights else f"bundled {a.arch} x{a.scale}"
    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        analysis, tests, written = run(model, a.arch, a.scale, weights, a.images, out, hr=a.hr, limit=a.limit,
                                       eps=a.eps, bits=a.bits, seed=a.seed, sample_size=a.sample,
                                       per_image=a.per_image, progress=not a.quiet)
    finally:
        torch.set_num_threads(threads)
    print(header(analysis.meta), file=sys.stderr)
    print(f"### {VIEW_TITLES['after']}\n\n{table1(tests, a.eps, a.bits)}")
    if not any(p.suffix == ".png" for p in written):
        print("figures skipped: matplotlib is not installed (pip install 'compsrt[analysis]')", file=sys.stderr)
    print(f"{analysis.meta['seconds']:.0f} s; wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def significance(a: argparse.Namespace) -> int:
    from .significance import report

    text, numbers = report(a.a, a.b)
    print(text)
    if a.json:
        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(numbers, indent=1))
        print(f"numbers: {a.json}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        return distributions(a) if a.command == "distributions" else significance(a)
    except (CompsrtError, OSError) as e:
        print(f"{PROG} {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {a.command}: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
