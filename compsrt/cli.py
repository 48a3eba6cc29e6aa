"""``compsrt-infer IN [IN ...] OUT``: super-resolve images; ``--compare``: see what compression costs.

Runs the bundled packed 4-bit SwinIR-light (the integer runtime) unless ``--model NAME`` picks
another bundled model (``--list-models``) or ``--weights`` names a file: official ``.pth``, our
FP safetensors, a packed or a calibrated CompSRT checkpoint. Scale and architecture come from
that file or name unless ``--scale`` / ``--arch`` say them (a contradiction is an error);
without either, x2 SwinIR-light.

One input file and one output file, or several inputs (files, folders, glob patterns) and an
output folder: then a bad image is reported in one line and the others are written, a summary
line ends the run, and the exit code is 2 if any image failed. User mistakes print one line and
exit 2; outputs are written atomically and never over an input. Every option: docs/infer.md.

Under torchrun (``torchrun --nproc-per-node N -m compsrt.cli IN_DIR OUT_DIR``) rank 0 decides which
images run (``--skip-existing``), rank r upscales and writes images r, r + N, ... of them, and
rank 0 alone shows the progress bar (its share), writes ``--json`` (every rank's records, in
input order) and prints the summary; the exit code is 2 on every rank if any image failed.
Details: docs/distributed.md.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import torch

from .cli_errors import run_cli
from .device import parse_device
from .distributed import Dist, launched, prog_name, session
from .errors import ArgumentParser, CompsrtError
from .io import MAX_PIXELS, SUPPORTED_SUFFIXES, Image, atomic_path, check_image_path, load_image, save_image
from .infer import (AUTO_OVERLAP, GIB, auto_tile, available_bytes, bytes_per_pixel, estimate_bytes, is_out_of_memory,
                    outscale_size, prepare_half, resample, upscale_many)
from .load import (ARCHS, bundled_model, bundled_models, checkpoint_kind, default_infer_model, describe_weights,
                   load_model)

EXTS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
_SAME_FORMAT = {".jpeg": ".jpg", ".tif": ".tiff"}
_MODEL_NAME = re.compile(r"^(swinir_light|mambairv2_light)_x([234])(?:_|$)")   # <arch>_x<S>[_w<B>...]
BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"
MAX_OUTSCALE = 16.0
T = TypeVar("T")
# Options --compare has no use for, with their defaults.
_NOT_WITH_COMPARE = {"ext": "auto", "suffix": "", "outscale": None, "batch": 1, "skip_existing": False,
                     "model": None, "weights": None, "tile": "auto"}


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="compsrt-infer", description="Super-resolve images with SwinIR-light (FP or CompSRT-compressed) or "
        "MambaIRv2-light. Details: README.md (Usage) and docs/infer.md.",
        usage="%(prog)s [options] IN [IN ...] OUT\n       %(prog)s --compare IMG OUT.png [--models M ...] "
              "[--hr HR.png]\n       %(prog)s --list-models")
    p.add_argument("paths", nargs="*", metavar="IN... OUT",
                   help="input image(s), folder(s) or glob(s), then the output: a file for one input file, "
                        "else a folder (created)")
    g = p.add_argument_group("input/output")
    g.add_argument("--ext", choices=tuple(["auto", *EXTS]), default="auto",
                   help="output format of folder runs; auto keeps each input's")
    g.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG and WebP quality, 1-100 (default 95)")
    g.add_argument("--suffix", default="", metavar="S", help="appended to output names in a folder (a_x2.png)")
    g.add_argument("--outscale", type=float, metavar="F",
                   help="resample the model's output to F x the input (bicubic, antialiased)")
    g.add_argument("--skip-existing", action="store_true", help="leave existing outputs as they are (resume)")
    g.add_argument("--json", type=Path, metavar="FILE", help="write per-image records (input, output, model, "
                   "seconds, error)")
    g.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse larger inputs before decoding (default {MAX_PIXELS:,}; 0 = no limit)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME",
                   help="a bundled model, e.g. swinir_light_x2_w2 (default: swinir_light_x{S}_w4)")
    g.add_argument("--weights", type=Path, metavar="FILE", help="a weights file: FP, packed or calibrated")
    g.add_argument("--scale", type=int, choices=(2, 3, 4), help="default: from the model, else 2")
    g.add_argument("--arch", choices=ARCHS, help="default: from the model, else swinir-light")
    g.add_argument("--list-models", action="store_true", help="list the bundled models and exit")
    g = p.add_argument_group("speed")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g.add_argument("--half", action="store_true", help="CUDA only: fp16 autocast of the FP parts "
                   "(an error on the CPU)")
    g.add_argument("--batch", type=int, default=1, metavar="N", help="run N same-size images together "
                   "(one forward on CUDA; on the CPU one by one)")
    g.add_argument("--tile", type=_tile_arg, default="auto", metavar="N",
                   help="tiles of N LR pixels; 0 = whole; auto = tile only if it would not fit")
    g.add_argument("--tile-overlap", type=int, default=AUTO_OVERLAP, metavar="N", help="overlap of tiles, LR pixels")
    g = p.add_argument_group("compare")
    g.add_argument("--compare", action="store_true", help="IMG OUT.png: panels bicubic | FP | each model "
                   "(centre 128x128 LR crop), PSNR/SSIM, zoomed inset")
    g.add_argument("--models", nargs="+", metavar="M",
                   help="bundled names or files (default: the bundled packed models of the scale)")
    g.add_argument("--hr", type=Path, metavar="HR.png", help="ground truth: PSNR/SSIM against it too")
    return p


def _tile_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: give auto or a number of pixels") from None


def list_models() -> str:
    """One line per bundled model: name, bytes, and what it is."""
    lines = []
    for name, path in bundled_models().items():
        kind = checkpoint_kind(path)
        what = "packed (integer runtime)" if kind == "compsrt-packed" else "FP32"
        lines.append(f"{name:<28} {path.stat().st_size:>10,} bytes  {what}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.list_models:
        print(list_models())
        return 0
    if len(args.paths) < 2:
        p.error("give an input and an output: compsrt-infer IN [IN ...] OUT")
    return run_cli(prog_name("compsrt-infer"), lambda: _main(args),
                   interrupted="finished outputs are kept, none is partial")


def _main(args: argparse.Namespace) -> int:
    _check_options(args)
    if args.compare:
        if launched():
            raise CompsrtError("--compare runs in one process; run it without torchrun")
        from .compare import compare_cli

        return compare_cli(args, _device(args))
    jobs, folder_out = plan_jobs([str(a) for a in args.paths[:-1]], Path(args.paths[-1]), args.ext, args.suffix)
    dev = _device(args)
    weights, arch, scale, label = resolve_model(args)
    with session(dev) as dist:
        return _upscale_jobs(args, jobs, folder_out, (weights, arch, scale, label), dist)


def _jobs_to_run(args: argparse.Namespace, jobs: list[tuple[Path, Path]], folder_out: bool) -> list[int]:
    """Which jobs run (indices), after removing our leftovers from the output folder; the others
    are skipped (``--skip-existing`` and the output exists). Rank 0 decides it for every rank."""
    if folder_out:
        _remove_our_leftovers(Path(args.paths[-1]))
    return [i for i, (_, dst) in enumerate(jobs) if not (args.skip_existing and dst.exists())]


def _upscale_jobs(args: argparse.Namespace, jobs: list[tuple[Path, Path]], folder_out: bool,
                  model_id: tuple[Path | None, str, int, str], dist: Dist) -> int:
    """Run this rank's share of the jobs; rank 0 reports for all (the one rank of a plain run)."""
    weights, arch, scale, label = model_id
    run_idx = set(dist.decide(lambda: _jobs_to_run(args, jobs, folder_out), "choosing the images to run"))
    skipped = [job for i, job in enumerate(jobs) if i not in run_idx]
    jobs = [job for i, job in enumerate(jobs) if i in run_idx]
    records = [_record(src, dst, label, 0.0, "skipped") for src, dst in skipped]
    if not jobs:
        if dist.is_main:
            _write_json(args.json, records)
            print(f"compsrt-infer: 0 written, {len(skipped)} skipped (outputs exist; --skip-existing)", file=sys.stderr)
        return 0
    model = load_model(weights, scale, arch, dist.device)
    if args.half:
        prepare_half(model)
    run = _Run(model, scale, label, args, dist.device, folder_out, records if dist.is_main else [], dist)
    if not dist.joined:
        try:
            failed = run.all(jobs)
        finally:
            _write_json(args.json, run.records)
    else:   # every rank's records, or none on a failure (they cannot be gathered then)
        run.all([jobs[i] for i in dist.shard(len(jobs))])
        records = _gathered_records(dist, run.records, jobs)
        failed = [Path(r["input"]).name for r in records if r["status"] == "failed"]
        if dist.is_main:
            _write_json(args.json, records)
    if folder_out and dist.is_main:
        _summary(len(jobs) - len(failed), len(skipped), failed)
    return 2 if failed else 0


