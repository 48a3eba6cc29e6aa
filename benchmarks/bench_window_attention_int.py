"""Latency of the packed runtime's integer attention and activation quantizer (CUDA only).

    PYTHONPATH=. python -m pytest benchmarks/bench_window_attention_int.py --benchmark-json=wai.json

Shapes are a x2 upscale of a 256 x 256 LR image through SwinIR-light: 1024 windows of 64 tokens,
6 heads, head dim 10.

- ``test_window_attention_int``: the fused Triton kernel (``triton``: codes, both int8 products
  and the softmax in registers) against the PyTorch reference (``ref``: window_attention_int_ref,
  the N x N scores through memory) and plain FP16 eager attention (``fp16_eager``:
  softmax(q k^T scale + bias) v). Two bias layouts: ``rpb``, q (1024, 6, 64, 10) with one
  (6, 64, 64) relative-position bias; ``shifted``, q (1, 1024, 6, 64, 10) with a per-window
  (1024, 6, 64, 64) bias (the shift mask folded in), which every implementation reads whole, and
  ``triton_mask``: the fused kernel given the (6, 64, 64) bias and the (1024, 1, 64, 64) shift mask
  apart (what the packed runtime passes), adding them per window.
- ``test_hadamard_quant``: hadamard_quant_triton against hadamard_quant_ref at (65536, 60) -> 64
  and (65536, 120) -> 128, with a ``clone`` floor (one copy of the input). GB/s counts the fused
  kernel's ideal traffic (read x, write int8 codes) for every implementation.

q, k, v are fp16 strided slices of one qkv tensor, as SwinIR's attention makes them.
"""
from __future__ import annotations

import math

import pytest
import torch

from compsrt.kernels.hadamard import next_pow2
from compsrt.kernels.hadamard_quant import hadamard_quant_ref
from compsrt.kernels.window_attention_int import window_attention_int_ref

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="the fused kernels are benchmarked on CUDA only")
DEVICE = torch.device("cuda" if CUDA else "cpu")
BITS = 4
ROUNDS, WARMUP = 30, 3
WINDOWS, HEADS, TOKENS, HEAD_DIM = 1024, 6, 64, 10
BIAS_LAYOUTS = ["rpb", "shifted"]
ATTN_IMPLS = ["triton", "triton_mask", "ref", "fp16_eager"]
HQ_SHAPES = {"lin60": (65536, 60), "fc2_120": (65536, 120)}
HQ_IMPLS = ["triton", "ref", "clone"]


def _sync():
    torch.cuda.synchronize()


def _gpu_name():
    return torch.cuda.get_device_name()


def _attention_inputs(layout: str):
    g = torch.Generator().manual_seed(0)
    lead = (WINDOWS, HEADS) if layout == "rpb" else (1, WINDOWS, HEADS)
    qkv = torch.randn((*lead[:-1], TOKENS, 3, HEADS, HEAD_DIM), generator=g)
    qkv = qkv.movedim(-3, 0).movedim(-2, -3).half().to(DEVICE)          # (3, ..., heads, N, d), strided
    q, k, v = qkv[0], qkv[1], qkv[2]
    rpb = 2.0 * torch.randn((HEADS, TOKENS, TOKENS), generator=g)
    mask = None
    if layout == "rpb":
        bias = rpb
    else:
        region = torch.arange(TOKENS)[None, :] // 16 + torch.arange(WINDOWS)[:, None] % 4
        mask = torch.where(region[:, :, None] == region[:, None, :], 0.0, -100.0)
        bias = rpb[None] + mask[:, None]                                  # (nW, heads, N, N)
    # quantizer ranges of the right order for unit-variance activations and 64-token softmaxes
    s = [2.0 / 15, 4.0 / 15, 0.1 / 15, 4.0 / 15]
    qp = torch.tensor([[-1.0, 1.0, s[0], -1.0 - 0.3 * s[0]], [-2.0, 2.0, s[1], -2.0 - 0.3 * s[1]],
                       [-0.05, 0.05, s[2], -0.05 - 0.3 * s[2]], [-2.0, 2.0, s[3], -2.0 - 0.3 * s[3]]])
    return q, k, v, bias.to(DEVICE), qp.to(DEVICE), rpb.to(DEVICE), None if mask is None else mask.to(DEVICE)


def _fp16_eager(q, k, v, bias_h, scale):
    attn = (q * scale) @ k.transpose(-2, -1) + bias_h
    return attn.softmax(-1) @ v


@pytest.mark.parametrize("layout", BIAS_LAYOUTS)
@pytest.mark.parametrize("impl", ATTN_IMPLS)
def test_window_attention_int(benchmark, impl, layout):
    if impl == "triton_mask" and layout != "shifted":
        pytest.skip("the mask apart is the shifted layout's")
    q, k, v, bias, qp, rpb, mask = _attention_inputs(layout)
    scale = HEAD_DIM ** -0.5
    if impl == "triton_mask":
        from compsrt.kernels.window_attention_int_triton import window_attention_int_triton

        def fn():
            window_attention_int_triton(q, k, v, rpb, scale, qp, BITS, True, mask=mask[:, None])
            _sync()
    elif impl == "triton":
        from compsrt.kernels.window_attention_int_triton import window_attention_int_triton

        def fn():
            window_attention_int_triton(q, k, v, bias, scale, qp, BITS, True)
            _sync()
    elif impl == "ref":
        def fn():
            window_attention_int_ref(q, k, v, bias, scale, qp, BITS, True)
            _sync()
    else:
        bias_h = bias.half()

        def fn():
            _fp16_eager(q, k, v, bias_h, scale)
            _sync()
    benchmark.group = f"window_attention_int-{layout}"
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        impl=impl, layout=layout, q_shape=list(q.shape), bias_shape=list(bias.shape), dtype=str(q.dtype),
        bits=BITS, keep_dc=True, device=_gpu_name(), time_us=median_s * 1e6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape_name", list(HQ_SHAPES))
@pytest.mark.parametrize("impl", HQ_IMPLS)
def test_hadamard_quant(benchmark, impl, shape_name, dtype):
    shape = HQ_SHAPES[shape_name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype).to(DEVICE)
    s = 4.5 / 15
    qp = torch.tensor([-2.0, 2.5, s, -2.0 - 0.3 * s], device=DEVICE)
    if impl == "triton":
        from compsrt.kernels.hadamard_quant_triton import hadamard_quant_triton

        def fn():
            hadamard_quant_triton(x, qp, BITS)
            _sync()
    elif impl == "ref":
        def fn():
            hadamard_quant_ref(x, qp, BITS)
            _sync()
    else:
        def fn():
            x.clone()
            _sync()
    benchmark.group = f"hadamard_quant-{shape_name}-{str(dtype).replace('torch.', '')}"
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    median_s = benchmark.stats.stats.median
    n = next_pow2(shape[-1])
    traffic = math.prod(shape) * x.element_size() + shape[0] * n  # read x, write int8 codes
    benchmark.extra_info.update(
        impl=impl, shape=list(shape), rotated=n, dtype=str(dtype), bits=BITS, device=_gpu_name(),
        traffic_bytes=traffic, time_us=median_s * 1e6, gbps=traffic / median_s / 1e9)
