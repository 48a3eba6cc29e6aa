"""``compsrt-infer in.png out.png``: super-resolve an image (or a folder of images).

Runs the bundled packed 4-bit SwinIR-light of ``--scale`` (the integer runtime) unless
``--model NAME`` picks another bundled model (``--list-models``) or ``--weights`` names a file:
official ``.pth``, our FP safetensors, a packed or a calibrated CompSRT checkpoint. User
mistakes print one line and exit 2; outputs are written atomically and never over an input.
``--tile auto`` (the default) tiles an image only when a whole-image run would not fit in half
of the available memory (compsrt.infer.auto_tile); ``--skip-existing`` resumes a folder run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .device import parse_device
from .errors import CompsrtError
from .io import MAX_PIXELS, SUPPORTED_SUFFIXES, check_image_path, load_image, save_image
from .infer import (AUTO_OVERLAP, GIB, auto_tile, available_bytes, bytes_per_pixel, estimate_bytes, is_out_of_memory,
                    upscale)
from .load import ARCHS, bundled_model, bundled_models, checkpoint_kind, default_infer_model, load_model


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compsrt-infer", description="Super-resolve images with SwinIR-light "
                                "(FP or CompSRT-compressed) or MambaIRv2-light.")
    p.add_argument("src", type=Path, nargs="?", help="input image, or a folder of images")
    p.add_argument("dst", type=Path, nargs="?", help="output image, or a folder (created) when src is a folder")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=2)
    p.add_argument("--model", help="a bundled model by name, e.g. swinir_light_x2_w2 or swinir_light_x2 (FP); "
                   "default: swinir_light_x{scale}_w4 for SwinIR-light")
    p.add_argument("--list-models", action="store_true", help="list the bundled models with their sizes and exit")
    p.add_argument("--weights", type=Path, help="any weights file: FP, packed or calibrated checkpoint")
    p.add_argument("--arch", choices=ARCHS, default="swinir-light")
    p.add_argument("--tile", type=_tile_arg, default="auto",
                   help="process in tiles of N LR pixels; 0 = whole image; auto (default) = tile only when the "
                        "whole image's estimated memory exceeds half of the available memory")
    p.add_argument("--tile-overlap", type=int, default=AUTO_OVERLAP, help="overlap between tiles in LR pixels")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse inputs larger than this many pixels, before decoding (default {MAX_PIXELS:,}; 0 = no limit)")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave outputs that already exist as they are (resume a folder run) instead of redoing them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _tile_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: give auto or a number of pixels") from None


def _is_input(p: Path) -> bool:
    """An image a folder run takes: an image suffix, not hidden (which also skips our own
    temp files, ``.<name>.<random>.tmp.<suffix>``, left by a killed run)."""
    return p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")


def _remove_our_leftovers(folder: Path) -> None:
    """Temp files a killed run left in an output folder (our pattern only; inputs never touched)."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp.*"):
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES:
                p.unlink()


