"""Same model? A packed file against the calibrated fake-quant model it was packed from, on Set5.

    python benchmarks/packed_fidelity.py C/calibrated.safetensors C/model.safetensors --data ../shared/data/benchmark

Prints Set5 PSNR/SSIM of both (the issue's target: within 0.02 dB) and, on the first image, the
codes the runtime computes at every quantized Linear's input against the calibration's codes
for the same input (the fake-quant model's own input to that layer): how many differ (rounding
ties) out of how many; and for the attention sites, how many output rows differ beyond float
rounding given identical q, k, v (each such row holds at least one attention-code tie).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from compsrt.eval import evaluate
from compsrt.io import to_float
from compsrt.data import load_benchmark
from compsrt.kernels.fake_quant import fake_quant_ref
from compsrt.kernels.hadamard import hadamard_ref
from compsrt.load import load_model
from compsrt.quant.compress import load_calibrated, site_inputs
from compsrt.quant.qmodules import QuantLinear


def code_ties(fake, packed, x) -> dict:
    """Differing activation codes at the Linear inputs and differing attention output rows."""
    codes_off = codes_all = rows_off = rows_all = 0
    for name, args in site_inputs(fake, x).items():
        mod, rt = fake.get_submodule(name), packed.get_submodule(name)
        if isinstance(mod, QuantLinear):
            t = args[0].reshape(-1, args[0].shape[-1]).float()
            r = hadamard_ref(t, -1) if rt.rotate else t
            for i, aq in enumerate(mod.aq):
                s2, z2 = aq.extras()
                part = r - r.mean(-1, keepdim=True) if rt.row_mean else r[:, rt.dc:]   # what calibration quantizes
                _, want = fake_quant_ref(part, aq.lower, aq.upper, mod.wq[0].bits, s2, z2, return_codes=True)
                got, _ = rt.activation_codes(t, r, i)
                got = got[:, rt.dc:rt.n].to(torch.uint8)
                codes_off += int((got != want).sum())
                codes_all += want.numel()
        else:
            with torch.no_grad():
                a, b = mod(*args), rt(*args)
            off = ((a - b).abs() > 1e-4 * (1 + a.abs())).reshape(-1, a.shape[-1]).any(-1)
            rows_off += int(off.sum())
            rows_all += off.numel()
    return {"linear_input_codes_differing": codes_off, "linear_input_codes": codes_all,
            "attention_rows_differing": rows_off, "attention_rows": rows_all}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("calibrated", type=Path)
    p.add_argument("packed", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--set", default="Set5")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    fake = load_calibrated(a.calibrated).eval()
    scale = fake.cfg.scale
    packed = load_model(a.packed, scale)
    r_fake = evaluate(fake, a.data, [a.set], scale, progress=False)[a.set]
    r_packed = evaluate(packed, a.data, [a.set], scale, progress=False)[a.set]
    print(f"{a.set} x{scale}: fake-quant {r_fake['psnr_db']:.4f} / {r_fake['ssim']:.4f}, packed "
          f"{r_packed['psnr_db']:.4f} / {r_packed['ssim']:.4f}, difference "
          f"{r_packed['psnr_db'] - r_fake['psnr_db']:+.4f} dB")
    pair = load_benchmark(a.data, a.set, scale)[0]
    ties = code_ties(fake, packed, to_float(pair.lr)[None])
    print(f"on {pair.name}: {ties['linear_input_codes_differing']} of {ties['linear_input_codes']:,} "
          f"linear-input codes differ; {ties['attention_rows_differing']} of {ties['attention_rows']:,} "
          "attention output rows differ beyond float rounding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
