"""``compsrt-infer --compare IMG OUT.png``: what compression costs, in one picture.

One PNG with panels side by side at the models' output scale (never downscaled): bicubic, the FP
model and each named model (default: the bundled packed models of the scale), run on the whole
LR image or, beyond ``CROP`` LR pixels a side, on its centre ``CROP`` x ``CROP`` crop. Under each
panel: a zoomed inset (nearest neighbour) of the square where the models differ most from the
FP output (the largest mean absolute difference over a window a quarter of the panel wide,
averaged over the named models), boxed in every panel; and a label: model name, file size,
PSNR/SSIM (Y channel, border = scale) against the FP output and, with ``--hr``, against the
ground truth.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CompsrtError
from .infer import prepare_half, upscale_tensor
from .io import atomic_path, check_image_path, load_image, to_uint
from .load import bundled_models, checkpoint_kind, describe_weights, load_model
from .metrics import psnr, ssim
from .resize import imresize

CROP = 128            # LR pixels a side beyond which the centre is cropped
MARGIN, GAP = 8, 8    # pixels around the picture and between columns
BOX = (255, 32, 32)   # colour of the box marking the zoomed region
SSIM_WINDOW = 11      # metrics.ssim's Gaussian window: SSIM needs at least this many pixels a side


@dataclass
class Panel:
    """One column of the picture: a name, its output pixels and what is said about them."""
    name: str
    pixels: np.ndarray                 # (H, W, 3) uint8 at the output scale
    file: Path | None = None           # the weights file (None for bicubic)
    seconds: float = 0.0               # loading and running, on this machine
    metrics: dict = field(default_factory=dict)

    def label(self, hr: bool) -> list[str]:
        size = f"{self.file.stat().st_size / 1000:,.0f} KB" if self.file is not None else "no weights"
        lines = [self.name, size, "vs FP: " + _pair(self.metrics, "fp")]
        return lines + ["vs HR: " + _pair(self.metrics, "hr")] if hr else lines

    def record(self) -> dict:
        return {"panel": self.name, "file": str(self.file) if self.file else None,
                "bytes": self.file.stat().st_size if self.file else None, "seconds": round(self.seconds, 3),
                **{k: "inf" if v == float("inf") else v for k, v in self.metrics.items()}}


def _pair(metrics: dict, ref: str) -> str:
    p, s = metrics.get(f"psnr_vs_{ref}"), metrics.get(f"ssim_vs_{ref}")
    if p is None:
        return "reference"
    db = "identical" if p == float("inf") else f"{p:.2f} dB"
    return db if s is None else f"{db} / {s:.4f}"


def centre_box(h: int, w: int, side: int = CROP) -> tuple[int, int, int, int]:
    """(y, x, h, w) of the centre crop: the whole side where it is at most ``side`` pixels."""
    ch, cw = min(h, side), min(w, side)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def differ_most(ref: np.ndarray, others: list[np.ndarray], side: int) -> tuple[int, int]:
    """(y, x) of the ``side`` x ``side`` square where ``others`` differ most from ``ref`` on average."""
    diff = np.mean([np.abs(o.astype(np.float32) - ref.astype(np.float32)).mean(-1) for o in others], axis=0)
    pooled = F.avg_pool2d(torch.from_numpy(diff)[None, None], side, stride=1)[0, 0]
    y, x = divmod(int(pooled.argmax()), pooled.shape[1])
    return y, x


def _metrics(out: np.ndarray, ref: np.ndarray, scale: int, name: str) -> dict:
    h, w = out.shape[:2]
    big_enough = min(h, w) - 2 * scale >= SSIM_WINDOW
    return {f"psnr_vs_{name}": psnr(out, ref, scale),
            f"ssim_vs_{name}": ssim(out, ref, scale) if big_enough else None}


def resolve_models(names: list[str] | None, scale: int | None,
                   arch: str | None) -> tuple[int, str, list[tuple[str, Path]]]:
    """(scale, arch, [(name, file)]) of a comparison: named models (bundled names or files) must
    share one scale, which ``scale`` (if given) must match; without names, the bundled packed
    models of that scale and architecture."""
    bundled = bundled_models()
    specs = []
    for name in names or []:
        path = bundled.get(name, Path(name))
        if not path.is_file():
            raise CompsrtError(f"--models {name}: neither a bundled model (compsrt-infer --list-models) nor a file")
        specs.append((name if name in bundled else path.name, path, *describe_weights(path)))
    scales = sorted({s for *_, s in specs})
    if scale is None and len(scales) > 1:
        which = ", ".join(f"{n} is x{s}" for n, _, _, s in specs)
        raise CompsrtError(f"--models: {which}; compare models of one scale")
    scale = scale or (scales[0] if scales else 2)
    for name, _, _, s in specs:
        if s != scale:
            raise CompsrtError(f"--models {name} is an x{s} model but --scale {scale} was asked; compare models "
                               "of one scale")
    archs = {a for _, _, a, _ in specs}
    arch = arch or (archs.pop() if len(archs) == 1 else "swinir-light")
    if names is None:
        specs = [(n, p, *describe_weights(p)) for n, p in bundled.items() if checkpoint_kind(p) == "compsrt-packed"]
        specs = [sp for sp in specs if sp[2:] == (arch, scale)]
    return scale, arch, [(n, p) for n, p, *_ in specs]


def _font(size: int = 13):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and font.getlength(trial) > width:
            lines.append(line)
            trial = word
        line = trial
    return lines + [line]


def compose(panels: list[Panel], region: tuple[int, int, int], zoom: int, title: str,
            hr: bool) -> tuple[object, list[tuple[int, int]]]:
    """The picture (a PIL image) and the (left, top) of each panel in it: a title, then per column
    the panel with ``region`` (y, x, side) boxed, the region zoomed ``zoom`` times (nearest
    neighbour) and the label."""
    from PIL import Image as PILImage, ImageDraw

    font = _font()
    line_h = int(font.getbbox("Ag")[3]) + 4
    y, x, side = region
    ph, pw = panels[0].pixels.shape[:2]
    labels = [p.label(hr) for p in panels]
    widths = [max(pw, side * zoom, *(int(font.getlength(t)) + 2 for t in lab)) for lab in labels]
    width = 2 * MARGIN + sum(widths) + GAP * (len(panels) - 1)
    title_lines = _wrap(title, font, width - 2 * MARGIN)
    top = MARGIN + line_h * len(title_lines) + GAP // 2
    height = top + ph + GAP // 2 + side * zoom + GAP // 2 + line_h * max(map(len, labels)) + MARGIN
    canvas = PILImage.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        draw.text((MARGIN, MARGIN + i * line_h), line, fill=(0, 0, 0), font=font)
    left, corners = MARGIN, []
    for panel, lab, w in zip(panels, labels, widths):
        corners.append((left, top))
        canvas.paste(PILImage.fromarray(panel.pixels), (left, top))
        draw.rectangle([left + x - 1, top + y - 1, left + x + side, top + y + side], outline=BOX)
        inset = panel.pixels[y:y + side, x:x + side].repeat(zoom, 0).repeat(zoom, 1)
        inset_top = top + ph + GAP // 2
        canvas.paste(PILImage.fromarray(np.ascontiguousarray(inset)), (left, inset_top))
        for j, text in enumerate(lab):
            draw.text((left, inset_top + side * zoom + GAP // 2 + j * line_h), text, fill=(0, 0, 0), font=font)
        left += w + GAP
    return canvas, corners


def _check_paths(src: Path, dst: Path, hr: Path | None) -> None:
    check_image_path(src)
    if hr is not None:
        check_image_path(hr)
    if dst.suffix.lower() != ".png":
        raise CompsrtError(f"{dst}: --compare writes one PNG; name the output *.png")
    if dst.exists() and dst.resolve() in {src.resolve(), *([hr.resolve()] if hr else [])}:
        raise CompsrtError(f"{dst}: the output is an input; choose another name so the input is kept")


def _hr_crop(hr_path: Path, lr_hw: tuple[int, int], box: tuple[int, int, int, int], scale: int,
             max_pixels: int) -> np.ndarray:
    """The ground truth under the LR crop ``box``; an HR image up to scale - 1 pixels larger than
    scale x the LR (not mod-cropped) is accepted."""
    hr = load_image(hr_path, max_pixels).rgb
    (h, w), (hh, hw) = lr_hw, hr.shape[-2:]
    if (hh // scale, hw // scale) != (h, w):
        raise CompsrtError(f"--hr {hr_path}: {hw}x{hh} is not x{scale} of the {w}x{h} input; give the HR image "
                           "the input was made from")
    y, x, ch, cw = box
    return to_uint(hr[:, y * scale:(y + ch) * scale, x * scale:(x + cw) * scale])


@torch.no_grad()
def make_comparison(src: Path, scale: int, arch: str, specs: list[tuple[str, Path]], device: torch.device,
                    hr_path: Path | None = None, max_pixels: int = 0, half: torch.dtype | None = None,
                    progress: bool = False) -> tuple[list[Panel], dict]:
    """The panels (bicubic, FP, each of ``specs``) with their metrics, and what was cropped."""
    from tqdm import tqdm

    from .model.weights import bundled_weights

    img = load_image(src, max_pixels)
    h, w = img.rgb.shape[-2:]
    box = centre_box(h, w)
    y, x, ch, cw = box
    lr = img.rgb[None, :, y:y + ch, x:x + cw]
    hr = _hr_crop(hr_path, (h, w), box, scale, max_pixels) if hr_path is not None else None
    fp_file = bundled_weights(scale, arch)
    panels = [Panel("bicubic", to_uint(imresize(lr[0], size=(ch * scale, cw * scale)).clamp(0, 1)))]
    named = [(f"{fp_file.stem} (FP)", fp_file)] + [(n, p) for n, p in specs if p.resolve() != fp_file.resolve()]
    for name, path in tqdm(named, desc="models", disable=not progress, leave=False):
        t0 = time.perf_counter()
        model = load_model(path, scale, describe_weights(path)[0], device)
        if half is not None:
            prepare_half(model)
        out = upscale_tensor(model, lr.to(device), scale, half=half)[0].cpu()
        panels.append(Panel(name, to_uint(out), path, time.perf_counter() - t0))
        del model
    fp = panels[1].pixels
    for i, panel in enumerate(panels):
        if i != 1:
            panel.metrics.update(_metrics(panel.pixels, fp, scale, "fp"))
        if hr is not None:
            panel.metrics.update(_metrics(panel.pixels, hr, scale, "hr"))
    return panels, {"input_size": [w, h], "crop": {"x": x, "y": y, "w": cw, "h": ch}}


def compare_cli(args: argparse.Namespace, device: torch.device) -> int:
    """``compsrt-infer --compare IMG OUT.png``: write the picture (and ``--json``); exit code 0."""
    t0 = time.perf_counter()
    src, dst = Path(args.paths[0]), Path(args.paths[1])
    _check_paths(src, dst, args.hr)
    scale, arch, specs = resolve_models(args.models, args.scale, args.arch)
    panels, where = make_comparison(src, scale, arch, specs, device, args.hr, args.max_pixels,
                                    torch.float16 if args.half else None, progress=not args.quiet)
    ph, pw = panels[0].pixels.shape[:2]
    side = max(1, min(ph, pw) // 4)
    zoom = max(1, min(ph, pw) // side)
    others = [p.pixels for p in panels[2:]] or [panels[0].pixels]
    ry, rx = differ_most(panels[1].pixels, others, side)
    crop = where["crop"]
    what = "whole image" if [crop["w"], crop["h"]] == where["input_size"] else \
        f"centre {crop['w']}x{crop['h']} of {where['input_size'][0]}x{where['input_size'][1]}"
    title = (f"{src.name}, x{scale}, {what} (LR pixels); panels at output scale. Box: where the models differ "
             f"most from FP, zoomed x{zoom} below. PSNR / SSIM on Y, border {scale}.")
    picture, _ = compose(panels, (ry, rx, side), zoom, title, args.hr is not None)
    with atomic_path(dst) as tmp:
        picture.save(tmp, format="PNG", optimize=True)
    seconds = time.perf_counter() - t0
    if args.json is not None:
        report = {"input": str(src), "output": str(dst), "scale": scale, "arch": arch, **where,
                  "region": {"x": rx, "y": ry, "side": side, "zoom": zoom}, "seconds": round(seconds, 3),
                  "panels": [p.record() for p in panels]}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
    if not args.quiet:
        print(f"compsrt-infer: {dst}: {len(panels)} panels, {picture.width}x{picture.height}, {seconds:.1f} s",
              file=sys.stderr)
    return 0
