"""CPU fake-quant backward: boolean masks against float arithmetic, side by side.

    python benchmarks/fake_quant_backward.py [--repeats 20]

Calibration's backward spends much of its time in the fake-quant gradient of 384 quantizers.
On the CPU a comparison that writes a bool tensor, and ``where`` on one, cost several float
passes each (first table), so ``_cpu_backward`` builds its masks from ``sign`` and ``clamp``
instead. The second table times it against the masked form (``_masked_backward``, what CUDA
runs) on a batch-2 step's largest operands, at the DOBI start (no code saturates) and once the
learned extras make codes saturate (the usual state after a few steps). The two alternate, so
machine noise hits both; quote the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from compsrt.kernels.fake_quant_lean import _cpu_backward, _masked_backward


def _ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def primitives(repeats: int) -> None:
    x, g = torch.randn(1 << 20), torch.randn(1 << 20)
    mask = x < -1.0
    ops = {
        "clamp (float bounds)": lambda: torch.clamp(x, -1.0, 1.0),
        "x * g": lambda: x * g,
        "sign": lambda: torch.sign(x),
        "x < l (bool)": lambda: x < -1.0,
        "where(mask, g, 0)": lambda: torch.where(mask, g, 0),
    }
    times = {k: [] for k in ops}
    for _ in range(repeats):
        for k, fn in ops.items():
            times[k] += _ms(fn, 1)
    base = statistics.median(times["x * g"])
    print("| op on 2^20 floats | ms | x a multiply |\n|---|---|---|")
    for k, t in times.items():
        print(f"| {k} | {statistics.median(t):.3f} | {statistics.median(t) / base:.1f} |")


def backward_pair(shape: tuple[int, ...], transposed: bool, saturating: bool, bits: int, repeats: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    g = torch.randn(shape, generator=gen)
    if transposed:
        g = torch.randn(shape[:-2] + shape[:-3:-1], generator=gen).transpose(-1, -2)
    qmax = 2 ** bits - 1
    lo, hi = torch.tensor(-1.2), torch.tensor(1.4)
    s0 = (hi - lo) / qmax
    s, z = (s0 * 0.95, lo + 0.05 * s0) if saturating else (s0, lo)

    def masked():
        return _masked_backward(x, g, lo, hi, s, z, qmax)

    def floats():
        return _cpu_backward(x, g, lo, hi, s, z, qmax)

    tm, tf = [], []
    for _ in range(repeats):
        tm += _ms(masked, 1)
        tf += _ms(floats, 1)
    return statistics.median(tm), statistics.median(tf)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--bits", type=int, default=2)
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    primitives(a.repeats)
    cases = [("attn (768, 64, 64)", (768, 64, 64), False),
             ("k, transposed gradient (768, 64, 16)", (768, 64, 16), True),
             ("fc2 input (8192, 128)", (8192, 128), False)]
    print(f"\n| operand ({a.bits} bits) | codes | masked ms | float ms | masked / float |\n|---|---|---|---|---|")
    for name, shape, transposed in cases:
        for saturating in (False, True):
            m, f = backward_pair(shape, transposed, saturating, a.bits, a.repeats)
            print(f"| {name} | {'saturating' if saturating else 'in range'} | {m:.2f} | {f:.2f} | {m / f:.2f} |")


if __name__ == "__main__":
    main()
