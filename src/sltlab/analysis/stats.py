"""Statistics for comparing norm variants over a handful of seeds.

Why these and not t-tests: with 2-5 seeds per cell nothing is known about the distributions, so the report
uses rank tests (Mann-Whitney U for two groups, Kruskal-Wallis H for several), percentile bootstrap intervals
for means and differences of means, and effect sizes that do not assume normality (Cliff's delta /
rank-biserial correlation, epsilon-squared for Kruskal-Wallis) next to Hedges' g for readers used to it. Every
function accepts plain sequences, drops NaNs, and returns NaN (never raises) when there are too few values, so
a partial store still gives a report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

NAN = float("nan")


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).reshape(-1)
    return a[np.isfinite(a)]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a (lo, hi) confidence interval at `level`, over `n` values."""

    estimate: float
    lo: float
    hi: float
    level: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fmt(self, digits: int = 3) -> str:
        if not math.isfinite(self.estimate):
            return "n/a"
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"{self.estimate:.{digits}g} (n={self.n})"
        return f"{self.estimate:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}] (n={self.n})"


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of `stat` over values (e.g. one value per seed).

    With one value the interval is (NaN, NaN): a single seed says nothing about seed-to-seed spread. Seeded,
    so the report is reproducible.
    """
    a = _clean(values)
    if a.size == 0:
        return Interval(NAN, NAN, NAN, level, 0)
    est = float(stat(a))
    if a.size < 2:
        return Interval(est, NAN, NAN, level, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    boots = np.array([stat(a[i]) for i in idx], dtype=float)
    alpha = (1.0 - level) / 2.0
    return Interval(est, float(np.quantile(boots, alpha)), float(np.quantile(boots, 1.0 - alpha)), level, int(a.size))


def bootstrap_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Bootstrap interval of mean(a) - mean(b), resampling each group independently. n is min(len(a),
    len(b))."""
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        return Interval(NAN, NAN, NAN, level, 0)
    est = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Interval(est, NAN, NAN, level, int(min(x.size, y.size)))
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    by = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(1)
    d = bx - by
    alpha = (1.0 - level) / 2.0
    return Interval(
        est, float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha)), level, int(min(x.size, y.size))
    )


def cliffs_delta(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """P(a > b) - P(a < b) over all pairs: +1 when every a exceeds every b, 0 for complete overlap.

    Equal to the rank-biserial correlation of the Mann-Whitney test. Conventional magnitudes (Romano et al.
    2006): |d| < 0.147 negligible, < 0.33 small, < 0.474 medium, else large.
    """
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        return NAN
    diff = x[:, None] - y[None, :]
    return float((np.sign(diff)).mean())


def magnitude(delta: float) -> str:
    """Words for a Cliff's delta, so the report can say 'large' rather than only a number."""
    if not math.isfinite(delta):
        return "n/a"
    d = abs(delta)
    return "negligible" if d < 0.147 else "small" if d < 0.33 else "medium" if d < 0.474 else "large"


def hedges_g(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Standardised mean difference (mean(a) - mean(b)) / pooled sd, with the small-sample correction."""
    x, y = _clean(a), _clean(b)
    n1, n2 = x.size, y.size
    if n1 < 2 or n2 < 2:
        return NAN
    s = math.sqrt(((n1 - 1) * x.var(ddof=1) + (n2 - 1) * y.var(ddof=1)) / (n1 + n2 - 2))
    if s == 0:
        return NAN if x.mean() == y.mean() else math.copysign(math.inf, x.mean() - y.mean())
    j = 1.0 - 3.0 / (4.0 * (n1 + n2) - 9.0)
    return float(j * (x.mean() - y.mean()) / s)


def mann_whitney(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alternative: str = "two-sided"
) -> dict[str, Any]:
    """Mann-Whitney U test of a vs b with Cliff's delta, Hedges' g and the bootstrap CI of the mean
    difference.

    `alternative`: two-sided | greater (a tends to exceed b) | less. The exact p-value is used for small
    samples without ties (scipy's 'auto'); p is NaN when either group is empty or all values are identical.
    """
    x, y = _clean(a), _clean(b)
    out: dict[str, Any] = {
        "n_a": int(x.size),
        "n_b": int(y.size),
        "mean_a": float(x.mean()) if x.size else NAN,
        "mean_b": float(y.mean()) if y.size else NAN,
        "U": NAN,
        "p": NAN,
        "alternative": alternative,
        "cliffs_delta": cliffs_delta(x, y),
        "hedges_g": hedges_g(x, y),
        "diff_ci": bootstrap_diff_ci(x, y).as_dict(),
    }
    out["effect"] = magnitude(out["cliffs_delta"])
    if x.size == 0 or y.size == 0:
        return out
    if np.ptp(np.concatenate([x, y])) == 0:
        out["U"], out["p"] = float(x.size * y.size / 2), 1.0
        return out
    res = sps.mannwhitneyu(x, y, alternative=alternative)
    out["U"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def kruskal_wallis(groups: Mapping[str, Sequence[float] | np.ndarray]) -> dict[str, Any]:
    """Kruskal-Wallis H test across groups (e.g. norm variants) with epsilon-squared, H / (n - 1).

    Groups with no finite value are dropped (listed under `dropped`); with fewer than two groups left, H and p
    are NaN. epsilon^2 ranges over [0, 1]: ~0.01 small, ~0.08 medium, >= 0.26 large (Tomczak & Tomczak 2014).
    """
    clean = {k: _clean(v) for k, v in groups.items()}
    kept = {k: v for k, v in clean.items() if v.size}
    n = int(sum(v.size for v in kept.values()))
    out: dict[str, Any] = {
        "groups": {k: int(v.size) for k, v in kept.items()},
        "dropped": sorted(set(clean) - set(kept)),
        "n": n,
        "H": NAN,
        "p": NAN,
        "epsilon_squared": NAN,
    }
    if len(kept) < 2 or n < 3:
        return out
    allv = np.concatenate(list(kept.values()))
    if np.ptp(allv) == 0:
        out.update(H=0.0, p=1.0, epsilon_squared=0.0)
        return out
    res = sps.kruskal(*kept.values())
    out["H"], out["p"] = float(res.statistic), float(res.pvalue)
    out["epsilon_squared"] = float(res.statistic / (n - 1)) if n > 1 else NAN
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given); NaNs stay NaN and do not count as tests."""
    p = np.asarray(pvalues, dtype=float)
    idx = [i for i in range(p.size) if math.isfinite(p[i])]
    m = len(idx)
    adj = np.full(p.size, NAN)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return [float(v) for v in adj]


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
