"""Latency of the fused CPU kernels (csrc/cpu_kernels.cpp) against the PyTorch references, 1 thread.

    PYTHONPATH=. python -m pytest benchmarks/bench_cpu_kernels.py --benchmark-json=cpu_kernels.json

Shapes are a x2 upscale of a 128 x 128 LR image through SwinIR-light: M = 16,384 tokens, 256
windows of 64 tokens, 6 heads, head dim 10. ``torch.set_num_threads(1)`` for every implementation
(the kernels use torch.get_num_threads() threads). Skips without g++.

- ``test_rotate_quantize``: rotate_quantize_cpu against hadamard_quant_ref (dense-matmul rotation
  + the elementwise quantizer chain) at (16384, 60) -> 64 and (16384, 120) -> 128, with the exact
  DC; ``clone`` is one copy of the input (the memory floor).
- ``test_packed_linear``: the runtime's linears, fused (packed_linear_cpu: rotate, quantize, int8
  products and epilogue in one pass) against the PyTorch path it replaced (hadamard_ref once,
  quantize_ref per split, ``torch._int_mm``, linear_epilogue_ref, ``cat``) and the FP ``F.linear``.
- ``test_window_attention``: window_attention_int_cpu against window_attention_int_ref and the FP
  attention ``softmax(q k^T scale + bias) v`` (SwinIR's Attend), for the two bias layouts SwinIR
  passes: ``rpb``, the (6, 64, 64) position bias; ``shifted``, the (256, 6, 64, 64) sum of it and
  the shift mask, heads innermost as ``rpb + mask[:, None]`` leaves it. q, k, v are strided views of
  one qkv tensor, as SwinIR makes them. For ``shifted``, ``fused_mask_apart`` is what the runtime
  now does (the (256, 64, 64) mask given beside the position bias, added in the kernel) and
  ``fused_summed`` what it did before (the sum built per call, then read), the sum's time included.
- ``test_window_attention_mambairv2``: the same at MambaIRv2-light's windows (64 windows of 256
  tokens, 4 heads, head dim 12).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compsrt.kernels import cpu_kernels as ck
from compsrt.kernels.hadamard import hadamard_ref, next_pow2
from compsrt.kernels.hadamard_quant import hadamard_quant_ref, quantize_ref
from compsrt.kernels.packed_linear import linear_int8
from compsrt.kernels.window_attention_int import window_attention_int_ref

pytestmark = pytest.mark.skipif(ck.find_gxx() is None, reason="g++ not installed: no fused CPU kernels")

BITS = 4
M = 16384
WINDOWS, HEADS, TOKENS, HEAD_DIM = 256, 6, 64, 10
ROUNDS, WARMUP = 15, 2


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    assert ck.available(), ck.unavailable_reason()
    yield
    torch.set_num_threads(before)


def _qp(lower=-2.0, upper=2.5):
    s = (upper - lower) / (2 ** BITS - 1)
    return torch.tensor([lower, upper, s, lower + 0.3 * s])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "cpu"


def _median_s(benchmark) -> float:
    """The median seconds of the last run; NaN under --benchmark-disable (nothing was timed)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else float("nan")


def _run(benchmark, fn, group, **info):
    benchmark.group = group
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    benchmark.extra_info.update(threads=1, device=_cpu_name(), time_ms=_median_s(benchmark) * 1e3, **info)


@pytest.mark.parametrize("c", [60, 120])
@pytest.mark.parametrize("impl", ["fused", "ref", "clone"])
def test_rotate_quantize(benchmark, impl, c):
    x = 1.5 * torch.randn(M, c, generator=torch.Generator().manual_seed(0))
    qp, n = _qp(), next_pow2(c)
    fn = {"fused": lambda: ck.rotate_quantize_cpu(x, qp, BITS, True, True, n),
          "ref": lambda: hadamard_quant_ref(x, qp, BITS, -1, True),
          "clone": lambda: x.clone()}[impl]
    traffic = M * c * 4 + M * n   # read x, write int8 codes
    _run(benchmark, fn, f"rotate_quantize-{c}->{n}", impl=impl, shape=[M, c])
    benchmark.extra_info["gbps"] = traffic / _median_s(benchmark) / 1e9


LINEARS = {"qkv": (60, 60, 3), "proj": (60, 60, 1), "fc1": (60, 120, 1), "fc2": (120, 60, 1)}   # C, per, splits


def _linear_case(c, per, splits):
    g = torch.Generator().manual_seed(1)
    n = next_pow2(c)
    codes = torch.randint(0, 2 ** BITS, (splits, per, n), generator=g)
    codes[:, :, 0] = 0                                                   # the exact DC's column
    w_t = codes.to(torch.int8).transpose(1, 2).contiguous()              # (S, K, per)
    qp = torch.stack([_qp(-2.0 - 0.1 * s, 2.5) for s in range(splits)])
    alpha, beta = torch.full((splits,), 0.01), torch.full((splits,), -0.002)
    c0, dc_w = torch.randn(splits * per, generator=g), torch.randn(splits * per, generator=g)
    x = 1.5 * torch.randn(M, c, generator=g)
    return x, w_t, qp, alpha, beta, c0, dc_w


