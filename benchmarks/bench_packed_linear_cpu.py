"""CPU latency of the packed linear product against the FP model's F.linear, at SwinIR-light's shapes.

    pytest benchmarks/bench_packed_linear_cpu.py --benchmark-json packed_linear_cpu.json

M = 16,384 tokens (a 128 x 128 LR image), 1 thread pinned (COMPSRT_BENCH_THREADS to change), the
block's products: qkv 60 -> 180 (rotated K 64), proj 60 -> 60, fc1 60 -> 120, fc2 120 -> 60 (K 128).
- ``int8``: what PackedLinear runs on the CPU: ``torch._int_mm`` on int8 codes + the fp32 epilogue
  (linear_int8; with a pruning mask the GEMM is twice as wide: [codes | mask]);
- ``fp32``: ``F.linear`` with an fp32 weight and bias (the FP model), unrotated K.
The activations' rotation + quantization is benchmarked apart (bench_cpu_kernels.py).
"""
import os

import pytest
import torch
import torch.nn.functional as F

from compsrt.kernels.packed_linear import linear_int8

THREADS = int(os.environ.get("COMPSRT_BENCH_THREADS", "1"))
M = 16384
SHAPES = [(60, 64, 180), (60, 64, 60), (60, 64, 120), (120, 128, 60)]   # (C, K rotated, N)


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("c, k, n", SHAPES, ids=[f"{c}to{n}" for c, _, n in SHAPES])
@pytest.mark.parametrize("impl", ["int8", "fp32"])
def test_linear_cpu(benchmark, impl, c, k, n, masked):
    if impl == "fp32" and masked:
        pytest.skip("the FP product has no mask")
    torch.set_num_threads(THREADS)
    g = torch.Generator().manual_seed(0)
    benchmark.group = f"M{M} {c}->{n}"
    if impl == "int8":
        qx = torch.randint(0, 16, (M, k), generator=g, dtype=torch.int8)
        w_t = torch.randint(0, 16, (k, 2 * n if masked else n), generator=g, dtype=torch.int8)
        c0, dc_x, dc_w = torch.randn(n, generator=g), torch.randn(M, 1, generator=g), torch.randn(n, generator=g)
        fn = lambda: linear_int8(qx, w_t, n, 0.01, -0.02, c0, dc_x, dc_w)   # noqa: E731
    else:
        x, w, b = torch.randn(M, c, generator=g), torch.randn(n, c, generator=g), torch.randn(n, generator=g)
        fn = lambda: F.linear(x, w, b)   # noqa: E731
    benchmark.extra_info.update(impl=impl, M=M, C=c, K=k, N=n, masked=masked, threads=THREADS)
    benchmark.pedantic(fn, rounds=15, warmup_rounds=2, iterations=1)
