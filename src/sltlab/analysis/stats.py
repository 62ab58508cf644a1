"""Statistics for comparing variants over a handful of weight seeds, with intervals that say their true coverage.

What a report may claim rests on four rules (docs/DESIGN.md §4), and this module gives the pieces for each:

- **The weight seed is the unit.** Two variants of one study share their random weights and target per weight seed,
  so they are compared *paired*: `paired` takes {unit: value} mappings and refuses input whose units differ. It
  gives the mean difference with its paired t interval, the paired t p-value, the exact Wilcoxon signed-rank
  p-value beside it (distribution-free; note that with n weight seeds it can never go below 2 / 2^n, 0.25 at n = 3),
  and the standardised effect d_z = mean / sd of the differences with its exact interval (noncentral t).
- **Intervals are t intervals**, exact for normal data at any n; `mean_ci` is the one the report uses for a mean.
  The percentile bootstrap this module used to offer covers about 75% at n = 3 and 84% at n = 6 while labelled 95%;
  it is gone. `bca_ci` (scipy's BCa bootstrap) is kept for statistics other than a mean, but it under-covers too
  at these sizes (0.72 at n = 3, 0.91 at n = 20; docs/benchmarks/interval_coverage.md); tests/test_stats.py
  simulates the coverage of the t interval at the sizes the reports use.
- **"The same" only from TOST** (`tost_paired`, statsmodels) within a margin declared before the run.
- **Multiplicity and power**: `holm` (statsmodels) across every claim of a report; `mde` the smallest effect a paired
  t test of n units detects with the given power at the given alpha; `n_for_effect` / `n_for_equivalence` size a
  study from pilot SDs.

Every function drops NaNs and returns NaN (never raises) when there are too few values, so a partial store still
gives a report — except `paired`, which raises on unpaired input because silently dropping a unit would change
the question.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sps

NAN = float("nan")


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).reshape(-1)
    return a[np.isfinite(a)]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a (lo, hi) confidence interval at `level`, over `n` values, made by `method`."""

    estimate: float
    lo: float
    hi: float
    level: float
    n: int
    method: str = "t"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fmt(self, digits: int = 3) -> str:
        if not math.isfinite(self.estimate):
            return "n/a"
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"{self.estimate:.{digits}g} (n={self.n})"
        return f"{self.estimate:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}] (n={self.n})"


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Student t interval of the mean: exact coverage for normal data at any n >= 2. One value: (NaN, NaN)."""
    a = _clean(values)
    if a.size == 0:
        return Interval(NAN, NAN, NAN, level, 0)
    est = float(a.mean())
    if a.size < 2:
        return Interval(est, NAN, NAN, level, 1)
    sd = float(a.std(ddof=1))
    if sd == 0:
        return Interval(est, est, est, level, int(a.size))
    half = float(sps.t.ppf(0.5 + level / 2, a.size - 1)) * sd / math.sqrt(a.size)
    return Interval(est, est - half, est + half, level, int(a.size))


def bca_ci(values: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], float] = np.mean,
           level: float = 0.95, n_resamples: int = 4999, seed: int = 0) -> Interval:
    """BCa bootstrap interval (scipy.stats.bootstrap) of `stat`; seeded. Under-covers at small n (about 0.81 at
    n = 4 and 0.91 at n = 20 for a normal mean): use `mean_ci` for means."""
    a = _clean(values)
    if a.size == 0:
        return Interval(NAN, NAN, NAN, level, 0, "bca")
    est = float(stat(a))
    if a.size < 3 or np.ptp(a) == 0:
        return Interval(est, NAN if np.ptp(a) else est, NAN if np.ptp(a) else est, level, int(a.size), "bca")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap((a,), lambda x, axis=-1: np.apply_along_axis(stat, axis, x), confidence_level=level,
                            n_resamples=n_resamples, method="BCa", random_state=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(est, lo, hi, level, int(a.size), "bca")


def simulate_coverage(method: str, n: int, reps: int = 2000, level: float = 0.95, seed: int = 0,
                      dist: str = "normal", n_resamples: int = 999) -> float:
    """Share of `reps` simulated samples of size n whose `method` interval ("t", "bca" or the old "percentile"
    bootstrap) covers the true mean: the coverage a label of `level` claims. dist: normal | lognormal."""
    rng = np.random.default_rng(seed)
    if dist == "normal":
        data, mu = rng.standard_normal((reps, n)), 0.0
    elif dist == "lognormal":
        data, mu = rng.lognormal(0.0, 0.5, (reps, n)), math.exp(0.125)
    else:
        raise ValueError(f"unknown dist {dist!r}")
    if method == "t":
        m, sd = data.mean(1), data.std(1, ddof=1)
        half = sps.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
        return float(np.mean((m - half <= mu) & (mu <= m + half)))
    hits = 0
    for i, row in enumerate(data):
        if method == "bca":
            ci = bca_ci(row, level=level, n_resamples=n_resamples, seed=seed + i)
            lo, hi = ci.lo, ci.hi
        elif method == "percentile":
            idx = np.random.default_rng(seed + i).integers(0, n, size=(n_resamples, n))
            boots = row[idx].mean(1)
            lo, hi = np.quantile(boots, (1 - level) / 2), np.quantile(boots, 1 - (1 - level) / 2)
        else:
            raise ValueError(f"unknown method {method!r}")
        hits += bool(lo <= mu <= hi)
    return hits / reps


# ------------------------------------------------------------------------------------------------ paired tests
class UnpairedError(ValueError):
    """The two arms of a paired comparison do not have the same units."""


@dataclass(frozen=True)
class Paired:
    """A paired comparison a - b over n units (weight seeds).

    effect: mean of the differences, with its paired t interval [lo, hi]; p: paired t test (two-sided unless
    `alternative` says otherwise); p_wilcoxon: exact Wilcoxon signed-rank (NaN when every difference is 0);
    dz: mean / sd of the differences, with its noncentral-t interval; sd_diff: sd of the differences."""

    n: int
    mean_a: float
    mean_b: float
    effect: float
    lo: float
    hi: float
    p: float
    p_wilcoxon: float
    dz: float
    dz_lo: float
    dz_hi: float
    sd_diff: float
    alternative: str
    level: float
    units: tuple[Any, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["units"] = [str(u) for u in self.units]
        return d


def _pairs(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        raise UnpairedError("a paired comparison needs {unit: value} mappings for both arms (the weight seed as the "
                            "unit); plain lists carry no pairing")
    ka, kb = set(a), set(b)
    if ka != kb:
        only_a, only_b = sorted(map(str, ka - kb)), sorted(map(str, kb - ka))
        raise UnpairedError(f"the arms of a paired comparison must have the same units: only in a: {only_a[:5]}, "
                            f"only in b: {only_b[:5]}")
    units = sorted(ka, key=lambda u: (str(type(u)), u))
    x = np.array([a[u] for u in units], dtype=float)
    y = np.array([b[u] for u in units], dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    return [u for u, k in zip(units, ok, strict=True) if k], x[ok], y[ok]


def dz_interval(dz: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact interval of the standardised mean difference d_z from n paired units: invert the noncentral t
    distribution of t = d_z * sqrt(n) (scipy has the distribution, not the inversion)."""
    if n < 2 or not math.isfinite(dz):
        return NAN, NAN
    t_obs, df, s = dz * math.sqrt(n), n - 1, math.sqrt(n)
    alpha = 1 - level

    def nc_for(target: float) -> float:
        f = lambda nc: sps.nct.cdf(t_obs, df, nc) - target  # noqa: E731 - decreasing in nc
        lo, hi = t_obs - 10 - abs(t_obs), t_obs + 10 + abs(t_obs)
        for _ in range(60):
            if f(lo) > 0 > f(hi):
                break
            lo, hi = lo * 2 - 1, hi * 2 + 1
        return float(optimize.brentq(f, lo, hi, xtol=1e-10))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lo, hi = nc_for(1 - alpha / 2) / s, nc_for(alpha / 2) / s
            if math.isfinite(lo) and math.isfinite(hi):
                return lo, hi
        except (ValueError, RuntimeError):
            pass
    # scipy's noncentral t loses precision far in the tail (|t| in the tens): the large-sample interval
    half = float(sps.norm.ppf(1 - alpha / 2)) * math.sqrt(1 / n + dz**2 / (2 * (n - 1)))
    return dz - half, dz + half


