"""Packed checkpoints: bit-plane layout, what the file holds (and does not), validation, the pack CLI."""
from __future__ import annotations

import json

import pytest
import torch

from compsrt.config import QuantConfig
from compsrt.errors import CompsrtError
from compsrt.kernels.bitpack import pack_bits, pack_flat, unpack_bits, unpack_flat
from compsrt.kernels.fake_quant import fake_quant_ref
from compsrt.quant.compress import save_calibrated
from compsrt.quant.pack import FORMAT, VERSION, content_sha256, pack_model, read_packed, save_packed
from compsrt.quant.qmodules import QuantLinear


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_bit_planes_round_trip_and_use_exactly_b_bits(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (7, 96), generator=g).to(torch.uint8)
    codes[0, :32] = 2 ** bits - 1             # every bit set: the int32 sign bit is used
    planes = pack_bits(codes, bits)
    assert planes.dtype == torch.int32 and planes.shape == (7, bits, 3)
    assert planes.numel() * 32 == codes.numel() * bits
    assert torch.equal(unpack_bits(planes, bits), codes)
    v = torch.randint(0, 2 ** bits, (101,), generator=g)
    assert torch.equal(unpack_flat(pack_flat(v, bits), bits, 101), v.to(torch.uint8))


def test_bit_plane_layout_is_the_documented_one():
    codes = torch.zeros(1, 32, dtype=torch.uint8)
    codes[0, 5] = 0b101   # bit 0 and bit 2 of code 5
    planes = pack_bits(codes, 3)
    assert planes[0, :, 0].tolist() == [1 << 5, 0, 1 << 5]


def test_pack_bits_rejects_codes_out_of_range():
    with pytest.raises(ValueError, match="codes must lie"):
        pack_bits(torch.full((1, 32), 4, dtype=torch.uint8), 2)


CONFIGS = [QuantConfig(bits=4), QuantConfig(bits=2), QuantConfig(bits=3, prune=0.4),
           QuantConfig(bits=4, rotation="none", decompose=False), QuantConfig(bits=4, exact_dc=False, prune=0.3)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"w{c.bits}-{c.rotation}-p{c.prune}-dc{int(c.exact_dc)}")
def test_packed_file_holds_the_calibrated_codes_and_no_fp_weight(make_calibrated, cfg, tmp_path):
    m = make_calibrated(cfg)
    tensors, header = pack_model(m, "fp32", {"method": "test"}, "abc", "python -m compsrt.calib ...")
    save_packed(tensors, header, tmp_path / "p.safetensors")
    pm = read_packed(tmp_path / "p.safetensors")
    assert set(tensors) == {"quant.codes", "quant.qparams", "fp.values"} | (
        {"quant.masks"} if cfg.prune else set()) | ({"quant.dc"} if cfg.exact_dc and cfg.rotation == "deploy" else set())
    # no FP copy of a quantized weight: the FP values are exactly the model's other parameters
    quantized = sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, QuantLinear))
    fp_total = sum(p.numel() for n, p in m.named_parameters() if not n.rsplit(".", 1)[-1] in
                   ("lower", "upper", "step_extra", "zero_extra"))
    assert tensors["fp.values"].numel() == fp_total - quantized
    lins = [mod for mod in m.modules() if isinstance(mod, QuantLinear)]
    for lin, codes, mask in zip(lins, pm.codes, pm.masks):
        want, keep = [], []
        for wq in lin.wq:
            s2, z2 = wq.extras()
            _, q = fake_quant_ref(wq.quantized_part(), wq.lower, wq.upper, cfg.bits, s2, z2, return_codes=True)
            k = torch.ones_like(q, dtype=torch.bool) if wq.mask is None else wq.mask
            want.append(q * k)
            keep.append(k)
        assert torch.equal(codes, torch.cat(want))
        assert (mask is None) == (cfg.prune == 0)
        if mask is not None:
            assert torch.equal(mask, torch.cat(keep))
            assert abs(1 - mask.float().mean().item() - cfg.prune) < 0.01
    for k in ("format", "version", "arch", "model", "layers", "quant", "bits", "method", "rotation", "pruning",
              "source_sha256", "command", "sha256"):
        assert k in pm.header
    assert pm.header["format"] == FORMAT and pm.header["version"] == VERSION and pm.header["bits"] == cfg.bits


def test_fp16_is_the_default_and_halves_the_fp_parts(make_calibrated):
    m = make_calibrated(QuantConfig(bits=4))
    t16, _ = pack_model(m)
    t32, _ = pack_model(m, "fp32")
    assert t16["fp.values"].dtype == torch.float16 and t32["fp.values"].dtype == torch.float32
    assert torch.allclose(t16["fp.values"].float(), t32["fp.values"], atol=1e-3, rtol=1e-3)


def test_pack_refuses_what_no_integer_runtime_runs(make_calibrated):
    with pytest.raises(CompsrtError, match="8 bits"):
        pack_model(make_calibrated(QuantConfig(bits=8)))
    with pytest.raises(CompsrtError, match="official"):
        pack_model(make_calibrated(QuantConfig(bits=4, rotation="official")))


