"""Why CompSRT's finetuning gains little at 2 bits: looks at the DOBI start and what follows.

    python research/calib_start_diagnostics.py dobi-error --bits 2 --methods 2dquant compsrt
    python research/calib_start_diagnostics.py linesearch --bits 2 --methods 2dquant compsrt
    python research/calib_start_diagnostics.py grad-snr --bits 2 --batches 8
    python research/calib_start_diagnostics.py attribution --bits 2
    python research/calib_start_diagnostics.py train-group --bits 2 --iters 50
    python research/calib_start_diagnostics.py rescore C1/calibrated.safetensors C2/calibrated.safetensors --patches 48
    python research/calib_start_diagnostics.py weight-shape [--compare compsrt/weights/mambairv2_light_x2.safetensors]
    python research/calib_start_diagnostics.py group-off C1/calibrated.safetensors C2/calibrated.safetensors --bench B [--set Set5] [--clip]
    python research/calib_start_diagnostics.py clip-channels C1/calibrated.safetensors C2/calibrated.safetensors --bench B [--set Set5]
    python research/calib_start_diagnostics.py widen C1/calibrated.safetensors C2/calibrated.safetensors --bench B [--alphas 1 1.15 1.3 0.9]
    python research/calib_start_diagnostics.py ln-shift --bits 2 --iters 100

dobi-error to train-group rebuild the quick default's DOBI start exactly (shipped x2 weights,
bundled crops, the same seeded calibration batch); attribution and train-group run the quick
default's calibrate() itself, on a student they change first (``calibrate(student=...)``).
``--weights`` and ``--data`` replace the shipped x2 weights and the bundled crops (the smoke
test runs every subcommand on a tiny model that way). B is a benchmark folder (<Set>/HR, ...).
Where a subcommand swaps what some quantizers do (dobi-error, group-off, clip-channels), it sets
their public ``override`` (``compsrt.quant.compress.overriding``).

dobi-error: per quantizer site, the quantization error energy right after DOBI (dB of the summed
squared error in the quantizer's own domain; the rotation is orthonormal, so rotated and
unrotated sites compare directly), and the output fidelity on the calibration batch.

linesearch: the distillation loss on K fixed finetuning batches at the start, then again after one
sign step of every quantizer scalar against its summed straight-through gradient, of eta x the
quantizer's step. How far that loss can fall says how much room range tuning has from there.

grad-snr: each scalar's gradient on K finetuning batches of 2; |mean| / std over the batches,
averaged per kind of scalar. Well above 1 means the gradient direction is consistent, not noise.

attribution: the held-out fidelity right after DOBI with one group of quantizers raised to 8
bits (the rest at --bits): how much of the error each group causes, per method.

train-group: --iters of the quick default's finetuning with only one group's quantizer scalars
trainable (the rest frozen at DOBI), printing the held-out fidelity (a mean squared error) and the
held-out L1 (the training objective) at each check: which groups' tuning helps and which hurts.

rescore: finished x2 checkpoints scored on --patches held-out patches (the keep-best sample is 4):
PSNR against HR, fidelity to the FP output, L1 to the FP output.

weight-shape: per quantized weight of the shipped x2 model (q, k, v, proj, fc1, fc2 of every
block), the kurtosis of its entries unrotated and rotated (the AC coefficients CompSRT quantizes)
and the ratio of their per-tensor DOBI errors at --bits. The Hadamard rotation makes any tensor's
entries near-Gaussian (kurtosis 3): it helps heavy-tailed tensors (above 3) and hurts flat ones
(a uniform distribution has 1.8). --compare prints the kurtosis of other checkpoints' 2-D weights.

group-off: finished x2 checkpoints on one benchmark set (--bench, --set): per image, PSNR against
HR and fidelity to the FP output with each group of quantizers passed through unquantized (the
trained state of the others kept): what each group costs at the end of finetuning, per image.
--clip also runs each group clipped to the span of its levels but not rounded: how much of a
group's cost is its range (clipping) and how much its step (rounding).

clip-channels: finished x2 checkpoints on one benchmark set: for each linear layer's input
quantizer, how concentrated its clipping is (share of the clipped energy in its 3 largest
channels of the last axis, in its own domain: channels unrotated, Hadamard coefficients rotated)
and how much of the input's energy is clipped at all.

widen: finished x2 checkpoints on one benchmark set with every quantizer of --group (default the
linear inputs) scaled by each of --alphas, clip range and grid together (about the centre; about
l for the non-negative fc2 and softmax inputs): whether the trained ranges are too narrow.

ln-shift: the quick default (--iters iterations) as is and with every LayerNorm output centred
per channel on the DOBI batch, the mean folded into the norm's bias and the next linear's (the
FP function unchanged): do the channel offsets of the qkv and fc1 inputs cost the 2-bit model?
"""
from __future__ import annotations