def paired(a: Mapping[Hashable, float], b: Mapping[Hashable, float], alternative: str = "two-sided",
           level: float = 0.95) -> Paired:
    """Paired comparison of a - b by unit. Raises UnpairedError when the arms' units differ (a unit missing from
    one arm, or plain lists)."""
    units, x, y = _pairs(a, b)
    d = x - y
    n = int(d.size)
    mean_a = float(x.mean()) if n else NAN
    mean_b = float(y.mean()) if n else NAN
    if n == 0:
        return Paired(0, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, alternative, level, ())
    effect = float(d.mean())
    ci = mean_ci(d, level)
    sd = float(d.std(ddof=1)) if n > 1 else NAN
    p = p_w = NAN
    if n > 1:
        p = (1.0 if effect == 0 else 0.0) if sd == 0 else float(sps.ttest_rel(x, y, alternative=alternative).pvalue)
        nz = d[d != 0]
        if nz.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                method = "exact" if np.unique(np.abs(nz)).size == nz.size else "approx"
                p_w = float(sps.wilcoxon(nz, alternative=alternative, method=method).pvalue)
    dz = effect / sd if n > 1 and sd and math.isfinite(sd) else NAN
    dz_lo, dz_hi = dz_interval(dz, n, level)
    return Paired(n, mean_a, mean_b, effect, ci.lo, ci.hi, p, p_w, dz, dz_lo, dz_hi, sd, alternative, level,
                  tuple(units))


