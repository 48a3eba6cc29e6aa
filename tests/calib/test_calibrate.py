"""Calibration on a tiny SwinIR-light: every method trains, 8 bits is near lossless, every
quantizer parameter gets gradient, pruning holds its ratio and exact zeros, checkpoints
round-trip, and the CLI turns bad flags into one-line errors."""
from __future__ import annotations

import copy
import json
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from compsrt.calib.calibrate import calibrate, cosine_lr_, quant_optimizer
from compsrt.calib.dobi import dobi
from compsrt.calib.methods import METHODS, method_config
from compsrt.config import CalibConfig, QuantConfig, SwinIRConfig
from compsrt.data import Pair
from compsrt.kernels import hadamard
from compsrt.quant.compress import (compress_, load_calibrated, quant_parameters, refresh_weight_domains,
                                    save_calibrated, set_calibrating)
from compsrt.quant.qmodules import QuantLinear, WeightQuantizer, quantizers
from compsrt.model.swinir import SwinIRLight

TINY = SwinIRConfig(scale=2, embed_dim=12, depths=(2,), num_heads=(2,))


def smooth_images(n: int, size: int, seed: int) -> list[Pair]:
    """Blurry random images (SR-like content), with LR made by 2x2 averaging."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        hr = F.interpolate(torch.rand(1, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic",
                           align_corners=False).clamp(0, 1)
        lr = F.avg_pool2d(hr, 2)
        to8 = lambda t: (t[0].permute(1, 2, 0) * 255).round().byte().numpy()  # noqa: E731
        pairs.append(Pair(f"img{i}", to8(lr), to8(hr)))
    return pairs


@pytest.fixture(scope="module")
def fp_model() -> SwinIRLight:
    return fit_tiny_model()


def fit_tiny_model() -> SwinIRLight:
    """A tiny model briefly fitted to bicubic-like SR, so quantization error is measurable
    (also used by research/calib_tiny_rates.py and tests/test_research_smoke.py). A new model
    each call, its weights fitted once per process."""
    model = SwinIRLight(TINY)
    model.load_state_dict(_fitted_tiny_state())
    return model.eval()


@lru_cache(maxsize=1)
def _fitted_tiny_state() -> dict[str, torch.Tensor]:
    model = SwinIRLight(TINY)
    pytorch_default_init_(model, seed=0)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    pairs = smooth_images(4, 64, 1)
    lr = torch.stack([torch.from_numpy(p.lr).permute(2, 0, 1) for p in pairs]).float() / 255
    hr = torch.stack([torch.from_numpy(p.hr).permute(2, 0, 1) for p in pairs]).float() / 255
    for _ in range(30):
        loss = F.l1_loss(model(lr), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pytorch_default_init_(model: SwinIRLight, seed: int) -> None:
    """Redraw ``model`` as PyTorch's default init would, zero position-bias tables included: the
    init the shipped weights were trained from (flat-distributed weights, kurtosis ~2). The
    tiny model's quantization figures in these tests were set on that shape, and the draw order
    (modules in construction order) reproduces the model built before SwinIRLight had the
    official init."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm)):
            m.reset_parameters()
        if hasattr(m, "relative_position_bias_table"):
            torch.nn.init.zeros_(m.relative_position_bias_table)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return tiny_batch()


def tiny_batch() -> torch.Tensor:
    pairs = smooth_images(2, 48, 7)
    return torch.stack([torch.from_numpy(p.lr).permute(2, 0, 1) for p in pairs]).float() / 255


def write_tiny_inputs(folder: Path, fp: SwinIRLight, n: int) -> tuple[Path, Path]:
    """``fp``'s weights as a safetensors file and ``n`` 160 px HR training images (LR 80 px, so
    even the quick default's 64 px patches fit) in ``folder``, for what takes files (the CLI,
    research/): (weights file, image folder)."""
    from PIL import Image
    from safetensors.torch import save_file

    weights, data = folder / "tiny.safetensors", folder / "imgs"
    save_file({k: v.contiguous() for k, v in fp.state_dict().items()}, str(weights))
    data.mkdir()
    for i, p in enumerate(smooth_images(n, 160, 21)):
        Image.fromarray(p.hr).save(data / f"{i}.png")
    return weights, data