import argparse
import collections
import copy
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compsrt.calib.__main__ import bundled_calib_images
from compsrt.calib.calibrate import CalibReport, calib_batch, calibrate, search_bounds_, val_patches, val_scores
from compsrt.calib.dobi import dobi
from compsrt.calib.methods import method_config
from compsrt.config import CalibConfig
from compsrt.data import load_training_pairs, random_patches, split_holdout
from compsrt.kernels import fake_quant, fake_quant_ref, hadamard
from compsrt.kernels.fake_quant import step_and_zero
from compsrt.load import load_model
from compsrt.quant.compress import compress_, load_calibrated, overriding
from compsrt.quant.qmodules import Quantizer, QuantOverride, WeightQuantizer, quantizers

PARAMS = ("lower", "upper", "step_extra", "zero_extra")
VAL_IMAGES = 3  # the CLI's --val-images default: pairs[:3] are held out for keep-best

# Groups of quantizers by module name: a QuantLinear's are "...<layer>.wq.<i>" (weights) and
# "...<layer>.aq.<i>" (inputs), a QuantAttend's "...attn.attend.<q|k|a|v>".
GROUPS: dict[str, Callable[[str, Quantizer], bool]] = {
    "weights": lambda name, q: isinstance(q, WeightQuantizer),
    "linear inputs": lambda name, q: ".aq." in name,
    "attention (q, k, attn, v)": lambda name, q: ".attend." in name,
    "q and k": lambda name, q: name.endswith((".attend.q", ".attend.k")),
    "attn and v": lambda name, q: name.endswith((".attend.a", ".attend.v")),
    "softmax output (attn)": lambda name, q: name.endswith(".attend.a"),
    "proj input": lambda name, q: name.endswith("proj.aq.0"),
    "fc2 input (post-GELU)": lambda name, q: name.endswith("fc2.aq.0"),
}
TRAIN_GROUPS = ("weights", "linear inputs", "attention (q, k, attn, v)")  # train-group's partition


def _site(name: str) -> str:
    skip = {"layers", "residual_group", "blocks", "attn"}
    return ".".join(p for p in name.split(".") if not p.isdigit() and p not in skip)


def dobi_start(fp, method: str, bits: int, train,
               during: QuantOverride | None = None) -> tuple[torch.nn.Module, torch.Tensor]:
    """The calibrated-but-not-finetuned model, as calibrate() builds it with the quick defaults,
    and the calibration batch it searched on; ``during`` overrides the quantizers while DOBI runs."""
    m = compress_(copy.deepcopy(fp), method_config(method, bits)).eval()
    with overriding(m, during):
        return m, search_bounds_(m, train, CalibConfig(), torch.device("cpu"))


