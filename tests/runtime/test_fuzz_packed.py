"""Fuzz: 200+ damaged packed files, each a one-line error with exit code 2 from compsrt-infer."""
from __future__ import annotations

import json
import random
import struct

import pytest
import torch
from PIL import Image

from compsrt.cli import main as infer
from compsrt.config import QuantConfig
from compsrt.quant.pack import VERSION, content_sha256, pack_model, save_packed


def _write(path, tensors, header, fix_sha=True):
    from safetensors.torch import save_file

    h = dict(header)
    if fix_sha:
        h["sha256"] = content_sha256(tensors, h)
    save_file(tensors, str(path), metadata={"compsrt": json.dumps(h)})


def _damaged(good: bytes, tensors: dict, header: dict, tmp_path) -> list:
    """(name, path) of every damaged variant."""
    rng = random.Random(0)
    n_head = struct.unpack("<Q", good[:8])[0]
    head = good[8:8 + n_head].decode()
    meta_at = 8 + head.index("__metadata__")
    cases = []

    def add(name, data):
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(bytes(data))
        cases.append((name, p))

    for i, cut in enumerate([0, 1, 7, 8, 9, 8 + n_head // 2, 8 + n_head - 1, 8 + n_head, 8 + n_head + 1]
                            + sorted(rng.sample(range(8 + n_head + 2, len(good) - 1), 51))):
        add(f"trunc{i}", good[:cut])
    regions = {"prefix": (0, 8), "index": (8, meta_at), "meta": (meta_at, 8 + n_head), "data": (8 + n_head, len(good))}
    counts = {"prefix": 8, "index": 45, "meta": 45, "data": 50}
    for region, (lo, hi) in regions.items():
        for i in range(counts[region]):
            raw = bytearray(good)
            raw[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
            add(f"flip_{region}{i}", raw)
    t, h = tensors, header
    variants = {
        "codes_int16": ({**t, "quant.codes": t["quant.codes"].to(torch.int16)}, h),
        "codes_short": ({**t, "quant.codes": t["quant.codes"][..., :-1].contiguous()}, h),
        "codes_2d": ({**t, "quant.codes": t["quant.codes"][0]}, h),
        "masks_float": ({**t, "quant.masks": t["quant.masks"].float()}, h),
        "masks_long": ({**t, "quant.masks": torch.cat([t["quant.masks"]] * 2, -1)}, h),
        "qparams_t": ({**t, "quant.qparams": t["quant.qparams"].T.contiguous()}, h),
        "qparams_f16": ({**t, "quant.qparams": t["quant.qparams"].half()}, h),
        "qparams_bad_step": ({**t, "quant.qparams": t["quant.qparams"] * torch.tensor([1.0, -1.0, 1.0, 1.0])}, h),
        "fp_short": ({**t, "fp.values": t["fp.values"][:-1].contiguous()}, h),
        "fp_inf": ({**t, "fp.values": t["fp.values"].clone().index_fill_(0, torch.tensor([0]), float("inf"))}, h),
        "dc_missing": ({k: v for k, v in t.items() if k != "quant.dc"}, h),
        "extra_tensor": ({**t, "conv_first.weight": torch.zeros(3)}, h),
        "bits5": (t, {**h, "bits": 5, "quant": {**h["quant"], "bits": 5}}),
        "bits3_lie": (t, {**h, "quant": {**h["quant"], "bits": 3}}),
        "newer": (t, {**h, "version": VERSION + 1}),
        "older": (t, {**h, "version": 1}),
        "version_str": (t, {**h, "version": "2"}),
        "format": (t, {**h, "format": "compsrt-calibrated"}),
        "arch": (t, {**h, "arch": "mambairv2-light"}),
        "heads0": (t, {**h, "model": {**h["model"], "num_heads": [0]}}),
        "dim_neg": (t, {**h, "model": {**h["model"], "embed_dim": -20}}),
        "window_huge": (t, {**h, "model": {**h["model"], "window_size": 1 << 20}}),
        "depth_huge": (t, {**h, "model": {**h["model"], "depths": [1 << 30]}}),
        "scale7": (t, {**h, "model": {**h["model"], "scale": 7}}),
        "quant_missing": (t, {k: v for k, v in h.items() if k != "quant"}),
        "rotation_official": (t, {**h, "quant": {**h["quant"], "rotation": "official"}}),
        "fp_dtype": (t, {**h, "fp_dtype": "fp8"}),
        "model_list": (t, {**h, "model": [1, 2]}),
    }
    for name, (tt, hh) in variants.items():
        p = tmp_path / f"{name}.safetensors"
        _write(p, tt, hh)
        cases.append((name, p))
    for name, meta in {"not_json": "{", "json_list": "[1]", "no_sha": None}.items():
        from safetensors.torch import save_file

        p = tmp_path / f"{name}.safetensors"
        m = json.dumps({k: v for k, v in header.items() if k != "sha256"}) if meta is None else meta
        save_file(tensors, str(p), metadata={"compsrt": m})
        cases.append((name, p))
    return cases


def test_every_damaged_packed_file_is_one_line_and_exit_2(make_calibrated, tmp_path, capsys):
    m = make_calibrated(QuantConfig(bits=4, prune=0.4))
    tensors, header = pack_model(m)
    good_path = tmp_path / "good.safetensors"
    save_packed(tensors, header, good_path)
    header = json.loads(__import__("safetensors").safe_open(str(good_path), "pt").metadata()["compsrt"])
    src = tmp_path / "in.png"
    Image.new("RGB", (12, 10), (90, 120, 30)).save(src)
    assert infer([str(src), str(tmp_path / "ok.png"), "--weights", str(good_path), "--quiet"]) == 0
    capsys.readouterr()
    cases = _damaged(good_path.read_bytes(), tensors, header, tmp_path)
    assert len(cases) >= 200
    for name, path in cases:
        out = tmp_path / f"out_{name}.png"
        rc = infer([str(src), str(out), "--weights", str(path), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2, f"{name}: exit {rc}"
        assert err.startswith("compsrt-infer: error: ") and err.count("\n") == 1, f"{name}: {err!r}"
        assert str(path) in err, f"{name}: the message does not name the file: {err!r}"
        assert not out.exists(), name
