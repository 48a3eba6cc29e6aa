"""Latency of the packed low-bit linear (csrc/packed_linear.cu) against unpacked int8 and fp16 GEMMs.

    PYTHONPATH=. python -m pytest benchmarks/bench_packed_linear.py --benchmark-json=packed_linear.json

GPU only (skips without CUDA). M = 65,536 tokens (a 256 x 256 LR image through SwinIR-light) and
the (K, N) of its linears in the rotated domain: qkv (64, 180), proj (64, 60), fc1 (64, 120),
fc2 (128, 60). Implementations, all producing the fp32 (M, N) output of packed_linear_ref:

- ``packed``: packed_linear_cuda (tensor cores on sm_80+), reading the bit-plane weights;
- ``packed_dp4a``: the same kernel's dp4a fallback;
- ``int_mm``: ``torch._int_mm`` on unpacked int8 weights (N padded to a multiple of 8, as cuBLASLt
  needs; [codes | mask] in one GEMM when masked) + linear_epilogue_ref;
- ``fp16``: ``F.linear`` on fp16 activations and weights (fp16 output), the unquantized reference;
- ``clone``: one copy of an fp32 (M, N) tensor, the memory-bound floor of writing the output.

Each timed call runs REPS launches then ``torch.cuda.synchronize()``; ``time_us`` in extra_info is
per launch. ``gbps`` counts the packed kernel's ideal traffic (read qx, write y) for every row, so
the column compares times.
"""
import pytest
import torch
import torch.nn.functional as F

from compsrt.kernels.bitpack import pack_bits
from compsrt.kernels.packed_linear import linear_epilogue_ref

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="the packed-linear benchmark needs a CUDA GPU")

M = 65536
BITS = 2
SHAPES = [(64, 180), (64, 60), (64, 120), (128, 60)]  # (K, N)
IMPLS = ["packed", "packed_dp4a", "int_mm", "fp16", "clone"]
REPS, ROUNDS, WARMUP = 20, 20, 3


def _inputs(k: int, n: int, masked: bool):
    g = torch.Generator().manual_seed(0)
    qx = torch.randint(0, 16, (M, k), generator=g).to(torch.int8)
    qw = torch.randint(0, 1 << BITS, (n, k), generator=g)
    keep = (torch.rand(n, k, generator=g) > 0.4).to(torch.int64) if masked else torch.ones(n, k, dtype=torch.int64)
    codes = qw * keep
    c0 = torch.randn(n, generator=g)
    return qx.cuda(), codes.cuda(), keep.cuda(), c0.cuda()


def _timed_fn(impl: str, k: int, n: int, masked: bool):
    qx, codes, keep, c0 = _inputs(k, n, masked)
    alpha, beta = 0.0123, -0.0456
    if impl in ("packed", "packed_dp4a"):
        from compsrt.kernels.packed_linear_cuda import packed_linear_cuda

        w_planes = pack_bits(codes.cpu(), BITS).cuda()
        m_planes = pack_bits(keep.cpu(), 1).cuda() if masked else None
        variant = "auto" if impl == "packed" else "dp4a"

        def run():
            return packed_linear_cuda(qx, w_planes, m_planes, BITS, alpha, beta, c0, impl=variant)
    elif impl == "int_mm":
        n_pad = -(-n // 8) * 8
        cols = [codes] + ([keep] if masked else [])
        w = torch.zeros(len(cols) * n_pad, k, dtype=torch.int8, device="cuda")
        for i, c in enumerate(cols):
            w[i * n_pad:i * n_pad + n] = c.to(torch.int8)
        w_t = w.t()  # (K, cols) column-major, the layout cuBLASLt's int8 GEMM takes

        def run():
            acc = torch._int_mm(qx, w_t)
            acc_m = acc[:, n_pad:n_pad + n] if masked else qx.sum(-1, keepdim=True, dtype=torch.int32)
            return linear_epilogue_ref(acc[:, :n], acc_m, alpha, beta, c0)
    elif impl == "fp16":
        x16 = qx.half()
        w16 = codes.half()

        def run():
            return F.linear(x16, w16)
    elif impl == "clone":
        y = torch.empty(M, n, device="cuda")

        def run():
            return y.clone()
    else:
        raise ValueError(impl)

    def timed():
        for _ in range(REPS):
            run()
        torch.cuda.synchronize()

    return timed


@pytest.mark.parametrize("masked", [False, True], ids=["trivial_mask", "mask"])
@pytest.mark.parametrize("k, n", SHAPES, ids=[f"k{k}n{n}" for k, n in SHAPES])
@pytest.mark.parametrize("impl", IMPLS)
def test_packed_linear(benchmark, impl, k, n, masked):
    if impl in ("fp16", "clone") and masked:
        pytest.skip("fp16 and clone do not depend on the mask")
    benchmark.group = f"M{M}-k{k}-n{n}-{'mask' if masked else 'trivial_mask'}"
    fn = _timed_fn(impl, k, n, masked)
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    time_s = benchmark.stats.stats.median / REPS
    traffic = M * k + M * n * 4  # read int8 qx, write fp32 y
    benchmark.extra_info.update(
        impl=impl, M=M, K=k, N=n, bits=BITS, masked=masked, device=torch.cuda.get_device_name(),
        capability=".".join(map(str, torch.cuda.get_device_capability())), reps=REPS,
        traffic_bytes=traffic, time_us=time_s * 1e6, gbps=traffic / time_s / 1e9)