def _gathered_records(dist: Dist, mine: list[dict], jobs: list[tuple[Path, Path]]) -> list[dict]:
    """Every rank's records: rank 0's skipped ones first, then one per job in job order."""
    order = {str(src): i for i, (src, _) in enumerate(jobs)}
    every = [r for part in dist.all_gather_json(mine, "gathering the per-image records") for r in part]
    skipped = [r for r in every if r["status"] == "skipped"]
    return skipped + sorted((r for r in every if r["status"] != "skipped"), key=lambda r: order[r["input"]])


def _device(args: argparse.Namespace) -> torch.device:
    dev = parse_device(args.device)
    if args.half and dev.type != "cuda":
        raise CompsrtError("--half needs a CUDA device (--device cuda); the CPU runs fp32: leave --half out")
    return dev


def _check_options(args: argparse.Namespace) -> None:
    """Option values and combinations, before any file is read."""
    fixed = args.tile != "auto"
    if args.tile_overlap < 0 or (fixed and (args.tile < 0 or (args.tile and args.tile_overlap >= args.tile))):
        raise CompsrtError(f"--tile {args.tile} --tile-overlap {args.tile_overlap}: need tile >= 0 and overlap < tile")
    if fixed and 0 < args.tile < 16:
        raise CompsrtError(f"--tile {args.tile}: tiles must be at least 16 LR pixels (twice the 8-pixel "
                           "attention window), or 0 for the whole image")
    if not 1 <= args.quality <= 100:
        raise CompsrtError(f"--quality {args.quality}: give a JPEG/WebP quality from 1 to 100")
    if args.batch < 1:
        raise CompsrtError(f"--batch {args.batch}: give a number of images, 1 or more")
    if args.outscale is not None and not 0 < args.outscale <= MAX_OUTSCALE:
        raise CompsrtError(f"--outscale {args.outscale:g}: give a factor above 0 and at most {MAX_OUTSCALE:g}")
    if any(c in args.suffix for c in "/\\") or args.suffix in (".", ".."):
        raise CompsrtError(f"--suffix {args.suffix!r}: a name part, without path separators")
    if args.model is not None and args.weights is not None:
        raise CompsrtError("--model and --weights both given; pick one")
    if args.compare:
        if len(args.paths) != 2:
            raise CompsrtError(f"--compare takes one image and one output PNG, got {len(args.paths)} paths")
        extra = [k for k, default in _NOT_WITH_COMPARE.items() if getattr(args, k) != default]
        if extra:
            raise CompsrtError(f"--compare does not take --{extra[0].replace('_', '-')}; it takes IMG OUT.png, "
                               "--models, --hr, --scale, --arch, --device, --json")
    elif args.models is not None or args.hr is not None:
        raise CompsrtError(f"{'--models' if args.models is not None else '--hr'} goes with --compare; add --compare "
                           "or use --model NAME to upscale with one model")


