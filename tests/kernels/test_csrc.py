"""csrc/: every ``.cu`` file compiles with nvcc for sm_80 and sm_90 (here, without a GPU), the
library loads and checks its arguments; on a GPU the packed-linear kernels (tensor-core MMA and
dp4a) match packed_matmul_ref bit for bit and packed_linear_ref to fp32 rounding."""
import ctypes
import subprocess
from pathlib import Path

import pytest
import torch

from compsrt.errors import CompsrtError
from compsrt.kernels import packed_linear_cuda as plc
from compsrt.kernels.bitpack import pack_bits, unpack_bits
from compsrt.kernels.packed_linear import packed_linear, packed_linear_ref, packed_matmul_ref

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))
NVCC = plc.find_nvcc()
CUDA = torch.cuda.is_available()
CUDA_INVALID_VALUE = 1  # cudaErrorInvalidValue

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed")


def gpu(test):
    """A GPU test: the ``cuda`` marker, skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")(test))


def _impls() -> list[str]:
    """The kernels this GPU runs: tensor cores from sm_80, dp4a everywhere."""
    return ["mma", "dp4a"] if torch.cuda.get_device_capability()[0] >= 8 else ["dp4a"]


def _case(bits: int, masked: bool, m: int, n: int, k: int, seed: int = 0):
    """CPU inputs: activation codes, packed masked weight codes and (when masked) the packed mask."""
    g = torch.Generator().manual_seed(seed)
    qx = torch.randint(0, 16, (m, k), generator=g).to(torch.int8)
    qw = torch.randint(0, 1 << bits, (n, k), generator=g)
    if masked:
        keep = (torch.rand(n, k, generator=g) > 0.4).to(torch.int64)
        keep[:, 0] = 0  # the exact DC's column
        return qx, pack_bits(qw * keep, bits), pack_bits(keep, 1)
    return qx, pack_bits(qw, bits), None


def _epilogue_args(m: int, n: int, dc: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c0 = torch.randn(n, generator=g)
    if not dc:
        return c0, None, None
    return c0, torch.randn(m, generator=g), torch.randn(n, generator=g)


def _cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]


# ---------------------------------------------------------------------------------------------
# Build (runs wherever nvcc exists)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built_library(tmp_path_factory) -> Path:
    """The library built by compile_library for sm_80 + sm_90, once per module."""
    if NVCC is None:
        pytest.skip("nvcc not installed")
    return plc.compile_library(plc.DEFAULT_ARCHES, tmp_path_factory.mktemp("csrc_build"))


@needs_nvcc
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_file_compiles_for_sm80_and_sm90(cu, tmp_path):
    cmd = [NVCC, "-O3", "-c", "-std=c++17", "-Xcompiler", "-fPIC",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           str(cu), "-o", str(tmp_path / f"{cu.stem}.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"


def test_library_sources_exist():
    assert plc.source_dir() == CSRC
    assert all((CSRC / s).is_file() for s in plc.SOURCES)


def test_compile_library_writes_the_library_atomically(built_library):
    assert built_library.name == plc.LIB_NAME and built_library.stat().st_size > 0
    assert not list(built_library.parent.glob(".*.tmp"))


def test_library_exports_launchers_and_checks_arguments(built_library):
    """The launchers' host-side checks answer cudaErrorInvalidValue before touching a GPU."""
    lib = plc._bind(ctypes.CDLL(str(built_library)))
    assert lib.compsrt_cuda_error_string(CUDA_INVALID_VALUE) == b"invalid argument"
    launch = lib.packed_linear_launch
    #      qx    w     m     M   N   K   bits alpha beta c0  dc_x  dc_w  y     acc_w acc_m impl stream
    assert launch(None, None, None, 8, 60, 48, 4, 1.0, 0.0, None, None, None, None, None, None, 0, 0) \
        == CUDA_INVALID_VALUE  # K not a multiple of 32
    assert launch(None, None, None, 8, 60, 64, 9, 1.0, 0.0, None, None, None, None, None, None, 0, 0) \
        == CUDA_INVALID_VALUE  # bits
    assert launch(None, None, None, 8, 60, 64, 4, 1.0, 0.0, None, 1, None, None, None, None, 0, 0) \
        == CUDA_INVALID_VALUE  # dc_x without dc_w
    assert launch(None, None, None, 0, 60, 64, 4, 1.0, 0.0, None, None, None, None, None, None, 0, 0) == 0
    assert lib.unpack_bits_launch(None, None, 4, 9, 2, 0) == CUDA_INVALID_VALUE
    assert lib.unpack_bits_launch(None, None, 0, 3, 2, 0) == 0