def quantized(fp: SwinIRLight, cfg: QuantConfig, x: torch.Tensor) -> SwinIRLight:
    m = compress_(copy.deepcopy(fp), cfg)
    set_calibrating(m, partial(dobi, max_elems=1 << 14))
    with torch.no_grad():
        m(x)
    set_calibrating(m, None)
    return m


def psnr_between(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean()))


@pytest.mark.parametrize("rotation", ["deploy", "official", "none"])
def test_quantizers_off_is_the_fp_model(fp_model, batch, rotation):
    """With a rotation and no quantization the products are unchanged: check it via the
    quantized model at 8 bits against a tighter bound than 4 bits gets."""
    m8 = quantized(fp_model, QuantConfig(bits=8, rotation=rotation), batch)
    m4 = quantized(fp_model, QuantConfig(bits=4, rotation=rotation), batch)
    with torch.no_grad():
        ref, y8, y4 = fp_model(batch), m8(batch), m4(batch)
    assert psnr_between(y8, ref) > 45.0
    assert psnr_between(y8, ref) > psnr_between(y4, ref) + 10


def test_layer_count_and_split(fp_model):
    m = compress_(copy.deepcopy(fp_model), QuantConfig())
    blocks = sum(TINY.depths)
    assert len(quantizers(m)) == 16 * blocks  # q,k,v weight+input, proj, fc1, fc2 (x2), q.k, a.v (x2)
    qkv = m.layers[0].residual_group.blocks[0].attn.qkv
    assert isinstance(qkv, QuantLinear) and len(qkv.wq) == 3 and len(qkv.aq) == 3
    assert qkv.wq[0].w_dom.shape == (TINY.embed_dim, 16)  # 12 -> padded and rotated to 16
    assert all(not p.requires_grad for n, p in m.named_parameters() if n.endswith(("weight", "bias")))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains(fp_model, batch, method):
    """A few Adam steps on a fixed batch lower the distillation loss, whatever the method."""
    losses = distill_losses(fp_model, batch, method, CalibConfig(lr=1e-2), 25)
    assert min(losses[-5:]) < losses[0]


def distill_losses(fp: SwinIRLight, x: torch.Tensor, method: str, cfg: CalibConfig, steps: int,
                   cosine: bool = False) -> list[float]:
    """L1 distillation losses of ``steps`` Adam steps on one batch, from the 3-bit DOBI start
    (a constant rate, or calibrate()'s cosine schedule); also used by research/calib_tiny_rates.py."""
    m = quantized(fp, method_config(method, 3), x)
    opt = quant_optimizer(m, cfg)
    with torch.no_grad():
        target = fp(x)
    losses = []
    for it in range(steps):
        if cosine:
            cosine_lr_(opt, it, steps)
        loss = F.l1_loss(m(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for q in quantizers(m):
            q.project_()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("unit", ["range", "step", "absolute"])
def test_lr_units_scale_each_quantizers_rates(fp_model, batch, unit):
    """Per quantizer: bounds at lr x range (or step, or 1), extras at lr x step (or 1)."""
    m = quantized(fp_model, method_config("compsrt", 2), batch)
    opt = quant_optimizer(m, CalibConfig(lr=0.1, lr_unit=unit))
    qs = quantizers(m)
    assert len(opt.params) == 4 * len(qs) and all(a is b for a, b in zip(opt.params, quant_parameters(m)))
    for i, q in enumerate(qs):
        rng = float((q.upper - q.lower).detach())
        step = rng / 3
        want = {"range": (rng, step), "step": (step, step), "absolute": (1.0, 1.0)}[unit]
        assert opt.params[4 * i] is q.lower and opt.params[4 * i + 2] is q.step_extra
        rates = opt.base_lrs[4 * i:4 * i + 4].tolist()
        assert rates == pytest.approx([0.1 * want[0]] * 2 + [0.1 * want[1]] * 2)


def test_lr_unit_is_validated():
    with pytest.raises(ValueError, match="lr_unit"):
        CalibConfig(lr_unit="bits")
    with pytest.raises(ValueError, match="loss"):
        CalibConfig(loss="huber")


def test_l2_loss_is_the_mean_squared_error(fp_model):
    """--loss l2 trains on the squared error: on the same first batch its loss is far below the
    L1 loss (errors are << 1), and its held-out L1 (always reported) and fidelity improve."""
    pairs = smooth_images(4, 64, 8)
    cfg = CalibConfig(iters=6, batch=2, patch=16, calib_batch=2, val_every=1, val_patches=2)
    runs = {loss: calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3),
                            CalibConfig(**{**cfg.__dict__, "loss": loss}), progress=False)[1]
            for loss in ("l1", "l2")}
    assert runs["l2"].history[0]["loss"] < 0.2 * runs["l1"].history[0]["loss"]
    # the 6-step trajectory oscillates (its last value depends on the thread count): judge its best
    assert min(h["val_l1"] for h in runs["l2"].history) < 0.9 * runs["l2"].start_val_l1
    assert runs["l2"].best_fidelity_db > runs["l2"].start_fidelity_db + 1.0