# -- which model ---------------------------------------------------------------------------------

def model_arch_scale(name: str) -> tuple[str, int] | None:
    """(arch, scale) a bundled model's name states (``<arch>_x<S>[_w<B>...]``), or None."""
    m = _MODEL_NAME.match(name)
    return (m.group(1).replace("_", "-"), int(m.group(2))) if m else None


def resolve_model(args: argparse.Namespace) -> tuple[Path | None, str, int, str]:
    """(weights file or None for the bundled FP default, arch, scale, label) from --model or
    --weights, whose arch and scale must agree with --arch / --scale where those are given."""
    if args.model is not None:
        path = bundled_model(args.model)
        arch, scale = model_arch_scale(args.model) or describe_weights(path)
        if args.scale is not None and args.scale != scale:
            raise CompsrtError(f"--model {args.model} is an x{scale} model but --scale {args.scale} was asked; "
                               f"leave --scale out or pick an x{args.scale} model (--list-models)")
        if args.arch is not None and args.arch != arch:
            raise CompsrtError(f"--model {args.model} is a {arch} model but --arch {args.arch} was asked; "
                               f"leave --arch out or pick a {args.arch} model (--list-models)")
        return path, arch, scale, args.model
    if args.weights is not None:
        arch, scale = describe_weights(args.weights)
        these = "these are" if checkpoint_kind(args.weights) == "fp" else "this is an"
        noun = "weights" if these == "these are" else "checkpoint"
        if args.scale is not None and args.scale != scale:
            raise CompsrtError(f"{args.weights}: {these} x{scale} {noun} but --scale {args.scale} was asked; leave "
                               f"--scale out (it is read from the file) or pass x{args.scale} weights")
        if args.arch is not None and args.arch != arch:
            raise CompsrtError(f"{args.weights}: {arch} {noun}, but --arch {args.arch} was asked; leave --arch out "
                               "(it is read from the file)")
        return args.weights, arch, scale, str(args.weights)
    arch, scale = args.arch or "swinir-light", args.scale or 2
    path = default_infer_model(scale, arch)
    return path, arch, scale, path.stem if path is not None else f"{arch.replace('-', '_')}_x{scale}"


