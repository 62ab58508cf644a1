"""Reading error-vs-width curves: seed means, the construction's threshold, fits past it, the bound's shape."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from sltlab.analysis.fits import fit_laws


def mean_by(
    rows: list[dict[str, Any]], keys: tuple[str, ...], value: str, geometric: bool = True
) -> dict[tuple, float]:
    """Mean of `value` per group: geometric by default (errors span decades), arithmetic for fractions."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(float(r[value]))
    if not geometric:
        return {k: float(np.mean(v)) for k, v in groups.items()}
    return {k: float(np.exp(np.mean(np.log(np.maximum(v, 1e-30))))) for k, v in groups.items()}


def bound_width(d: int, heads: int, eps: float) -> float:
    """The bound's shape with constant 1: d * ln(H d^1.5 / eps)."""
    return d * math.log(heads * d**1.5 / eps)


REACH_TOL = 0.01


def threshold_of(rows: list[dict[str, Any]], tol: float = REACH_TOL) -> float:
    """The construction's threshold: the smallest width from which (for it and every wider width) at most
    `tol` of the target's merged entries lie outside the source's reachable range, on average over seeds.

    Below it, entries that no subset of candidates can add up to set the error (a range problem, fixed by more
    width or a larger init scale); above it the subset-sum resolution does, which improves exponentially."""
    by_w: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        by_w[int(r["width"])].append(float(r["unreachable_frac"]))
    ok = [w for w in sorted(by_w) if all(np.mean(by_w[v]) <= tol for v in by_w if v >= w)]
    return float(ok[0]) if ok else float("nan")


def merged_entries(d: int, heads: int, blocks: int = 1) -> int:
    """How many subset-sum problems a construction solves: (QK, VO) x heads x d x d per block."""
    return 2 * heads * d * d * blocks


def fit_means_past(rows: list[dict[str, Any]], start: float, floor: float) -> dict[str, Any]:
    """Both laws fitted on the seed-averaged curve (geometric mean per width) for widths >= start.

    Why besides the pooled fit: one barely reachable entry out of 2 H d^2 sets a cell's error, so single cells
    scatter by decades around the trend; the mean over seeds is the curve the theory speaks about."""
    past = [r for r in rows if r["width"] >= start]
    means = mean_by(past, ("width",), "rel_error")
    ws = [w for (w,) in sorted(means) if means[(w,)] > floor]
    return fit_laws(ws, [means[(w,)] for w in ws])


def fit_past(rows: list[dict[str, Any]], start: float, floor: float) -> dict[str, Any]:
    """Both laws fitted on widths >= start, excluding errors under the numerical floor."""
    pts = [(r["width"], r["rel_error"]) for r in rows if r["width"] >= start and r["rel_error"] > floor]
    fit = fit_laws([p[0] for p in pts], [p[1] for p in pts])
    fit["below_floor"] = sum(1 for r in rows if r["width"] >= start and r["rel_error"] <= floor)
    return fit


def _t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t interval of independent values (n < 2: no interval)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()), float(v.mean()) - half, float(v.mean()) + half


def seed_slopes(rows: list[dict[str, Any]], start: float, floor: float) -> dict[str, Any]:
    """The exponential law past `start`, with the weight seed as the unit: per seed, the least-squares slope of
    log(error) on width (errors above `floor`, at least 3 widths), then the mean slope and its 95% t interval
    over seeds, and the width over which the error falls by e (-1 / slope) with the interval carried over."""
    by_seed: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if math.isfinite(start) and r["width"] >= start and r["rel_error"] > floor:
            by_seed[r["seed"]].append((float(r["width"]), math.log(float(r["rel_error"]))))
    slopes = {}
    for seed, pts in sorted(by_seed.items()):
        if len({w for w, _ in pts}) >= 3:
            w, y = np.array(pts).T
            slopes[seed] = float(np.polyfit(w, y, 1)[0])
    mean, lo, hi = _t_interval(list(slopes.values()))
    return {
        "n_seeds": len(slopes),
        "slope": mean, "slope_ci_low": lo, "slope_ci_high": hi,
        "e_fold_width": -1 / mean if mean < 0 else math.nan,
        "e_fold_ci": (-1 / lo if lo < 0 else math.nan, -1 / hi if hi < 0 else math.inf),
        "per_seed_slope": slopes,
    }


def paired_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """a's error over b's, paired by weight seed (rows of one width): the geometric-mean ratio and its 95% t
    interval on the log scale, over the seeds both have."""
    ea = defaultdict(list)
    eb = defaultdict(list)
    for r in a:
        ea[r["seed"]].append(math.log(max(float(r["rel_error"]), 1e-30)))
    for r in b:
        eb[r["seed"]].append(math.log(max(float(r["rel_error"]), 1e-30)))
    diffs = [float(np.mean(ea[s]) - np.mean(eb[s])) for s in sorted(set(ea) & set(eb))]
    mean, lo, hi = _t_interval(diffs)
    return {"n_seeds": len(diffs), "ratio": math.exp(mean) if diffs else math.nan,
            "ci_low": math.exp(lo) if math.isfinite(lo) else math.nan,
            "ci_high": math.exp(hi) if math.isfinite(hi) else math.nan}