def dobi_error(fp, method: str, bits: int, train) -> None:
    errs: dict[Quantizer, float] = {}

    def recording(q: Quantizer, t: torch.Tensor, dc_dim: int | None) -> torch.Tensor:
        """The normal fake quantization, noting its error on what the bound search saw (the
        exact-DC coefficient passes through unchanged; a pruned weight's kept coefficients)."""
        out = fake_quant(t, q.lower, q.upper, q.bits, *q.extras(), dc_dim=dc_dim)
        err = out - t
        if isinstance(q, WeightQuantizer) and q.mask is not None:
            err = err[q.mask]
        errs[q] = 10 * math.log10(max(float(err.pow(2).sum()), 1e-20))
        return out

    m, x = dobi_start(fp, method, bits, train, during=recording)
    by_site = collections.defaultdict(list)
    for name, q in m.named_modules():
        if isinstance(q, Quantizer):
            by_site[_site(name)].append(errs[q])
    with torch.no_grad():
        mse = (m(x).clamp(0, 1) - fp(x).clamp(0, 1)).pow(2).mean().item()
    print(f"{method} w{bits}: fidelity on the calibration batch {10 * math.log10(1 / mse):.2f} dB")
    for s in sorted(by_site):
        print(f"  {s:14s} error energy {np.mean(by_site[s]):6.2f} dB (mean of {len(by_site[s])})")


