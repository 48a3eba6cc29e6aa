"""Frozen integer modules of the packed runtime: they hold codes, masks and scales, and call kernels.

:class:`PackedLinear` replaces a quantized Linear: its input is rotated (deploy) and quantized
to int8 codes at run time with exactly the calibration's arithmetic, multiplied with the
weight codes as an integer product, and the scales, zero points, exact-DC term and bias are
applied in an fp32 epilogue (:mod:`compsrt.kernels.packed_linear`). :class:`PackedAttend`
replaces an attention site (:mod:`compsrt.kernels.window_attention_int`). Neither holds a
float tensor shaped like a weight: only int8 codes (unpacked once, at load), int32 bit-planes
for the GPU kernel, and per-row / per-tensor fp32 vectors.

Row-mean models (``QuantConfig.row_mean``, rotation "none"): their activation quantizer subtracts
each row's mean first and the epilogues add the means' rank-1 terms. The fused C++ CPU kernels
(csrc/cpu_kernels.cpp) do both; the CUDA / Triton kernels do not, so on CUDA those layers run the
PyTorch path (the linear product ``torch._int_mm``, the attention the PyTorch reference).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels import cpu_kernels
from ..kernels.bitpack import pack_bits
from ..kernels.hadamard import hadamard_ref
from ..kernels.hadamard_quant import hadamard_quant, quantize_ref
from ..kernels.packed_linear import code_sum_term, linear_int8, packed_linear
from ..kernels.quant_step import step_and_zero
from ..kernels.window_attention_int import window_attention_int


def runtime_params(raw: Tensor, bits: int) -> Tensor:
    """(..., 4) stored ``[l, u, s2, z2]`` -> (..., 4) ``[l, u, s, z]``, with the calibration's
    fp32 arithmetic (fake_quant.step_and_zero), so the runtime's codes are the calibration's."""
    rows = raw.reshape(-1, 4).float()
    out = []
    for l, u, s2, z2 in rows:
        s, z = step_and_zero(l, u, bits, s2, z2)
        out.append(torch.stack([l, u, s, z]))
    return torch.stack(out).reshape(raw.shape)


class PackedLinear(nn.Module):
    """An integer Linear (``splits`` row blocks, each its own product: qkv -> q, k, v).

    Args:
        in_features: the FP input width C.
        n: the contraction width of the codes (next_pow2(C) rotated, C with rotation "none").
        codes: uint8 (rows, n - dc) weight codes, pruned ones 0.
        mask: bool (rows, n - dc) keep-mask, or None (all kept).
        dc_w: (rows,) the FP exact-DC weight column, or with ``row_mean`` sqrt(n) x the weight's
            row means; None without either.
        w_raw, a_raw: (splits, 4) stored ``[l, u, s2, z2]`` of the weight and input quantizers.
        bias: (rows,) FP bias.
        bits: 2, 3 or 4.
        rotate: rotate the input (rotation "deploy").
        row_mean: both operands are ``row mean + Q(centred rest)`` (QuantConfig.row_mean; not
            with ``rotate``); the fused CPU kernel takes it, on CUDA the PyTorch path runs.
    """

    def __init__(self, in_features: int, n: int, codes: Tensor, mask: Tensor | None, dc_w: Tensor | None,
                 w_raw: Tensor, a_raw: Tensor, bias: Tensor, bits: int, rotate: bool, row_mean: bool = False) -> None:
        super().__init__()
        rows, cols = codes.shape
        splits = w_raw.shape[0]
        if row_mean and (rotate or dc_w is None or cols != n):
            raise ValueError("row_mean needs rotate=False, the weight's row means (dc_w) and codes for all n columns")
        self.in_features, self.n, self.bits, self.rotate, self.splits = in_features, n, bits, rotate, splits
        self.row_mean = row_mean
        self.dc = n - cols
        self.k_store = -(-n // 32) * 32                      # codes padded to whole 32-code words
        self.out_features = rows
        keep = torch.ones(rows, cols, dtype=torch.bool) if mask is None else mask
        wc = torch.zeros(rows, self.k_store, dtype=torch.int8)
        mk = torch.zeros(rows, self.k_store, dtype=torch.int8)
        wc[:, self.dc:n] = (codes.to(torch.int16) * keep).to(torch.int8)
        mk[:, self.dc:n] = keep.to(torch.int8)
        w_rt, a_rt = runtime_params(w_raw, bits), runtime_params(a_raw, bits)
        sw, zw, sx, zx = w_rt[:, 2], w_rt[:, 3], a_rt[:, 2], a_rt[:, 3]
        per = rows // splits
        rep = lambda v: v.repeat_interleave(per)            # noqa: E731  per-split scalar -> per row
        wsum, msum = wc.sum(1, dtype=torch.int32).float(), mk.sum(1, dtype=torch.int32).float()
        self.trivial_mask = mask is None
        # CPU / fallback operand: (splits, K, per) = (Mk*qw)^T, or (splits, K, 2 per) with Mk^T beside it.
        blocks = [wc.view(splits, per, -1)] + ([] if self.trivial_mask else [mk.view(splits, per, -1)])
        self.register_buffer("w_t", torch.cat(blocks, 1).transpose(1, 2).contiguous(), persistent=False)
        self.register_buffer("w_planes", pack_bits(wc.to(torch.uint8), bits), persistent=False)
        self.register_buffer("m_planes", None if self.trivial_mask else pack_bits(mk.to(torch.uint8), 1),
                             persistent=False)
        self.register_buffer("alpha", sx * sw, persistent=False)
        self.register_buffer("beta", sx * zw, persistent=False)
        c0 = rep(zx * sw) * wsum + rep(zx * zw) * msum + bias.float()
        rm_g = None
        if row_mean:   # docs of compsrt.kernels.packed_linear: the row-mean epilogue
            m_w = dc_w.float() / n ** 0.5
            c0 = c0 + rep(zx) * n * m_w
            dc_w = n * m_w + rep(sw) * wsum + rep(zw) * msum   # n m_w + rowsum(Mk*Q(c_w)), the DC term's column
            rm_g = rep(sx) * m_w
        self.register_buffer("c0", c0, persistent=False)
        self.register_buffer("rm_g", rm_g, persistent=False)
        self.register_buffer("a_qp", a_rt, persistent=False)
        self.register_buffer("dc_w", None if dc_w is None else dc_w.float(), persistent=False)
        self.use_cuda_kernel = False   # set by the loader when the csrc library is available
        # the same scalars as Python floats for the CUDA launcher (read without a device sync)
        self.alpha_f, self.beta_f = [float(v) for v in sx * sw], [float(v) for v in sx * zw]

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, n={self.n}, bits={self.bits}, "
                f"splits={self.splits}, rotate={self.rotate}, exact_dc={bool(self.dc)}, row_mean={self.row_mean}, "
                f"pruned={not self.trivial_mask}")

    def activation_codes(self, x: Tensor, r: Tensor | None, i: int) -> tuple[Tensor, Tensor | None]:
        """int8 (M, k_store) codes of the flat input ``x`` (its rotation ``r``, or None on CUDA) for
        split i, and the FP DC (M, 1) (with ``row_mean``: the rows' means) or None: the PyTorch /
        Triton path's activation quantizer."""
        if self.row_mean:
            m = x.mean(-1, keepdim=True)
            q, dc = quantize_ref(x - m, self.a_qp[i], self.bits), m
        elif x.is_cuda and self.rotate:
            q, dc = hadamard_quant(x, self.a_qp[i], self.bits, -1, bool(self.dc))
        else:
            t = r if self.rotate else x
            q = quantize_ref(t, self.a_qp[i], self.bits)
            dc = None
            if self.dc:
                dc = t[:, :1].contiguous()
                q[:, 0] = 0
        if q.shape[1] < self.k_store:
            q = torch.nn.functional.pad(q, (0, self.k_store - q.shape[1]))
        return q, dc

    def _cpu_operands(self) -> tuple:
        """The fused CPU kernel's weight words and epilogue vectors, built from the buffers on first
        use (and again after a buffer was replaced, e.g. by ``.to()``, or changed in place)."""
        srcs = (self.w_t, self.c0, self.a_qp, self.alpha, self.beta, self.dc_w, self.rm_g)
        key = tuple((t.data_ptr(), t._version) for t in srcs if t is not None)
        cached = getattr(self, "_cpu_cache", None)
        if cached is None or cached[0] != key:
            per = self.out_features // self.splits
            wpack, mpack = cpu_kernels.pack_linear_weights(self.w_t, per)
            vec = lambda t: None if t is None else t.detach().float().reshape(-1).contiguous()   # noqa: E731
            ops = (wpack, mpack, self.a_qp.detach().float().reshape(-1, 4).contiguous(), vec(self.alpha),
                   vec(self.beta), vec(self.c0), vec(self.dc_w) if self.dc or self.row_mean else None, vec(self.rm_g))
            self._cpu_cache = cached = (key, ops)
        return cached[1]

    def _forward_cpu(self, x: Tensor) -> Tensor:
        """The fused CPU path (csrc/cpu_kernels.cpp): one pass over the rows rotates each once, and
        per split quantizes, multiplies with the weight codes and writes the epilogue's output."""
        wpack, mpack, qp, alpha, beta, c0, dc_w, rm_g = self._cpu_operands()
        if x.stride(-1) != 1:
            x = x.contiguous()
        return cpu_kernels.packed_linear_cpu(x, qp, self.bits, bool(self.dc), self.rotate, wpack, mpack,
                                             self.out_features // self.splits, alpha, beta, c0, dc_w, rm_g=rm_g)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features).float()
        if (x.device.type == "cpu"
                and cpu_kernels.linear_supported(self.n, self.out_features // self.splits) and cpu_kernels.available()):
            return self._forward_cpu(x).reshape(*lead, self.out_features)
        # The splits read the same input: rotate it once (on CUDA the fused kernel rotates per split).
        r = hadamard_ref(x, -1) if self.rotate and not x.is_cuda else None
        per = self.out_features // self.splits
        outs = []
        for i in range(self.splits):
            q, dc = self.activation_codes(x, r, i)
            rows = slice(i * per, (i + 1) * per)
            dc_w = None if self.dc_w is None else self.dc_w[rows]
            if self.use_cuda_kernel and x.is_cuda and not self.row_mean:
                mp = None if self.m_planes is None else self.m_planes[rows]
                y = packed_linear(q, self.w_planes[rows], mp, self.bits, self.alpha_f[i], self.beta_f[i],
                                  self.c0[rows], dc, dc_w)
            else:
                y = linear_int8(q, self.w_t[i], per, self.alpha[i], self.beta[i], self.c0[rows], dc, dc_w)
            if self.row_mean:
                y = y + code_sum_term(q, self.rm_g[rows])
            outs.append(y)
        y = outs[0] if self.splits == 1 else torch.cat(outs, -1)
        return y.reshape(*lead, self.out_features)


class PackedAttend(nn.Module):
    """softmax(Q(q s) Q(k)^T + bias) -> Q(attn) Q(v) on integer codes (see window_attention_int).

    ``row_mean`` (QuantConfig.row_mean, not with ``rotate``): each operand row's mean stays FP; the
    fused CPU kernel takes it, on CUDA the PyTorch reference runs (the Triton kernel rotates)."""

    def __init__(self, raw: Tensor, bits: int, keep_dc: bool, rotate: bool, row_mean: bool = False) -> None:
        super().__init__()
        if row_mean and rotate:
            raise ValueError("row_mean needs rotate=False")
        self.bits, self.keep_dc, self.rotate, self.row_mean = bits, keep_dc, rotate, row_mean
        self.register_buffer("qp", runtime_params(raw, bits), persistent=False)   # rows q, k, attn, v

    def extra_repr(self) -> str:
        return f"bits={self.bits}, rotate={self.rotate}, exact_dc={self.keep_dc}, row_mean={self.row_mean}"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float,
                mask: Tensor | None = None) -> Tensor:
        """``mask``: None or the (nW, N, N) shift mask, added to the bias (the fused CPU and Triton
        kernels add it per window, never building the (nW, heads, N, N) sum)."""
        if (q.device.type == "cpu" and cpu_kernels.attention_supported(q)
                and cpu_kernels.available()):
            # Fused CPU kernel; its 5-d output lies in memory as (B, nW, N, heads, d), so the
            # caller's transpose back to (B * nW, N, C) is a view.
            q, k, v, bias = (t.float() for t in (q, k, v, bias))
            q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
            if bias.stride(-1) != 1 and bias.numel() <= 1 << 16:
                bias = bias.contiguous()   # the (heads, N, N) position bias: rows load faster than gathers
            return cpu_kernels.window_attention_int_cpu(q, k, v, bias, scale, self.qp, self.bits, self.keep_dc,
                                                        self.rotate, self.row_mean,
                                                        None if mask is None else mask.float())
        # (nW, 1, N, N): broadcast over the heads as :func:`compsrt.model.swinir.with_shift_mask` does;
        # the fused Triton kernel adds it per window, the reference sums first
        mask = None if mask is None else mask.float()[:, None]
        return window_attention_int(q.float(), k.float(), v.float(), bias.float(), scale, self.qp, self.bits,
                                    self.keep_dc, self.rotate, self.row_mean, mask)