def tost_paired(a: Mapping[Hashable, float], b: Mapping[Hashable, float], margin: float) -> float:
    """TOST p-value (statsmodels.ttost_paired) that the mean paired difference a - b lies within (-margin,
    +margin); small p = equivalent. NaN with fewer than 2 units or no margin."""
    units, x, y = _pairs(a, b)
    if x.size < 2 or not (math.isfinite(margin) and margin > 0):
        return NAN
    d = x - y
    if np.ptp(d) == 0:  # no spread: statsmodels divides by zero
        return 0.0 if abs(d[0]) < margin else 1.0
    from statsmodels.stats.weightstats import ttost_paired

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(ttost_paired(x, y, -margin, margin)[0])


# --------------------------------------------------------------------------------------------- power and Holm
def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels), same order; NaNs stay NaN and do not count as tests."""
    p = np.asarray(pvalues, dtype=float)
    adj = np.full(p.size, NAN)
    ok = np.isfinite(p)
    if ok.any():
        from statsmodels.stats.multitest import multipletests

        adj[ok] = multipletests(p[ok], method="holm")[1]
    return [float(v) for v in adj]


def mde(n: int, sd: float, alpha: float, power: float = 0.8, alternative: str = "two-sided") -> float:
    """Smallest mean paired difference a paired t test of n units detects with `power` at `alpha`, given the sd of
    the differences (statsmodels TTestPower). NaN below 2 units or without an sd."""
    if n < 2 or not (math.isfinite(sd) and sd > 0) or not 0 < alpha < 1:
        return NAN
    from statsmodels.stats.power import TTestPower

    alt = {"two-sided": "two-sided", "greater": "larger", "less": "smaller"}[alternative]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative=alt)
        except (ValueError, RuntimeError):
            return NAN
    d = abs(float(np.asarray(d).reshape(-1)[0]))
    return d * sd if math.isfinite(d) else NAN


def n_for_effect(effect: float, sd: float, alpha: float, power: float = 0.8) -> int:
    """Units a two-sided paired t test needs to detect `effect` with `power` at `alpha` (at least 2)."""
    if not (math.isfinite(effect) and effect and math.isfinite(sd) and sd > 0):
        return 0
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = TTestPower().solve_power(effect_size=abs(effect) / sd, nobs=None, alpha=alpha, power=power)
    return max(2, math.ceil(float(np.asarray(n).reshape(-1)[0])))


def tost_power(n: int, sd: float, margin: float, alpha: float, true_diff: float = 0.0) -> float:
    """Power of the paired TOST at n units when the true difference is `true_diff` (noncentral t; statsmodels
    has no paired-TOST power)."""
    if n < 2 or not (sd > 0 and margin > 0):
        return NAN
    df, se = n - 1, sd / math.sqrt(n)
    tc = float(sps.t.ppf(1 - alpha, df))
    # reject both one-sided nulls: (d + margin)/se > tc and (d - margin)/se < -tc
    p_lower = sps.nct.sf(tc, df, (true_diff + margin) / se)
    p_upper = sps.nct.cdf(-tc, df, (true_diff - margin) / se)
    return float(max(0.0, p_lower + p_upper - 1.0))


def n_for_equivalence(sd: float, margin: float, alpha: float, power: float = 0.8, max_n: int = 10_000) -> int:
    """Units a paired TOST needs to show equivalence within ±margin with `power` when the true difference is 0."""
    if not (sd > 0 and margin > 0):
        return 0
    for n in range(2, max_n + 1):
        if tost_power(n, sd, margin, alpha) >= power:
            return n
    return max_n


# ------------------------------------------------------------------------------- unpaired and descriptive
def cliffs_delta(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """P(a > b) - P(a < b) over all pairs: +1 when every a exceeds every b, 0 for complete overlap."""
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        return NAN
    return float(np.sign(x[:, None] - y[None, :]).mean())


def magnitude(delta: float) -> str:
    """Words for a Cliff's delta (Romano et al. 2006)."""
    if not math.isfinite(delta):
        return "n/a"
    d = abs(delta)
    return "negligible" if d < 0.147 else "small" if d < 0.33 else "medium" if d < 0.474 else "large"


def kruskal_wallis(groups: Mapping[str, Sequence[float] | np.ndarray]) -> dict[str, Any]:
    """Kruskal-Wallis H test across independent groups with epsilon-squared, H / (n - 1). For variants that share
    weight seeds use paired comparisons instead; this is for groups without a pairing."""
    clean = {k: _clean(v) for k, v in groups.items()}
    kept = {k: v for k, v in clean.items() if v.size}
    n = int(sum(v.size for v in kept.values()))
    out: dict[str, Any] = {"groups": {k: int(v.size) for k, v in kept.items()},
                           "dropped": sorted(set(clean) - set(kept)),
                           "n": n, "H": NAN, "p": NAN, "epsilon_squared": NAN}
    if len(kept) < 2 or n < 3:
        return out
    if np.ptp(np.concatenate(list(kept.values()))) == 0:
        out.update(H=0.0, p=1.0, epsilon_squared=0.0)
        return out
    res = sps.kruskal(*kept.values())
    out["H"], out["p"] = float(res.statistic), float(res.pvalue)
    out["epsilon_squared"] = float(res.statistic / (n - 1))
    return out


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