def _batches(fp, train, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The quick default's first k finetuning batches (2 patches each) and their FP targets."""
    out = []
    for it in range(k):
        x = torch.from_numpy(random_patches(train, np.random.default_rng([0, it]), 2, 64, fp.cfg.scale)[0]).float() / 255
        with torch.no_grad():
            out.append((x, fp(x)))
    return out


def grad_snr(fp, method: str, bits: int, train, k: int) -> None:
    m, _ = dobi_start(fp, method, bits, train)
    grads = collections.defaultdict(list)
    for x, t in _batches(fp, train, k):
        m.zero_grad(set_to_none=True)
        F.l1_loss(m(x), t).backward()
        for i, q in enumerate(quantizers(m)):
            for n in PARAMS:
                g = getattr(q, n).grad
                if g is not None:
                    grads[(i, n)].append(float(g))
    snr = collections.defaultdict(list)
    for (_, n), g in grads.items():
        if np.any(g):  # z2's gradient is exactly 0 at the start: no codes saturate yet
            snr[n].append(abs(np.mean(g)) / (np.std(g) + 1e-30))
    print(f"{method} w{bits}: gradient |mean| / std over {k} batches: "
          + ", ".join(f"{n} {np.mean(v):.2f}" for n, v in snr.items()))


def linesearch(fp, method: str, bits: int, train, k: int) -> None:
    m, _ = dobi_start(fp, method, bits, train)
    batches = _batches(fp, train, k)

    def loss(backward: bool = False) -> float:
        total = 0.0
        for x, t in batches:
            val = F.l1_loss(m(x), t)
            if backward:
                val.backward()
            total += val.item()
        return total / k

    l0 = loss(backward=True)
    qs = quantizers(m)
    steps = [float(q.step().detach()) for q in qs]
    start = {id(p): p.detach().clone() for q in qs for p in (getattr(q, n) for n in PARAMS)}
    print(f"{method} w{bits}: loss at the DOBI start {l0:.6f} on {k} batches of 2")
    for eta in (0.02, 0.05, 0.1, 0.2):
        with torch.no_grad():
            for q, s in zip(qs, steps):
                for p in (getattr(q, n) for n in PARAMS):
                    p.copy_(start[id(p)])
                    if p.grad is not None:
                        p.sub_(eta * s * torch.sign(p.grad))
                q.project_()
            l = loss()
        print(f"  sign step of {eta:g} x step: loss {l:.6f} ({(l - l0) / l0 * 100:+.2f}%)")


def _quick_calibrate(fp, pairs, method: str, bits: int, iters: int,
                     edit: Callable[[torch.nn.Module], None]) -> CalibReport:
    """The quick default (--iters iterations) with ``edit`` applied to the compressed student first."""
    quant = method_config(method, bits)
    student = compress_(copy.deepcopy(fp), quant)
    edit(student)
    train, val = split_holdout(pairs, VAL_IMAGES)
    _, rep = calibrate(fp, train, val, quant, CalibConfig(iters=iters), progress=False, student=student)
    return rep


def _group(model: torch.nn.Module, group: str | None):
    return [(n, q) for n, q in model.named_modules()
            if isinstance(q, Quantizer) and (group is None or GROUPS[group](n, q))]


def attribution(fp, method: str, bits: int, pairs) -> None:
    print(f"{method} w{bits}: held-out fidelity right after DOBI (dB)")
    for group in (None, *GROUPS):
        def raise_to_8(model, group=group):
            if group is not None:
                for _, q in _group(model, group):
                    q.bits = 8
        rep = _quick_calibrate(fp, pairs, method, bits, 0, raise_to_8)
        print(f"  {group or 'nothing'} at 8 bits: {rep.start_fidelity_db:.2f}")


def train_group(fp, method: str, bits: int, pairs, iters: int) -> None:
    print(f"{method} w{bits}: {iters} iterations, held-out fidelity (dB) and L1 from DOBI to each check")
    for group in (None, *TRAIN_GROUPS):
        def freeze_others(model, group=group):
            keep = {id(q) for _, q in _group(model, group)}
            for q in quantizers(model):
                if id(q) not in keep:
                    q.requires_grad_(False)
        rep = _quick_calibrate(fp, pairs, method, bits, iters, freeze_others)
        fid = [f"{rep.start_fidelity_db:.2f}"] + [f"{h['val_fidelity_db']:.2f}" for h in rep.history]
        l1 = [f"{rep.start_val_l1:.6f}"] + [f"{h['val_l1']:.6f}" for h in rep.history]
        print(f"  training {group or 'every group'}: fidelity {' -> '.join(fid)}; L1 {' -> '.join(l1)}")


def rescore(fp, pairs, paths: list[str], n: int) -> None:
    lr, hr = val_patches(split_holdout(pairs, VAL_IMAGES)[1], n, 64, 2, 0)
    x = torch.from_numpy(lr).float() / 255
    with torch.no_grad():
        fp_out = fp(x).clamp(0, 1)
    for path in paths:
        hr_psnr, fid, l1 = val_scores(load_calibrated(path, 2).eval(), lr, hr, fp_out, 2, torch.device("cpu"))
        print(f"{path}: {n} held-out patches, PSNR vs HR {hr_psnr:.3f}, fidelity {fid:.3f}, L1 {l1:.6f}")


def _kurtosis(t: torch.Tensor) -> float:
    t = t.flatten().double()
    t = t - t.mean()
    return float((t ** 4).mean() / (t ** 2).mean() ** 2)


def _dobi_error(t: torch.Tensor, bits: int) -> float:
    lo, hi = dobi(t, bits)
    return float((fake_quant_ref(t, torch.tensor(lo), torch.tensor(hi), bits) - t).pow(2).sum())


def weight_shape(fp, bits: int, compare: list[str]) -> None:
    rows = []
    for name, mod in fp.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        w = mod.weight.detach()
        parts = w.chunk(3) if name.endswith("qkv") else (w,)
        for w in parts:
            ac = hadamard(w, -1)[:, 1:]  # zero-padded to a power of two, as WeightQuantizer.to_domain
            rows.append((_kurtosis(w), _kurtosis(ac), _dobi_error(ac, bits) / _dobi_error(w, bits)))
    k0, k1, ratio = (np.array(c) for c in zip(*rows))
    print(f"shipped x2, {len(rows)} quantized weights: kurtosis unrotated median {np.median(k0):.2f} "
          f"(min {k0.min():.2f}, max {k0.max():.2f}), rotated AC median {np.median(k1):.2f}; "
          f"rotated / unrotated {bits}-bit DOBI error: median {np.median(ratio):.2f} "
          f"(min {ratio.min():.2f}, max {ratio.max():.2f}; {int((ratio > 1).sum())} of {len(rows)} above 1)")
    from safetensors.torch import load_file

    for path in compare:
        ks = np.array([_kurtosis(v) for v in load_file(path).values() if v.ndim == 2 and min(v.shape) >= 32])
        print(f"{path}: {len(ks)} 2-D weights, kurtosis median {np.median(ks):.2f} "
              f"(min {ks.min():.2f}, max {ks.max():.2f})")


def _clipped(q: Quantizer, t: torch.Tensor, dc_dim: int | None) -> torch.Tensor:
    """``t`` clipped to the span of q's levels (clip range and grid intersected), not rounded."""
    s2, z2 = q.extras()
    s, z = step_and_zero(q.lower, q.upper, q.bits, s2, z2)
    lo, hi = torch.maximum(q.lower, z), torch.minimum(q.upper, z + (2 ** q.bits - 1) * s)
    out = t.clamp(lo.to(t.dtype), hi.to(t.dtype))
    if dc_dim is not None:  # the exact-DC coefficient stays FP, as in the quantizer
        out = torch.cat([t.narrow(dc_dim, 0, 1), out.narrow(dc_dim, 1, t.shape[dc_dim] - 1)], dc_dim)
    return out


def _run_set(model: torch.nn.Module, pairs) -> tuple[list[np.ndarray], float]:
    """The model's uint8 x2 outputs on a benchmark set and their mean PSNR against HR."""
    from compsrt.io import to_float, to_uint
    from compsrt.metrics import psnr

    with torch.no_grad():
        sr = [to_uint(model(to_float(p.lr)[None])[0]) for p in pairs]
    return sr, float(np.mean([psnr(y, p.hr, 2) for p, y in zip(pairs, sr)]))


def group_off(fp, paths: list[str], bench: str, set_name: str, clip: bool = False) -> None:
    """With ``clip``, each group is also run clipped but not rounded: what its ranges cost."""
    from compsrt.data import load_benchmark
    from compsrt.metrics import psnr

    pairs = load_benchmark(Path(bench), set_name, 2)
    fp_out, _ = _run_set(fp, pairs)
    modes = {"unquantized": lambda q, t, dc: t}
    if clip:
        modes["clipped only"] = _clipped
    for path in paths:
        model = load_calibrated(path, 2).eval()
        print(f"{path} on {set_name}: PSNR vs HR / fidelity to FP per image, with one group unquantized"
              + (" or clipped only" if clip else ""))
        for group in (None, *GROUPS):
            chosen = [q for _, q in _group(model, group)] if group else []
            for mode, how in modes.items() if group else [("", modes["unquantized"])]:
                with overriding(chosen, how):
                    sr, mean = _run_set(model, pairs)
                cells = [f"{p.name} {psnr(y, p.hr, 2):.2f}/{psnr(y, f, 2):.2f}" for p, y, f in zip(pairs, sr, fp_out)]
                label = f"{group} {mode}" if group else "none off"
                print(f"  {label:40s} mean {mean:.3f} | " + "  ".join(cells), flush=True)


def clip_channels(paths: list[str], bench: str, set_name: str) -> None:
    """Where each linear input's clipping falls: the share of its clipped energy in its top 3 of
    the channels (the last axis in its own domain), and the share of its energy clipped."""
    from compsrt.data import load_benchmark
    from compsrt.io import to_float

    pairs = load_benchmark(Path(bench), set_name, 2)
    for path in paths:
        model = load_calibrated(path, 2).eval()
        linear_inputs = [q for _, q in _group(model, "linear inputs")]
        per_site: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        names = {id(q): n for n, q in model.named_modules()}
        acc: dict[int, list[torch.Tensor]] = {}

        def record(q: Quantizer, t: torch.Tensor, dc: int | None) -> torch.Tensor:
            cut = (t - _clipped(q, t, dc)).square().flatten(0, -2).sum(0)
            total = t.square().flatten(0, -2).sum(0)
            prev = acc.get(id(q))
            acc[id(q)] = [cut, total] if prev is None else [prev[0] + cut, prev[1] + total]
            return fake_quant(t, q.lower, q.upper, q.bits, *q.extras(), dc_dim=dc)  # what q does otherwise

        with overriding(linear_inputs, record), torch.no_grad():
            for p in pairs:
                model(to_float(p.lr)[None])
        for qid, (cut, total) in acc.items():
            top = cut.topk(3).values.sum() / cut.sum().clamp_min(1e-30)
            per_site[_site(names[qid])].append((float(top), float(cut.sum() / total.sum())))
        print(f"{path} on {set_name}: linear inputs, top-3-channel share of clipped energy / clipped share of energy")
        for site, rows in per_site.items():
            a = np.array(rows)
            print(f"  {site:28s} top-3 share {np.median(a[:, 0]):.2f} (min {a[:, 0].min():.2f}), "
                  f"energy clipped {np.median(a[:, 1]):.2e} (max {a[:, 1].max():.2e})  [{len(a)} quantizers]")


def widen(paths: list[str], bench: str, set_name: str, group: str, alphas: list[float]) -> None:
    """Each quantizer of ``group`` scaled by alpha, clip range and grid together: about its centre,
    or about l for the non-negative fc2 and softmax inputs. Is the trained range too narrow?"""
    from compsrt.data import load_benchmark

    pairs = load_benchmark(Path(bench), set_name, 2)
    for path in paths:
        trained = load_calibrated(path, 2).eval()
        for alpha in alphas:
            model = copy.deepcopy(trained)
            with torch.no_grad():
                for name, q in _group(model, group):
                    about = q.lower.clone() if name.endswith(("fc2.aq.0", ".attend.a")) else (q.lower + q.upper) / 2
                    q.lower.copy_(about - alpha * (about - q.lower))
                    q.upper.copy_(about + alpha * (q.upper - about))
                    q.step_extra.mul_(alpha)
                    q.zero_extra.mul_(alpha)
            _, mean = _run_set(model, pairs)
            print(f"{path} on {set_name}: {group} x{alpha}: PSNR {mean:.3f}", flush=True)


def _norm_output_means(fp, train) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Per-channel mean of every LayerNorm output on the quick default's DOBI batch, and the
    share of each output's energy those means hold."""
    cal = calib_batch(train, CalibConfig(), 2)
    outs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach().flatten(0, -2)))
             for n, m in fp.named_modules() if n.endswith(("norm1", "norm2"))]
    with torch.no_grad():
        fp(torch.from_numpy(cal).float() / 255)
    for h in hooks:
        h.remove()
    means = {n: o.mean(0) for n, o in outs.items()}
    return means, [float(means[n].square().sum() / o.square().mean(0).sum()) for n, o in outs.items()]