@pytest.mark.parametrize("name", list(LINEARS))
@pytest.mark.parametrize("impl", ["fused", "torch_int", "fp"])
def test_packed_linear(benchmark, impl, name):
    c, per, splits = LINEARS[name]
    x, w_t, qp, alpha, beta, c0, dc_w = _linear_case(c, per, splits)
    if impl == "fused":
        wpack, mpack = ck.pack_linear_weights(w_t, per)

        def fn():
            return ck.packed_linear_cpu(x, qp, BITS, True, True, wpack, mpack, per, alpha, beta, c0, dc_w)
    elif impl == "torch_int":
        def fn():   # PackedLinear's PyTorch path
            r = hadamard_ref(x, -1)
            outs = []
            for s in range(splits):
                q = quantize_ref(r, qp[s], BITS)
                dc = r[:, :1].contiguous()
                q[:, 0] = 0
                cols = slice(s * per, (s + 1) * per)
                outs.append(linear_int8(q, w_t[s], per, alpha[s], beta[s], c0[cols], dc, dc_w[cols]))
            return outs[0] if splits == 1 else torch.cat(outs, -1)
    else:
        w = torch.randn(splits * per, c)

        def fn():
            return F.linear(x, w, c0)
    _run(benchmark, fn, f"linear-{name}", impl=impl, shape=[M, c, splits * per])


def _attention_inputs(layout: str):
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(WINDOWS, TOKENS, 3, HEADS, HEAD_DIM, generator=g).permute(2, 0, 3, 1, 4)
    q, k, v = (t.reshape(1, WINDOWS, HEADS, TOKENS, HEAD_DIM) for t in qkv)
    rpb = 2.0 * torch.randn(TOKENS, TOKENS, HEADS, generator=g).permute(2, 0, 1)   # as position_bias()
    mask = None
    if layout == "rpb":
        bias = rpb
    else:
        region = torch.arange(TOKENS)[None, :] // 16 + torch.arange(WINDOWS)[:, None] % 4
        mask = torch.where(region[:, :, None] == region[:, None, :], 0.0, -100.0)
        bias = rpb + mask[:, None]                                                     # (nW, heads, N, N)
    s = [2.0 / 15, 4.0 / 15, 0.1 / 15, 4.0 / 15]
    qp = torch.tensor([[-1.0, 1.0, s[0], -1.0 - 0.3 * s[0]], [-2.0, 2.0, s[1], -2.0 - 0.3 * s[1]],
                       [-0.05, 0.05, s[2], -0.05 - 0.3 * s[2]], [-2.0, 2.0, s[3], -2.0 - 0.3 * s[3]]])
    return q, k, v, bias, qp, rpb, mask


@pytest.mark.parametrize("layout", ["rpb", "shifted"])
@pytest.mark.parametrize("impl", ["fused", "fused_mask_apart", "fused_summed", "ref", "fp"])
def test_window_attention(benchmark, impl, layout):
    q, k, v, bias, qp, rpb, mask = _attention_inputs(layout)
    scale = HEAD_DIM ** -0.5
    if impl.startswith("fused_") and layout != "shifted":
        pytest.skip("the shift mask is only in shifted blocks")
    if impl == "fused_mask_apart":
        r = rpb.contiguous()

        def fn():
            return ck.window_attention_int_cpu(q, k, v, r, scale, qp, BITS, True, mask=mask)
    elif impl == "fused_summed":
        def fn():
            return ck.window_attention_int_cpu(q, k, v, rpb + mask[:, None], scale, qp, BITS, True)
    elif impl == "fused":
        # PackedAttend makes the small (heads, N, N) position bias contiguous; the per-window sum is
        # read as it is
        b = bias.contiguous() if bias.numel() <= 1 << 16 else bias

        def fn():
            return ck.window_attention_int_cpu(q, k, v, b, scale, qp, BITS, True)
    elif impl == "ref":
        def fn():
            return window_attention_int_ref(q, k, v, bias, scale, qp, BITS, True)
    else:
        def fn():   # SwinIR's Attend
            return ((q * scale) @ k.transpose(-2, -1) + bias).softmax(-1) @ v
    _run(benchmark, fn, f"window_attention-{layout}", impl=impl, q_shape=list(q.shape),
         bias_shape=list(bias.shape), bits=BITS, keep_dc=True)


MAMBA_WINDOWS, MAMBA_HEADS, MAMBA_TOKENS, MAMBA_HEAD_DIM = 64, 4, 256, 12


@pytest.mark.parametrize("impl", ["fused", "ref", "fp"])
def test_window_attention_mambairv2(benchmark, impl):
    """MambaIRv2-light's window attention (the ``full`` layer set quantizes its products): 16 x 16
    windows of a 128 x 128 LR image, 64 windows of 256 tokens, 4 heads, head dim 12 (-> 16)."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(MAMBA_WINDOWS, MAMBA_TOKENS, 3, MAMBA_HEADS, MAMBA_HEAD_DIM, generator=g).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]                                     # (nW, heads, N, d), strided
    bias = 2.0 * torch.randn(MAMBA_HEADS, MAMBA_TOKENS, MAMBA_TOKENS, generator=g)
    s = [2.0 / 15, 4.0 / 15, 0.02 / 15, 4.0 / 15]
    qp = torch.tensor([[-1.0, 1.0, s[0], -1.0 - 0.3 * s[0]], [-2.0, 2.0, s[1], -2.0 - 0.3 * s[1]],
                       [-0.01, 0.01, s[2], -0.01 - 0.3 * s[2]], [-2.0, 2.0, s[3], -2.0 - 0.3 * s[3]]])
    scale = MAMBA_HEAD_DIM ** -0.5
    if impl == "fused":
        def fn():
            return ck.window_attention_int_cpu(q, k, v, bias, scale, qp, BITS, True)
    elif impl == "ref":
        def fn():
            return window_attention_int_ref(q, k, v, bias, scale, qp, BITS, True)
    else:
        def fn():
            return ((q * scale) @ k.transpose(-2, -1) + bias).softmax(-1) @ v
    _run(benchmark, fn, "window_attention-mambairv2", impl=impl, q_shape=list(q.shape),
         bias_shape=list(bias.shape), bits=BITS, keep_dc=True)