def test_loader_prefers_the_prebuilt_library(built_library, tmp_path, monkeypatch):
    """A library at <csrc>/build/<key>/ is loaded without calling nvcc."""
    src = tmp_path / "csrc"
    src.mkdir()
    for name in plc.SOURCES:
        (src / name).write_bytes((CSRC / name).read_bytes())
    monkeypatch.setattr(plc, "source_dir", lambda: src)
    prebuilt = plc.prebuilt_dir(plc.DEFAULT_ARCHES)
    assert prebuilt == src / "build" / plc.library_key(plc.DEFAULT_ARCHES)
    prebuilt.mkdir(parents=True)
    (prebuilt / plc.LIB_NAME).write_bytes(built_library.read_bytes())

    def no_nvcc(*args, **kwargs):
        raise AssertionError("compile_library called although a prebuilt library exists")

    monkeypatch.setattr(plc, "compile_library", no_nvcc)
    plc._library_for.cache_clear()
    try:
        lib = plc._library_for(plc.DEFAULT_ARCHES)
        assert lib._name == str(prebuilt / plc.LIB_NAME)
    finally:
        plc._library_for.cache_clear()


def test_missing_nvcc_is_a_compsrt_error(monkeypatch, tmp_path):
    monkeypatch.setattr(plc, "find_nvcc", lambda: None)
    with pytest.raises(CompsrtError, match="nvcc not found"):
        plc.compile_library(out_dir=tmp_path)


def test_build_command_builds_into_the_prebuilt_folder_by_default(monkeypatch, tmp_path, capsys):
    """python -m compsrt.kernels.packed_linear_cuda: the arches and folder reach compile_library,
    the library's path is printed."""
    calls = []

    def fake_compile(arches, out_dir):
        calls.append((arches, out_dir))
        return out_dir / plc.LIB_NAME

    monkeypatch.setattr(plc, "compile_library", fake_compile)
    assert plc.main([]) == 0
    assert calls == [(plc.DEFAULT_ARCHES, plc.prebuilt_dir(plc.DEFAULT_ARCHES))]
    assert capsys.readouterr().out == f"{plc.prebuilt_dir(plc.DEFAULT_ARCHES) / plc.LIB_NAME}\n"
    assert plc.main(["--arch", "86", "--arch", "90", "--out-dir", str(tmp_path)]) == 0
    assert calls[-1] == (("86", "90"), tmp_path)
    assert capsys.readouterr().out == f"{tmp_path / plc.LIB_NAME}\n"