def ln_shift(fp, method: str, bits: int, pairs, iters: int) -> None:
    """The quick default with every LayerNorm output centred per channel (its calibration mean
    subtracted from the norm's bias and W mean added to the next linear's): the FP function is
    unchanged, the qkv and fc1 inputs lose their channel offsets (outlier-channel shifting)."""
    means, share = _norm_output_means(fp, split_holdout(pairs, VAL_IMAGES)[0])

    def shift(model):
        mods = dict(model.named_modules())
        with torch.no_grad():
            for name, mu in means.items():
                block = name.rsplit(".", 1)[0]
                linear = mods[block + (".attn.qkv" if name.endswith("norm1") else ".mlp.fc1")]
                mods[name].bias.sub_(mu)
                linear.bias.add_(linear.weight @ mu)
    print(f"{method} w{bits}: {len(share)} LayerNorm outputs, their channel means hold {np.median(share):.2f} of "
          f"their energy in the median ({min(share):.2f} to {max(share):.2f}); held-out fidelity (dB) from DOBI "
          "to each check, as is and centred")
    for label, edit in (("as is", lambda m: None), ("centred", shift)):
        rep = _quick_calibrate(fp, pairs, method, bits, iters, edit)
        fid = [f"{rep.start_fidelity_db:.2f}"] + [f"{h['val_fidelity_db']:.2f}" for h in rep.history]
        print(f"  {label}: {' -> '.join(fid)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("dobi-error", "linesearch", "grad-snr", "attribution", "train-group", "rescore",
                                    "weight-shape", "group-off", "clip-channels", "widen", "ln-shift"))
    p.add_argument("checkpoints", nargs="*", help="rescore, group-off, clip-channels, widen: calibrated x2 checkpoints "
                   "(C/calibrated.safetensors of python -m compsrt.calib)")
    p.add_argument("--weights", type=Path, help="FP x2 SwinIR-light weights (default: the bundled ones)")
    p.add_argument("--data", type=Path, nargs="+", help="training images (default: the bundled calibration crops)")
    p.add_argument("--bench", type=Path, help="group-off, clip-channels, widen: benchmark folder (<Set>/HR, ...)")
    p.add_argument("--set", default="Set5", help="group-off, clip-channels, widen: benchmark set")
    p.add_argument("--clip", action="store_true", help="group-off: also run each group clipped but not rounded")
    p.add_argument("--group", default="linear inputs", choices=list(GROUPS), help="widen: which quantizers")
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0, 1.15, 1.3, 0.9], help="widen: range factors")
    p.add_argument("--patches", type=int, default=48, help="rescore: held-out patches")
    p.add_argument("--compare", nargs="*", default=[], help="weight-shape: other safetensors checkpoints")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["2dquant", "compsrt"])
    p.add_argument("--batches", type=int, default=4, help="linesearch, grad-snr: fixed finetuning batches")
    p.add_argument("--iters", type=int, default=50, help="train-group, ln-shift: finetuning iterations")
    a = p.parse_args(argv)
    if a.what in ("group-off", "clip-channels", "widen") and a.bench is None:
        p.error(f"{a.what} needs --bench, a benchmark folder holding {a.set}/HR")
    threads = torch.get_num_threads()
    if a.what in ("attribution", "train-group", "rescore", "ln-shift"):
        torch.set_num_threads(1)  # as their figures in docs/calib/experiments.md were measured
    try:
        run(a)
    finally:
        torch.set_num_threads(threads)


