"""Datasets: benchmark sets in the standard layout, and HR/LR pairs for training or calibration.

Benchmark layout: ``<root>/<Set>/HR/*.png`` and ``<root>/<Set>/LR_bicubic/X{s}/<name>x{s}.png``.
HR is mod-cropped to LR size x scale; a missing LR file is made with the MATLAB-compatible
bicubic resize, so a folder of HR images alone is a valid benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CompsrtError
from .io import SUPPORTED_SUFFIXES, read_rgb_uint8
from .resize import downscale_uint8


@dataclass
class Pair:
    name: str
    lr: np.ndarray  # HWC uint8
    hr: np.ndarray  # HWC uint8, exactly lr size x scale


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CompsrtError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file())


def mod_crop(img: np.ndarray, s: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % s, : w - w % s]


def make_pair(hr: np.ndarray, s: int, name: str = "") -> Pair:
    """Mod-crop an HR image and make its LR with the MATLAB-compatible bicubic."""
    hr = mod_crop(hr, s)
    return Pair(name, downscale_uint8(hr, s), hr)


def benchmark_hr_paths(root: Path, set_name: str) -> list[Path]:
    """The HR image files of one benchmark set, sorted by name (what :func:`load_benchmark` loads)."""
    hr_dir = Path(root) / set_name / "HR"
    if not hr_dir.is_dir():
        raise CompsrtError(f"{hr_dir}: missing; expected <data>/{set_name}/HR/*.png")
    paths = list_images(hr_dir)
    if not paths:
        raise CompsrtError(f"{hr_dir}: no images")
    return paths


def load_benchmark_pair(root: Path, set_name: str, hr_path: Path, scale: int) -> Pair:
    """One pair of a benchmark set: its HR file and the LR file beside it, or the LR made from it."""
    base = Path(root) / set_name
    hr = read_rgb_uint8(hr_path)
    lr_path = base / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
    if not lr_path.is_file():
        return make_pair(hr, scale, hr_path.stem)
    lr = read_rgb_uint8(lr_path)
    hr = hr[: lr.shape[0] * scale, : lr.shape[1] * scale]
    if hr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
        raise CompsrtError(f"{lr_path}: size {lr.shape[:2]} does not match HR {hr_path} at x{scale}")
    return Pair(hr_path.stem, lr, hr)


def load_benchmark(root: Path, set_name: str, scale: int) -> list[Pair]:
    """All pairs of one benchmark set at ``scale``; LR made where its file is missing."""
    return [load_benchmark_pair(root, set_name, p, scale) for p in benchmark_hr_paths(root, set_name)]


def load_training_pairs(folders: list[Path], scale: int, progress: bool = True) -> list[Pair]:
    """HR images of one or more folders with their LR, made once (the resize is the slow part)."""
    from tqdm import tqdm

    paths = [p for f in folders for p in list_images(f)]
    if not paths:
        raise CompsrtError(f"no images in {', '.join(map(str, folders))}")
    return [make_pair(read_rgb_uint8(p), scale, p.stem)
            for p in tqdm(paths, desc=f"LR x{scale}", disable=not progress, leave=False)]


def augment(lr: np.ndarray, hr: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/rotations (code 0..7), applied to both images alike."""
    def f(a: np.ndarray) -> np.ndarray:
        if code & 1:
            a = a[:, ::-1]
        if code & 2:
            a = a[::-1]
        if code & 4:
            a = a.transpose(1, 0, 2)
        return a
    return f(lr), f(hr)


def random_patches(pairs: list[Pair], rng: np.random.Generator, n: int, lr_patch: int, scale: int,
                   aug: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """n random aligned (LR, HR) crops, as (n, 3, p, p) and (n, 3, p*s, p*s) uint8 arrays."""
    lrs, hrs = [], []
    for _ in range(n):
        pair = pairs[rng.integers(len(pairs))]
        h, w = pair.lr.shape[:2]
        if h < lr_patch or w < lr_patch:
            raise CompsrtError(f"image {pair.name} ({w}x{h} LR) is smaller than the {lr_patch}px patch")
        y, x = int(rng.integers(h - lr_patch + 1)), int(rng.integers(w - lr_patch + 1))
        lr = pair.lr[y:y + lr_patch, x:x + lr_patch]
        hr = pair.hr[y * scale:(y + lr_patch) * scale, x * scale:(x + lr_patch) * scale]
        if aug:
            lr, hr = augment(lr, hr, int(rng.integers(8)))
        lrs.append(lr.transpose(2, 0, 1))
        hrs.append(hr.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(lrs)), np.ascontiguousarray(np.stack(hrs))


def split_holdout(pairs: list[Pair], n: int, seed: int | None = None) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): ``n`` pairs held out for validation, the rest (in order) to train on.

    ``seed=None`` holds out the first ``n`` (calibration's rule: the CLI's ``--val-images``);
    a seed holds out a fixed random choice of ``n`` (FP training's rule), the same for the same seed.
    """
    if seed is None:
        return pairs[n:], pairs[:n]
    idx = np.random.default_rng(seed + 12345).permutation(len(pairs))
    val = set(idx[:n].tolist())
    return [p for i, p in enumerate(pairs) if i not in val], [p for i, p in enumerate(pairs) if i in val]
