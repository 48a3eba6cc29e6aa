"""Weight loading: official .pth and safetensors through one loader, one clear error per mistake."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compsrt.config import SwinIRConfig
from compsrt.errors import CompsrtError
from compsrt.load import checkpoint_kind, load_model
from compsrt.model.swinir import SwinIRLight
from compsrt.model.weights import infer_swinir_config, load_swinir, read_state_dict, save_state_dict

QKV = "layers.2.residual_group.blocks.3.attn.qkv.weight"
PROJ = "layers.1.residual_group.blocks.4.attn.proj.weight"


class NotATensor:  # a pickled custom object: weights_only loading must refuse it
    pass


def _x(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 10, 13, generator=torch.Generator().manual_seed(seed))


def _same_output(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    with torch.no_grad():
        return torch.equal(a(_x()), b(_x()))


def _save(sd: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _official_layout(sd: dict) -> dict:
    """Add the buffers official checkpoints carry (values are irrelevant: the loader recomputes them)."""
    out = dict(sd)
    for k in sd:
        if k.endswith("attn.relative_position_bias_table"):
            index_key = k.replace("relative_position_bias_table", "relative_position_index")
            out[index_key] = torch.zeros(64, 64, dtype=torch.long)
        if k.endswith(".norm1.weight") and int(k.split(".blocks.")[1].split(".")[0]) % 2:
            out[k.replace("norm1.weight", "attn_mask")] = torch.zeros(64, 64, 64)
    return out


# -- accepted formats -----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["params", "params_ema", "bare", "official_buffers"])
def test_pth_layouts_load_like_safetensors(tmp_path, model_x2, state_dict_x2, layout):
    sd = _official_layout(state_dict_x2) if layout == "official_buffers" else dict(state_dict_x2)
    obj = sd if layout == "bare" else {"params_ema" if layout == "params_ema" else "params": sd}
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    model = load_swinir(path, 2)
    assert not model.training
    assert _same_output(model, model_x2)


def test_safetensors_with_official_buffers_loads(tmp_path, model_x2, state_dict_x2):
    assert _same_output(load_swinir(_save(_official_layout(state_dict_x2), tmp_path / "w.safetensors"), 2), model_x2)


def test_config_comes_from_the_tensors(tmp_path):
    cfg = SwinIRConfig(scale=3, embed_dim=12, depths=(2, 4), num_heads=(2, 3))
    torch.manual_seed(0)
    src = SwinIRLight(cfg)
    path = tmp_path / "x2_misleading_name.safetensors"
    save_state_dict(src, path)
    model = load_swinir(path)
    assert model.cfg == cfg
    assert _same_output(model, src.eval())
    assert infer_swinir_config(load_file(str(path))) == cfg


def test_save_state_dict_round_trip(tmp_path, model_x2):
    path = tmp_path / "out" / "w.safetensors"
    save_state_dict(model_x2, path, {"note": "test"})
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temp left behind
    sd = load_file(str(path))
    own = model_x2.state_dict()
    assert sd.keys() == own.keys() and all(torch.equal(sd[k], own[k]) for k in sd)
    assert checkpoint_kind(path) == "fp"


# -- one clear error per mistake ------------------------------------------------------------

def test_missing_tensor_names_the_key(tmp_path, state_dict_x2):
    sd = dict(state_dict_x2)
    del sd[QKV]
    path = _save(sd, tmp_path / "missing.safetensors")
    with pytest.raises(CompsrtError) as e:
        load_swinir(path, 2)
    assert QKV in str(e.value) and "missing 1" in str(e.value) and str(path) in str(e.value)


def test_wrong_shape_names_key_and_both_shapes(tmp_path, state_dict_x2):
    sd = dict(state_dict_x2)
    sd[PROJ] = sd[PROJ][:, :59]
    with pytest.raises(CompsrtError) as e:
        load_swinir(_save(sd, tmp_path / "shape.safetensors"), 2)
    msg = str(e.value)
    assert PROJ in msg and "(60, 59)" in msg and "(60, 60)" in msg


def test_unexpected_tensor_is_named(tmp_path, state_dict_x2):
    sd = dict(state_dict_x2)
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(CompsrtError, match="unexpected 1.*extra.weight"):
        load_swinir(_save(sd, tmp_path / "extra.safetensors"), 2)


def test_other_scale_is_refused_with_its_scale(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "x2_named_but_x4.safetensors"
    save_file(SwinIRLight(SwinIRConfig(scale=4)).state_dict(), str(path))
    with pytest.raises(CompsrtError) as e:
        load_swinir(path, 2)
    assert "x4" in str(e.value) and "--scale 2" in str(e.value)
    assert load_swinir(path, 4).cfg.scale == 4
    assert load_swinir(path).cfg.scale == 4


def test_golden_x3_refused_for_scale_2(golden_dir):
    with pytest.raises(CompsrtError, match="x3 weights"):
        load_swinir(golden_dir / "swinir_light_x3_params.safetensors", 2)


@pytest.mark.parametrize("case", ["text_safetensors", "text_pth", "pickled_object", "non_tensor_values",
                                  "other_architecture", "missing"])
def test_not_a_checkpoint(tmp_path, case):
    if case == "text_safetensors":
        path = tmp_path / "w.safetensors"
        path.write_text("not weights at all\n")
    elif case == "text_pth":
        path = tmp_path / "w.pth"
        path.write_text("not weights at all\n")
    elif case == "pickled_object":
        path = tmp_path / "w.pth"
        torch.save({"params": {"x": NotATensor()}}, path)
    elif case == "non_tensor_values":
        path = tmp_path / "w.pth"
        torch.save({"params": {"conv_first.weight": 3}}, path)
    elif case == "other_architecture":
        path = _save({"layers.0.blocks.0.assm.weight": torch.zeros(2)}, tmp_path / "m.safetensors")
    else:
        path = tmp_path / "nothing.pth"
    with pytest.raises(CompsrtError) as e:
        load_swinir(path, 2)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    expected = {"text_safetensors": "cannot read weights", "text_pth": "cannot read weights",
                "pickled_object": "cannot read weights", "non_tensor_values": "not a state dict",
                "other_architecture": "MambaIRv2", "missing": "not found"}[case]
    assert expected in msg


def test_read_state_dict_unwraps_params(tmp_path, state_dict_x2):
    torch.save({"params": dict(state_dict_x2), "meta": 1}, tmp_path / "w.pth")
    sd = read_state_dict(tmp_path / "w.pth")
    assert sd.keys() == state_dict_x2.keys()


# -- the load_model entry point -------------------------------------------------------------

def test_load_model_entry_point(tmp_path, test_weights, model_x2):
    assert _same_output(load_model(test_weights, 2), model_x2)
    with pytest.raises(CompsrtError, match="unknown --arch"):
        load_model(test_weights, 2, arch="nope")
    with pytest.raises(CompsrtError, match="not found"):
        load_model(tmp_path / "none.safetensors", 2)
    with pytest.raises(CompsrtError, match="x2 weights but --scale 3"):
        load_model(test_weights, 3)


def test_load_model_without_bundled_weights_says_pass_weights():
    from compsrt.model.weights import bundled_weights

    try:
        bundled_weights(3)
    except CompsrtError as e:
        assert "--weights" in str(e)
    else:
        pytest.skip("bundled x3 weights present")


def test_checkpoint_header_errors(tmp_path, state_dict_x2):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(CompsrtError, match="not a readable safetensors"):
        checkpoint_kind(bad)
    for header, match in [(json.dumps({"format": "compsrt-future"}), "unknown checkpoint format"),
                          ("{not json", "malformed compsrt header")]:
        path = tmp_path / "h.safetensors"
        save_file({"x": torch.zeros(1)}, str(path), metadata={"compsrt": header})
        with pytest.raises(CompsrtError, match=match):
            load_model(path, 2)
