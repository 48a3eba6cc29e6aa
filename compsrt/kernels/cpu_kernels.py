"""CPU fast path of the packed runtime: ``csrc/cpu_kernels.cpp`` through ctypes.

Fused kernels replace the PyTorch-op chains of :class:`compsrt.runtime.PackedLinear` and
:class:`compsrt.runtime.PackedAttend` on CPU tensors (the runtime uses the first and the last):

- :func:`packed_linear_cpu`: the whole packed linear in one pass over the rows (rotate once,
  quantize per split, int8 products with the weight codes, epilogue), every split writing its
  columns of one output; weights in the layout of :func:`pack_linear_weights`.
- :func:`rotate_quantize_cpu`: x (M, C) -> int8 codes (rotation by butterflies, quantization,
  optional exact DC and code row sums); several quantizers (qkv's splits) share one rotation.
- :func:`linear_epilogue_cpu`: int32 accumulators -> fp32 output, written straight into a column
  slice of a wider output.
- :func:`window_attention_int_cpu`: the whole integer window attention per (window, head), its
  N x N scores kept in L1; the output lands in the (B * nW, N, heads * d) layout SwinIR wants.

The ``.cpp`` file is plain C++17 with ``extern "C"`` functions, built by g++ into
``libcompsrt_cpu.so`` with :data:`FLAGS` (``-march=native``; no fast-math and no FMA contraction,
so the fp32 quantizers and epilogues round as the references do). The library is found, in this
order, at ``<csrc>/build/<key>/`` (an ahead-of-time build: ``python -m compsrt.kernels.cpu_kernels``),
at ``~/.cache/compsrt/cpu/<key>/``, or else built there on first use (about 2 s of CPU; the file
appears atomically). ``<key>`` hashes the source, the flags and the CPU (model and instruction-set flags
from /proc/cpuinfo, what ``-march=native`` compiles for), so a cache shared between machines never
loads a library built for another CPU, and a machine without g++ still finds a library built ahead
of time. ``<csrc>`` is the checkout's ``csrc/``, else ``compsrt/_csrc/`` in a wheel. Importing
this module runs no compiler; :func:`available` builds on first call and remembers a failure.
Each kernel runs ``torch.get_num_threads()`` OpenMP threads.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import platform
import shutil
import sys
import threading
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..errors import CompsrtError
from ._native import build_library, build_main, find_source_dir, load_existing
from .hadamard import next_pow2

LIB_NAME = "libcompsrt_cpu.so"
SOURCE = "cpu_kernels.cpp"
FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp", "-march=native", "-ffp-contract=off", "-std=c++17")
ABI_VERSION = 6
NMAX = 4096                      # rotate_quantize: largest n
ATTN_TOKENS = (16, 32, 64, 128, 256)   # window_attention_int_cpu: supported N
ATTN_DMAX = 32                   # window_attention_int_cpu: largest head dim

_NO_GXX = "g++ not found: install a C++ compiler (e.g. apt-get install g++) for the fused CPU kernels"


# ---------------------------------------------------------------------------------------------
# Building and loading the library
# ---------------------------------------------------------------------------------------------

def source_dir() -> Path:
    """The folder holding ``cpu_kernels.cpp``: the checkout's ``csrc/``, else ``compsrt/_csrc/``.

    Raises:
        CompsrtError: neither holds it (a broken install).
    """
    return find_source_dir((SOURCE,), SOURCE)


def find_gxx() -> Optional[str]:
    """g++ on PATH, or None."""
    return shutil.which("g++")


@functools.lru_cache(maxsize=1)
def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags (what ``-march=native`` compiles for), read
    without a compiler so that a machine without g++ still finds a library built ahead of time."""
    model, flags = platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == platform.machine():
                    model += " " + value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(set(value.split())))
    except OSError:
        model += " " + platform.processor()
    return model + "|" + flags


def library_key() -> str:
    """16 hex digits of sha256 over the flags, the CPU (model and instruction-set flags) and the
    source.

    Raises:
        CompsrtError: the source is missing.
    """
    h = hashlib.sha256(" ".join(FLAGS).encode() + b"\0" + _cpu_signature().encode() + b"\0")
    h.update((source_dir() / SOURCE).read_bytes())
    return h.hexdigest()[:16]


