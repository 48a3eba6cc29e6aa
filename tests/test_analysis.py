"""python -m compsrt.analysis: statistics checked against scipy/numpy on synthetic tensors whose
answer is known, the streaming sampler's uniformity, the paired tests, and both subcommands end
to end on tiny models (a few seconds in all)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from compsrt.analysis.__main__ import main
from compsrt.analysis.capture import Spec, Views, group_of, quantizer_counts
from compsrt.analysis.distributions import Claim, claim_test
from compsrt.analysis.paired import paired
from compsrt.analysis.stream import EPSILONS, Reservoir, TensorStats
from compsrt.config import SwinIRConfig
from compsrt.model.mambairv2 import MambaIRv2Config, MambaIRv2Light
from compsrt.model.swinir import SwinIRLight
from compsrt.model.weights import save_state_dict
from compsrt.quant.plan import plan_for

ROWS, C = 256, 64


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors (tests/conftest.py)


def synthetic(kind: str, rows: int = ROWS, c: int = C, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "heavy":   # Student t, 2.5 degrees of freedom: outliers
        return torch.from_numpy(scipy.stats.t.rvs(2.5, size=(rows, c), random_state=seed)).float() * 0.05
    if kind == "uniform":
        return (torch.rand(rows, c, generator=g) * 2 - 1) * 0.1
    return torch.randn(rows, c, generator=g) * 0.05


def whole(x: torch.Tensor, dim: int = -1) -> dict:
    """The three views of ``x`` with every entry used (the weights' path)."""
    v = Views(Spec("t", "weight", "t", dim), x.numel() * 2, seed=0, per_chunk=0)
    v.add(x)
    return v.summary(2)


# ---------------------------------------------------------------- statistics against scipy/numpy

@pytest.mark.parametrize("kind", ["heavy", "uniform", "gaussian"])
def test_statistics_match_scipy_before_and_after_rotation(kind):
    x = synthetic(kind)
    s = whole(x)
    h = scipy.linalg.hadamard(C) / math.sqrt(C)           # independent of compsrt.kernels
    rotated = x.double().numpy() @ h
    for view, ref in (("before", x.double().numpy().ravel()), ("after", rotated[:, 1:].ravel()),
                      ("after_dc", rotated.ravel())):
        got = s[view]
        assert got["count"] == ref.size
        assert got["kurtosis"] == pytest.approx(scipy.stats.kurtosis(ref, fisher=False), rel=1e-5)
        assert got["mean"] == pytest.approx(ref.mean(), abs=1e-7)
        assert got["std"] == pytest.approx(ref.std(), rel=1e-5)
        assert got["min"] == pytest.approx(ref.min(), abs=1e-6) and got["max"] == pytest.approx(ref.max(), abs=1e-6)
        for e in EPSILONS:
            assert got["within"][str(e)] == pytest.approx(np.mean(np.abs(ref) <= e), abs=2 / ref.size)


def test_rotation_raises_w_for_heavy_tails_and_the_2bit_error_for_uniform():
    """The known answers: rotating sums 64 entries per coefficient (near-Gaussian whatever the input).
    Heavy tails: W up, range and 2-bit error down. Uniform: the 2-bit error goes up (a uniform
    is what a uniform quantizer fits best). Gaussian: little changes."""
    heavy, uniform, gauss = (whole(synthetic(k)) for k in ("heavy", "uniform", "gaussian"))
    for s in (heavy, uniform, gauss):
        assert s["after"]["shapiro_w"] > 0.99 and abs(s["after"]["kurtosis"] - 3) < 0.5
    assert heavy["before"]["shapiro_w"] < 0.9 and heavy["before"]["kurtosis"] > 6
    assert heavy["after"]["shapiro_w"] > heavy["before"]["shapiro_w"]
    assert heavy["after"]["quant_error"] < 0.7 * heavy["before"]["quant_error"]
    assert heavy["after"]["range"] < heavy["before"]["range"]
    assert uniform["before"]["kurtosis"] == pytest.approx(1.8, abs=0.05)
    assert uniform["after"]["quant_error"] > 1.5 * uniform["before"]["quant_error"]
    assert gauss["after"]["quant_error"] == pytest.approx(gauss["before"]["quant_error"], rel=0.1)


def test_padding_zeros_are_never_entries():
    """C = 10 pads to 16: before counts the 10 real entries, after the 15 AC coefficients, after_dc
    all 16; none of them is a leftover zero, and the rotation keeps the energy (the padded view
    of the official scripts would hold 6 exact zeros in every 16)."""
    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(3))
    s = whole(x)
    assert (s["before"]["count"], s["after"]["count"], s["after_dc"]["count"]) == (3000, 300 * 15, 300 * 16)
    energy = [s[v]["mean_square"] * s[v]["count"] for v in ("before", "after_dc")]
    assert energy[1] == pytest.approx(energy[0], rel=1e-5)
    assert s["after_dc"]["within"]["0.01"] < 0.02       # 6/16 = 0.375 if the padding zeros counted
    assert s["after_dc"]["quant_error"] == pytest.approx(s["after_dc"]["mse"] * 4800 / energy[0], rel=1e-9)


