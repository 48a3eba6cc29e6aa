"""compsrt.metrics: PSNR and SSIM as the official SwinIR protocol computes them."""
from __future__ import annotations

import math

import numpy as np
import pytest

from compsrt.metrics import psnr, rgb_to_y, ssim

# Adding k to R, G and B adds k * (65.481 + 128.553 + 24.966) / 255 = k * 219 / 255 to Y.
Y_GAIN = (65.481 + 128.553 + 24.966) / 255


@pytest.fixture
def pair(make_rgb):
    a = make_rgb(40, 48, seed=0)
    noise = np.random.default_rng(1).normal(0, 6, a.shape)
    b = np.clip(a + noise, 0, 255).round().astype(np.uint8)
    return a, b


def test_identical_images_psnr_inf_ssim_one(pair):
    a, _ = pair
    assert psnr(a, a) == math.inf and psnr(a, a, crop_border=4, y_channel=False) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, a, crop_border=2, y_channel=False) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("d", [1, 3, 10])
def test_constant_offset_gives_known_psnr_rgb(make_rgb, d):
    a = np.clip(make_rgb(16, 20), 20, 230)
    b = a + np.uint8(d)
    assert psnr(a, b, y_channel=False) == pytest.approx(20 * math.log10(255 / d), abs=1e-9)


@pytest.mark.parametrize("k", [1, 4])
def test_gray_plus_minus_k_gives_known_psnr_on_y(k):
    # Gray images (R = G = B), +k on one half of the pixels and -k on the other: |dY| = k * 219/255.
    a = np.full((12, 12, 3), 128, np.uint8)
    b = a.astype(int)
    b[::2] += k
    b[1::2] -= k
    assert psnr(a, b.astype(np.uint8)) == pytest.approx(20 * math.log10(255 / (k * Y_GAIN)), abs=1e-9)


def test_rgb_to_y_bt601():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(img), [[16.0, 235.0, 16 + 65.481]], atol=1e-9)
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(rgb_to_y(gray), gray.astype(np.float64))
    np.testing.assert_array_equal(rgb_to_y(gray[..., None]), gray.astype(np.float64))


def test_grayscale_hw_inputs(pair):
    a, b = (x[..., 0] for x in pair)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-9)
    assert psnr(a, b) == psnr(a, b, y_channel=False)  # HW is used as is
    s = ssim(a, b)
    assert 0 < s < 1 and ssim(a, a) == pytest.approx(1.0)


def test_crop_border_removes_border_differences(make_rgb):
    a = make_rgb(30, 30)
    b = a.copy()
    b[:3] = 255 - b[:3]
    b[:, -3:] = 0
    assert math.isfinite(psnr(a, b, crop_border=2))
    assert psnr(a, b, crop_border=3) == math.inf
    assert ssim(a, b, crop_border=3) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b, crop_border=0) < 1


def test_ssim_below_one_for_noise_and_symmetric(pair):
    a, b = pair
    s = ssim(a, b)
    assert 0 < s < 0.99
    assert ssim(b, a) == pytest.approx(s, abs=1e-12)
    assert psnr(b, a) == psnr(a, b)
    s_rgb = ssim(a, b, y_channel=False)
    assert 0 < s_rgb < 1 and ssim(b, a, y_channel=False) == pytest.approx(s_rgb, abs=1e-12)


def test_ssim_orders_noise_levels(make_rgb):
    a = make_rgb(32, 32)
    rng = np.random.default_rng(2)
    noisy = [np.clip(a + rng.normal(0, sd, a.shape), 0, 255).round().astype(np.uint8) for sd in (2, 8, 30)]
    scores = [ssim(a, n) for n in noisy]
    assert scores[0] > scores[1] > scores[2]


def test_shape_mismatch_is_a_value_error(pair):
    a, b = pair
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:-1])
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(a, b[:, :-1])


def test_ssim_matches_dense_valid_window_reference(pair):
    # Independent: an 11x11 Gaussian (sigma 1.5) correlated over the valid region with scipy.
    from scipy.signal import correlate2d

    a, b = (rgb_to_y(x)[3:-3, 3:-3] for x in pair)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    f = lambda t: correlate2d(t, win, mode="valid")  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    var_a, var_b, cov = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2, f(a * b) - mu_a * mu_b
    ref = ((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))).mean()
    assert ssim(*pair, crop_border=3) == pytest.approx(ref, abs=1e-10)