@pytest.mark.parametrize("argv, no_nvcc, failing_nvcc, message", [
    (["--out-dir", "OUT"], True, False, "nvcc not found"),
    (["--arch", "sm_80"], False, False, "arches must be compute capabilities like '80'"),  # before nvcc
    (["--out-dir", "OUT"], False, True, "nvcc failed (exit 1)"),
], ids=["no-nvcc", "bad-arch", "nvcc-fails"])
def test_build_command_errors_exit_2_without_a_traceback(monkeypatch, tmp_path, capsys, argv, no_nvcc, failing_nvcc,
                                                         message):
    if no_nvcc:
        monkeypatch.setattr(plc, "find_nvcc", lambda: None)
    if failing_nvcc:
        def failing(arches, out_dir):
            raise RuntimeError("nvcc failed (exit 1): nvcc ...")
        monkeypatch.setattr(plc, "compile_library", failing)
    assert plc.main([str(tmp_path) if a == "OUT" else a for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("packed_linear_cuda: error: ") and message in captured.err
    assert "Traceback" not in captured.err and not list(tmp_path.iterdir())


def test_unloadable_prebuilt_without_nvcc_names_both(monkeypatch, tmp_path):
    """A prebuilt library that does not load (say, built against a newer glibc) falls through to
    nvcc; without nvcc the CompsrtError names the fix and the unloadable file."""
    src = tmp_path / "csrc"
    src.mkdir()
    for name in plc.SOURCES:
        (src / name).write_bytes((CSRC / name).read_bytes())
    monkeypatch.setattr(plc, "source_dir", lambda: src)
    monkeypatch.setattr(plc, "cache_dir", lambda arches=plc.DEFAULT_ARCHES: tmp_path / "cache")
    monkeypatch.setattr(plc, "find_nvcc", lambda: None)
    prebuilt = plc.prebuilt_dir()
    prebuilt.mkdir(parents=True)
    (prebuilt / plc.LIB_NAME).write_bytes(b"not a shared library")
    plc._library_for.cache_clear()
    try:
        with pytest.raises(CompsrtError, match="nvcc not found.*unloadable: .*libcompsrt_csrc.so"):
            plc._library_for(plc.DEFAULT_ARCHES)
    finally:
        plc._library_for.cache_clear()


def test_library_key_follows_flags_and_sources():
    assert plc.library_key(("80", "90")) == plc.library_key(("90", "80"))
    assert plc.library_key(("80", "90")) != plc.library_key(("80", "89", "90"))
    flags = plc.nvcc_flags(("80", "90"))
    assert "--use_fast_math" not in flags and flags[-1] == "arch=compute_90,code=compute_90"
    with pytest.raises(ValueError, match="compute capabilities"):
        plc.nvcc_flags(("sm_80",))


# ---------------------------------------------------------------------------------------------
# Argument checks and fake implementations (no GPU needed)
# ---------------------------------------------------------------------------------------------

def test_cpu_tensors_are_refused_before_loading():
    qx, w, mk = _case(3, True, 4, 60, 64)
    with pytest.raises(ValueError, match="qx must be a CUDA tensor"):
        plc.packed_matmul_cuda(qx, w, mk, 3)
    with pytest.raises(ValueError, match="qx must be a CUDA tensor"):
        plc.packed_linear_cuda(qx, w, mk, 3, 1.0, 0.0, torch.zeros(60))
    with pytest.raises(ValueError, match="planes must be a CUDA tensor"):
        plc.unpack_bits_cuda(w, 3)


@pytest.mark.parametrize("bad, message", [
    (dict(qx=torch.zeros(4, 64, dtype=torch.uint8)), "qx must be torch.int8"),
    (dict(qx=torch.zeros(4, 48, dtype=torch.int8)), "K a multiple of 32"),
    (dict(qx=torch.zeros(4, 64, 1, dtype=torch.int8)), "qx must have 2 dimensions"),
    (dict(bits=5), "bits must be 2, 3 or 4"),
    (dict(impl="tc"), "impl must be one of"),
])
def test_argument_errors(bad, message):
    qx, w, mk = _case(3, True, 4, 60, 64)
    args = dict(qx=qx, bits=3, impl="auto") | bad
    with pytest.raises(ValueError, match=message):
        plc.packed_matmul_cuda(args["qx"], w, mk, args["bits"], impl=args["impl"])


def test_plane_shape_errors():
    qx, w, mk = _case(3, True, 4, 60, 64)
    with pytest.raises(ValueError, match=r"w_planes must be \(N, 2, 2\) for bits=2"):
        plc.packed_matmul_cuda(qx, w, mk, 2)
    with pytest.raises(ValueError, match=r"m_planes must be \(60, 1, 2\) or None"):
        plc.packed_matmul_cuda(qx, w, mk[:30], 3)


def test_unpack_bits_argument_errors():
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        plc.unpack_bits_cuda(torch.zeros(2, 9, 1, dtype=torch.int32), 9)
    with pytest.raises(ValueError, match="planes must be torch.int32"):
        plc.unpack_bits_cuda(torch.zeros(2, 3, 1, dtype=torch.int64), 3)


def test_fake_implementations_give_shapes():
    qx = torch.empty(100, 64, dtype=torch.int8, device="meta")
    w = torch.empty(60, 3, 2, dtype=torch.int32, device="meta")
    mk = torch.empty(60, 1, 2, dtype=torch.int32, device="meta")
    y = torch.ops.compsrt.packed_linear(qx, w, mk, 3, 1.0, 0.5, torch.empty(60, device="meta"), None, None, 0)
    assert y.shape == (100, 60) and y.dtype == torch.float32
    acc_w, acc_m = torch.ops.compsrt.packed_matmul(qx, w, None, 3, 0)
    assert acc_w.shape == (100, 60) and acc_m.shape == (100, 1) and acc_m.dtype == torch.int32
    assert torch.ops.compsrt.packed_matmul(qx, w, mk, 3, 0)[1].shape == (100, 60)
    out = torch.ops.compsrt.unpack_bits(w, 3)
    assert out.shape == (60, 64) and out.dtype == torch.uint8


# ---------------------------------------------------------------------------------------------
# GPU: the kernels against the references
# ---------------------------------------------------------------------------------------------

@gpu
@pytest.mark.parametrize("k", [64, 128])
@pytest.mark.parametrize("n", [60, 120, 180])
@pytest.mark.parametrize("m", [1, 17, 1000, 16384])
@pytest.mark.parametrize("masked", [False, True], ids=["trivial_mask", "mask"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packed_matmul_cuda_is_exact(bits, masked, m, n, k):
    qx, w, mk = _case(bits, masked, m, n, k, seed=m + n + k + bits)
    ref_w, ref_m = packed_matmul_ref(qx, w, mk, bits)
    for impl in _impls():
        acc_w, acc_m = plc.packed_matmul_cuda(*_cuda(qx, w, mk), bits, impl=impl)
        assert acc_w.dtype == acc_m.dtype == torch.int32 and acc_m.shape == ref_m.shape, impl
        assert torch.equal(acc_w.cpu(), ref_w), impl
        assert torch.equal(acc_m.cpu(), ref_m), impl


@gpu
@pytest.mark.parametrize("m, n, k", [(5, 7, 32), (130, 200, 32), (64, 257, 256), (1, 1, 128), (333, 64, 96)])
@pytest.mark.parametrize("masked", [False, True], ids=["trivial_mask", "mask"])
def test_packed_matmul_cuda_odd_shapes(m, n, k, masked):
    qx, w, mk = _case(4, masked, m, n, k, seed=m * n)
    ref_w, ref_m = packed_matmul_ref(qx, w, mk, 4)
    for impl in _impls():
        acc_w, acc_m = plc.packed_matmul_cuda(*_cuda(qx, w, mk), 4, impl=impl)
        assert torch.equal(acc_w.cpu(), ref_w) and torch.equal(acc_m.cpu(), ref_m), impl


@gpu
@pytest.mark.parametrize("dc", [False, True], ids=["no_dc", "dc"])
@pytest.mark.parametrize("m, n, k", [(1, 60, 64), (1000, 180, 64), (16384, 120, 128), (777, 60, 128)])
@pytest.mark.parametrize("masked", [False, True], ids=["trivial_mask", "mask"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packed_linear_cuda_matches_ref(bits, masked, m, n, k, dc):
    qx, w, mk = _case(bits, masked, m, n, k, seed=bits + m)
    c0, dc_x, dc_w = _epilogue_args(m, n, dc)
    alpha, beta = 0.0123, -0.0456
    ref = packed_linear_ref(qx, w, mk, bits, alpha, beta, c0, dc_x, dc_w)
    for impl in _impls():
        y = plc.packed_linear_cuda(*_cuda(qx, w, mk), bits, alpha, beta, *_cuda(c0, dc_x, dc_w), impl=impl)
        assert y.dtype == torch.float32 and y.shape == (m, n)
        torch.testing.assert_close(y.cpu(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()), msg=impl)


@gpu
def test_dispatcher_runs_the_cuda_kernel():
    qx, w, mk = _case(2, True, 300, 180, 64)
    c0, dc_x, dc_w = _epilogue_args(300, 180, True)
    ref = packed_linear_ref(qx, w, mk, 2, 0.5, 0.25, c0, dc_x, dc_w)
    y = packed_linear(*_cuda(qx, w, mk), 2, 0.5, 0.25, *_cuda(c0, dc_x, dc_w))
    assert y.is_cuda
    torch.testing.assert_close(y.cpu(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


@gpu
def test_misaligned_qx_side_stream_and_empty_input():
    m, n, k = 50, 60, 64
    qx, w, mk = _case(3, True, m, n, k)
    ref_w, ref_m = packed_matmul_ref(qx, w, mk, 3)
    buf = torch.zeros(m * k + 1, dtype=torch.int8, device="cuda")
    qx_odd = buf[1:].view(m, k)
    qx_odd.copy_(qx.cuda())
    assert qx_odd.data_ptr() % 16
    w_c, mk_c = _cuda(w, mk)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        acc_w, acc_m = plc.packed_matmul_cuda(qx_odd, w_c, mk_c, 3)
    stream.synchronize()
    assert torch.equal(acc_w.cpu(), ref_w) and torch.equal(acc_m.cpu(), ref_m)
    empty = torch.zeros(0, k, dtype=torch.int8, device="cuda")
    y = plc.packed_linear_cuda(empty, w_c, mk_c, 3, 1.0, 1.0, torch.zeros(n, device="cuda"))
    assert y.shape == (0, n)


@gpu
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("r, w", [(1, 1), (60, 2), (1000, 4)])
def test_unpack_bits_cuda_matches_unpack_bits(bits, r, w):
    codes = torch.randint(0, 1 << bits, (r, 32 * w), generator=torch.Generator().manual_seed(r + bits))
    planes = pack_bits(codes, bits)
    out = plc.unpack_bits_cuda(planes.cuda(), bits)
    assert out.dtype == torch.uint8
    assert torch.equal(out.cpu(), unpack_bits(planes, bits))


@gpu
def test_gpu_error_messages():
    qx, w, mk = _case(3, True, 8, 60, 64)
    qx_c, w_c, mk_c = _cuda(qx, w, mk)
    with pytest.raises(ValueError, match="w_planes must be on cuda"):
        plc.packed_matmul_cuda(qx_c, w, mk_c, 3)
    with pytest.raises(ValueError, match="m_planes must be on cuda"):
        plc.packed_matmul_cuda(qx_c, w_c, mk, 3)
    with pytest.raises(ValueError, match="qx must be torch.int8"):
        plc.packed_matmul_cuda(qx_c.float(), w_c, mk_c, 3)
    with pytest.raises(ValueError, match="w_planes must be torch.int32"):
        plc.packed_matmul_cuda(qx_c, w_c.long(), mk_c, 3)
    with pytest.raises(ValueError, match="c0 must be torch.float32"):
        plc.packed_linear_cuda(qx_c, w_c, mk_c, 3, 1.0, 0.0, torch.zeros(60, device="cuda", dtype=torch.float16))
    with pytest.raises(ValueError, match="c0 must hold 60 values"):
        plc.packed_linear_cuda(qx_c, w_c, mk_c, 3, 1.0, 0.0, torch.zeros(61, device="cuda"))
    with pytest.raises(ValueError, match="given together"):
        plc.packed_linear_cuda(qx_c, w_c, mk_c, 3, 1.0, 0.0, torch.zeros(60, device="cuda"),
                               torch.zeros(8, device="cuda"))
    with pytest.raises(ValueError, match="qx must be contiguous"):
        plc.packed_matmul_cuda(torch.zeros(64, 8, dtype=torch.int8, device="cuda").T, w_c, mk_c, 3)


@gpu
def test_ops_pass_opcheck():
    qx, w, mk = _cuda(*_case(3, True, 40, 60, 64))
    c0 = torch.randn(60, device="cuda")
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.compsrt.packed_linear.default,
                          (qx, w, mk, 3, 0.5, 0.25, c0, None, None, 0), test_utils=checks)
    torch.library.opcheck(torch.ops.compsrt.packed_matmul.default, (qx, w, None, 3, 0), test_utils=checks)
    torch.library.opcheck(torch.ops.compsrt.unpack_bits.default, (w, 3), test_utils=checks)
