"""CPU fake-quant backward: why its masks are float arithmetic, and what it costs.

    python research/fake_quant_backward.py [--repeats 20] [--bits 2] [--scale 1.0]

Calibration's backward spends much of its time in the fake-quant gradient of 384 quantizers.
On the CPU a comparison that writes a bool tensor, and ``where`` on one, cost several float
passes each (first table), so the CPU backward of ``compsrt.kernels.fake_quant`` builds its
masks from ``sign`` and ``clamp`` instead (bit for bit the boolean form CUDA runs:
tests/kernels/test_fake_quant_lean.py). The second table times that backward through the
public op on a batch-2 step's largest operands, at the DOBI start (no code saturates: one dot
product for d/ds) and once the learned extras make codes saturate (the usual state after a few
steps). ``--scale`` shrinks the operands (the smoke test's 0.01). Medians of --repeats calls.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from compsrt.kernels import fake_quant


def _ms(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def primitives(repeats: int, n: int) -> None:
    x, g = torch.randn(n), torch.randn(n)
    mask = x < -1.0
    ops = {
        "clamp (float bounds)": lambda: torch.clamp(x, -1.0, 1.0),
        "x * g": lambda: x * g,
        "sign": lambda: torch.sign(x),
        "x < l (bool)": lambda: x < -1.0,
        "where(mask, g, 0)": lambda: torch.where(mask, g, 0),
    }
    times = {k: _ms(fn, repeats) for k, fn in ops.items()}
    print(f"| op on {n} floats | ms | x a multiply |\n|---|---|---|")
    for k, t in times.items():
        print(f"| {k} | {t:.3f} | {t / times['x * g']:.1f} |")


def backward_ms(shape: tuple[int, ...], transposed: bool, saturating: bool, bits: int, repeats: int) -> float:
    """Median time of the fake-quant backward alone (the forward's graph kept and re-run)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).requires_grad_()
    g = torch.randn(shape, generator=gen)
    if transposed:  # a non-contiguous incoming gradient, as k's through the transposed product
        g = torch.randn(shape[:-2] + shape[:-3:-1], generator=gen).transpose(-1, -2)
    lo, hi = torch.tensor(-1.2, requires_grad=True), torch.tensor(1.4, requires_grad=True)
    s0 = float((hi - lo).detach()) / (2 ** bits - 1)   # codes saturate at both ends with s2 < 0 < z2:
    s2 = torch.tensor(-0.2 * s0 if saturating else 0.0, requires_grad=True)   # top code (qmax - 0.6) / 0.8
    z2 = torch.tensor(0.6 * s0 if saturating else 0.0, requires_grad=True)    # bottom code -0.75
    y = fake_quant(x, lo, hi, bits, s2, z2)
    return _ms(lambda: y.backward(g, retain_graph=True), repeats)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--scale", type=float, default=1.0, help="operand size factor (1 = a batch-2 step's)")
    a = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    primitives(a.repeats, max(1024, int((1 << 20) * a.scale)))
    m = lambda n: max(1, int(n * a.scale))  # noqa: E731
    cases = [("attn (768, 64, 64)", (m(768), 64, 64), False),
             ("k, transposed gradient (768, 64, 16)", (m(768), 64, 16), True),
             ("fc2 input (8192, 128)", (m(8192), 128), False)]
    print(f"\n| operand ({a.bits} bits) | in range ms | saturating ms |\n|---|---|---|")
    for name, shape, transposed in cases:
        t_in, t_sat = (backward_ms(shape, transposed, sat, a.bits, a.repeats) for sat in (False, True))
        print(f"| {name} | {t_in:.2f} | {t_sat:.2f} |")


if __name__ == "__main__":
    main()
