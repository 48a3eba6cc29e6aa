"""python -m compsrt.size's effective bits, (b x coded values + masks + FP offset bits) / original
values per product kind and overall, against hand computations on the tests' tiny SwinIR-light
(embed_dim 20, 2 heads of dim 10, 8 x 8 windows, MLP 40, 2 blocks)."""
from __future__ import annotations

import json

import pytest
import torch

from compsrt.config import QuantConfig
from compsrt.quant.pack import pack_model, read_packed, save_packed
from compsrt.size import main, size_report


def _report(make_calibrated, cfg, tmp_path, fp_dtype="fp16"):
    t, h = pack_model(make_calibrated(cfg), fp_dtype)
    save_packed(t, h, tmp_path / "p.safetensors")
    return size_report(tmp_path / "p.safetensors")


def _bits(r, part):
    return {k: v["bits"] for k, v in r["effective_bits"][part].items()}


def test_exact_dc_at_4_bits_by_hand(make_calibrated, tmp_path):
    """Rotation pads 20 -> 32 (qkv, proj, fc1), 40 -> 64 (fc2), head dim 10 -> 16, tokens 64; the DC
    coefficient has no code; weight offsets fp16, activation offsets 32 bits."""
    r = _report(make_calibrated, QuantConfig(bits=4), tmp_path)
    w, a = _bits(r, "weights"), _bits(r, "activations")
    # per weight row: 4 x 31 codes + 16 bits over 20 weights; fc2: 4 x 63 + 16 over 40
    assert w == pytest.approx({"qkv": 140 / 20, "proj": 140 / 20, "fc1": 140 / 20, "fc2": 268 / 40,
                               "overall": (4 * (60 * 31 + 20 * 31 + 40 * 31 + 20 * 63) + 16 * 140) / 3200})
    # per activation row: 4 x 31 + 32 over 20; fc2 4 x 63 + 32 over 40; q k^T 4 x 15 + 32 over 10;
    # attn v: 4 x 63 + 32 over 64 tokens (attn rows and v columns alike)
    per_token_bits = 3 * 156 + 156 + 156 + 284 + 2 * 2 * 92 + (2 * 284 + 2 * 10 * 284 / 64)
    per_token_values = 60 + 20 + 20 + 40 + 40 + (2 * 64 + 2 * 10)
    assert a == pytest.approx({"qkv": 156 / 20, "proj": 156 / 20, "fc1": 156 / 20, "fc2": 284 / 40,
                               "q k^T": 92 / 10, "attn v": 284 / 64,
                               "overall": per_token_bits / per_token_values})
    assert r["effective_bits"]["weights"]["overall"]["original"] == 2 * 3200   # two blocks


def test_row_mean_fp32_offsets_by_hand(make_calibrated, tmp_path):
    """No rotation, no padding: every coefficient coded, one 32-bit mean per row (fp32 file)."""
    r = _report(make_calibrated, QuantConfig(bits=2, rotation="none", row_mean=True), tmp_path, "fp32")
    w, a = _bits(r, "weights"), _bits(r, "activations")
    assert w == pytest.approx({"qkv": 2 + 32 / 20, "proj": 2 + 32 / 20, "fc1": 2 + 32 / 20, "fc2": 2 + 32 / 40,
                               "overall": 2 + 32 * 140 / 3200})
    assert a["qkv"] == pytest.approx(2 + 32 / 20) and a["fc2"] == pytest.approx(2 + 32 / 40)
    assert a["q k^T"] == pytest.approx(2 + 32 / 10) and a["attn v"] == pytest.approx(2 + 32 / 64)
    assert r["row_mean"] and not r["exact_dc"]


def test_plain_2dquant_is_b_bits_and_pruning_counts_codes_and_masks(make_calibrated, tmp_path):
    r = _report(make_calibrated, QuantConfig(bits=3, rotation="none", decompose=False), tmp_path)
    assert set(_bits(r, "weights").values()) == {3.0} and set(_bits(r, "activations").values()) == {3.0}
    pruned = QuantConfig(bits=3, rotation="none", row_mean=True, prune=0.4)
    r = _report(make_calibrated, pruned, tmp_path)
    pm = read_packed(tmp_path / "p.safetensors")
    kept = sum(int(m.sum()) for m in pm.masks)
    cells = sum(m.numel() for m in pm.masks)
    rows = sum(g.rows for g in pm.grids)
    assert _bits(r, "weights")["overall"] == pytest.approx((3 * kept + cells + 16 * rows) / cells)
    assert kept == pytest.approx(0.6 * cells, abs=len(pm.masks))


def test_exact_dc_off_codes_every_rotated_coefficient(make_calibrated, tmp_path):
    r = _report(make_calibrated, QuantConfig(bits=4, exact_dc=False), tmp_path)
    w, a = _bits(r, "weights"), _bits(r, "activations")
    assert w["qkv"] == pytest.approx(4 * 32 / 20) and w["fc2"] == pytest.approx(4 * 64 / 40)
    assert a["q k^T"] == pytest.approx(4 * 16 / 10) and a["attn v"] == pytest.approx(4.0)


def test_the_cli_prints_and_exports_them(make_calibrated, tmp_path, capsys):
    r = _report(make_calibrated, QuantConfig(bits=4), tmp_path)
    assert main([str(tmp_path / "p.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "effective bits per original value" in out and "q k^T" in out and "exact DC" in out
    assert main([str(tmp_path / "p.safetensors"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["effective_bits"]
    assert got["activations"]["overall"]["bits"] == pytest.approx(r["effective_bits"]["activations"]["overall"]["bits"])
    assert torch.isfinite(torch.tensor(got["weights"]["overall"]["bits"]))