# -- which files ---------------------------------------------------------------------------------

def _is_input(p: Path) -> bool:
    """An image a folder or glob takes: an image suffix, not hidden (which also skips our own
    temp files, ``.<name>.<random>.tmp.<suffix>``, left by a killed run)."""
    return p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")


def _remove_our_leftovers(folder: Path) -> None:
    """Temp files a killed run left in an output folder (our pattern only; inputs never touched)."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp.*"):
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES:
                p.unlink()


def _expand(arg: str) -> tuple[list[Path], bool]:
    """The images one input argument names, and whether it names a set (a folder or a glob)."""
    path = Path(arg)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_input(p))
        if not files:
            raise CompsrtError(f"{path}: no images ({', '.join(SUPPORTED_SUFFIXES)}) in this folder")
        return files, True
    if not path.exists() and any(c in arg for c in "*?["):
        files = sorted(p for p in map(Path, glob.glob(arg)) if _is_input(p))
        if not files:
            raise CompsrtError(f"{arg}: the pattern matches no image ({', '.join(SUPPORTED_SUFFIXES)})")
        return files, True
    check_image_path(path)
    return [path], False


def _format(suffix: str) -> str:
    s = suffix.lower()
    return _SAME_FORMAT.get(s, s)


def plan_jobs(inputs: list[str], dst: Path, ext: str = "auto",
              suffix: str = "") -> tuple[list[tuple[Path, Path]], bool]:
    """(input, output) pairs after checking every path, before any model is loaded, and whether
    the output is a folder (several inputs, a folder or glob input, or an existing folder).

    Raises:
        CompsrtError: a missing input, an unsupported format, an output that is an input, two
            inputs that would write the same output, ``--ext``/``--suffix`` at odds with an output file.
    """
    expanded = [(arg, *_expand(arg)) for arg in inputs]
    files = [f for _, fs, _ in expanded for f in fs]
    if len(inputs) == 1 and not expanded[0][2] and not dst.is_dir():
        return [(files[0], _output_file(files[0], dst, ext, suffix))], False
    if dst.exists() and not dst.is_dir():
        raise CompsrtError(f"{dst}: exists and is not a folder; give a folder for several inputs or a folder input")
    for arg, _, is_set in expanded:
        if is_set and Path(arg).is_dir() and dst.resolve() == Path(arg).resolve():
            raise CompsrtError(f"{dst}: output folder is the input folder; choose another so inputs are kept")
    jobs = [(f, dst / f"{f.stem}{suffix}{EXTS.get(ext, f.suffix)}") for f in files]
    writes: dict[Path, Path] = {}
    for src, out in jobs:
        if out in writes:
            raise CompsrtError(f"{writes[out]} and {src} would both write {out}; rename one or run them separately")
        writes[out] = src
    inputs_resolved = {f.resolve(): f for f in files}
    for src, out in jobs:
        if out.resolve() in inputs_resolved:
            raise CompsrtError(f"{out}: would overwrite the input {inputs_resolved[out.resolve()]}; choose another "
                               "output folder or a --suffix")
    return jobs, True


def _output_file(src: Path, dst: Path, ext: str, suffix: str) -> Path:
    """The output of a one-file run: ``dst`` itself, whose suffix decides the format."""
    if dst.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise CompsrtError(f"{dst}: unsupported output format '{dst.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if ext != "auto" and _format(dst.suffix) != EXTS[ext]:
        raise CompsrtError(f"--ext {ext} contradicts the output file {dst}; drop --ext (the name's suffix decides) "
                           f"or name it {dst.with_suffix(EXTS[ext]).name}")
    if suffix:
        raise CompsrtError(f"--suffix {suffix!r} names the outputs of a folder run; the output file {dst} is "
                           "named already: drop --suffix")
    if dst.exists() and dst.resolve() == src.resolve():
        raise CompsrtError(f"{dst}: output path is the input file; choose another so the input is kept")
    return dst


# -- the run -------------------------------------------------------------------------------------

def _record(src: Path, dst: Path, model: str, seconds: float, status: str, error: str | None = None) -> dict:
    return {"input": str(src), "output": str(dst) if status == "written" else None, "model": model,
            "seconds": round(seconds, 4), "status": status, "error": error}


def _write_json(path: Path | None, records: list[dict]) -> None:
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"images": records}, indent=1) + "\n")


def _summary(written: int, skipped: int, failed: list[str]) -> None:
    summary = f"{written} written"
    if skipped:
        summary += f", {skipped} skipped (outputs exist)"
    if failed:
        summary += f", {len(failed)} failed: {', '.join(failed)}"
    if failed or skipped:
        print(f"compsrt-infer: {summary}", file=sys.stderr)


@contextlib.contextmanager
def _reading_or_writing(src: Path):
    """An allocator failure while reading or writing ``src`` becomes a CompsrtError naming it."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:   # upscaling converts its own (compsrt.infer.upscale_many)
        if not is_out_of_memory(e):
            raise
        why = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise CompsrtError(f"{src}: out of memory reading or writing it ({why}); "
                           "lower --max-pixels to refuse images this large here") from None


