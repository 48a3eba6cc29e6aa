"""Where two fp32 evaluations of a Hadamard rotation may quantize to different codes (shared by the
kernel tests; pytest puts this folder on sys.path, as it has no __init__.py)."""
from __future__ import annotations

from torch import Tensor

from compsrt.kernels.hadamard import hadamard_ref


def near_tie(t: Tensor, qp: Tensor, dim: int = -1, rotate: bool = True) -> Tensor:
    """Where the exact (fp64) rotation of t scales to a value that two fp32 rotations may round to
    either side of a rounding tie: within n 2^-24 sum|t| / sqrt(n) of it (the fp32 summation error
    bound, twice: ours and the ref's), plus y's own rounding. ``rotate=False``: t quantized as is."""
    r = hadamard_ref(t.double(), dim) if rotate else t.double()
    n = r.shape[dim]
    lo, hi, s, z = qp.double().tolist()
    y = (r.clamp(lo, hi) - z) / s
    l1 = t.double().abs().nan_to_num(0.0, 0.0, 0.0).sum(dim, keepdim=True) / n ** 0.5
    tol = 2 * n * 2.0 ** -24 * l1 / s + 2.0 ** -19
    return ((y - y.floor()) - 0.5).abs() <= tol
