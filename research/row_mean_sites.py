"""Where 2DQuant's row mean (``--row-mean``) helps or hurts, site by site, after DOBI (issue 26's open "why").

    python research/row_mean_sites.py --data TRAIN_DIR [--bits 4 2] [--images 8] [--lr-size 64]
        [--weights FP] [--calib-data DIR]   # other x2 FP weights; DOBI's images (default: the bundled crops)

On x2 SwinIR-light (the bundled FP weights), the ``2dquant`` preset with the row mean switched on
for one group of quantizers at a time (every other quantizer plain), then off for one group at a
time (every other with it): DOBI bounds on the calibration's seeded batch of the bundled crops (as
``python -m compsrt.calib`` does before finetuning), then the fidelity to the FP output (PSNR in dB,
official protocol) on held-out training images (the first ``--images`` of ``--data`` not among the
bundled crops' sources, centre crops of ``--lr-size`` LR pixels). No finetuning: this isolates what
the row mean does to the quantization grid. The per-quantizer switch is the instance's
``row_mean`` attribute (the mean along the quantizer's contraction axis kept FP).

Then one probe of the mechanism (``--probe-block``, default layer 1 block 2): that block's FP
attention probabilities on the calibration batch, DOBI's range for them as they are (non-negative:
the one-sided search) and centred (signed: the two-sided search), and the relative error of
attn x v with each.

Training images, never a test set.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from compsrt.analysis.capture import streaming
from compsrt.calib.__main__ import bundled_calib_images
from compsrt.calib.calibrate import calib_batch, search_bounds_
from compsrt.calib.dobi import dobi
from compsrt.calib.methods import method_config
from compsrt.config import CalibConfig
from compsrt.data import load_training_pairs
from compsrt.kernels.fake_quant import fake_quant_ref
from compsrt.load import load_model
from compsrt.metrics import psnr
from compsrt.quant.compress import compress_
from compsrt.quant.plan import plan_for
from compsrt.quant.qmodules import Quantizer, WeightQuantizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mambairv2_site_cost import held_out_pairs, outputs  # noqa: E402  (research/ is scripts, not a package)

# group -> quantizer names (compsrt.model.swinir module names)
GROUPS = {
    "all weights": None,
    "qkv input": r"\.qkv\.aq\.",
    "proj input": r"\.proj\.aq\.",
    "fc1 input": r"\.fc1\.aq\.",
    "fc2 input": r"\.fc2\.aq\.",
    "q (along d)": r"\.attend\.q$",
    "k (along d)": r"\.attend\.k$",
    "attention probabilities (along keys)": r"\.attend\.a$",
    "v (along tokens)": r"\.attend\.v$",
}


def members(model: torch.nn.Module, group: str) -> set[str]:
    qs = [(n, q) for n, q in model.named_modules() if isinstance(q, Quantizer)]
    if group == "all weights":
        return {n for n, q in qs if isinstance(q, WeightQuantizer)}
    return {n for n, _ in qs if re.search(GROUPS[group], n)}


def fidelity(fp: torch.nn.Module, bits: int, on: set[str], train, pairs, fp_out) -> float:
    """Held-out fidelity after DOBI with the row mean on exactly the quantizers named in ``on``."""
    cfg = replace(method_config("2dquant", bits), row_mean=True)
    model = compress_(copy.deepcopy(fp), cfg).eval()
    for n, q in model.named_modules():
        if isinstance(q, Quantizer):
            q.row_mean = n in on
    search_bounds_(model, train, CalibConfig(), torch.device("cpu"))
    sr = outputs(model, pairs)
    return float(np.mean([psnr(y, f, 2) for y, f in zip(sr, fp_out)]))


def probe(fp: torch.nn.Module, train, layer: int, block: int, bits_list: list[int]) -> None:
    """DOBI's range for one block's attention probabilities, plain and centred, and what it does to attn x v."""
    path = f"layers.{layer}.residual_group.blocks.{block}.attn.attend"
    seen = {}
    want = {f"{path}.attn": "p", f"{path}.v": "v"}
    cal = calib_batch(train, CalibConfig(), 2)
    # the analysis capture's softmax (shift mask included) and v of that block, on the calibration batch
    with streaming(fp, plan_for(fp), lambda n, t: seen.__setitem__(want[n], t) if n in want else None), \
            torch.no_grad():
        fp(torch.from_numpy(cal).float().div_(255.0))   # as calibration feeds it
    p, v = seen["p"], seen["v"]
    ref = p @ v
    mean = p.mean(-1, keepdim=True)
    print(f"\nprobe: layers.{layer} block {block}, attention probabilities of the calibration batch "
          f"({p.shape[-1]} keys per row)\n")
    print("| bits | operand | DOBI range | step | attn x v relative error |\n|---|---|---|---|---|")
    for bits in bits_list:
        for name, t, off, one_sided in (("p (one-sided search)", p, 0.0, True),
                                        ("p - row mean (two-sided)", p - mean, mean, False)):
            lo, hi = dobi(t, bits, one_sided=one_sided)
            q = off + fake_quant_ref(t, torch.tensor(lo), torch.tensor(hi), bits)
            err = float((q @ v - ref).norm() / ref.norm())
            print(f"| W{bits} | {name} | [{lo:.4f}, {hi:.4f}] | {(hi - lo) / (2 ** bits - 1):.4f} | {err:.3f} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a folder of HR training images")
    p.add_argument("--bits", type=int, nargs="+", default=[4])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--lr-size", type=int, default=64)
    p.add_argument("--weights", type=Path, help="x2 SwinIR-light FP weights (default: the bundled ones)")
    p.add_argument("--calib-data", type=Path, help="DOBI's training images (default: the bundled calibration crops)")
    p.add_argument("--probe-block", type=int, nargs=2, default=[1, 2], metavar=("LAYER", "BLOCK"))
    a = p.parse_args(argv)
    torch.manual_seed(0)
    fp = load_model(a.weights, 2).eval()
    train = load_training_pairs([a.calib_data or bundled_calib_images()], 2, progress=False)
    pairs = held_out_pairs(a.data, a.images, a.lr_size, 2)
    fp_out = outputs(fp, pairs)
    names = compress_(copy.deepcopy(fp), method_config("2dquant", 4))
    every = {n for n, q in names.named_modules() if isinstance(q, Quantizer)}
    print(f"{len(pairs)} held-out images of {a.data} ({', '.join(q.name for q in pairs)}), {a.lr_size}x{a.lr_size} "
          f"LR, x2 SwinIR-light ({a.weights or 'bundled FP weights'}), 2dquant after DOBI (no finetuning); fidelity to FP in dB")
    for bits in a.bits:
        none, both = fidelity(fp, bits, set(), train, pairs, fp_out), fidelity(fp, bits, every, train, pairs, fp_out)
        print(f"\nW{bits}A{bits}: row mean nowhere {none:.3f}, everywhere {both:.3f} ({both - none:+.3f})\n")
        print("| group | quantizers | row mean only here | vs nowhere | row mean everywhere but here | vs everywhere |")
        print("|---|---|---|---|---|---|")
        for group in GROUPS:
            chosen = members(names, group)
            only = fidelity(fp, bits, chosen, train, pairs, fp_out)
            but = fidelity(fp, bits, every - chosen, train, pairs, fp_out)
            print(f"| {group} | {len(chosen)} | {only:.3f} | {only - none:+.3f} | {but:.3f} | {but - both:+.3f} |",
                  flush=True)
    probe(fp, train, *a.probe_block, a.bits)


if __name__ == "__main__":
    main()