def test_every_quantizer_parameter_gets_gradient(fp_model, batch):
    m = quantized(fp_model, QuantConfig(bits=2), batch)
    # move the extras off the DOBI point so codes saturate and z2 has something to learn from
    with torch.no_grad():
        for q in quantizers(m):
            q.step_extra.fill_(-0.2 * float(q.step()))
            q.zero_extra.fill_(0.8 * float(q.step()))  # codes below -0.5 clamp at 0
    F.l1_loss(m(batch), fp_model(batch).detach()).backward()
    params = quant_parameters(m)
    assert len(params) == 4 * len(quantizers(m))
    dead = [i for i, p in enumerate(params) if p.grad is None or p.grad.abs().item() == 0]
    assert not dead, f"{len(dead)} quantizer parameters got no gradient"


def test_block_recompute_gives_the_same_gradients(fp_model, batch):
    """Recomputing each Swin block in backward must change memory only, not the gradients."""
    grads, calls = [], []
    for on in (False, True):
        m = quantized(fp_model, QuantConfig(bits=3), batch).recompute_blocks(on)
        blocks = list(m.layers[0].residual_group.blocks)
        count = [0]
        for b in blocks:
            b.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        F.l1_loss(m(batch), fp_model(batch).detach()).backward()
        grads.append(torch.stack([p.grad for p in quant_parameters(m)]))
        calls.append(count[0])
    assert calls == [len(blocks), 2 * len(blocks)]  # really recomputed in backward
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)


def test_calibrate_applies_the_recompute_setting(fp_model, monkeypatch):
    seen = []
    orig = SwinIRLight.recompute_blocks
    monkeypatch.setattr(SwinIRLight, "recompute_blocks", lambda self, on=True: seen.append(on) or orig(self, on))
    pairs = smooth_images(3, 64, 5)
    for on in (True, False):
        cfg = CalibConfig(iters=1, batch=1, patch=16, calib_batch=1, val_patches=1, recompute=on)
        calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=4), cfg, progress=False)
    assert seen == [True, False]
    assert CalibConfig().recompute and not CalibConfig.full().recompute   # CPU on, GPU (measured x1.9) off


def test_tuning_only_freezes_bounds(fp_model):
    m = compress_(copy.deepcopy(fp_model), method_config("tuning-only", 4))
    assert all(not q.lower.requires_grad and not q.upper.requires_grad for q in quantizers(m))
    assert all(q.step_extra.requires_grad and q.zero_extra.requires_grad for q in quantizers(m))


