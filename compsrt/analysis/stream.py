"""Statistics of one tensor population fed in chunks (one chunk per forward pass), in small memory.

Exact over every entry: count, min and max (:meth:`TensorStats.observe`). Over the entries a
caller samples from each chunk (:meth:`TensorStats.add_sample`; all of them for a weight): the
first four moments (float64 sums of powers of x - ref, ref being the first sample's mean, so that
the kurtosis does not cancel away) and the share of entries within +-epsilon for each epsilon
of :data:`EPSILONS`. From a seeded uniform random sample of ``sample_size`` of those entries
(without replacement, whatever the chunk sizes: :class:`Reservoir`): the Shapiro-Wilk W (on the
first :data:`SHAPIRO_SIZE` of it, a uniform subsample too), the per-tensor quantization error and
the histograms.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import shapiro
from torch import Tensor

from ..calib.dobi import dobi
from ..kernels.fake_quant import fake_quant_ref

EPSILONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SHAPIRO_SIZE = 5000     # scipy's Shapiro-Wilk p is accurate up to 5000 entries; W is what we report
SAMPLE_SIZE = 5000      # default sample per tensor and view (activations; weights are kept whole)


class Reservoir:
    """A uniform random sample without replacement of at most ``k`` entries of a stream of chunks.

    Every entry conceptually gets an independent U(0, 1) key; the sample is the k entries with the
    smallest keys ("bottom-k"), so it is uniform over the whole stream however the chunks are
    sized, and two reservoirs of disjoint streams merge by keeping the k smallest keys of both.
    Only the keys that can enter are drawn: while the sample is full with largest key t, the
    number of a chunk's n entries with a key below t is Binomial(n, t), their positions a uniform
    random subset, and their smallest min(m, k) keys the order statistics of m U(0, t) draws
    (cumulated exponentials over a Gamma remainder). Seeded by ``rng``.
    """

    def __init__(self, k: int, rng: np.random.Generator) -> None:
        if k < 1:
            raise ValueError(f"sample size must be >= 1, got {k}")
        self.k = k
        self.rng = rng
        self.keys = np.empty(0, np.float64)
        self.values = np.empty(0, np.float32)

    def threshold(self) -> float:
        """Keys at or above this cannot enter (1 while the sample is not full)."""
        return float(self.keys.max()) if len(self.keys) >= self.k else 1.0

    def offer(self, flat: Tensor) -> None:
        """Stream the entries of the 1-D tensor ``flat``."""
        n = flat.numel()
        if n == 0:
            return
        t = self.threshold()
        m = n if t >= 1.0 else int(self.rng.binomial(n, t))
        j = min(m, self.k)
        if j == 0:
            return
        pos = self.rng.choice(n, j, replace=False)    # in random order
        s = np.cumsum(self.rng.standard_exponential(j))
        keys = t * s / (s[-1] + self.rng.standard_gamma(m - j + 1))
        values = flat[torch.from_numpy(pos)].float().numpy()
        self._keep(np.concatenate([self.keys, keys]), np.concatenate([self.values, values]))

    def merge(self, other: "Reservoir") -> "Reservoir":
        """The sample of both streams together (disjoint streams; the larger k)."""
        out = Reservoir(max(self.k, other.k), self.rng)
        out._keep(np.concatenate([self.keys, other.keys]), np.concatenate([self.values, other.values]))
        return out

    def _keep(self, keys: np.ndarray, values: np.ndarray) -> None:
        if len(keys) > self.k:
            idx = np.argpartition(keys, self.k - 1)[: self.k]
            keys, values = keys[idx], values[idx]
        self.keys, self.values = keys, values

    def sample(self) -> np.ndarray:
        """The sample ordered by key: any prefix is itself a uniform random subsample."""
        return self.values[np.argsort(self.keys, kind="stable")]


class TensorStats:
    """Running statistics of one tensor population (one view of one quantized tensor)."""

    def __init__(self, sample_size: int = SAMPLE_SIZE, seed: int | list[int] = 0) -> None:
        self.count = 0                    # every entry seen
        self.lo, self.hi = math.inf, -math.inf
        self.sampled = 0                  # entries the moments and shares are over
        self.ref: float | None = None
        self.sums = np.zeros(4)           # sums of (x - ref)^p, p = 1..4, over the sampled entries
        self.within = np.zeros(len(EPSILONS), np.int64)
        self.reservoir = Reservoir(sample_size, np.random.default_rng(seed))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Count every entry of ``x`` (any shape and strides) into count, min and max."""
        if x.numel():
            lo, hi = torch.aminmax(x)
            self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))
            self.count += x.numel()

    @torch.no_grad()
    def add_sample(self, values: Tensor) -> None:
        """Add the sampled entries ``values`` (1-D) to the moments, the shares and the reservoir."""
        if values.numel() == 0:
            return
        v = values.double()
        if self.ref is None:
            self.ref = float(v.mean())
        d = v - self.ref
        d2 = d * d
        # elementwise ops and plain sums only: they stay single-threaded on these small samples,
        # where threaded dot products and bucketing stall on a busy machine
        self.sums += [float(d.sum()), float(d2.sum()), float((d2 * d).sum()), float((d2 * d2).sum())]
        a = v.abs()
        self.within += torch.stack([(a <= e).sum() for e in EPSILONS]).numpy()
        self.sampled += values.numel()
        self.reservoir.offer(values)

    def update(self, x: Tensor) -> None:
        """Every entry of ``x``, exactly (no sampling)."""
        self.observe(x)
        self.add_sample(x.detach().reshape(-1).float())

    def merge(self, other: "TensorStats") -> "TensorStats":
        """The statistics of both populations together (e.g. the AC and DC coefficients)."""
        a, b = (self, other) if self.sampled else (other, self)
        out = TensorStats(1)
        out.count, out.sampled = a.count + b.count, a.sampled + b.sampled
        out.lo, out.hi = min(a.lo, b.lo), max(a.hi, b.hi)
        out.ref = a.ref
        out.sums = a.sums + (_shift_sums(b.sums, b.sampled, b.ref - a.ref) if b.sampled else 0.0)
        out.within = a.within + b.within
        out.reservoir = a.reservoir.merge(b.reservoir)
        return out

    def moments(self) -> tuple[float, float, float]:
        """(mean, variance, Pearson kurtosis m4 / m2^2: 3 for a Gaussian, 1.8 for a uniform)."""
        s1, s2, s3, s4 = self.sums / self.sampled
        var = s2 - s1 * s1
        m4 = s4 - 4 * s1 * s3 + 6 * s1 * s1 * s2 - 3 * s1 ** 4
        kurt = m4 / (var * var) if var > 0 else math.nan
        return self.ref + s1, max(var, 0.0), kurt

    def mean_square(self) -> float:
        """Mean of x^2 over the sampled entries."""
        s1, s2 = self.sums[0], self.sums[1]
        return float((s2 + 2 * self.ref * s1) / self.sampled + self.ref ** 2)

    def summary(self, bits: int) -> dict:
        """Per-view statistics; ``mse`` is the mean squared error of the best per-tensor ``bits``-bit
        quantizer (DOBI bounds, the project's bound search) on the sample. An empty view (the AC
        coefficients of a contraction of length 1) gives NaN statistics, which the tests skip."""
        if self.sampled == 0:
            nan = math.nan
            return {"count": self.count, "min": nan, "max": nan, "range": nan, "mean": nan, "std": nan,
                    "kurtosis": nan, "shapiro_w": nan, "shapiro_n": 0, "sampled": 0,
                    "within": {str(e): nan for e in EPSILONS}, "mean_square": nan, "mse": nan, "sample_n": 0}
        mean, var, kurt = self.moments()
        sample = self.reservoir.sample()
        w = sample[:SHAPIRO_SIZE]
        sw = float(shapiro(w).statistic) if len(w) >= 3 and np.ptp(w) > 0 else math.nan
        return {"count": self.count, "min": self.lo, "max": self.hi, "range": self.hi - self.lo, "mean": mean,
                "std": math.sqrt(var), "kurtosis": kurt, "shapiro_w": sw, "shapiro_n": len(w), "sampled": self.sampled,
                "within": {str(e): float(c / self.sampled) for e, c in zip(EPSILONS, self.within)},
                "mean_square": self.mean_square(), "mse": quant_mse(sample, bits), "sample_n": len(sample)}


def _shift_sums(sums: np.ndarray, n: int, delta: float) -> np.ndarray:
    """Power sums of (x - a) turned into power sums of (x - a + delta) (binomial expansion)."""
    s1, s2, s3, s4 = sums
    return np.array([s1 + n * delta,
                     s2 + 2 * delta * s1 + n * delta ** 2,
                     s3 + 3 * delta * s2 + 3 * delta ** 2 * s1 + n * delta ** 3,
                     s4 + 4 * delta * s3 + 6 * delta ** 2 * s2 + 4 * delta ** 3 * s1 + n * delta ** 4])


def quant_mse(values: np.ndarray, bits: int) -> float:
    """Mean squared error of ``values`` quantized per tensor at ``bits`` with DOBI's bounds
    (one-sided for a non-negative tensor, as the quantizers search them)."""
    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    if x.numel() == 0:
        return math.nan
    lo, hi = dobi(x, bits, one_sided=bool(x.min() >= 0))
    q = fake_quant_ref(x, torch.tensor(lo), torch.tensor(hi), bits)
    return float((q - x).double().pow(2).mean())