def prebuilt_dir(key: Optional[str] = None) -> Path:
    """Where the loader looks first for an ahead-of-time build: ``<csrc>/build/<key>/``."""
    return source_dir() / "build" / (key or library_key())


def cache_dir(key: Optional[str] = None) -> Path:
    """Where first use builds the library: ``~/.cache/compsrt/cpu/<key>/``."""
    return Path.home() / ".cache" / "compsrt" / "cpu" / (key or library_key())


def compile_library(out_dir: Optional[Path] = None, extra_flags: tuple[str, ...] = ()) -> Path:
    """Build ``libcompsrt_cpu.so`` with g++ and :data:`FLAGS`; the file appears atomically.

    Args:
        out_dir: the output folder (created); default :func:`cache_dir`.
        extra_flags: appended to :data:`FLAGS` (tests build the portable path with
            ``-mno-avx512f``; such a build belongs in its own ``out_dir``, not the keyed cache).
    Returns:
        The path of the library.
    Raises:
        CompsrtError: g++ is missing.
        RuntimeError: g++ failed (its stderr is in the message).
    """
    gxx = find_gxx()
    if gxx is None:
        raise CompsrtError(_NO_GXX)
    out = Path(out_dir) if out_dir is not None else cache_dir(library_key())
    return build_library([gxx, *FLAGS, *extra_flags, str(source_dir() / SOURCE)], out, LIB_NAME, "g++")


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, i64, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    lib.compsrt_cpu_abi_version.argtypes = []
    lib.compsrt_cpu_abi_version.restype = i
    if lib.compsrt_cpu_abi_version() != ABI_VERSION:
        raise OSError(f"ABI version {lib.compsrt_cpu_abi_version()}, expected {ABI_VERSION}")
    lib.compsrt_rotate_quantize.argtypes = [p, i64, i64, i64, p, i64, i, i, i, p, i64, p, p, i]
    lib.compsrt_rotate_quantize.restype = i
    lib.compsrt_linear_epilogue.argtypes = [p, i64, i64, i64, p, f, f, p, p, p, p, i64, i]
    lib.compsrt_linear_epilogue.restype = i
    lib.compsrt_window_attention_int.argtypes = [p, p, p, p, p, p, p, p, p, i64, i64, i64, i64, i64, i, i, f, p, i,
                                                 i, i, i, p, p, i]
    lib.compsrt_window_attention_int.restype = i
    lib.compsrt_packed_linear.argtypes = [p, i64, i64, i64, i, i, p, i64, i, p, p, i64, i64, i64, p, p, p, p, i, p,
                                          p, i64, i]
    lib.compsrt_packed_linear.restype = i
    return lib


def load_library_file(path: Path) -> ctypes.CDLL:
    """Load and bind a library built by :func:`compile_library` (raises OSError if it cannot)."""
    return _bind(ctypes.CDLL(str(path)))


_lock = threading.Lock()
_state: dict = {}


def load_library() -> ctypes.CDLL:
    """The loaded library (prebuilt, cached, or built now; see the module doc).

    Raises:
        CompsrtError: g++ is missing or the build failed (the reason is in the message).
    """
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        if "error" in _state:
            raise CompsrtError(_state["error"])
        try:
            _state["lib"] = _load()
        except (CompsrtError, RuntimeError, OSError) as e:
            _state["error"] = f"the fused CPU kernels are unavailable: {e}"
            raise CompsrtError(_state["error"]) from None
        return _state["lib"]


def _load() -> ctypes.CDLL:
    key = library_key()
    lib, unloadable = load_existing((prebuilt_dir(key), cache_dir(key)), LIB_NAME, _bind)
    if lib is not None:
        return lib
    path = compile_library(cache_dir(key))
    try:
        return _bind(ctypes.CDLL(str(path)))
    except OSError as e:
        raise CompsrtError(f"built {path} but cannot load it: {e}"
                           + (f" (also unloadable: {'; '.join(unloadable)})" if unloadable else "")) from None