def test_exact_dc_helps_offsets():
    """Coefficient 0 in FP: a shared offset no longer sets the range of the other coefficients."""
    x = torch.randn(256, 60) * 0.1 + 2.0  # channels sharing a large mean, as post-GELU/softmax
    w = torch.randn(30, 60) * 0.1
    errs = {}
    for dc in (True, False):
        lin = QuantLinear(torch.nn.Linear(60, 30), QuantConfig(bits=4, exact_dc=dc))
        with torch.no_grad():
            lin.weight.copy_(w)
        refresh_weight_domains(lin)
        set_calibrating(lin, dobi)
        with torch.no_grad():
            lin(x)
        set_calibrating(lin, None)
        with torch.no_grad():
            errs[dc] = ((lin(x) - (x @ w.T + lin.bias)) ** 2).mean().item()
    assert errs[True] < errs[False] / 4


def test_2dquant_has_no_rotation_and_no_extras(fp_model):
    cfg = method_config("2dquant", 4)
    assert cfg.rotation == "none" and not cfg.decompose
    m = compress_(copy.deepcopy(fp_model), cfg)
    assert len(quant_parameters(m)) == 2 * len(quantizers(m))


def test_rotate_weights_only_needs_official_rotation():
    with pytest.raises(ValueError, match="official"):
        method_config("compsrt", 4, official_rotation=False, rotate="weights")
    cfg = method_config("compsrt", 4, official_rotation=True, rotate="weights")
    assert cfg.rotation == "official" and not cfg.rotate_acts


@pytest.mark.parametrize("mode", ["unstructured", "channel"])
def test_pruning_ratio_and_exact_zeros(fp_model, batch, mode):
    m = quantized(fp_model, QuantConfig(bits=3, prune=0.4, prune_mode=mode), batch)
    for wq in (x for x in m.modules() if isinstance(x, WeightQuantizer)):
        part = wq.quantized_part()  # the rotated out x n matrix, less the FP DC column (exact_dc)
        assert wq.exact_dc and part.shape == (wq.w_dom.shape[0], wq.w_dom.shape[1] - 1)
        kept = wq.mask.float().mean().item()
        assert abs((1 - kept) - 0.4) <= 1 / wq.w_dom.shape[0] + 1e-6
        w_hat = wq()[:, 1:]
        assert torch.all(w_hat[~wq.mask] == 0)
        assert torch.count_nonzero(w_hat[wq.mask]) > 0
        if mode == "unstructured":  # the pruned coefficients are the smallest in magnitude
            assert part.abs()[~wq.mask].max() <= part.abs()[wq.mask].min()
        else:
            assert torch.all(wq.mask.all(1) | ~wq.mask.any(1))  # whole rows


def test_pruning_mask_comes_from_rotated_fp_weight(fp_model):
    m = compress_(copy.deepcopy(fp_model), QuantConfig(bits=4, prune=0.4))
    fc1 = m.layers[0].residual_group.blocks[0].mlp.fc1
    rotated = hadamard(fc1.weight.detach(), -1)[:, 1:]  # coefficient 0 stays FP (exact_dc)
    k = int(round(0.4 * rotated.numel()))
    thresh = rotated.abs().flatten().sort().values[k - 1]
    assert torch.all(rotated.abs()[~fc1.wq[0].mask] <= thresh)


def test_dobi_guards():
    assert dobi(torch.full((100,), 3.0), 4)[0] < 3.0 < dobi(torch.full((100,), 3.0), 4)[1]
    assert dobi(torch.full((10,), float("nan")), 4) == (0.0, 1.0)
    x = torch.cat([torch.randn(1000), torch.tensor([float("inf"), float("nan")])])
    lo, hi = dobi(x, 4)
    assert np.isfinite(lo) and np.isfinite(hi) and lo < hi
    lo1, hi1 = dobi(torch.rand(5000), 2, one_sided=True)
    assert lo1 == pytest.approx(float(torch.rand(5000).min()), abs=0.01) or lo1 >= 0  # lower fixed at min
    # the search shrinks a heavy-tailed range at 2 bits
    t = torch.randn(20000)
    t[0] = 50.0
    lo2, hi2 = dobi(t, 2)
    assert hi2 < 50.0


