"""CUDA fast path of the packed linear: ``csrc/packed_linear.cu`` through ctypes, as torch ops.

The ``.cu`` file is plain CUDA with ``extern "C"`` launchers (no torch headers), built by nvcc into
``libcompsrt_csrc.so``, which links no torch: one build serves any torch version. The library is
found, in this order, at ``<csrc>/build/<key>/`` (an ahead-of-time build carried with the
checkout: ``python -m compsrt.kernels.packed_linear_cuda``), at
``~/.cache/compsrt/csrc/<key>/``, or else built there with nvcc on first use. ``<key>`` hashes the
sources and the nvcc flags. ``<csrc>`` is the checkout's ``csrc/``, else the copy shipped in the
wheel as ``compsrt/_csrc/``. Importing this module runs no nvcc and needs no GPU.

The kernel uses int8 tensor cores (``mma.sync`` m16n8k32 s8, sm_80+) and falls back to ``__dp4a``
below sm_80; ``impl="dp4a"`` forces the fallback (tests compare both with the reference).
Ops: ``compsrt::packed_linear``, ``compsrt::packed_matmul``, ``compsrt::unpack_bits``.
"""
import ctypes
import functools
import hashlib
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import CompsrtError
from ._native import build_library, build_main, find_source_dir, load_existing

LIB_NAME = "libcompsrt_csrc.so"
SOURCES = ("packed_linear.cu",)           # compiled into the one library, in this order
DEFAULT_ARCHES = ("80", "90")             # sm_80 cubin (all 8.x), sm_90 cubin + compute_90 PTX (9.0+)
IMPLS = {"auto": 0, "mma": 1, "dp4a": 2}  # the launcher's impl argument
K_MAX = 256                               # the launcher's limit on K (a multiple of 32)

_NO_NVCC = ("nvcc not found: install the CUDA toolkit and put nvcc on PATH, or build the library ahead "
            "of time on a machine with nvcc (python -m compsrt.kernels.packed_linear_cuda) and copy "
            "csrc/build/ next to the sources")


# ---------------------------------------------------------------------------------------------
# Building and loading the library
# ---------------------------------------------------------------------------------------------

def source_dir() -> Path:
    """The folder holding the ``.cu`` sources: the checkout's ``csrc/``, else ``compsrt/_csrc/``.

    Raises:
        CompsrtError: neither holds the sources (a broken install).
    """
    return find_source_dir(SOURCES, f"CUDA sources {SOURCES}")


def _check_arches(arches: Sequence[str]) -> tuple[str, ...]:
    arches = tuple(str(a) for a in arches)
    if not arches or not all(a.isdigit() and len(a) >= 2 for a in arches):
        raise ValueError(f"arches must be compute capabilities like '80' or '90', got {arches}")
    return tuple(sorted(set(arches), key=int))


def nvcc_flags(arches: Sequence[str] = DEFAULT_ARCHES) -> list[str]:
    """The nvcc flags of the library: a cubin per arch plus PTX of the newest (JIT on newer GPUs).
    No fast-math: the fp32 epilogue must round as linear_epilogue_ref does."""
    arches = _check_arches(arches)
    flags = ["-O3", "-shared", "-Xcompiler", "-fPIC", "-std=c++17"]
    for a in arches:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    return flags + ["-gencode", f"arch=compute_{arches[-1]},code=compute_{arches[-1]}"]