def test_rotation_along_the_token_axis():
    """v is rotated along axis -2 (attn @ v contracts over tokens): the DC is the scaled column sum."""
    v = torch.rand(4, 64, 6, generator=torch.Generator().manual_seed(1)) + 1.0    # a shared offset
    s = whole(v, dim=-2)
    dc = (v.sum(-2) / 8).reshape(-1)
    assert s["after_dc"]["max"] == pytest.approx(float(dc.max()), rel=1e-5)   # the DC holds the offset
    assert s["after"]["max"] < 0.5 * float(dc.max())


def test_streamed_moments_and_merge_equal_one_pass():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, generator=g) * 3 + 100 for n in (1000, 37, 5000)]
    s = TensorStats(64, 0)
    for c in chunks:
        s.update(c)
    a, b = TensorStats(64, 1), TensorStats(64, 2)
    a.update(chunks[0])
    b.update(torch.cat(chunks[1:]))
    ref = torch.cat(chunks).double().numpy()
    for t in (s, a.merge(b), b.merge(a)):
        mean, var, kurt = t.moments()
        assert t.count == t.sampled == ref.size
        assert mean == pytest.approx(ref.mean(), rel=1e-12) and var == pytest.approx(ref.var(), rel=1e-9)
        assert kurt == pytest.approx(scipy.stats.kurtosis(ref, fisher=False), rel=1e-7)


def test_sampling_sees_every_entry_for_the_range_and_a_fixed_fraction_for_the_rest():
    x = torch.randn(50, 20, 64, generator=torch.Generator().manual_seed(5))
    x[7, 3, 9] = 40.0
    v = Views(Spec("a", "activation", "a", -1), 500, seed=0, per_chunk=1000)
    v.add(x)
    v.add(x[:25])
    assert v.before.count == 64000 + 32000 and v.before.hi == 40.0
    assert v.before.sampled == 1000 + 500              # the rate set by the first chunk, kept
    assert len(v.before.reservoir.values) == 500
    assert v.ac.hi == pytest.approx(float(torch.cat([x, x[:25]]).matmul(
        torch.from_numpy(scipy.linalg.hadamard(64) / 8).float())[..., 1:].max()), rel=1e-5)


# ---------------------------------------------------------------- the reservoir

def test_reservoir_is_uniform_over_chunks_of_any_size():
    """1,000 zeros then 9,000 ones: a uniform sample holds 90% ones (a per-chunk quota would give 50%)."""
    shares = []
    for seed in range(200):
        r = Reservoir(500, np.random.default_rng(seed))
        r.offer(torch.zeros(1000))
        r.offer(torch.ones(9000))
        shares.append(r.values.mean())
    assert np.mean(shares) == pytest.approx(0.9, abs=0.005)


def test_reservoir_samples_without_replacement_and_merges():
    r = Reservoir(300, np.random.default_rng(0))
    for start in range(0, 5000, 700):
        r.offer(torch.arange(start, min(start + 700, 5000), dtype=torch.float32))
    assert len(np.unique(r.values)) == 300
    small = Reservoir(300, np.random.default_rng(1))
    small.offer(torch.arange(10.0))
    assert sorted(small.sample()) == list(range(10))     # fewer entries than k: all of them
    assert len(r.merge(small).values) == 300


# ---------------------------------------------------------------- paired tests

def test_paired_tests_and_their_floor():
    t = paired([1.0, 2.0, 3.0, 4.0, 5.0])
    assert t.p_greater == pytest.approx(1 / 32) and t.p_floor == pytest.approx(1 / 32)
    assert t.sign_greater == pytest.approx(1 / 32) and t.p_less == pytest.approx(1.0)
    assert t.dz == pytest.approx(3 / np.std([1, 2, 3, 4, 5], ddof=1))
    tied = paired([0.0, 0.0, 0.0])
    assert tied.p_two == 1.0 and math.isnan(tied.dz)