def _resave(tensors, header, path, fix_sha=True):
    from safetensors.torch import save_file

    h = dict(header)
    if fix_sha:
        h["sha256"] = content_sha256(tensors, h)
    save_file(tensors, str(path), metadata={"compsrt": json.dumps(h)})


def test_changed_bytes_newer_versions_and_bad_structure_are_refused(make_calibrated, tmp_path):
    m = make_calibrated(QuantConfig(bits=4, prune=0.4))
    t, h = pack_model(m)
    good = tmp_path / "good.safetensors"
    save_packed(t, h, good)
    raw = bytearray(good.read_bytes())
    raw[-3] ^= 0x10
    (tmp_path / "flip.safetensors").write_bytes(raw)
    with pytest.raises(CompsrtError, match="sha256 mismatch"):
        read_packed(tmp_path / "flip.safetensors")
    _resave(t, {**h, "method": "other"}, tmp_path / "meta.safetensors", fix_sha=False)
    with pytest.raises(CompsrtError, match="sha256"):
        read_packed(tmp_path / "meta.safetensors")
    _resave(t, {**h, "version": VERSION + 1}, tmp_path / "new.safetensors")
    with pytest.raises(CompsrtError, match="upgrade compsrt"):
        read_packed(tmp_path / "new.safetensors")
    _resave(t, {**h, "quant": {**h["quant"], "bits": 5}}, tmp_path / "five.safetensors")
    with pytest.raises(CompsrtError, match="bits"):
        read_packed(tmp_path / "five.safetensors")
    _resave({**t, "quant.codes": t["quant.codes"][:, :, :-1].contiguous()}, h, tmp_path / "short.safetensors")
    with pytest.raises(CompsrtError, match="quant.codes"):
        read_packed(tmp_path / "short.safetensors")
    _resave({**t, "fp.values": t["fp.values"].float()}, h, tmp_path / "dtype.safetensors")
    with pytest.raises(CompsrtError, match="fp.values"):
        read_packed(tmp_path / "dtype.safetensors")
    bad = t["fp.values"].clone()
    bad[3] = float("nan")
    _resave({**t, "fp.values": bad}, h, tmp_path / "nan.safetensors")
    with pytest.raises(CompsrtError, match="NaN"):
        read_packed(tmp_path / "nan.safetensors")
    _resave(t, {**h, "model": {**h["model"], "embed_dim": 1 << 20}}, tmp_path / "huge.safetensors")
    with pytest.raises(CompsrtError, match="out of bounds|configuration"):
        read_packed(tmp_path / "huge.safetensors")
    _resave(t, {**h, "layers": "official", "quant": {**h["quant"], "layers": "official"}}, tmp_path / "layers.safetensors")
    with pytest.raises(CompsrtError, match="does not exist for swinir-light"):
        read_packed(tmp_path / "layers.safetensors")
    _resave(t, {**h, "arch": "resnet"}, tmp_path / "arch.safetensors")
    with pytest.raises(CompsrtError, match="architecture"):
        read_packed(tmp_path / "arch.safetensors")


def test_files_of_the_first_packed_version_header_still_load(make_calibrated, tmp_path):
    """Before MambaIRv2-light could be packed, headers named the model config "swinir" (the bundled files)."""
    m = make_calibrated(QuantConfig(bits=4))
    t, h = pack_model(m)
    old = {k: v for k, v in h.items() if k not in ("model", "layers")}
    old["swinir"] = h["model"]
    old["quant"] = {k: v for k, v in h["quant"].items() if k not in ("layers", "row_mean")}
    _resave(t, old, tmp_path / "old.safetensors")
    pm = read_packed(tmp_path / "old.safetensors")
    assert pm.arch == "swinir-light" and pm.model_cfg == m.cfg and pm.quant.layers == ""


def test_pack_cli_converts_a_calibrated_file_and_refuses_others(make_calibrated, tmp_path, capsys):
    from compsrt.pack import main

    m = make_calibrated(QuantConfig(bits=2))
    save_calibrated(m, tmp_path / "cal.safetensors", {"method": "compsrt", "weights": "random"})
    assert main([str(tmp_path / "cal.safetensors"), str(tmp_path / "p.safetensors")]) == 0
    assert "bytes" in capsys.readouterr().out
    pm = read_packed(tmp_path / "p.safetensors")
    assert pm.header["method"] == "compsrt" and pm.quant.bits == 2
    assert (tmp_path / "p.safetensors").stat().st_size < (tmp_path / "cal.safetensors").stat().st_size / 3
    assert main([str(tmp_path / "cal.safetensors"), str(tmp_path / "p32.safetensors"), "--fp-dtype", "fp32"]) == 0
    assert read_packed(tmp_path / "p32.safetensors").fp["conv_first.weight"].dtype == torch.float32
    for argv in ([str(tmp_path / "p.safetensors"), str(tmp_path / "q.safetensors")],      # already packed
                 [str(tmp_path / "none.safetensors"), str(tmp_path / "q.safetensors")],
                 [str(tmp_path / "cal.safetensors"), str(tmp_path / "cal.safetensors")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("compsrt.pack: error:") and err.count("\n") == 1