def _jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs after checking every path, before any model is loaded."""
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if _is_input(p))
        if not files:
            raise CompsrtError(f"{src}: no images ({', '.join(SUPPORTED_SUFFIXES)}) in this folder")
        if dst.exists() and not dst.is_dir():
            raise CompsrtError(f"{dst}: exists and is not a folder; give a folder for a folder input")
        if dst.resolve() == src.resolve():
            raise CompsrtError(f"{dst}: output folder is the input folder; choose another so inputs are kept")
        return [(f, dst / f.name) for f in files]
    check_image_path(src)
    if dst.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise CompsrtError(f"{dst}: unsupported output format '{dst.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise CompsrtError(f"{dst}: output path is the input file; choose another so the input is kept")
    return [(src, dst)]


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
    if args.src is None or args.dst is None:
        p.error("the following arguments are required: src, dst")
    try:
        if args.model is not None and args.weights is not None:
            raise CompsrtError("--model and --weights both given; pick one")
        fixed = args.tile != "auto"
        if args.tile_overlap < 0 or (fixed and (args.tile < 0 or (args.tile and args.tile_overlap >= args.tile))):
            raise CompsrtError(f"--tile {args.tile} --tile-overlap {args.tile_overlap}: need tile >= 0 and overlap < tile")
        if fixed and 0 < args.tile < 16:
            raise CompsrtError(f"--tile {args.tile}: tiles must be at least 16 LR pixels (twice the 8-pixel "
                               "attention window), or 0 for the whole image")
        jobs = _jobs(args.src, args.dst)
        dev = parse_device(args.device)
        if args.src.is_dir():
            _remove_our_leftovers(args.dst)
        skipped = [src for src, dst in jobs if args.skip_existing and dst.exists()]
        jobs = [(src, dst) for src, dst in jobs if not (args.skip_existing and dst.exists())]
        if not jobs:
            print(f"compsrt-infer: 0 written, {len(skipped)} skipped (outputs exist; --skip-existing)", file=sys.stderr)
            return 0
        weights = args.weights
        if args.model is not None:
            weights = bundled_model(args.model)
        elif weights is None:
            weights = default_infer_model(args.scale, args.arch)
        model = load_model(weights, args.scale, args.arch, dev)
        return _run(model, jobs, len(skipped), args, dev)
    except (CompsrtError, OSError) as e:
        print(f"compsrt-infer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compsrt-infer: interrupted; finished outputs are kept, none is partial", file=sys.stderr)
        return 130


def _run(model, jobs: list[tuple[Path, Path]], skipped: int, args: argparse.Namespace, dev) -> int:
    """Upscale every job; a folder run reports an image that fails in one line and goes on."""
    from tqdm import tqdm

    if len(jobs) == 1 and not args.src.is_dir():
        _one(model, *jobs[0], args, dev, progress=not args.quiet)
        return 0
    failed = []
    for src, dst in tqdm(jobs, desc="images", disable=args.quiet):
        try:
            _one(model, src, dst, args, dev, progress=False)
        except CompsrtError as e:
            failed.append(src.name)
            print(f"compsrt-infer: error: {e}", file=sys.stderr)
    summary = f"{len(jobs) - len(failed)} written"
    if skipped:
        summary += f", {skipped} skipped (outputs exist)"
    if failed:
        summary += f", {len(failed)} failed: {', '.join(failed)}"
    if failed or skipped:
        print(f"compsrt-infer: {summary}", file=sys.stderr)
    return 2 if failed else 0


def _one(model, src: Path, dst: Path, args: argparse.Namespace, dev, progress: bool) -> None:
    """Read, upscale (choosing the tiling), write one image; an allocator failure is a CompsrtError."""
    try:
        _upscale_file(model, src, dst, args, dev, progress)
    except (RuntimeError, MemoryError) as e:   # reading or writing: upscale() converts its own
        if not is_out_of_memory(e):
            raise
        why = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise CompsrtError(f"{src}: out of memory reading or writing it ({why}); "
                           "lower --max-pixels to refuse images this large here") from None


def _upscale_file(model, src: Path, dst: Path, args: argparse.Namespace, dev, progress: bool) -> None:
    img = load_image(src, args.max_pixels)
    tile = args.tile
    if tile == "auto":
        h, w = img.rgb.shape[-2:]
        per_pixel = bytes_per_pixel(model)
        avail = available_bytes(dev)
        budget = avail // 2 if avail is not None else 4 * GIB
        tile = auto_tile(h, w, args.scale, budget, per_pixel, overlap=args.tile_overlap)
        if tile:
            print(f"compsrt-infer: {src.name}: a whole-image run of {w}x{h} needs about "
                  f"{estimate_bytes(h, w, args.scale, per_pixel) / GIB:.1f} GB, over half of the "
                  f"{(avail if avail is not None else 8 * GIB) / GIB:.1f} GB available; tiling in {tile}x{tile} "
                  f"tiles (--tile 0 forces a whole-image run)", file=sys.stderr)
    try:
        out = upscale(model, img, args.scale, tile, args.tile_overlap, dev, progress=progress)
    except CompsrtError as e:
        raise CompsrtError(f"{src}: {e}") from None
    del img
    save_image(out, dst)


if __name__ == "__main__":
    sys.exit(main())
