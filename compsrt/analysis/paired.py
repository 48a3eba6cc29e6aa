"""Paired tests on differences d_i = after_i - before_i (or A_i - B_i): what both subcommands report.

- Wilcoxon signed-rank (scipy), one-sided each way and two-sided (twice the smaller one-sided p:
  the null distribution is symmetric); zero differences are dropped (scipy's default). Up to 50
  non-zero pairs without ties the exact distribution, whose smallest one-sided p is 2^-n
  (:attr:`Paired.p_floor`): with the 5 datasets of the paper's per-dataset test no p can go below
  1/32. Otherwise scipy's normal approximation, tie-corrected (scipy's own default would permute
  exhaustively up to 13 tied pairs: exact, but seconds per call).
- Cohen's d_z: mean(d) / std(d) (ddof 1), the paired effect size.
- Sign test: the binomial test of how many d_i are positive among the non-zero ones (p = 1/2).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest, wilcoxon


@dataclass(frozen=True)
class Paired:
    n: int                # pairs
    mean: float           # mean of d
    median: float         # median of d
    ahead: int            # d > 0
    behind: int           # d < 0
    p_two: float          # Wilcoxon, two-sided
    p_greater: float      # Wilcoxon, H1: d > 0
    p_less: float         # Wilcoxon, H1: d < 0
    dz: float             # Cohen's d_z (nan when std(d) = 0 or n < 2)
    sign_greater: float   # sign test, H1: more d > 0
    sign_less: float      # sign test, H1: more d < 0
    p_floor: float        # smallest one-sided Wilcoxon p these n pairs can give: 2^-(non-zero pairs)

    def one_sided(self, direction: str) -> tuple[float, float]:
        """(Wilcoxon p, sign-test p) for H1 ``direction`` ("higher": d > 0, "lower": d < 0)."""
        return (self.p_greater, self.sign_greater) if direction == "higher" else (self.p_less, self.sign_less)

    def as_dict(self) -> dict:
        return asdict(self)


def paired(d) -> Paired:
    """The paired tests on the differences ``d`` (1-D, finite)."""
    d = np.asarray(d, dtype=np.float64).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError("paired(): needs at least one difference, all finite")
    nonzero = int(np.count_nonzero(d))
    ahead, behind = int((d > 0).sum()), int((d < 0).sum())
    if nonzero:
        nz = d[d != 0]
        method = "exact" if nonzero <= 50 and len(np.unique(np.abs(nz))) == nonzero else "asymptotic"
        p_greater, p_less = (float(wilcoxon(nz, alternative=alt, method=method).pvalue) for alt in ("greater", "less"))
        p_two = min(1.0, 2 * min(p_greater, p_less))
        sign_greater = float(binomtest(ahead, nonzero, 0.5, alternative="greater").pvalue)
        sign_less = float(binomtest(ahead, nonzero, 0.5, alternative="less").pvalue)
    else:   # every pair tied: no evidence either way
        p_two = p_greater = p_less = sign_greater = sign_less = 1.0
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    dz = float(d.mean() / sd) if sd > 0 else math.nan
    return Paired(int(d.size), float(d.mean()), float(np.median(d)), ahead, behind, p_two, p_greater, p_less,
                  dz, sign_greater, sign_less, 2.0 ** -nonzero)


def fmt_p(p: float) -> str:
    """A p-value in 3 significant digits (scientific below 0.001)."""
    if math.isnan(p):
        return "n/a"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


def fmt_dz(dz: float) -> str:
    return "n/a" if math.isnan(dz) else f"{dz:+.2f}"
