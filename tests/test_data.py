"""compsrt.data: benchmark layout, mod-cropping, generated LR, training patches, held-out splits."""
from __future__ import annotations

import numpy as np
import pytest

from compsrt.data import (Pair, augment, list_images, load_benchmark, load_training_pairs, make_pair, mod_crop,
                          random_patches, split_holdout)
from compsrt.errors import CompsrtError
from compsrt.io import read_rgb_uint8
from compsrt.resize import downscale_uint8


def _upsample_nearest(a: np.ndarray, s: int) -> np.ndarray:
    return a.repeat(s, 0).repeat(s, 1)


def test_mod_crop():
    a = np.zeros((41, 50, 3), np.uint8)
    assert mod_crop(a, 2).shape == (40, 50, 3)
    assert mod_crop(a, 3).shape == (39, 48, 3)
    assert mod_crop(a, 4).shape == (40, 48, 3)
    assert mod_crop(a[..., 0], 4).shape == (40, 48)


def test_list_images_sorted_and_filtered(tmp_path, make_rgb, write_png):
    write_png(tmp_path / "b.png", make_rgb(4, 4))
    write_png(tmp_path / "a.PNG", make_rgb(4, 4))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.png"]
    with pytest.raises(CompsrtError, match="not a folder"):
        list_images(tmp_path / "missing")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_benchmark_without_lr_folder_generates_lr(tiny_benchmark, scale):
    pairs = load_benchmark(tiny_benchmark, "Tiny", scale)
    assert [p.name for p in pairs] == ["a", "b"]
    for p in pairs:
        hr_full = read_rgb_uint8(tiny_benchmark / "Tiny" / "HR" / f"{p.name}.png")
        assert p.hr.shape == (p.lr.shape[0] * scale, p.lr.shape[1] * scale, 3)
        np.testing.assert_array_equal(p.hr, mod_crop(hr_full, scale))
        np.testing.assert_array_equal(p.lr, downscale_uint8(mod_crop(hr_full, scale), scale))
        assert p.lr.dtype == np.uint8 and p.hr.dtype == np.uint8


def test_benchmark_with_lr_files_uses_them_and_crops_hr(tmp_path, make_rgb, write_png):
    hr = make_rgb(41, 50, seed=3)
    write_png(tmp_path / "S" / "HR" / "img.png", hr)
    lr = make_rgb(20, 25, seed=4)  # a distinct file: proves it is read, not regenerated
    write_png(tmp_path / "S" / "LR_bicubic" / "X2" / "imgx2.png", lr)
    [pair] = load_benchmark(tmp_path, "S", 2)
    np.testing.assert_array_equal(pair.lr, lr)
    np.testing.assert_array_equal(pair.hr, hr[:40, :50])
    # An LR file too large for its HR is a user-fixable data error, not a silent crop.
    write_png(tmp_path / "S" / "LR_bicubic" / "X2" / "imgx2.png", make_rgb(21, 25))
    with pytest.raises(CompsrtError, match="does not match HR"):
        load_benchmark(tmp_path, "S", 2)


def test_benchmark_errors(tmp_path):
    with pytest.raises(CompsrtError, match="missing"):
        load_benchmark(tmp_path, "Nope", 2)
    (tmp_path / "Empty" / "HR").mkdir(parents=True)
    with pytest.raises(CompsrtError, match="no images"):
        load_benchmark(tmp_path, "Empty", 2)


def test_real_benchmark_hr_is_mod_cropped(benchmark_dir):
    for scale in (2, 3, 4):
        for pair in load_benchmark(benchmark_dir, "Set5", scale):
            assert pair.hr.shape == (pair.lr.shape[0] * scale, pair.lr.shape[1] * scale, 3)


def test_training_pairs_from_several_folders(tmp_path, make_rgb, write_png):
    write_png(tmp_path / "f1" / "x.png", make_rgb(33, 30, seed=1))
    write_png(tmp_path / "f2" / "y.bmp", make_rgb(20, 27, seed=2))
    pairs = load_training_pairs([tmp_path / "f1", tmp_path / "f2"], 3, progress=False)
    assert [p.name for p in pairs] == ["x", "y"]
    assert [p.lr.shape for p in pairs] == [(11, 10, 3), (6, 9, 3)]
    assert [p.hr.shape for p in pairs] == [(33, 30, 3), (18, 27, 3)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompsrtError, match="no images"):
        load_training_pairs([tmp_path / "empty"], 2, progress=False)


def test_augment_eight_distinct_aligned_transforms(make_rgb):
    lr = make_rgb(6, 6, seed=5)
    hr = _upsample_nearest(lr, 2)
    outs = set()
    for code in range(8):
        a, b = augment(lr, hr, code)
        np.testing.assert_array_equal(b, _upsample_nearest(a, 2))
        outs.add(a.tobytes())
    assert len(outs) == 8


def test_random_patches_aligned_and_seeded(make_rgb):
    lr = make_rgb(20, 24, seed=6)
    pair = make_pair(_upsample_nearest(lr, 3), 3, "p")
    pair.lr = lr  # nearest-upsampled HR: each HR patch must be exactly its LR patch, repeated
    lrs, hrs = random_patches([pair], np.random.default_rng(0), 5, 8, 3)
    assert lrs.shape == (5, 3, 8, 8) and hrs.shape == (5, 3, 24, 24) and lrs.dtype == np.uint8
    for a, b in zip(lrs, hrs):
        np.testing.assert_array_equal(b, a.repeat(3, 1).repeat(3, 2))
    again = random_patches([pair], np.random.default_rng(0), 5, 8, 3)
    np.testing.assert_array_equal(again[0], lrs)
    with pytest.raises(CompsrtError, match="smaller than"):
        random_patches([pair], np.random.default_rng(0), 1, 21, 3)


def _named_pairs(n: int) -> list[Pair]:
    return [Pair(str(i), np.zeros((1, 1, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)) for i in range(n)]


def test_split_holdout_seeded_is_fixed_and_disjoint():
    """FP training's rule: a seeded choice, the same for the same seed, the rest in order."""
    pairs = _named_pairs(10)
    tr, val = split_holdout(pairs, 3, seed=0)
    tr2, val2 = split_holdout(pairs, 3, seed=0)
    assert [p.name for p in val] == [p.name for p in val2] and len(val) == 3 and len(tr) == 7
    assert not {p.name for p in tr} & {p.name for p in val}
    assert [p.name for p in tr] == sorted((p.name for p in tr), key=int)
    assert {p.name for p in split_holdout(pairs, 3, seed=1)[1]} != {p.name for p in val}


def test_split_holdout_without_seed_holds_out_the_first_n():
    """Calibration's rule (--val-images): the first n are held out, exactly pairs[:n]."""
    pairs = _named_pairs(5)
    tr, val = split_holdout(pairs, 2)
    assert val == pairs[:2] and tr == pairs[2:]
    assert split_holdout(pairs, 0) == (pairs, [])