def available() -> bool:
    """True when the library loads (building it on first call); else False, with the reason in
    :func:`unavailable_reason`. The runtime then keeps its PyTorch path."""
    try:
        load_library()
    except CompsrtError:
        return False
    return True


def unavailable_reason() -> str:
    """Why :func:`available` is False ("" when it is True, or before it was asked)."""
    return _state.get("error", "")


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

def _check(name: str, t: Tensor, dtype: torch.dtype, ndim: Optional[int] = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor, got device {t.device}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def _check_vector(name: str, t: Tensor, length: int, dtype: torch.dtype = torch.float32) -> None:
    _check(name, t, dtype)
    if t.numel() != length or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous tensor of {length} values, got shape {tuple(t.shape)} "
                         f"strides {t.stride()}")


def _check_bits(bits: int) -> None:
    if bits not in (2, 3, 4):
        raise ValueError(f"bits must be 2, 3 or 4, got {bits}")


def _qp(qp: Tensor, rows: Optional[int]) -> Tensor:
    """qp as contiguous fp32 CPU; (4,) or (S, 4) (rows=None), or exactly (rows, 4)."""
    if not isinstance(qp, Tensor) or qp.device.type != "cpu" or not qp.is_floating_point():
        raise ValueError(f"qp must be a float CPU tensor, got {qp!r:.80}")
    bad = qp.ndim not in (1, 2) or qp.shape[-1] != 4 if rows is None else tuple(qp.shape) != (rows, 4)
    if bad:
        raise ValueError(f"qp must be {'(4,) or (S, 4)' if rows is None else f'({rows}, 4)'} [l, u, s, z], "
                         f"got shape {tuple(qp.shape)}")
    return qp.detach().float().contiguous()


def _output(out: Optional[Tensor], m: int, cols: int) -> Tensor:
    """``out`` checked to be fp32 (m, cols) with contiguous columns (any row stride), or a new one."""
    if out is None:
        return torch.empty((m, cols), dtype=torch.float32)
    _check("out", out, torch.float32, 2)
    if tuple(out.shape) != (m, cols) or (cols > 1 and out.stride(1) != 1) or (m > 1 and out.stride(0) < cols):
        raise ValueError(f"out must be ({m}, {cols}) fp32 with contiguous columns, got shape "
                         f"{tuple(out.shape)} strides {out.stride()}")
    return out


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _run(lib: ctypes.CDLL, err: int, what: str) -> None:
    if err != 0:
        raise RuntimeError(f"{what} refused its arguments (code {err}); the Python checks should have caught this")


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------