def library_key(arches: Sequence[str] = DEFAULT_ARCHES) -> str:
    """16 hex digits of sha256 over the nvcc flags and the sources (``.cu``, ``.h``, ``.cuh``)."""
    src = source_dir()
    h = hashlib.sha256(" ".join(nvcc_flags(arches)).encode())
    headers = sorted(p.name for p in src.iterdir() if p.suffix in (".h", ".cuh"))
    for name in (*SOURCES, *headers):
        h.update(name.encode() + b"\0" + (src / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def prebuilt_dir(arches: Sequence[str] = DEFAULT_ARCHES) -> Path:
    """Where the loader looks first for an ahead-of-time build: ``<csrc>/build/<key>/``."""
    return source_dir() / "build" / library_key(arches)


def cache_dir(arches: Sequence[str] = DEFAULT_ARCHES) -> Path:
    """Where first use builds the library: ``~/.cache/compsrt/csrc/<key>/``."""
    return Path.home() / ".cache" / "compsrt" / "csrc" / library_key(arches)


def find_nvcc() -> Optional[str]:
    """nvcc on PATH, else the default toolkit location, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def compile_library(arches: Sequence[str] = DEFAULT_ARCHES, out_dir: Optional[Path] = None) -> Path:
    """Build ``libcompsrt_csrc.so`` from :data:`SOURCES` with nvcc; the file appears atomically.

    Args:
        arches: compute capabilities to emit cubins for (PTX of the newest is added).
        out_dir: the output folder (created); default :func:`cache_dir`. For an ahead-of-time
            build that travels with the checkout, pass :func:`prebuilt_dir`.
    Returns:
        The path of the library.
    Raises:
        CompsrtError: nvcc is missing.
        RuntimeError: nvcc failed (its stderr is in the message).
    """
    nvcc = find_nvcc()
    if nvcc is None:
        raise CompsrtError(_NO_NVCC)
    src = source_dir()
    out = Path(out_dir) if out_dir is not None else cache_dir(arches)
    return build_library([nvcc, *nvcc_flags(arches), *(str(src / s) for s in SOURCES)], out, LIB_NAME, "nvcc")


def device_arches(device: Optional[torch.device] = None) -> tuple[str, ...]:
    """:data:`DEFAULT_ARCHES`, plus the device's own arch when their cubins and PTX do not run on
    it (sm_8x runs the sm_80 cubin, sm_90 and newer the sm_90 cubin or compute_90 PTX)."""
    if not torch.cuda.is_available():
        return DEFAULT_ARCHES
    major, minor = torch.cuda.get_device_capability(device)
    if major == 8 or major >= 9:
        return DEFAULT_ARCHES
    return _check_arches((*DEFAULT_ARCHES, f"{major}{minor}"))


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, f, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_size_t  # s: uintptr_t stream
    lib.unpack_bits_launch.argtypes = [p, p, i, i, i, s]
    lib.unpack_bits_launch.restype = i
    lib.packed_linear_launch.argtypes = [p, p, p, i, i, i, i, f, f, p, p, p, p, p, p, i, s]
    lib.packed_linear_launch.restype = i
    lib.compsrt_cuda_error_string.argtypes = [i]
    lib.compsrt_cuda_error_string.restype = ctypes.c_char_p
    return lib


@functools.lru_cache(maxsize=None)
def _library_for(arches: tuple[str, ...]) -> ctypes.CDLL:
    key = library_key(arches)
    lib, unloadable = load_existing((source_dir() / "build" / key, cache_dir(arches)), LIB_NAME, _bind)
    if lib is not None:
        return lib
    try:
        path = compile_library(arches)
    except CompsrtError as e:
        raise CompsrtError(f"{e} (unloadable: {'; '.join(unloadable)})" if unloadable else str(e)) from None
    return _bind(ctypes.CDLL(str(path)))


def load_library(device: Optional[torch.device] = None) -> ctypes.CDLL:
    """The loaded library for ``device`` (prebuilt, cached, or built now; see the module doc)."""
    return _library_for(device_arches(device))


def _check_launch(lib: ctypes.CDLL, err: int, what: str) -> None:
    if err != 0:
        msg = lib.compsrt_cuda_error_string(err).decode(errors="replace")
        raise RuntimeError(f"{what} failed: CUDA error {err} ({msg})")


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


# ---------------------------------------------------------------------------------------------
# Argument checks (before anything is loaded, so they run without a GPU)
# ---------------------------------------------------------------------------------------------

def _check_tensor(name: str, t: Tensor, dtype: torch.dtype, ndim: Optional[int]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def _check_place(name: str, t: Tensor, device: Optional[torch.device]) -> None:
    """On CUDA (on ``device`` when given: qx's) and contiguous."""
    if device is None:
        if not t.is_cuda:
            raise ValueError(f"{name} must be a CUDA tensor, got device {t.device}")
    elif t.device != device:
        raise ValueError(f"{name} must be on {device} (qx's device), got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous()), got strides {t.stride()}")


def _check_packed(qx: Tensor, w_planes: Tensor, m_planes: Optional[Tensor], bits: int) -> None:
    """dtypes and shapes first, then devices and layout."""
    if bits not in (2, 3, 4):
        raise ValueError(f"bits must be 2, 3 or 4, got {bits}")
    _check_tensor("qx", qx, torch.int8, 2)
    k = qx.shape[1]
    if k % 32 or not 32 <= k <= K_MAX:
        raise ValueError(f"qx must be (M, K) with K a multiple of 32 in [32, {K_MAX}], got {tuple(qx.shape)}")
    _check_tensor("w_planes", w_planes, torch.int32, 3)
    if tuple(w_planes.shape[1:]) != (bits, k // 32):
        raise ValueError(f"w_planes must be (N, {bits}, {k // 32}) for bits={bits} and K={k}, "
                         f"got {tuple(w_planes.shape)}")
    if m_planes is not None:
        _check_tensor("m_planes", m_planes, torch.int32, 3)
        if tuple(m_planes.shape) != (w_planes.shape[0], 1, k // 32):
            raise ValueError(f"m_planes must be ({w_planes.shape[0]}, 1, {k // 32}) or None, "
                             f"got {tuple(m_planes.shape)}")
    _check_place("qx", qx, None)
    _check_place("w_planes", w_planes, qx.device)
    if m_planes is not None:
        _check_place("m_planes", m_planes, qx.device)


def _check_vector(name: str, t: Tensor, length: int, device: torch.device) -> None:
    _check_tensor(name, t, torch.float32, None)
    if t.numel() != length:
        raise ValueError(f"{name} must hold {length} values, got shape {tuple(t.shape)}")
    _check_place(name, t, device)


def _impl_code(impl: str) -> int:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {sorted(IMPLS)}, got {impl!r}")
    return IMPLS[impl]


# ---------------------------------------------------------------------------------------------
# Ops
# ---------------------------------------------------------------------------------------------

def _launch(qx: Tensor, w_planes: Tensor, m_planes: Optional[Tensor], bits: int, alpha: float, beta: float,
            c0: Optional[Tensor], dc_x: Optional[Tensor], dc_w: Optional[Tensor], impl: int,
            want_y: bool) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Allocate the outputs and run packed_linear_launch: y (want_y) or (acc_w, acc_m)."""
    lib = load_library(qx.device)
    m, k = qx.shape
    n = w_planes.shape[0]
    if qx.data_ptr() % 16:  # the kernel reads qx rows as 16-byte vectors; a fresh copy is aligned
        qx = qx.clone()
    y = acc_w = acc_m = None
    if want_y:
        y = torch.empty((m, n), dtype=torch.float32, device=qx.device)
    else:
        acc_w = torch.empty((m, n), dtype=torch.int32, device=qx.device)
        acc_m = torch.empty((m, n if m_planes is not None else 1), dtype=torch.int32, device=qx.device)
    with torch.cuda.device(qx.device):
        stream = torch.cuda.current_stream(qx.device).cuda_stream
        err = lib.packed_linear_launch(_ptr(qx), _ptr(w_planes), _ptr(m_planes), m, n, k, bits, alpha, beta,
                                       _ptr(c0), _ptr(dc_x), _ptr(dc_w), _ptr(y), _ptr(acc_w), _ptr(acc_m),
                                       impl, stream)
    _check_launch(lib, err, "packed_linear_launch")
    return y, acc_w, acc_m


@torch.library.custom_op("compsrt::packed_linear", mutates_args=(), device_types="cuda")
def _packed_linear_op(qx: Tensor, w_planes: Tensor, m_planes: Optional[Tensor], bits: int, alpha: float,
                      beta: float, c0: Tensor, dc_x: Optional[Tensor], dc_w: Optional[Tensor], impl: int) -> Tensor:
    y, _, _ = _launch(qx, w_planes, m_planes, bits, alpha, beta, c0, dc_x, dc_w, impl, want_y=True)
    return y


@_packed_linear_op.register_fake
def _packed_linear_fake(qx, w_planes, m_planes, bits, alpha, beta, c0, dc_x, dc_w, impl):
    return qx.new_empty((qx.shape[0], w_planes.shape[0]), dtype=torch.float32)


@torch.library.custom_op("compsrt::packed_matmul", mutates_args=(), device_types="cuda")
def _packed_matmul_op(qx: Tensor, w_planes: Tensor, m_planes: Optional[Tensor], bits: int,
                      impl: int) -> Tuple[Tensor, Tensor]:
    _, acc_w, acc_m = _launch(qx, w_planes, m_planes, bits, 0.0, 0.0, None, None, None, impl, want_y=False)
    return acc_w, acc_m


@_packed_matmul_op.register_fake
def _packed_matmul_fake(qx, w_planes, m_planes, bits, impl):
    m, n = qx.shape[0], w_planes.shape[0]
    return (qx.new_empty((m, n), dtype=torch.int32),
            qx.new_empty((m, n if m_planes is not None else 1), dtype=torch.int32))


@torch.library.custom_op("compsrt::unpack_bits", mutates_args=(), device_types="cuda")
def _unpack_bits_op(planes: Tensor, bits: int) -> Tensor:
    lib = load_library(planes.device)
    r, _, w = planes.shape
    out = torch.empty((r, 32 * w), dtype=torch.uint8, device=planes.device)
    with torch.cuda.device(planes.device):
        stream = torch.cuda.current_stream(planes.device).cuda_stream
        err = lib.unpack_bits_launch(_ptr(planes), _ptr(out), r, bits, w, stream)
    _check_launch(lib, err, "unpack_bits_launch")
    return out


@_unpack_bits_op.register_fake
def _unpack_bits_fake(planes, bits):
    return planes.new_empty((planes.shape[0], 32 * planes.shape[2]), dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------

def packed_matmul_cuda(qx: Tensor, w_planes: Tensor, m_planes: Optional[Tensor], bits: int, *,
                       impl: str = "auto") -> Tuple[Tensor, Tensor]:
    """Matches packed_matmul_ref, bit for bit.

    Args:
        qx: int8 (M, K) activation codes, CUDA, contiguous; K a multiple of 32, at most 256.
        w_planes: int32 (N, bits, K // 32) bit-planes of the masked weight codes, same device.
        m_planes: int32 (N, 1, K // 32) keep-mask, or None for a trivial mask.
        bits: 2, 3 or 4.
        impl: "auto" (tensor cores on sm_80+, else dp4a), "mma" or "dp4a".
    Returns:
        (acc_w int32 (M, N), acc_m int32 (M, N), or (M, 1) row sums of qx when m_planes is None).
    Raises:
        ValueError: a wrong dtype, shape, device or layout. CompsrtError: no library and no nvcc.
    """
    code = _impl_code(impl)
    _check_packed(qx, w_planes, m_planes, bits)
    return torch.ops.compsrt.packed_matmul(qx, w_planes, m_planes, bits, code)


def packed_linear_cuda(qx: Tensor, w_planes: Tensor, m_planes: Optional[Tensor], bits: int, alpha: float,
                       beta: float, c0: Tensor, dc_x: Optional[Tensor] = None, dc_w: Optional[Tensor] = None,
                       *, impl: str = "auto") -> Tensor:
    """Matches packed_linear_ref: fp32 (M, N) = alpha acc_w + beta acc_m + c0 (+ dc_x dc_w^T),
    each fp32 operation rounded in linear_epilogue_ref's order (no FMA).

    Args:
        qx, w_planes, m_planes, bits, impl: as :func:`packed_matmul_cuda`.
        alpha, beta: Python floats (used in fp32).
        c0: fp32 with N values (any shape), contiguous, on qx's device.
        dc_x, dc_w: fp32 with M and N values, both or neither.
    Returns:
        fp32 (M, N).
    Raises:
        ValueError: a wrong dtype, shape, device or layout. CompsrtError: no library and no nvcc.
    """
    code = _impl_code(impl)
    _check_packed(qx, w_planes, m_planes, bits)
    m, n = qx.shape[0], w_planes.shape[0]
    _check_vector("c0", c0, n, qx.device)
    if (dc_x is None) != (dc_w is None):
        raise ValueError("dc_x and dc_w must be given together or not at all")
    if dc_x is not None:
        _check_vector("dc_x", dc_x, m, qx.device)
        _check_vector("dc_w", dc_w, n, qx.device)
    return torch.ops.compsrt.packed_linear(qx, w_planes, m_planes, bits, float(alpha), float(beta), c0,
                                           dc_x, dc_w, code)


def unpack_bits_cuda(planes: Tensor, bits: int) -> Tensor:
    """Matches bitpack.unpack_bits: (R, bits, W) int32 CUDA -> (R, 32 W) uint8 codes.

    Raises:
        ValueError: bits outside 1..8, or a wrong dtype, shape, device or layout.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    _check_tensor("planes", planes, torch.int32, 3)
    if planes.shape[1] != bits:
        raise ValueError(f"planes must be (R, {bits}, W) for bits={bits}, got {tuple(planes.shape)}")
    _check_place("planes", planes, None)
    return torch.ops.compsrt.unpack_bits(planes, bits)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the library ahead of time (default: into ``<csrc>/build/<key>/``, where the loader
    looks first) and print its path."""
    def build(args) -> Path:
        arches = tuple(args.arch) if args.arch else DEFAULT_ARCHES
        return compile_library(arches, args.out_dir if args.out_dir is not None else prebuilt_dir(arches))

    def add_arch(parser) -> None:
        parser.add_argument("--arch", action="append", help="compute capability, repeatable (default: 80 and 90)")

    return build_main(argv, "packed_linear_cuda", main.__doc__, build, add_arch)


if __name__ == "__main__":
    sys.exit(main())
