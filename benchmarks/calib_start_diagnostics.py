"""Why CompSRT's finetuning gains little at 2 bits: three looks at the DOBI starting point.

    python benchmarks/calib_start_diagnostics.py dobi-error --bits 2 --methods 2dquant compsrt
    python benchmarks/calib_start_diagnostics.py linesearch --bits 2 --methods 2dquant compsrt
    python benchmarks/calib_start_diagnostics.py grad-snr --bits 2 --batches 8

All three rebuild the quick default's DOBI start exactly (shipped x2 weights, bundled crops, the same
seeded calibration batch) without finetuning.

dobi-error: per quantizer site, the quantization error energy right after DOBI (dB of the summed
squared error in the quantizer's own domain; the rotation is orthonormal, so rotated and
unrotated sites compare directly), and the output fidelity on the calibration batch.

linesearch: the distillation loss on K fixed finetuning batches at the start, then again after one
sign step of every quantizer scalar against its summed straight-through gradient, of eta x the
quantizer's step. How far that loss can fall says how much room range tuning has from there.

grad-snr: each scalar's gradient on K finetuning batches of 2; |mean| / std over the batches,
averaged per kind of scalar. Well above 1 means the gradient direction is consistent, not noise.
"""
from __future__ import annotations

import argparse
import collections
import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from compsrt.calib.__main__ import bundled_calib_images
from compsrt.calib.calibrate import search_bounds_
from compsrt.calib.methods import method_config
from compsrt.config import CalibConfig
from compsrt.data import load_training_pairs, random_patches
from compsrt.model.compress import compress_
from compsrt.model.load import load_model
from compsrt.model.qmodules import Quantizer, quantizers

PARAMS = ("lower", "upper", "step_extra", "zero_extra")


def _site(name: str) -> str:
    skip = {"layers", "residual_group", "blocks", "attn"}
    return ".".join(p for p in name.split(".") if not p.isdigit() and p not in skip)


def dobi_start(fp, method: str, bits: int, train) -> tuple[torch.nn.Module, torch.Tensor]:
    """The calibrated-but-not-finetuned model, as calibrate() builds it with the quick defaults,
    and the calibration batch it searched on."""
    m = compress_(copy.deepcopy(fp), method_config(method, bits)).eval()
    return m, search_bounds_(m, train, CalibConfig(), torch.device("cpu"))


def dobi_error(fp, method: str, bits: int, train) -> None:
    errs: dict[Quantizer, float] = {}
    original = Quantizer.search

    def search(q: Quantizer, t: torch.Tensor) -> None:
        original(q, t)
        errs[q] = 10 * math.log10(max(float((q.fake(t) - t).pow(2).sum()), 1e-20))

    Quantizer.search = search
    try:
        m, x = dobi_start(fp, method, bits, train)
    finally:
        Quantizer.search = original
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("dobi-error", "linesearch", "grad-snr"))
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["2dquant", "compsrt"])
    p.add_argument("--batches", type=int, default=4, help="linesearch, grad-snr: fixed finetuning batches")
    a = p.parse_args()
    fp = load_model(None, 2).eval()
    train = load_training_pairs([bundled_calib_images()], 2, progress=False)[3:]  # calib's held-out split
    for method in a.methods:
        if a.what == "dobi-error":
            dobi_error(fp, method, a.bits, train)
        elif a.what == "linesearch":
            linesearch(fp, method, a.bits, train, a.batches)
        else:
            grad_snr(fp, method, a.bits, train, a.batches)


if __name__ == "__main__":
    main()
