"""python -m compsrt.train: the loss falls, and a killed-then-resumed run is bit-identical.

Everything runs the full SwinIR-light (train() builds it) in float32 on tiny data: six
synthetic 64x64 images, batch 2, 16px LR patches, validation on two held-out 16px crops.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import compsrt.train as train_mod
from compsrt.config import SwinIRConfig
from compsrt.errors import CompsrtError
from compsrt.model.swinir import SwinIRLight
from compsrt.schedule import cosine
from compsrt.state import read_state
from compsrt.train import TrainConfig, init_from, lr_at, main, train

N_ITERS = 8   # the whole run
KILL_AT = 5   # killed during iteration 5, after its optimizer step, before its checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory, make_rgb, write_png) -> Path:
    folder = tmp_path_factory.mktemp("train_images")
    for i in range(6):
        write_png(folder / f"im{i}.png", make_rgb(64, 64, seed=100 + i))
    return folder


@pytest.fixture(scope="module")
def cfg(images) -> TrainConfig:
    return TrainConfig(scale=2, iters=N_ITERS, batch=2, patch=16, lr=2e-3, warmup=2, bf16=False, val_every=1,
                       val_images=2, val_patch=16, seed=0, data=(str(images),))


@pytest.fixture(scope="module")
def full_run(cfg, tmp_path_factory) -> Path:
    """An uninterrupted run of N_ITERS iterations."""
    out = tmp_path_factory.mktemp("full")
    best = train(cfg, out, progress=False)
    assert math.isfinite(best)
    return out


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _iteration(path: Path) -> int:
    with safe_open(str(path), "pt") as f:
        return int(f.metadata()["iteration"])


def test_loss_falls(full_run):
    log = _log(full_run)
    assert [r["iteration"] for r in log] == list(range(1, N_ITERS + 1))
    loss = [r["loss"] for r in log]
    psnr = [r["val_psnr_db"] for r in log]
    print("loss:", loss, "val PSNR:", psnr)
    assert sum(loss[-3:]) / 3 < 0.75 * sum(loss[:3]) / 3
    assert max(psnr[-3:]) > psnr[0] + 1
    assert (full_run / "best.safetensors").is_file() and (full_run / "args.json").is_file()


def test_killed_then_resumed_is_bit_identical(cfg, full_run, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real_validate = train_mod.validate
    calls = []

    def validate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == KILL_AT:  # the kill lands after iteration KILL_AT's optimizer step
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "validate", validate_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    monkeypatch.setattr(train_mod, "validate", real_validate)
    assert _iteration(out / "state.safetensors") == KILL_AT - 1  # the last completed checkpoint

    train(cfg, out, resume=True, progress=False)
    assert _iteration(out / "state.safetensors") == N_ITERS
    for name in ("state.safetensors", "best.safetensors"):
        a, b = load_file(str(full_run / name)), load_file(str(out / name))
        assert a.keys() == b.keys(), name
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert different == [], f"{name}: {different[:3]}"
    assert _iteration(out / "best.safetensors") == _iteration(full_run / "best.safetensors")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_log(out)) == strip(_log(full_run))


def test_second_run_without_resume_exits_2(capsys, images, full_run):
    before = (full_run / "state.safetensors").read_bytes()
    rc = main(["--scale", "2", "--data", str(images), "--out", str(full_run), "--iters", "2", "--no-bf16"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("compsrt.train: error:")]
    assert len(lines) == 1 and "--resume" in lines[0] and "Traceback" not in err
    assert (full_run / "state.safetensors").read_bytes() == before


def test_cli_short_run(capsys, images, tmp_path):
    out = tmp_path / "run"
    rc = main(["--scale", "2", "--data", str(images), "--out", str(out), "--iters", "2", "--batch", "2",
               "--patch", "16", "--warmup", "1", "--val-every", "1", "--val-images", "2", "--no-bf16"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "best validation PSNR" in cap.out
    args = json.loads((out / "args.json").read_text())
    assert args["bf16"] is False and args["iters"] == 2 and args["data"] == [str(images)]
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "best.safetensors", "log.jsonl", "state.safetensors"]
    from compsrt.model.weights import load_swinir

    assert load_swinir(out / "best.safetensors", 2).cfg == SwinIRConfig(scale=2)


@pytest.mark.parametrize("argv, expected", [(["--data", "NOPE"], "not a folder"),
                                            (["--init", "NOPE.safetensors"], "not found"),
                                            (["--iters", "0"], "iters must be >= 1"),
                                            (["--device", "foo"], "not a device name")])
def test_cli_user_mistakes(capsys, images, tmp_path, argv, expected):
    base = {"--scale": "2", "--data": str(images), "--out": str(tmp_path / "o")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = str(tmp_path / value) if value.startswith("NOPE") else value
    rc = main([x for kv in base.items() for x in kv])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_lr_schedule():
    c = TrainConfig(iters=100, warmup=10, lr=1e-3, min_lr=1e-5)
    assert lr_at(c, 0) == pytest.approx(1e-4) and lr_at(c, 9) == pytest.approx(1e-3)
    assert lr_at(c, 10) == pytest.approx(1e-3) and lr_at(c, 100) == pytest.approx(1e-5)
    after = [lr_at(c, i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert lr_at(replace(c, warmup=0), 0) == pytest.approx(1e-3)


def test_cosine_is_the_one_calibration_uses():
    from compsrt.calib.calibrate import cosine_lr_

    class Opt:
        scale = None

    opt = Opt()
    cosine_lr_(opt, 0, 10)
    assert opt.scale == 1.0
    cosine_lr_(opt, 10, 10)
    assert opt.scale == pytest.approx(0.01)
    assert cosine(0.5, 1, 2.0, 0.0) == pytest.approx(1.0) and cosine(5, 10, 2.0, 0.0) == pytest.approx(1.0)


def test_the_state_is_the_shared_format(cfg, full_run):
    """Tensors and a JSON metadata block (compsrt.state), as calibration's state."""
    t, meta = read_state(full_run / "state.safetensors", "training state", "")
    assert meta["iteration"] == N_ITERS and meta["config"]["iters"] == N_ITERS and math.isfinite(meta["best_psnr_db"])
    assert any(k.startswith("model.") for k in t) and any(k.startswith("adam.") for k in t)