def same_size_groups(items: Iterable[T], size: Callable[[T], object], n: int) -> Iterator[list[T]]:
    """Consecutive ``items`` of one ``size`` in groups of at most ``n`` (``--batch``), in order.

    Example:
        >>> list(same_size_groups([1, 1, 1, 2, 1], lambda i: i, 2))
        [[1, 1], [1], [2], [1]]
    """
    group: list[T] = []
    for item in items:
        if group and (len(group) == n or size(group[0]) != size(item)):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


class _Run:
    """Upscales the jobs of one run: consecutive same-size images in groups of ``--batch``; in a
    folder run an image that fails is reported in one line and the run goes on; every image
    leaves a record (for ``--json``)."""

    def __init__(self, model, scale: int, label: str, args: argparse.Namespace, dev: torch.device,
                 folder_out: bool, records: list[dict], dist: Dist | None = None) -> None:
        self.model, self.scale, self.label, self.args, self.dev = model, scale, label, args, dev
        self.folder_out, self.records, self.failed = folder_out, records, []
        self.dist = dist or Dist()   # under torchrun a failed one-file job is recorded, as in a folder run
        self.stack = dev.type == "cuda"   # one forward per group on CUDA; per image on the CPU (no faster there)
        self.bar = None

    def all(self, jobs: list[tuple[Path, Path]]) -> list[str]:
        """Run every job; returns the names of the inputs that failed."""
        from tqdm import tqdm

        desc = f"images [rank 0 of {self.dist.world}]" if self.dist.joined else "images"
        self.bar = tqdm(total=len(jobs), desc=desc, unit=" img", bar_format=BAR,
                        disable=self.args.quiet or not self.folder_out or not self.dist.is_main)
        try:
            for group in same_size_groups(self._loaded(jobs), lambda job: job[2].rgb.shape, self.args.batch):
                self._group(group)
        finally:
            self.bar.close()
        return self.failed

    def _loaded(self, jobs: list[tuple[Path, Path]]) -> Iterator[tuple[Path, Path, Image, float]]:
        """(input, output, image, seconds to read it) of each job whose input reads; the others fail."""
        for src, dst in jobs:
            t0 = time.perf_counter()
            try:
                with _reading_or_writing(src):
                    img = load_image(src, self.args.max_pixels)
            except CompsrtError as e:
                self._fail(src, dst, e, time.perf_counter() - t0)
                continue
            yield src, dst, img, time.perf_counter() - t0

    def _fail(self, src: Path, dst: Path, e: CompsrtError, seconds: float) -> None:
        self.records.append(_record(src, dst, self.label, seconds, "failed", str(e)))
        if not self.folder_out and not self.dist.joined:
            raise e
        self.failed.append(src.name)
        self.bar.update(1)
        print(f"compsrt-infer: error: {e}", file=sys.stderr)

    def _group(self, group: list) -> None:
        """Upscale one group of same-size images and write each."""
        t0 = time.perf_counter()
        imgs = [img for _, _, img, _ in group]
        try:
            outs = upscale_many(self.model, imgs, self.scale, self._tile(group[0][0], imgs[0], len(imgs)),
                                self.args.tile_overlap, self.dev, progress=not self.args.quiet and not self.folder_out,
                                stack=self.stack, half=torch.float16 if self.args.half else None)
        except CompsrtError as e:
            share = (time.perf_counter() - t0) / len(group)
            for src, dst, _, t_load in group:
                self._fail(src, dst, CompsrtError(f"{src}: {e}"), t_load + share)
            return
        share = (time.perf_counter() - t0) / len(group)
        for (src, dst, img, t_load), out in zip(group, outs):
            t1 = time.perf_counter()
            try:
                with _reading_or_writing(src):
                    if self.args.outscale is not None and self.args.outscale != self.scale:
                        out = resample(out, outscale_size(*img.rgb.shape[-2:], self.args.outscale))
                    save_image(out, dst, quality=self.args.quality)
            except CompsrtError as e:
                self._fail(src, dst, e, t_load + share + time.perf_counter() - t1)
                continue
            self.records.append(_record(src, dst, self.label, t_load + share + time.perf_counter() - t1, "written"))
            self.bar.update(1)

    def _tile(self, src: Path, img, n: int) -> int:
        """``--tile``, or for auto the tiling of an n-image group under half the available memory."""
        if self.args.tile != "auto":
            return self.args.tile
        h, w = img.rgb.shape[-2:]
        per_pixel = bytes_per_pixel(self.model) * (n if self.stack else 1)
        avail = available_bytes(self.dev)
        budget = avail // 2 if avail is not None else 4 * GIB
        tile = auto_tile(h, w, self.scale, budget, per_pixel, overlap=self.args.tile_overlap)
        if tile:
            print(f"compsrt-infer: {src.name}: a whole-image run of {w}x{h} needs about "
                  f"{estimate_bytes(h, w, self.scale, per_pixel) / GIB:.1f} GB, over half of the "
                  f"{(avail if avail is not None else 8 * GIB) / GIB:.1f} GB available; tiling in {tile}x{tile} "
                  f"tiles (--tile 0 forces a whole-image run)", file=sys.stderr)
        return tile


if __name__ == "__main__":
    sys.exit(main())