def _tensor(kind: str, before: float, after: float) -> dict:
    return {"kind": kind, "before": {"range": before}, "after": {"range": after}}


def test_claim_verdicts():
    claim = Claim("range", "range", "lower", True)
    rng = np.random.default_rng(0)
    lower = [_tensor("weight", b, b * 0.8) for b in rng.uniform(1, 2, 30)]
    higher = [_tensor("weight", b, b * 1.2) for b in rng.uniform(1, 2, 30)]
    noise = [_tensor("weight", b, b * math.exp(0.01 * (i // 2 + 1) * (-1) ** i))   # +-a_i: symmetric
             for i, b in enumerate(rng.uniform(1, 2, 30))]
    assert claim_test(lower, "weight", claim)["verdict"] == "holds"
    assert claim_test(lower, "weight", claim)["change"] == pytest.approx(0.8)
    assert claim_test(higher, "weight", claim)["verdict"] == "does not hold (opposite)"
    assert claim_test(noise, "weight", claim)["verdict"] == "does not hold (n.s.)"
    assert claim_test(lower, "activation", claim) is None


# ---------------------------------------------------------------- plans and names

def test_group_names_and_duplicate_counts():
    assert group_of("layers.0.residual_group.blocks.3.attn.qkv") == "attn.qkv"
    assert group_of("layers.1.residual_group.layers.2.assm.route.0") == "assm.route.0"
    plan = plan_for(SwinIRLight(SwinIRConfig(scale=2, embed_dim=12, depths=(2, 2), num_heads=(2, 2))))
    assert quantizer_counts(plan) == {"weight_quantizers": 24, "activation_quantizers": 40, "duplicates_dropped": 8}


def test_streamed_attention_probabilities_carry_the_shift_mask():
    """A shifted block's captured softmax has the model's mask in it: ~0 (e^-100) for every pair of
    tokens the mask separates; the unshifted block's has no such zeros."""
    from compsrt.analysis.capture import streaming

    torch.manual_seed(0)
    model = SwinIRLight(SwinIRConfig(scale=2, embed_dim=12, depths=(2,), num_heads=(2,))).eval()
    seen = {}
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    with streaming(model, plan_for(model), lambda n, t: seen.__setitem__(n, t)), torch.no_grad():
        model(x)
    mask = model.shift_mask_for(24, 24, x.device)                     # (nW, N, N), -100 across regions
    blocks = model.layers[0].residual_group.blocks
    assert not blocks[0].shift and blocks[1].shift and bool((mask < 0).any())
    plain = next(t for n, t in seen.items() if ".blocks.0." in n and n.endswith(".attn"))
    shifted = next(t for n, t in seen.items() if ".blocks.1." in n and n.endswith(".attn"))
    sep = (mask < 0)[None, :, None].expand_as(shifted)
    assert float(shifted[sep].max()) < 1e-30
    assert float(plain.min()) > 1e-30


# ---------------------------------------------------------------- the CLI, end to end

@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """Tiny SwinIR-light and MambaIRv2-light weights and three 32 px images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("analysis")
    torch.manual_seed(0)
    swin = root / "swin.safetensors"
    save_state_dict(SwinIRLight(SwinIRConfig(scale=2, embed_dim=12, depths=(2,), num_heads=(2,))), swin)
    mamba = root / "mamba.safetensors"
    save_state_dict(MambaIRv2Light(MambaIRv2Config(scale=2, embed_dim=12, d_state=4, depths=(2,), num_heads=(2,),
                                                   window_size=4, inner_rank=4, num_tokens=8)), mamba)
    images = root / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return {"swin": swin, "mamba": mamba, "images": images}


def test_distributions_cli_on_a_tiny_swinir(tiny_files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["distributions", "--scale", "2", "--images", str(tiny_files["images"]), "--hr", "--limit", "2",
            "--weights", str(tiny_files["swin"]), "--out", str(out), "--quiet"]
    torch.set_num_threads(2)
    try:
        assert main(argv) == 0
        assert torch.get_num_threads() == 2      # --threads (default 1) holds for the run only
    finally:
        torch.set_num_threads(1)
    stdout, stderr = capsys.readouterr()
    assert "| weights (12) | Shapiro-Wilk W" in stdout and "| activations (16) | range (max - min)" in stdout
    assert "4 exact duplicates dropped" in stderr
    report = json.loads((out / "distributions.json").read_text())
    assert report["meta"]["images"] == 2 and report["meta"]["duplicates_dropped"] == 4
    by_name = {t["name"]: t for t in report["tensors"]}
    # LR 16x16 (--hr at x2): 256 tokens of 12 channels; 4 windows x 2 heads of 64 x 64 attention
    assert by_name["layers.0.residual_group.blocks.0.attn.qkv.input"]["before"]["count"] == 2 * 256 * 12
    attn = by_name["layers.0.residual_group.blocks.1.attn.attend.attn"]
    assert attn["before"]["count"] == attn["after_dc"]["count"] == 2 * 4 * 2 * 64 * 64
    q = by_name["layers.0.residual_group.blocks.0.attn.attend.q"]   # head dim 6 -> 8
    assert (q["before"]["count"], q["after"]["count"]) == (2 * 4 * 2 * 64 * 6, 2 * 4 * 2 * 64 * 7)
    # softmax rows sum to 1: every DC coefficient is 1 / sqrt(64), and no coefficient exceeds it
    assert attn["before"]["min"] >= 0 and attn["after_dc"]["max"] == pytest.approx(0.125, abs=1e-6)
    for name in ("table1.md", "epsilon.md", "groups.md"):
        assert (out / name).read_text().count("\n") > 5
    try:
        import matplotlib  # noqa: F401
        assert (out / "weights.png").is_file() and (out / "activations.png").is_file()
    except ImportError:
        assert "figures skipped: matplotlib is not installed" in stderr and not list(out.glob("*.png"))


def test_distributions_cli_on_a_tiny_mambairv2(tiny_files, tmp_path, capsys):
    argv = ["distributions", "--arch", "mambairv2-light", "--scale", "2", "--images", str(tiny_files["images"]),
            "--weights", str(tiny_files["mamba"]), "--out", str(tmp_path), "--quiet", "--limit", "1"]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "distributions.json").read_text())["meta"]
    assert meta["weights_analysed"] == meta["weight_quantizers"]
    assert meta["activations_analysed"] == meta["activation_quantizers"] - meta["duplicates_dropped"]
    assert meta["activations_analysed"] == 2 * 9     # the input of each of the 9 Linears of both layers


@pytest.mark.parametrize("argv, message", [
    (["--images", "NOWHERE"], "--images NOWHERE: not a folder"),
    (["--images", "IMAGES", "--weights", "PACKED"], "the analysis needs FP weights"),
])
def test_distributions_cli_errors_are_one_line(tiny_files, tmp_path, capsys, argv, message):
    from compsrt.load import bundled_model

    swap = {"IMAGES": str(tiny_files["images"]), "NOWHERE": str(tmp_path / "none"),
            "PACKED": str(bundled_model("swinir_light_x2_w4"))}
    argv = [swap.get(a, a) for a in argv]
    message = message.replace("NOWHERE", swap["NOWHERE"])
    assert main(["distributions", "--scale", "2", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- significance

def _eval_json(path, shift: float, sets=("Set5", "Set14", "B100")):
    results = {}
    for j, name in enumerate(sets):
        images = [{"image": f"im{i}", "psnr_db": 30 + i * 0.3 + shift * (1 + (i % 3)),
                   "ssim": 0.9 + shift * (i % 2) / 10} for i in range(7 + j)]
        results[name] = {"psnr_db": 0.0, "ssim": 0.0, "images": images}
    path.write_text(json.dumps({"weights": path.stem, "results": results}))
    return path


def test_significance_per_dataset_and_per_image(tmp_path, capsys):
    a, b = _eval_json(tmp_path / "a.json", 0.1), _eval_json(tmp_path / "b.json", 0.0)
    assert main(["significance", str(a), str(b), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "per dataset (3 sets, the paper's test)" in out and "floor 2^-3 = 0.125" in out
    assert "all 24 images:" in out and "Set14 per image:" in out
    numbers = json.loads((tmp_path / "s.json").read_text())["metrics"]["psnr_db"]
    assert numbers["per_dataset"]["p_greater"] == pytest.approx(0.125)   # A ahead on all 3: the floor
    assert numbers["all_images"]["ahead"] == 24 and numbers["all_images"]["p_greater"] < 1e-5


def test_significance_refuses_bad_inputs_in_one_line(tmp_path, capsys):
    a = _eval_json(tmp_path / "a.json", 0.1)
    other = _eval_json(tmp_path / "o.json", 0.0, sets=("Urban100",))
    (tmp_path / "bad.json").write_text("{not json")
    for argv, message in (([a, tmp_path / "bad.json"], "not JSON"), ([a, other], "share no set"),
                          ([a, tmp_path / "missing.json"], "cannot read")):
        assert main(["significance", *map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
