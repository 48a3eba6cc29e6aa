"""csrc/cpu_kernels.cpp (through compsrt.kernels.cpu_kernels) against the PyTorch references.

- rotate_quantize_cpu: codes equal hadamard_quant_ref's / quantize_ref's except at rounding ties
  (the kernel rotates with butterflies, the reference with a dense fp32 matmul): every code that
  differs is off by one and sits on a tie of the exact (fp64) rotation; unrotated codes are equal.
- linear_epilogue_cpu: bit for bit linear_epilogue_ref (same fp32 operations, same order, no FMA).
- packed_linear_cpu: bit for bit rotate_quantize_cpu + linear_int8 (the same codes, exact integer
  sums, the same epilogue), and close to the all-reference pipeline.
- window_attention_int_cpu: window_attention_int_ref up to float rounding, on SwinIR's shapes and
  layouts (q, k, v strided views of one qkv tensor; the bias per head or per window, contiguous or
  heads-innermost as SwinIR builds it): under 1% of output rows differ beyond 1e-4.
- The runtime's PackedLinear / PackedAttend give the same outputs with the kernels as without.

The library is built with g++ on first use (about 2 s of CPU here); tests skip without g++. A
slow test builds the portable (no AVX-512) code path and runs the comparisons on it too.
"""
import pytest
import torch

from compsrt.kernels import cpu_kernels as ck
from compsrt.kernels.hadamard import next_pow2
from compsrt.kernels.hadamard_quant import hadamard_quant_ref, quantize_ref
from compsrt.kernels.packed_linear import code_sum_term, linear_epilogue_ref, linear_int8
from compsrt.kernels.window_attention_int import window_attention_int_ref
from tie_tolerance import near_tie  # tests/kernels/tie_tolerance.py

pytestmark = pytest.mark.skipif(ck.find_gxx() is None, reason="g++ not installed: no fused CPU kernels to test")


@pytest.fixture(scope="module", autouse=True)
def _library():
    """Build (or find) the library once; a failed build with g++ present is a failure, not a skip."""
    assert ck.available(), ck.unavailable_reason()


def _qp(bits, lower=-2.0, upper=2.5, zero_frac=0.3):
    s = (upper - lower) / (2 ** bits - 1)
    return torch.tensor([lower, upper, s, lower + zero_frac * s])


def _ref_codes(x, qp, bits, keep_dc, rotate, k_store):
    if rotate:
        codes, dc = hadamard_quant_ref(x, qp, bits, -1, keep_dc)
    else:
        codes, dc = quantize_ref(x, qp, bits), (x[:, :1].clone() if keep_dc else None)
        if keep_dc:
            codes[:, 0] = 0
    return torch.nn.functional.pad(codes, (0, k_store - codes.shape[1])), dc


def _check_codes(x, qp, bits, keep_dc, rotate, codes, dc):
    n = next_pow2(x.shape[1]) if rotate else x.shape[1]
    k_store = codes.shape[1]
    want, dc_r = _ref_codes(x, qp, bits, keep_dc, rotate, k_store)
    assert codes.dtype == torch.int8 and codes.shape == want.shape
    assert not codes[:, n:].any()
    moved = codes != want
    if not rotate:
        assert not moved.any()
    elif moved.any():
        assert (codes.int() - want.int()).abs().max() <= 1
        assert moved.sum() <= max(1, 1e-4 * moved.numel()), f"{int(moved.sum())} of {moved.numel()} codes moved"
        assert near_tie(x, qp, -1, rotate)[moved[:, :n]].all(), "a code moved away from a rounding tie"
    if keep_dc:
        scale = x.abs().amax().item() * n ** 0.5
        torch.testing.assert_close(dc, dc_r, atol=1e-6 * scale, rtol=0)
    else:
        assert dc is None