def rotate_quantize_cpu(x: Tensor, qp: Tensor, bits: int, keep_dc: bool, rotate: bool, k_store: int, *,
                        rowsum: bool = False):
    """Matches hadamard_quant_ref (rotate) / quantize_ref (not), codes zero-padded to ``k_store``.

    Codes equal the reference's except where the rotated value differs by float rounding across
    a rounding tie (the rotation here is a butterfly transform, the reference's a dense matmul).

    Args:
        x: fp32 (M, C) CPU, columns contiguous (any row stride).
        qp: (4,) ``[l, u, s, z]``, or (S, 4) for S quantizers of the same rotated input (one
            rotation per row, S code blocks).
        bits: 2, 3 or 4.
        keep_dc: coefficient 0 (rotated or not) is returned in fp32 and its code is 0.
        rotate: zero-pad to n = next_pow2(C) and rotate by H_n / sqrt(n); else n = C.
        k_store: code row width, a multiple of 16 (the runtime uses 32) and >= n; columns >= n are 0.
        rowsum: also return each code row's sum (the trivial-mask acc_m of linear_epilogue_cpu).
    Returns:
        (codes, dc) or, with ``rowsum``, (codes, dc, sums): codes int8 (M, k_store) for a (4,)
        qp, (S, M, k_store) for (S, 4); dc fp32 (M, 1) or None; sums int32 (M,) or (S, M).
    Raises:
        ValueError: a wrong dtype, shape, layout or size. CompsrtError: the library is unavailable.
    """
    _check_bits(bits)
    _check("x", x, torch.float32, 2)
    qpc = _qp(qp, None)
    m, c = x.shape
    if c < 1 or (c > 1 and x.stride(1) != 1) or (m > 1 and x.stride(0) < c):
        raise ValueError(f"x must be (M, C) with C >= 1 and contiguous columns, got shape {tuple(x.shape)} "
                         f"strides {x.stride()}")
    n = next_pow2(c) if rotate else c
    if n > NMAX:
        raise ValueError(f"the rotated width {n} exceeds the kernel's {NMAX}")
    if k_store < n or k_store % 16:
        raise ValueError(f"k_store must be a multiple of 16 and >= {n}, got {k_store}")
    s = 1 if qpc.ndim == 1 else qpc.shape[0]
    lib = load_library()
    codes = torch.empty((s, m, k_store), dtype=torch.int8)
    dc = torch.empty((m, 1), dtype=torch.float32) if keep_dc else None
    sums = torch.empty((s, m), dtype=torch.int32) if rowsum else None
    ldx = x.stride(0) if m > 1 else c
    err = lib.compsrt_rotate_quantize(_ptr(x), m, c, ldx, _ptr(qpc), s, bits, int(bool(keep_dc)),
                                      int(bool(rotate)), _ptr(codes), k_store, _ptr(dc), _ptr(sums), _threads())
    _run(lib, err, "compsrt_rotate_quantize")
    if qpc.ndim == 1:
        codes = codes[0]
        sums = None if sums is None else sums[0]
    return (codes, dc, sums) if rowsum else (codes, dc)


def linear_epilogue_cpu(acc: Tensor, n_out: int, alpha: float, beta: float, c0: Tensor,
                        rowsum: Optional[Tensor] = None, dc_x: Optional[Tensor] = None,
                        dc_w: Optional[Tensor] = None, out: Optional[Tensor] = None) -> Tensor:
    """Matches linear_epilogue_ref: fp32 (M, n_out) = alpha acc_w + beta acc_m + c0 (+ dc_x dc_w^T),
    each fp32 operation rounded in the reference's order.

    Args:
        acc: int32 (M, n_out) = acc_w (then ``rowsum`` is acc_m), or (M, 2 n_out) = [acc_w | acc_m];
            columns contiguous.
        n_out: output columns N.
        alpha, beta: floats (used in fp32).
        c0: fp32 with N values, contiguous.
        rowsum: int32 (M,) row sums of the activation codes (a trivial mask), or None.
        dc_x, dc_w: fp32 with M and N values (contiguous), both or neither.
        out: fp32 (M, N) with contiguous columns (e.g. a column slice of a wider output), written in
            place; None allocates it.
    Returns:
        ``out``.
    Raises:
        ValueError: a wrong dtype, shape or layout. CompsrtError: the library is unavailable.
    """
    _check("acc", acc, torch.int32, 2)
    m = acc.shape[0]
    want = n_out if rowsum is not None else 2 * n_out
    if n_out < 1 or acc.shape[1] != want or (want > 1 and acc.stride(1) != 1) or (m > 1 and acc.stride(0) < want):
        raise ValueError(f"acc must be (M, {want}) int32 with contiguous columns "
                         f"({'acc_w; acc_m from rowsum' if rowsum is not None else '[acc_w | acc_m]'}), "
                         f"got shape {tuple(acc.shape)} strides {acc.stride()}")
    _check_vector("c0", c0, n_out)
    if rowsum is not None:
        _check_vector("rowsum", rowsum, m, torch.int32)
    if (dc_x is None) != (dc_w is None):
        raise ValueError("dc_x and dc_w must be given together or not at all")
    if dc_x is not None:
        _check_vector("dc_x", dc_x, m)
        _check_vector("dc_w", dc_w, n_out)
    out = _output(out, m, n_out)
    if m == 0:
        return out
    lib = load_library()
    err = lib.compsrt_linear_epilogue(_ptr(acc), m, n_out, acc.stride(0), _ptr(rowsum), float(alpha), float(beta),
                                      _ptr(c0), _ptr(dc_x), _ptr(dc_w), _ptr(out), out.stride(0), _threads())
    _run(lib, err, "compsrt_linear_epilogue")
    return out