def test_calibrate_end_to_end_and_checkpoint_roundtrip(fp_model, tmp_path):
    pairs = smooth_images(5, 64, 3)
    cfg = CalibConfig(iters=6, batch=2, patch=16, calib_batch=2, val_every=3, val_patches=2)
    model, rep = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=4, prune=0.25), cfg,
                           state_path=tmp_path / "state.safetensors", progress=False)
    assert rep.iters_done == 6 and len(rep.history) == 2 and not rep.stopped
    assert rep.best_fidelity_db >= rep.start_fidelity_db  # keep-best: never worse than DOBI
    kept = next((h for h in rep.history if h["iteration"] == rep.best_iter), None)
    assert rep.best_iter == 0 or kept["val_fidelity_db"] == round(rep.best_fidelity_db, 4)
    save_calibrated(model, tmp_path / "model.safetensors", {"note": "test"})
    back = load_calibrated(tmp_path / "model.safetensors", 2)
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
    # resume: a finished run resumed with more iterations continues from its state
    cfg2 = CalibConfig(**{**cfg.__dict__, "iters": 9})
    _, rep2 = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=4, prune=0.25), cfg2,
                        state_path=tmp_path / "state.safetensors", resume=True, progress=False)
    assert rep2.iters_done == 9 and rep2.history[:2] == rep.history


def test_resume_after_an_interruption_continues_exactly(fp_model, tmp_path, monkeypatch):
    """Quantizer scalars, Adam moments, rates and step count all survive the state file: an
    interrupted and resumed run ends bit for bit where an uninterrupted one does."""
    import compsrt.calib.calibrate as cal

    pairs = smooth_images(5, 64, 3)
    cfg = CalibConfig(iters=6, batch=1, patch=16, calib_batch=1, val_every=3, val_patches=1)
    run = lambda **kw: calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, progress=False,
                                 state_path=tmp_path / "state.safetensors", **kw)
    whole, rep_whole = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, progress=False)
    real, calls = cal.random_patches, {"n": 0}

    def interrupted(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:   # after the state saved at iteration 3
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(cal, "random_patches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(cal, "random_patches", real)
    with safe_open(str(tmp_path / "state.safetensors"), "pt") as f:
        first = json.loads(f.metadata()["report"])["finetune_seconds"]   # the first run's 3 iterations
    resumed, rep = run(resume=True)
    assert rep.history == rep_whole.history and rep.iters_done == 6
    assert 0 < first < rep.finetune_seconds   # the report counts both runs' finetuning
    for a, b in zip(quant_parameters(whole), quant_parameters(resumed)):
        assert torch.equal(a, b)


def test_resume_rejects_a_state_of_another_run(fp_model, tmp_path):
    from compsrt.errors import CompsrtError

    pairs = smooth_images(4, 64, 3)
    cfg = CalibConfig(iters=2, batch=1, patch=16, calib_batch=1, val_every=2, val_patches=1)
    state = tmp_path / "state.safetensors"
    calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, state_path=state, progress=False)
    with pytest.raises(CompsrtError, match="different settings.*quant.decompose"):
        calibrate(fp_model, pairs[1:], pairs[:1], method_config("2dquant", 3), CalibConfig(**{**cfg.__dict__, "iters": 3}),
                  state_path=state, resume=True, progress=False)
    with pytest.raises(CompsrtError, match="different settings.*quant.bits"):   # a 2-bit resume of a 3-bit run
        calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=2), cfg, state_path=state, resume=True,
                  progress=False)
    with pytest.raises(CompsrtError, match="calib.lr"):
        calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), CalibConfig(**{**cfg.__dict__, "lr": 0.5}),
                  state_path=state, resume=True, progress=False)
    with pytest.raises(CompsrtError, match="identity.weights_sha256"):
        calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, state_path=state, resume=True,
                  progress=False, identity={"weights_sha256": "other"})
    # more iterations (or a --minutes budget) is a continuation, not another run
    _, rep = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), CalibConfig(**{**cfg.__dict__, "iters": 3}),
                       state_path=state, resume=True, progress=False)
    assert rep.iters_done == 3