def run(a: argparse.Namespace) -> None:
    fp = load_model(a.weights, 2).eval()
    if a.what == "weight-shape":
        return weight_shape(fp, a.bits, a.compare)
    if a.what == "widen":
        return widen(a.checkpoints, a.bench, a.set, a.group, a.alphas)
    if a.what == "clip-channels":
        return clip_channels(a.checkpoints, a.bench, a.set)
    if a.what == "group-off":
        return group_off(fp, a.checkpoints, a.bench, a.set, a.clip)
    pairs = load_training_pairs(a.data or [bundled_calib_images()], 2, progress=False)
    train, _ = split_holdout(pairs, VAL_IMAGES)
    if a.what == "rescore":
        return rescore(fp, pairs, a.checkpoints, a.patches)
    for method in a.methods:
        if a.what == "dobi-error":
            dobi_error(fp, method, a.bits, train)
        elif a.what == "linesearch":
            linesearch(fp, method, a.bits, train, a.batches)
        elif a.what == "grad-snr":
            grad_snr(fp, method, a.bits, train, a.batches)
        elif a.what == "ln-shift":
            ln_shift(fp, method, a.bits, pairs, a.iters)
        elif a.what == "attribution":
            attribution(fp, method, a.bits, pairs)
        else:
            train_group(fp, method, a.bits, pairs, a.iters)


if __name__ == "__main__":
    main()