def test_a_damaged_state_is_a_one_line_error(capsys, images, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.safetensors").write_bytes(b"not a state at all")
    rc = main(["--scale", "2", "--data", str(images), "--out", str(out), "--iters", "2", "--no-bf16", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "unreadable training state" in err and len(err.strip().splitlines()) == 1


def test_init_from_copies_matching_tensors(test_weights, state_dict_x2):
    torch.manual_seed(0)
    x3 = SwinIRLight(SwinIRConfig(scale=3))
    n = init_from(x3, test_weights)
    own = x3.state_dict()
    assert n == len(own) - 2  # all but upsample.0.weight / .bias (scale-specific)
    assert torch.equal(own["layers.0.conv.weight"], state_dict_x2["layers.0.conv.weight"])
    assert not torch.equal(own["upsample.0.bias"][:12], state_dict_x2["upsample.0.bias"])


@pytest.mark.parametrize("field, value", [("iters", 0), ("batch", 0), ("lr", 0.0)])
def test_train_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_train_refuses_existing_run_before_work(tmp_path):
    (tmp_path / "state.safetensors").write_bytes(b"")
    with pytest.raises(CompsrtError, match="holds a run already"):
        train(TrainConfig(data=("unused",)), tmp_path, progress=False)


def test_minutes_budget_shortens_the_run(cfg, tmp_path, monkeypatch):
    """A budget too small for the asked length: the run ends early, validated, and records its length."""
    import compsrt.budget as budget_mod

    now = [0.0]

    def tick():  # every clock read advances 1 s: 30 probe iterations eat ~60 s of a 100 s budget
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(budget_mod.time, "perf_counter", tick)
    c = replace(cfg, iters=10_000, val_every=10_000)
    out = tmp_path / "budget"
    train(c, out, progress=False, minutes=100 / 60)
    args = json.loads((out / "args.json").read_text())
    log = _log(out)
    assert 30 <= args["iters"] < 100 and log[-1]["iteration"] == args["iters"]
    assert _iteration(out / "state.safetensors") == args["iters"]


def test_cli_cuda_without_gpu_is_one_line(capsys, images, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["--scale", "2", "--data", str(images), "--out", str(tmp_path / "o"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1