def test_a_state_written_before_a_config_field_existed_still_resumes(fp_model, tmp_path):
    """QuantConfig grew ``layers`` and ``row_mean``: a state saved without them is the same run."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    pairs = smooth_images(4, 64, 3)
    cfg = CalibConfig(iters=2, batch=1, patch=16, calib_batch=1, val_every=2, val_patches=1)
    state = tmp_path / "state.safetensors"
    calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, state_path=state, progress=False)
    with safe_open(str(state), "pt") as f:
        meta = dict(f.metadata())
    run = json.loads(meta["run"])
    for k in ("layers", "row_mean"):
        del run["quant"][k]
    meta["run"] = json.dumps(run, sort_keys=True)
    save_file(load_file(str(state)), str(state), metadata=meta)
    _, rep = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), CalibConfig(**{**cfg.__dict__, "iters": 3}),
                       state_path=state, resume=True, progress=False)
    assert rep.iters_done == 3
    run["quant"]["bits"] = 2   # a real difference is still refused
    meta["run"] = json.dumps(run, sort_keys=True)
    save_file(load_file(str(state)), str(state), metadata=meta)
    from compsrt.errors import CompsrtError

    with pytest.raises(CompsrtError, match="quant.bits"):
        calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, state_path=state, resume=True,
                  progress=False)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"not a state at all", None])
def test_a_damaged_state_is_a_one_line_error(fp_model, tmp_path, content):
    from compsrt.errors import CompsrtError

    pairs = smooth_images(4, 64, 3)
    cfg = CalibConfig(iters=2, batch=1, patch=16, calib_batch=1, val_every=2, val_patches=1)
    state = tmp_path / "state.safetensors"
    calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, state_path=state, progress=False)
    if content is None:
        state.write_bytes(state.read_bytes()[:-40])   # truncated
    else:
        state.write_bytes(content)
    with pytest.raises(CompsrtError, match="calibration state") as e:
        calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, state_path=state, resume=True,
                  progress=False)
    assert "\n" not in str(e.value)


def test_ctrl_c_saves_the_state_at_the_iteration_end_and_resume_is_exact(fp_model, tmp_path, monkeypatch):
    """A SIGINT mid-iteration is deferred to the iteration's end: the state is written there,
    CalibrationInterrupted names the iteration, and --resume ends bit for bit as an unbroken run."""
    import signal

    import compsrt.calib.calibrate as cal

    pairs = smooth_images(5, 64, 3)
    cfg = CalibConfig(iters=5, batch=1, patch=16, calib_batch=1, val_every=4, val_patches=1)
    state = tmp_path / "state.safetensors"
    whole, rep_whole = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, progress=False)
    real, calls = cal.random_patches, {"n": 0}

    def signalled(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:   # inside iteration 2 (calls: DOBI batch, validation patches, it 0, 1, 2...)
            signal.raise_signal(signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(cal, "random_patches", signalled)
    with pytest.raises(cal.CalibrationInterrupted) as e:
        calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, state_path=state, progress=False)
    assert e.value.saved and e.value.iteration >= 1 and state.is_file()
    monkeypatch.setattr(cal, "random_patches", real)
    resumed, rep = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=3), cfg, state_path=state,
                             resume=True, progress=False)
    assert rep.iters_done == 5 and rep.history == rep_whole.history
    for a, b in zip(quant_parameters(whole), quant_parameters(resumed)):
        assert torch.equal(a, b)


def test_feature_loss_trains_across_validation_checks(fp_model):
    """The stage taps must hold only the training forward's features: validation forwards of a
    different batch size in between once made the feature loss fail at the next iteration."""
    pairs = smooth_images(4, 64, 6)
    cfg = CalibConfig(iters=4, batch=2, patch=16, calib_batch=2, val_every=1, val_patches=3, feature_loss=1.0)
    _, rep = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=4), cfg, progress=False)
    assert rep.iters_done == 4 and len(rep.history) == 4 and not rep.stopped
    plain = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=4),
                      CalibConfig(**{**cfg.__dict__, "feature_loss": 0.0}), progress=False)[1]
    assert rep.history[0]["loss"] > plain.history[0]["loss"]  # the feature term is really added


def test_nonfinite_training_stops_with_last_good_state(fp_model, monkeypatch):
    pairs = smooth_images(4, 64, 5)
    import compsrt.calib.step as step

    real = F.l1_loss
    calls = {"n": 0}

    def poisoned(a, b):
        calls["n"] += 1
        return real(a, b) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(step.F, "l1_loss", poisoned)
    cfg = CalibConfig(iters=6, batch=1, patch=16, calib_batch=1, val_every=2, val_patches=1)
    model, rep = calibrate(fp_model, pairs[1:], pairs[:1], QuantConfig(bits=4), cfg, progress=False)
    assert "non-finite" in rep.stopped and rep.iters_done == 2
    assert all(torch.isfinite(p) for p in quant_parameters(model))


def test_nonfinite_parameter_stops_the_run(fp_model, monkeypatch):
    import compsrt.calib.step as step

    real, calls = step.project_quantizers_, {"n": 0}

    def poisoned(qs):
        real(qs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                qs[0].upper.fill_(float("nan"))

    monkeypatch.setattr(step, "project_quantizers_", poisoned)
    cfg = CalibConfig(iters=6, batch=1, patch=16, calib_batch=1, val_every=1, val_patches=1)
    model, rep = calibrate(fp_model, smooth_images(4, 64, 5)[1:], smooth_images(4, 64, 5)[:1], QuantConfig(bits=4),
                           cfg, progress=False)
    assert rep.stopped.startswith("non-finite quantizer parameter after iteration 2") and rep.iters_done == 2
    assert all(torch.isfinite(p) for p in quant_parameters(model))


def test_cli_errors(tmp_path, capsys):
    from compsrt.calib.__main__ import main

    assert main(["--scale", "2", "--out", str(tmp_path / "c"), "--rotate", "weights"]) == 2
    assert "official-rotation" in capsys.readouterr().err
    assert main(["--scale", "2", "--out", str(tmp_path / "c"), "--data", str(tmp_path / "nope"),
                 "--weights", str(Path(__file__).parents[1] / "data" / "swinir_light_x2_params.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and err.count("\n") == 1


def test_calibrated_checkpoint_runs_in_infer_and_eval(fp_model, batch, tmp_path, capsys):
    from PIL import Image

    from compsrt.cli import main as infer
    from compsrt.eval import main as evaluate

    m = quantized(fp_model, QuantConfig(bits=4, prune=0.4), batch)
    ckpt = tmp_path / "model.safetensors"
    save_calibrated(m, ckpt)
    src = tmp_path / "in.png"
    Image.fromarray(smooth_images(1, 40, 9)[0].lr).save(src)
    assert infer([str(src), str(tmp_path / "out.png"), "--weights", str(ckpt), "--quiet"]) == 0
    assert Image.open(tmp_path / "out.png").size == (40, 40)
    assert infer([str(src), str(tmp_path / "out.png"), "--weights", str(ckpt), "--scale", "4"]) == 2
    assert "x2 checkpoint" in capsys.readouterr().err
    data = tmp_path / "bench" / "Tiny" / "HR"
    data.mkdir(parents=True)
    Image.fromarray(smooth_images(1, 48, 11)[0].hr).save(data / "a.png")
    assert evaluate(["--weights", str(ckpt), "--scale", "2", "--data", str(tmp_path / "bench"), "--sets", "Tiny",
                     "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    assert "| Tiny |" in capsys.readouterr().out


def test_damaged_checkpoint_is_a_clear_error(fp_model, batch, tmp_path):
    from compsrt.errors import CompsrtError
    from compsrt.load import load_model
    from safetensors.torch import load_file, save_file

    m = quantized(fp_model, QuantConfig(bits=4, prune=0.4), batch)
    ckpt = tmp_path / "model.safetensors"
    save_calibrated(m, ckpt)
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(ckpt))
    key = next(k for k in sd if k.endswith(".mask"))
    bad = dict(sd)
    bad[key] = sd[key][:, :-1].contiguous()
    save_file(bad, str(tmp_path / "bad_mask.safetensors"), metadata=meta)
    with pytest.raises(CompsrtError, match="mask"):
        load_model(tmp_path / "bad_mask.safetensors", 2)
    save_file(sd, str(tmp_path / "bad_header.safetensors"), metadata={"compsrt": '{"format": "compsrt-calibrated"}'})
    with pytest.raises(CompsrtError, match="malformed"):
        load_model(tmp_path / "bad_header.safetensors", 2)


def test_calib_cli_writes_a_packed_model_that_the_runtime_runs(fp_model, tmp_path, capsys):
    """python -m compsrt.calib: model.safetensors is the packed file (smaller than the calibrated
    one beside it), its header records the command, and it runs in compsrt-infer."""
    from PIL import Image

    from compsrt.calib.__main__ import main
    from compsrt.cli import main as infer
    from compsrt.load import checkpoint_kind
    from compsrt.quant.pack import read_packed

    weights, data = write_tiny_inputs(tmp_path, fp_model, 3)
    out = tmp_path / "c"
    argv = ["--scale", "2", "--bits", "4", "--prune", "0.4", "--weights", str(weights), "--data", str(data),
            "--val-images", "1", "--iters", "2", "--batch", "1", "--calib-batch", "2", "--val-every", "1",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert "packed checkpoint model.safetensors" in capsys.readouterr().out
    assert checkpoint_kind(out / "model.safetensors") == "compsrt-packed"
    assert checkpoint_kind(out / "calibrated.safetensors") == "compsrt-calibrated"
    assert (out / "model.safetensors").stat().st_size < (out / "calibrated.safetensors").stat().st_size / 3
    h = read_packed(out / "model.safetensors").header
    assert h["command"].startswith("python -m compsrt.calib --scale 2") and h["method"] == "compsrt"
    assert h["pruning"] == {"fraction": 0.4, "mode": "unstructured"} and len(h["source_sha256"]) == 64
    from compsrt.pack import pack_file   # packed in memory = what python -m compsrt.pack makes of the file

    pack_file(out / "calibrated.safetensors", tmp_path / "repacked.safetensors")
    assert (tmp_path / "repacked.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    src = tmp_path / "in.png"
    Image.fromarray(smooth_images(1, 40, 9)[0].lr).save(src)
    assert infer([str(src), str(tmp_path / "o.png"), "--weights", str(out / "model.safetensors"), "--quiet"]) == 0
    assert Image.open(tmp_path / "o.png").size == (40, 40)


def test_calib_cli_ctrl_c_is_one_line_naming_resume(fp_model, tmp_path, capsys, monkeypatch):
    import compsrt.calib.__main__ as cli
    from compsrt.calib.calibrate import CalibrationInterrupted

    weights, data = write_tiny_inputs(tmp_path, fp_model, 3)

    def interrupted(*a, **k):
        raise CalibrationInterrupted(7, True)

    monkeypatch.setattr(cli, "calibrate", interrupted)
    rc = cli.main(["--scale", "2", "--weights", str(weights), "--data", str(data), "--val-images", "1",
                   "--out", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 130 and err.count("\n") == 1 and "iteration 7" in err and "--resume" in err
    assert not (tmp_path / "c" / "model.safetensors").exists()


def test_non_finite_calibrated_checkpoint_is_refused(fp_model, batch, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from compsrt.errors import CompsrtError
    from compsrt.load import load_model

    ckpt = tmp_path / "model.safetensors"
    save_calibrated(quantized(fp_model, QuantConfig(bits=4), batch), ckpt)
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(ckpt))
    sd["conv_first.weight"][0, 0, 0, 0] = float("inf")
    save_file(sd, str(tmp_path / "inf.safetensors"), metadata=meta)
    with pytest.raises(CompsrtError, match="NaN or Inf"):
        load_model(tmp_path / "inf.safetensors", 2)