def test_without_gxx_only_an_ahead_of_time_build_loads(tmp_path, monkeypatch):
    built = next(p for p in (ck.prebuilt_dir() / ck.LIB_NAME, ck.cache_dir() / ck.LIB_NAME) if p.is_file())
    monkeypatch.setattr(ck, "find_gxx", lambda: None)
    monkeypatch.setattr(ck, "prebuilt_dir", lambda key=None: tmp_path / "build" / (key or ck.library_key()))
    monkeypatch.setattr(ck, "cache_dir", lambda key=None: tmp_path / "cache" / (key or ck.library_key()))
    monkeypatch.setattr(ck, "_state", {})
    assert not ck.available() and "g++ not found" in ck.unavailable_reason()
    assert not ck.available()                                  # remembered, not retried
    monkeypatch.setattr(ck, "_state", {})
    (tmp_path / "build" / ck.library_key()).mkdir(parents=True)
    (tmp_path / "build" / ck.library_key() / ck.LIB_NAME).write_bytes(built.read_bytes())
    assert ck.available() and ck.unavailable_reason() == ""


def test_build_command_prints_the_library_path_or_a_one_line_error(monkeypatch, tmp_path, capsys):
    """python -m compsrt.kernels.cpu_kernels: --out-dir (default: the prebuilt folder) reaches
    compile_library and the path is printed; without g++: exit 2 and one error line, no traceback."""
    real_compile = ck.compile_library
    calls = []
    monkeypatch.setattr(ck, "compile_library", lambda out_dir: calls.append(out_dir) or out_dir / ck.LIB_NAME)
    assert ck.main(["--out-dir", str(tmp_path)]) == 0 and calls == [tmp_path]
    assert capsys.readouterr().out == f"{tmp_path / ck.LIB_NAME}\n"
    assert ck.main([]) == 0 and calls[-1] == ck.prebuilt_dir()
    capsys.readouterr()
    monkeypatch.setattr(ck, "compile_library", real_compile)
    monkeypatch.setattr(ck, "find_gxx", lambda: None)
    assert ck.main(["--out-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("cpu_kernels: error: g++ not found")
    assert captured.err.count("\n") == 1 and not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# rotate_quantize
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rotate", [True, False], ids=["rot", "norot"])
@pytest.mark.parametrize("keep_dc", [False, True], ids=["dc0", "dc1"])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("c", [60, 120, 128, 6])
def test_rotate_quantize_matches_ref(c, bits, keep_dc, rotate):
    g = torch.Generator().manual_seed(c + bits)
    x = 1.5 * torch.randn(2048, c, generator=g)
    qp = _qp(bits)
    k_store = -(-(next_pow2(c) if rotate else c) // 32) * 32
    codes, dc, sums = ck.rotate_quantize_cpu(x, qp, bits, keep_dc, rotate, k_store, rowsum=True)
    _check_codes(x, qp, bits, keep_dc, rotate, codes, dc)
    assert torch.equal(sums, codes.sum(-1, dtype=torch.int32))


def test_rotate_quantize_splits_strided_input_and_specials():
    """(S, 4) qp = S single calls; a row-strided input; NaN -> code 0, +-inf -> the clamp's code."""
    g = torch.Generator().manual_seed(1)
    big = torch.randn(1000, 70, generator=g)
    x = big[:, 3:63]                                   # (1000, 60), row stride 70
    x[5, 7], x[6, 8], x[7, 9] = float("nan"), float("inf"), -float("inf")
    qps = torch.stack([_qp(4), _qp(4, -1.0, 1.0, 0.5), _qp(4, -3.0, 2.0, 0.0)])
    codes, dc = ck.rotate_quantize_cpu(x, qps, 4, True, False, 64)
    assert codes.shape == (3, 1000, 64)
    for s in range(3):
        one, dc1 = ck.rotate_quantize_cpu(x.contiguous(), qps[s], 4, True, False, 64)
        assert torch.equal(codes[s], one) and torch.equal(dc, dc1)
        want, _ = _ref_codes(x.contiguous(), qps[s], 4, True, False, 64)
        assert torch.equal(codes[s], want)


def test_rotate_quantize_rejects_bad_arguments():
    x = torch.randn(8, 60)
    with pytest.raises(ValueError, match="bits"):
        ck.rotate_quantize_cpu(x, _qp(4), 5, False, True, 64)
    with pytest.raises(ValueError, match="float32"):
        ck.rotate_quantize_cpu(x.double(), _qp(4), 4, False, True, 64)
    with pytest.raises(ValueError, match="k_store"):
        ck.rotate_quantize_cpu(x, _qp(4), 4, False, True, 48)
    with pytest.raises(ValueError, match="contiguous columns"):
        ck.rotate_quantize_cpu(torch.randn(60, 8).T, _qp(4), 4, False, True, 64)
    with pytest.raises(ValueError, match="qp"):
        ck.rotate_quantize_cpu(x, torch.zeros(3), 4, False, True, 64)


# ---------------------------------------------------------------------------------------------
# linear epilogue and the fused linear
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_dc", [False, True], ids=["nodc", "dc"])
@pytest.mark.parametrize("masked", [False, True], ids=["trivial", "mask"])
def test_linear_epilogue_is_the_reference_bit_for_bit(masked, with_dc):
    g = torch.Generator().manual_seed(2)
    m, n = 777, 60
    acc = torch.randint(-3000, 3000, (m, 2 * n if masked else n), generator=g, dtype=torch.int32)
    rowsum = None if masked else torch.randint(0, 900, (m,), generator=g, dtype=torch.int32)
    c0, dc_x, dc_w = torch.randn(n, generator=g), torch.randn(m, generator=g), torch.randn(n, generator=g)
    alpha, beta = torch.tensor(0.0123), torch.tensor(-0.0456)
    out = torch.full((m, 180), 7.0)
    got = ck.linear_epilogue_cpu(acc, n, float(alpha), float(beta), c0, rowsum, dc_x if with_dc else None,
                                 dc_w if with_dc else None, out=out[:, 60:120])
    acc_m = acc[:, n:] if masked else rowsum.reshape(-1, 1)
    want = linear_epilogue_ref(acc[:, :n], acc_m, alpha, beta, c0, dc_x if with_dc else None,
                               dc_w if with_dc else None)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert got.data_ptr() == out[:, 60:].data_ptr() and (out[:, :60] == 7).all() and (out[:, 120:] == 7).all()


def _packed_case(c, per, splits, bits, masked, keep_dc, rotate, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = next_pow2(c) if rotate else c
    k_store = -(-n // 32) * 32
    qw = torch.randint(0, 2 ** bits, (splits, per, k_store), generator=g)
    keep = torch.rand(splits, per, k_store, generator=g) > 0.4 if masked else torch.ones(splits, per, k_store) > 0
    keep[:, :, n:] = False
    if keep_dc:
        keep[:, :, 0] = False
    wc = (qw * keep).to(torch.int8)
    blocks = [wc] + ([keep.to(torch.int8)] if masked else [])
    w_t = torch.cat(blocks, 1).transpose(1, 2).contiguous()          # (S, K, per) or (S, K, 2 per)
    qp = torch.stack([_qp(bits, -2.0 - 0.5 * s, 2.5 + 0.3 * s, 0.3) for s in range(splits)])
    alpha = 0.01 * torch.rand(splits, generator=g) + 0.001
    beta = -0.01 * torch.rand(splits, generator=g)
    c0 = torch.randn(splits * per, generator=g)
    dc_w = torch.randn(splits * per, generator=g) if keep_dc else None
    x = 1.5 * torch.randn(1500, c, generator=g)
    return x, w_t, qp, alpha, beta, c0, dc_w, k_store


@pytest.mark.parametrize("case", [
    dict(c=60, per=60, splits=3, bits=4, masked=False, keep_dc=True, rotate=True),      # qkv
    dict(c=60, per=120, splits=1, bits=2, masked=True, keep_dc=True, rotate=True),      # fc1, pruned
    dict(c=120, per=60, splits=1, bits=3, masked=False, keep_dc=False, rotate=True),    # fc2
    dict(c=60, per=60, splits=1, bits=4, masked=True, keep_dc=False, rotate=False),     # 2DQuant proj
    dict(c=20, per=200, splits=2, bits=4, masked=False, keep_dc=True, rotate=True),     # run-time NB path
], ids=["qkv", "fc1-pruned", "fc2", "norot", "wide"])
def test_packed_linear_is_rotate_quantize_plus_linear_int8(case):
    x, w_t, qp, alpha, beta, c0, dc_w, k_store = _packed_case(**case)
    per, splits, bits, keep_dc, rotate = case["per"], case["splits"], case["bits"], case["keep_dc"], case["rotate"]
    wpack, mpack = ck.pack_linear_weights(w_t, per)
    got = ck.packed_linear_cpu(x, qp, bits, keep_dc, rotate, wpack, mpack, per, alpha, beta, c0, dc_w)
    codes, dc = ck.rotate_quantize_cpu(x, qp, bits, keep_dc, rotate, k_store)
    rows_off = 0
    for s in range(splits):
        cols = slice(s * per, (s + 1) * per)
        dw = None if dc_w is None else dc_w[cols]
        want = linear_int8(codes[s], w_t[s], per, alpha[s], beta[s], c0[cols], dc, dw)
        torch.testing.assert_close(got[:, cols], want, atol=0, rtol=0)
        # and against the all-reference pipeline (codes of the dense-matmul rotation)
        ref_codes, ref_dc = _ref_codes(x, qp[s], bits, keep_dc, rotate, k_store)
        ref = linear_int8(ref_codes, w_t[s], per, alpha[s], beta[s], c0[cols], ref_dc, dw)
        rows_off += int(((got[:, cols] - ref).abs() > 1e-4 * (1 + ref.abs())).any(-1).sum())
    assert rows_off <= 0.01 * x.shape[0] * splits


@pytest.mark.parametrize("case", [
    dict(c=60, per=60, splits=3, bits=4, masked=False),      # qkv
    dict(c=60, per=120, splits=1, bits=2, masked=True),      # fc1, pruned
    dict(c=120, per=60, splits=1, bits=3, masked=False),     # fc2
    dict(c=20, per=200, splits=2, bits=4, masked=False),     # run-time NB path
], ids=["qkv", "fc1-pruned", "fc2", "wide"])
def test_packed_linear_row_mean_matches_the_pytorch_path(case):
    """A row-mean layer (2DQuant --row-mean): the kernel subtracts each row's mean before
    quantizing and adds ``mean dc_w^T + sum(codes) rm_g^T``, as PackedLinear's PyTorch path does;
    only the mean's float rounding differs (a code on a tie by one)."""
    x, w_t, qp, alpha, beta, c0, _, k_store = _packed_case(**case, keep_dc=False, rotate=False)
    x = x + 3.0 * torch.randn(x.shape[0], 1, generator=torch.Generator().manual_seed(9))   # offset rows
    per, splits, bits = case["per"], case["splits"], case["bits"]
    g = torch.Generator().manual_seed(3)
    dc_w, rm_g = torch.randn(splits * per, generator=g), torch.randn(splits * per, generator=g)
    wpack, mpack = ck.pack_linear_weights(w_t, per)
    got = ck.packed_linear_cpu(x, qp, bits, False, False, wpack, mpack, per, alpha, beta, c0, dc_w, rm_g=rm_g)
    m = x.mean(-1, keepdim=True)
    rows_off = 0
    for s in range(splits):
        cols = slice(s * per, (s + 1) * per)
        q = torch.nn.functional.pad(quantize_ref(x - m, qp[s], bits), (0, k_store - x.shape[1]))
        want = linear_int8(q, w_t[s], per, alpha[s], beta[s], c0[cols], m, dc_w[cols]) + code_sum_term(q, rm_g[cols])
        rows_off += int(((got[:, cols] - want).abs() > 1e-4 * (1 + want.abs())).any(-1).sum())
        # without the mean terms the output is far off: the kernel really adds them
        plain = ck.packed_linear_cpu(x - m, qp[s:s + 1], bits, False, False, wpack[s:s + 1].contiguous(),
                                     None if mpack is None else mpack[s:s + 1].contiguous(), per, alpha[s:s + 1],
                                     beta[s:s + 1], c0[cols].contiguous())
        assert (plain - want).abs().max() > 0.1
    assert rows_off <= 0.01 * x.shape[0] * splits


def test_packed_linear_rejects_bad_arguments():
    x, w_t, qp, alpha, beta, c0, dc_w, _ = _packed_case(60, 60, 3, 4, False, True, True)
    wpack, mpack = ck.pack_linear_weights(w_t, 60)
    with pytest.raises(ValueError, match="dc_w"):
        ck.packed_linear_cpu(x, qp, 4, True, True, wpack, mpack, 60, alpha, beta, c0, None)
    with pytest.raises(ValueError, match="wpack"):
        ck.packed_linear_cpu(x, qp, 4, True, True, wpack[:, :8].contiguous(), None, 60, alpha, beta, c0, dc_w)
    with pytest.raises(ValueError, match="c0"):
        ck.packed_linear_cpu(x, qp, 4, True, True, wpack, None, 60, alpha, beta, c0[:60], dc_w)
    with pytest.raises(ValueError, match="w_t"):
        ck.pack_linear_weights(w_t.int(), 60)
    with pytest.raises(ValueError, match="rm_g"):     # a row-mean layer is never rotated
        ck.packed_linear_cpu(x, qp, 4, False, True, wpack, mpack, 60, alpha, beta, c0, dc_w, rm_g=dc_w)
    with pytest.raises(ValueError, match="dc_w"):     # ... and needs its DC column
        ck.packed_linear_cpu(x, qp, 4, False, False, wpack, mpack, 60, alpha, beta, c0, None, rm_g=dc_w)


# ---------------------------------------------------------------------------------------------
# window attention
# ---------------------------------------------------------------------------------------------

def _attn_qp(rotate):
    """Rows q (scaled), k, attn, v: ranges of the right order for unit-variance activations and
    64-token softmaxes (rotated probabilities are small and signed; plain ones in [0, 1])."""
    rows = [(-1.0, 1.0), (-2.0, 2.0), (-0.06, 0.06) if rotate else (0.0, 0.12), (-2.0, 2.0)]
    return torch.stack([_qp(4, lo, hi, 0.3) for lo, hi in rows])


def _attn_qp_bits(rotate, bits):
    qp = _attn_qp(rotate)
    qp[:, 2] = (qp[:, 1] - qp[:, 0]) / (2 ** bits - 1)
    qp[:, 3] = qp[:, 0] + 0.3 * qp[:, 2]
    return qp


def _attn_inputs(shape, layout, seed=0):
    """q, k, v as SwinIR makes them (views of one (B*nW, N, 3, heads, d) qkv tensor) and a bias."""
    b, nw, heads, n, d = shape
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b * nw, n, 3, heads, d, generator=g).permute(2, 0, 3, 1, 4)
    q, k, v = (t.reshape(shape) for t in qkv)
    rpb = 2.0 * torch.randn(n, n, heads, generator=g).permute(2, 0, 1)        # heads innermost, as position_bias()
    if layout == "rpb":
        return q, k, v, rpb.contiguous()
    if layout == "rpb_strided":
        return q, k, v, rpb
    region = torch.arange(n)[None, :] // (n // 4) + torch.arange(nw)[:, None] % 3
    mask = torch.where(region[:, :, None] == region[:, None, :], 0.0, -100.0)
    bias = rpb + mask[:, None]                                                # (nW, heads, N, N), heads innermost
    return q, k, v, (bias.contiguous() if layout == "shifted" else bias)


def _assert_attention_close(got, want):
    assert got.shape == want.shape and got.dtype == torch.float32
    off = ((got - want).abs() > 1e-4 * (1 + want.abs())).reshape(-1, want.shape[-1]).any(-1)
    assert off.float().mean() < 0.01, f"{int(off.sum())} of {off.numel()} rows differ beyond 1e-4"
    assert (got - want).abs().mean() < 1e-4 * (1 + want.abs().mean())


LAYOUTS = ["rpb", "rpb_strided", "shifted", "shifted_strided"]
ATTN_CASES = [(4, layout) for layout in LAYOUTS] + [(2, "shifted_strided"), (3, "rpb_strided")]


@pytest.mark.parametrize("rotate", [True, False], ids=["rot", "norot"])
@pytest.mark.parametrize("keep_dc", [True, False], ids=["dc1", "dc0"])
@pytest.mark.parametrize("bits,layout", ATTN_CASES, ids=[f"w{b}-{lay}" for b, lay in ATTN_CASES])
def test_window_attention_matches_ref(bits, layout, keep_dc, rotate):
    q, k, v, bias = _attn_inputs((2, 4, 6, 64, 10), layout, seed=bits)
    qp = _attn_qp_bits(rotate, bits)
    got = ck.window_attention_int_cpu(q, k, v, bias, 10 ** -0.5, qp, bits, keep_dc, rotate)
    want = window_attention_int_ref(q, k, v, bias, 10 ** -0.5, qp, bits, keep_dc, rotate)
    _assert_attention_close(got, want)


@pytest.mark.parametrize("rotate,row_mean", [(True, False), (False, False), (False, True)])
def test_window_attention_adds_the_shift_mask_apart(rotate, row_mean):
    """The (nW, N, N) shift mask given apart from the (heads, N, N) position bias gives what the
    reference gives for their sum, bias + mask, exactly as the model adds them."""
    q, k, v, _ = _attn_inputs((2, 4, 6, 64, 10), "rpb", seed=3)
    g = torch.Generator().manual_seed(4)
    rpb = 2.0 * torch.randn(64, 64, 6, generator=g).permute(2, 0, 1)       # heads innermost
    region = torch.arange(64)[None, :] // 16 + torch.arange(4)[:, None] % 3
    mask = torch.where(region[:, :, None] == region[:, None, :], 0.0, -100.0)
    qp = _attn_qp_bits(rotate or row_mean, 4)
    got = ck.window_attention_int_cpu(q, k, v, rpb, 10 ** -0.5, qp, 4, True, rotate, row_mean, mask=mask)
    want = window_attention_int_ref(q, k, v, rpb + mask[:, None], 10 ** -0.5, qp, 4, True, rotate, row_mean)
    _assert_attention_close(got, want)
    summed = ck.window_attention_int_cpu(q, k, v, rpb + mask[:, None], 10 ** -0.5, qp, 4, True, rotate, row_mean)
    torch.testing.assert_close(got, summed, atol=0, rtol=0)   # the same floats, bit for bit
    unmasked = ck.window_attention_int_cpu(q, k, v, rpb, 10 ** -0.5, qp, 4, True, rotate, row_mean)
    assert (unmasked - got).abs().max() > 0.1
    with pytest.raises(ValueError, match="mask"):
        ck.window_attention_int_cpu(q, k, v, rpb, 10 ** -0.5, qp, 4, True, rotate, row_mean, mask=mask[:3])


@pytest.mark.parametrize("bits,layout", ATTN_CASES, ids=[f"w{b}-{lay}" for b, lay in ATTN_CASES])
def test_window_attention_row_mean_matches_ref(bits, layout):
    """Row means (2DQuant --row-mean) of q, k (per token), the probabilities (per query) and v (per
    coefficient) stay fp32; ranges sized for centred operands (signed probabilities)."""
    q, k, v, bias = _attn_inputs((2, 4, 6, 64, 10), layout, seed=bits)
    q, k, v = q + 0.7, k - 0.4, v + 1.1                # offsets the row means must carry
    qp = _attn_qp_bits(True, bits)
    got = ck.window_attention_int_cpu(q, k, v, bias, 10 ** -0.5, qp, bits, False, False, row_mean=True)
    want = window_attention_int_ref(q, k, v, bias, 10 ** -0.5, qp, bits, False, False, row_mean=True)
    _assert_attention_close(got, want)
    plain = window_attention_int_ref(q, k, v, bias, 10 ** -0.5, qp, bits, False, False)
    assert (plain - want).abs().mean() > 0.1 * want.abs().mean()


@pytest.mark.parametrize("n,d", [(16, 20), (32, 4), (64, 16), (16, 32), (64, 1), (128, 12), (256, 12), (256, 32)])
@pytest.mark.parametrize("rotate", [True, False], ids=["rot", "norot"])
def test_window_attention_other_sizes(n, d, rotate):
    g = torch.Generator().manual_seed(n + d)
    q, k, v = (torch.randn(3, n, d, generator=g) for _ in range(3))        # 3-d: (heads, N, d)
    bias = torch.randn(3, n, n, generator=g)
    qp = _attn_qp(rotate)
    got = ck.window_attention_int_cpu(q, k, v, bias, d ** -0.5, qp, 4, True, rotate)
    want = window_attention_int_ref(q, k, v, bias, d ** -0.5, qp, 4, True, rotate)
    _assert_attention_close(got, want)
    if not rotate:   # and with the row means
        qp = _attn_qp(True)
        got = ck.window_attention_int_cpu(q, k, v, bias, d ** -0.5, qp, 4, False, False, row_mean=True)
        want = window_attention_int_ref(q, k, v, bias, d ** -0.5, qp, 4, False, False, row_mean=True)
        _assert_attention_close(got, want)


def test_window_attention_output_is_swinirs_token_layout():
    """The 5-d output's memory is (B, nW, N, heads, d): SwinIR's transpose back is a view."""
    q, k, v, bias = _attn_inputs((2, 4, 6, 64, 10), "rpb")
    out = ck.window_attention_int_cpu(q, k, v, bias, 10 ** -0.5, _attn_qp(True), 4, True)
    tokens = out.reshape(8, 6, 64, 10).transpose(1, 2)
    assert tokens.is_contiguous() and tokens.data_ptr() == out.data_ptr()


def test_window_attention_rejects_bad_arguments():
    q, k, v, bias = _attn_inputs((1, 2, 2, 64, 10), "rpb")
    qp = _attn_qp(True)
    with pytest.raises(ValueError, match="N in"):
        ck.window_attention_int_cpu(q[..., :48, :], k[..., :48, :], v[..., :48, :], bias[..., :48, :48], 0.3, qp, 4,
                                    True)
    with pytest.raises(ValueError, match="one shape"):
        ck.window_attention_int_cpu(q, k[:, :1], v, bias, 0.3, qp, 4, True)
    with pytest.raises(ValueError, match="broadcast"):
        ck.window_attention_int_cpu(q, k, v, bias[:, :32], 0.3, qp, 4, True)
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        ck.window_attention_int_cpu(q, k, v, bias, 0.3, qp[:3], 4, True)
    with pytest.raises(ValueError, match="float32"):
        ck.window_attention_int_cpu(q.double(), k, v, bias, 0.3, qp, 4, True)
    with pytest.raises(ValueError, match="contiguous last"):
        ck.window_attention_int_cpu(torch.randn(1, 2, 2, 10, 64).transpose(-1, -2), k, v, bias, 0.3, qp, 4, True)
    with pytest.raises(ValueError, match="row_mean"):
        ck.window_attention_int_cpu(q, k, v, bias, 0.3, qp, 4, False, True, row_mean=True)


# ---------------------------------------------------------------------------------------------
# The runtime modules
# ---------------------------------------------------------------------------------------------

def _rows_off(a, b):
    return ((a - b).abs() > 1e-4 * (1 + b.abs())).reshape(-1, b.shape[-1]).any(-1).float().mean().item()


@pytest.mark.parametrize("case", [
    dict(c=60, rows=180, splits=3, bits=4, pruned=False, dc=True, rotate=True),
    dict(c=120, rows=60, splits=1, bits=3, pruned=True, dc=True, rotate=True),
    dict(c=60, rows=120, splits=1, bits=2, pruned=True, dc=False, rotate=True),
    dict(c=60, rows=60, splits=1, bits=4, pruned=False, dc=False, rotate=False),
    dict(c=60, rows=180, splits=3, bits=4, pruned=False, dc=False, rotate=False, row_mean=True),
    dict(c=60, rows=120, splits=1, bits=2, pruned=True, dc=False, rotate=False, row_mean=True),
], ids=["qkv", "fc2-pruned", "fc1-nodc", "norot", "rowmean-qkv", "rowmean-fc1-pruned"])
def test_packed_linear_module_same_with_and_without_the_kernels(monkeypatch, case):
    from compsrt.runtime import PackedLinear

    g = torch.Generator().manual_seed(5)
    c, rows, splits, bits = case["c"], case["rows"], case["splits"], case["bits"]
    n = next_pow2(c) if case["rotate"] else c
    dc, row_mean = int(case["dc"]), case.get("row_mean", False)
    codes = torch.randint(0, 2 ** bits, (rows, n - dc), generator=g).to(torch.uint8)
    mask = torch.rand(rows, n - dc, generator=g) > 0.4 if case["pruned"] else None

    def raw(lo, hi):   # stored [l, u, s2, z2] per split
        return torch.tensor([[lo - 0.1 * i, hi + 0.1 * i, 0.001, -0.002] for i in range(splits)])

    mod = PackedLinear(c, n, codes, mask, torch.randn(rows, generator=g) if dc or row_mean else None,
                       raw(-0.5, 0.5), raw(-2.0, 2.5), torch.randn(rows, generator=g), bits, case["rotate"],
                       row_mean)
    x = 1.5 * torch.randn(2, 700, c, generator=g)
    with torch.no_grad():
        fused = mod(x)
        monkeypatch.setattr(ck, "available", lambda: False)
        plain = mod(x)
    assert fused.shape == plain.shape == (2, 700, rows)
    assert _rows_off(fused, plain) < 0.01


@pytest.mark.parametrize("rotate,keep_dc,row_mean", [(True, True, False), (True, False, False), (False, False, False),
                                                     (False, False, True)])
def test_packed_attend_module_same_with_and_without_the_kernels(monkeypatch, rotate, keep_dc, row_mean):
    from compsrt.runtime import PackedAttend

    raw = _attn_qp(rotate or row_mean)
    raw[:, 2:] = torch.tensor([0.001, -0.001])                       # stored [l, u, s2, z2]
    mod = PackedAttend(raw, 4, keep_dc, rotate, row_mean)
    for layout in ("rpb_strided", "shifted_strided"):
        q, k, v, bias = _attn_inputs((1, 4, 6, 64, 10), layout, seed=7)
        with torch.no_grad():
            fused = mod(q, k, v, bias, 10 ** -0.5)
            with monkeypatch.context() as mp:
                mp.setattr(ck, "available", lambda: False)
                plain = mod(q, k, v, bias, 10 ** -0.5)
        assert _rows_off(fused, plain) < 0.01


# ---------------------------------------------------------------------------------------------
# The portable path (no AVX-512: generic vectors, emulated dot products, scalar gathers)
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_portable_build_matches_too(tmp_path, monkeypatch):
    path = ck.compile_library(tmp_path, extra_flags=("-mno-avx512f",))
    monkeypatch.setitem(ck._state, "lib", ck.load_library_file(path))
    test_rotate_quantize_matches_ref(60, 4, True, True)
    test_rotate_quantize_matches_ref(6, 3, False, True)
    test_rotate_quantize_matches_ref(120, 2, True, False)
    test_linear_epilogue_is_the_reference_bit_for_bit(True, True)
    test_packed_linear_is_rotate_quantize_plus_linear_int8(dict(c=60, per=60, splits=3, bits=4, masked=False,
                                                                keep_dc=True, rotate=True))
    test_packed_linear_is_rotate_quantize_plus_linear_int8(dict(c=60, per=120, splits=1, bits=2, masked=True,
                                                                keep_dc=True, rotate=True))
    for layout in ("rpb", "shifted_strided"):
        test_window_attention_matches_ref(4, layout, True, True)
    test_window_attention_matches_ref(3, "rpb", False, False)
    test_window_attention_other_sizes(16, 20, True)
    test_packed_linear_row_mean_matches_the_pytorch_path(dict(c=60, per=120, splits=1, bits=2, masked=True))
    test_window_attention_row_mean_matches_ref(2, "shifted_strided")