def pack_linear_weights(w_t: Tensor, per: int) -> tuple[Tensor, Optional[Tensor]]:
    """PackedLinear's CPU operand ``w_t`` -> the word layout of :func:`packed_linear_cpu`.

    Args:
        w_t: int8 (S, K, per) = (Mk*qw)^T per split, or (S, K, 2 per) with Mk^T beside it; codes
            0..127 (the runtime's are 0..15); K a multiple of 4.
        per: outputs per split.
    Returns:
        (wpack, mpack): int32 (S, K/4, NP), NP = per rounded up to 16, word [s, t, j] holding codes
        4t..4t+3 of output j in bytes 0..3 (zero beyond per); mpack likewise for the mask, or None.
    Raises:
        ValueError: a wrong dtype or shape.
    """
    _check("w_t", w_t, torch.int8, 3)
    s, k, cols = w_t.shape
    if k % 4 or cols not in (per, 2 * per) or per < 1:
        raise ValueError(f"w_t must be (S, K, {per}) or (S, K, {2 * per}) with K a multiple of 4, "
                         f"got {tuple(w_t.shape)}")
    np_ = -(-per // 16) * 16

    def pack(codes: Tensor) -> Tensor:
        c = codes.to(torch.int32).reshape(s, k // 4, 4, per)
        words = c[:, :, 0] | (c[:, :, 1] << 8) | (c[:, :, 2] << 16) | (c[:, :, 3] << 24)
        return torch.nn.functional.pad(words, (0, np_ - per)).contiguous()

    return pack(w_t[:, :, :per]), (pack(w_t[:, :, per:]) if cols == 2 * per else None)


def packed_linear_cpu(x: Tensor, qp: Tensor, bits: int, keep_dc: bool, rotate: bool, wpack: Tensor,
                      mpack: Optional[Tensor], per: int, alpha: Tensor, beta: Tensor, c0: Tensor,
                      dc_w: Optional[Tensor] = None, out: Optional[Tensor] = None, *,
                      rm_g: Optional[Tensor] = None) -> Tensor:
    """The whole packed linear in one pass over the rows: matches rotate_quantize (codes of each
    split's quantizer) + packed_matmul_ref + linear_epilogue_ref, split s writing output columns
    [s per, (s + 1) per). The input is rotated once per row; codes and int32 sums stay in registers.
    With ``rm_g`` (a row-mean layer, QuantConfig.row_mean) each row's mean is subtracted before
    quantization and kept in fp32 as the DC operand, and the epilogue adds ``mean dc_w^T +
    sum(codes) rm_g^T`` (compsrt.kernels.packed_linear's row-mean epilogue).

    Args:
        x: fp32 (M, C) CPU, columns contiguous.
        qp: (S, 4) ``[l, u, s, z]`` of each split's input quantizer.
        bits: 2, 3 or 4.
        keep_dc: the exact DC (coefficient 0 in fp32, its code 0; needs ``dc_w``).
        rotate: zero-pad to n = next_pow2(C) and rotate; else n = C.
        wpack, mpack: :func:`pack_linear_weights` of the module's ``w_t`` (K = 4 wpack.shape[1] >= n).
        per: outputs per split (at most 256).
        alpha, beta: fp32 (S,). c0: fp32 (S per,). dc_w: fp32 (S per,) with keep_dc or rm_g, else None.
        out: fp32 (M, S per) with contiguous columns, written in place; None allocates it.
        rm_g: fp32 (S per,) ``sx m_w`` of a row-mean layer (not with rotate or keep_dc), else None.
    Returns:
        ``out``, fp32 (M, S per).
    Raises:
        ValueError: a wrong dtype, shape or layout. CompsrtError: the library is unavailable.
    """
    _check_bits(bits)
    _check("x", x, torch.float32, 2)
    m, c = x.shape
    if c < 1 or (c > 1 and x.stride(1) != 1) or (m > 1 and x.stride(0) < c):
        raise ValueError(f"x must be (M, C) with contiguous columns, got shape {tuple(x.shape)} strides {x.stride()}")
    qpc = _qp(qp, None)
    if qpc.ndim != 2:
        raise ValueError(f"qp must be (S, 4), got {tuple(qp.shape)}")
    s = qpc.shape[0]
    _check("wpack", wpack, torch.int32, 3)
    kw, np_ = wpack.shape[1], wpack.shape[2]
    n = next_pow2(c) if rotate else c
    if wpack.shape[0] != s or not wpack.is_contiguous() or np_ % 16 or not per <= np_ <= 256 or 4 * kw < n:
        raise ValueError(f"wpack must be contiguous ({s}, K/4 >= {-(-n // 4)}, NP) with NP a multiple of 16 in "
                         f"[{per}, 256], got {tuple(wpack.shape)}")
    if mpack is not None:
        _check("mpack", mpack, torch.int32, 3)
        if mpack.shape != wpack.shape or not mpack.is_contiguous():
            raise ValueError(f"mpack must be contiguous {tuple(wpack.shape)}, got {tuple(mpack.shape)}")
    _check_vector("alpha", alpha, s)
    _check_vector("beta", beta, s)
    _check_vector("c0", c0, s * per)
    row_mean = rm_g is not None
    if row_mean and (rotate or keep_dc):
        raise ValueError("rm_g (a row-mean layer) needs rotate=False and keep_dc=False")
    if (keep_dc or row_mean) != (dc_w is not None):
        raise ValueError("dc_w must be given exactly when keep_dc is set or rm_g is given")
    if dc_w is not None:
        _check_vector("dc_w", dc_w, s * per)
    if rm_g is not None:
        _check_vector("rm_g", rm_g, s * per)
    out = _output(out, m, s * per)
    if m == 0:
        return out
    lib = load_library()
    err = lib.compsrt_packed_linear(_ptr(x), m, c, x.stride(0), int(bool(rotate)), int(bool(keep_dc)), _ptr(qpc), s,
                                    bits, _ptr(wpack), _ptr(mpack), kw, np_, per, _ptr(alpha), _ptr(beta), _ptr(c0),
                                    _ptr(dc_w), int(row_mean), _ptr(rm_g), _ptr(out), out.stride(0), _threads())
    _run(lib, err, "compsrt_packed_linear")
    return out


def linear_supported(n: int, per: int) -> bool:
    """Whether :func:`packed_linear_cpu` takes a layer of code width n and ``per`` outputs per split."""
    return 1 <= n <= NMAX and 1 <= per <= 256


def attention_supported(q: Tensor) -> bool:
    """Whether :func:`window_attention_int_cpu` takes q's window shape (N in :data:`ATTN_TOKENS`, d <= 32)."""
    return q.ndim >= 3 and q.shape[-2] in ATTN_TOKENS and 1 <= q.shape[-1] <= ATTN_DMAX


def _as5(name: str, t: Tensor) -> Tensor:
    if t.ndim > 5 or t.ndim < 3:
        raise ValueError(f"{name} must be (..., heads, N, d) with 3 to 5 dimensions, got shape {tuple(t.shape)}")
    return t.reshape((1,) * (5 - t.ndim) + tuple(t.shape)) if t.ndim < 5 else t


def window_attention_int_cpu(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, qp: Tensor, bits: int,
                             keep_dc: bool, rotate: bool = True, row_mean: bool = False,
                             mask: Optional[Tensor] = None) -> Tensor:
    """Matches window_attention_int_ref (up to float rounding of the rotations, the row means and
    the softmax's exp and sum; codes on rounding ties may differ by one).

    Args:
        q, k, v: fp32 (B, nW, heads, N, d) CPU (or 3- or 4-d: leading 1s are implied), any
            strides with the last dimension contiguous (SwinIR's views of one qkv tensor); q
            unscaled; N in 16, 32, 64, 128, 256; d <= 32.
        bias: fp32 broadcastable to (B, nW, heads, N, N) ((heads, N, N) or (nW, heads, N, N)),
            any strides (read with gathers: SwinIR's rpb + mask sum, heads innermost, is not copied).
        scale: q's multiplier (d ** -0.5), used in fp32.
        qp: (4, 4) ``[l, u, s, z]`` rows q, k, attn, v.
        bits: 2, 3 or 4.
        keep_dc: the exact DC (ignored without rotate, as in the reference).
        rotate: False quantizes the operands as they are (2DQuant).
        row_mean: (not with rotate) each operand row's mean along the contraction axis stays fp32
            and the centred rest is quantized (QuantConfig.row_mean).
        mask: fp32 (nW, N, N) additive shift mask (nW = q's window dimension) or None: the logits
            get ``bias + mask`` (broadcast over batch and heads), summed in the kernel, so SwinIR's
            shifted blocks need not build the (nW, heads, N, N) sum.
    Returns:
        fp32 of q's shape. For 5-d q its memory is (B, nW, N, heads, d) contiguous, so SwinIR's
        ``out.reshape(B * nW, heads, N, d).transpose(1, 2).reshape(B * nW, N, C)`` copies nothing.
    Raises:
        ValueError: a wrong dtype, shape or layout. CompsrtError: the library is unavailable.
    """
    _check_bits(bits)
    for name, t in (("q", q), ("k", k), ("v", v), ("bias", bias)):
        _check(name, t, torch.float32)
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if row_mean and rotate:
        raise ValueError("row_mean needs rotate=False")
    if not attention_supported(q):
        raise ValueError(f"q must be (..., N, d) with N in {ATTN_TOKENS} and d <= {ATTN_DMAX}, got {tuple(q.shape)}")
    q5, k5, v5 = _as5("q", q), _as5("k", k), _as5("v", v)
    b, w, h, n, d = q5.shape
    try:
        b5 = bias.expand(b, w, h, n, n)
    except RuntimeError:
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not broadcast to {(b, w, h, n, n)}") from None
    for name, t in (("q", q5), ("k", k5), ("v", v5)):
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            raise ValueError(f"{name} must have a contiguous last dimension, got strides {t.stride()}")
    for name, t in (("q", q5), ("k", k5), ("v", v5), ("bias", b5)):
        if max(abs(t.stride(-2)), abs(t.stride(-1))) * 64 >= 2 ** 31:   # int32 gather indices
            raise ValueError(f"{name}'s token strides {t.stride()[-2:]} are too large for the kernel")
    if mask is not None:
        _check("mask", mask, torch.float32, 3)
        if tuple(mask.shape) != (w, n, n):
            raise ValueError(f"mask must be (nW, N, N) = {(w, n, n)}, got {tuple(mask.shape)}")
        if mask.stride(-1) != 1:
            mask = mask.contiguous()
    qpc = _qp(qp, 4)
    lib = load_library()
    out = torch.empty((b, w, n, h, d), dtype=torch.float32).permute(0, 1, 3, 2, 4)
    arr = lambda t: (ctypes.c_int64 * 5)(*t.stride())                                   # noqa: E731
    err = lib.compsrt_window_attention_int(
        _ptr(q5), arr(q5), _ptr(k5), arr(k5), _ptr(v5), arr(v5), _ptr(b5), arr(b5), _ptr(mask),
        0 if mask is None else mask.stride(0), 0 if mask is None else mask.stride(1), b, w, h, n, d, float(scale),
        _ptr(qpc), bits, int(bool(keep_dc)), int(bool(rotate)), int(bool(row_mean)), _ptr(out), arr(out), _threads())
    _run(lib, err, "compsrt_window_attention_int")
    return out if q.ndim == 5 else out.reshape(q.shape)


def main(argv: Optional[list[str]] = None) -> int:
    """Build the library ahead of time (default: into ``<csrc>/build/<key>/``, where the loader
    looks first) and print its path."""
    return build_main(argv, "cpu_kernels", main.__doc__,
                      lambda args: compile_library(args.out_dir if args.out_dir is not None else prebuilt_dir()))


if __name__ == "__main__":
    sys.exit(main())
