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



def exp_fit_past(rows: list[dict[str, Any]], start: float, floor: float) -> dict[str, Any]:
    """The exponential law of error against width past `start` (errors above `floor`), with the weight seed as
    the unit (sltlab.analysis.fits.fit_laws_by_seed): the slope's t interval over seeds, the e-fold width with
    that interval carried over, R² on the seed means, the lack-of-fit p of both laws and which law passes."""
    from sltlab.analysis.fits import fit_laws_by_seed

    pts = [(r["seed"], float(r["width"]), float(r["rel_error"])) for r in rows
           if math.isfinite(start) and r["width"] >= start and r["rel_error"] > floor]
    fit = fit_laws_by_seed(pts)
    e, p = fit.get("exp"), fit.get("power")
    if not e:
        return {"n_seeds": fit["n_seeds"], "n_widths": len(fit["widths"]), "better": fit["better"]}
    return {
        "n_seeds": fit["n_seeds"], "n_widths": len(fit["widths"]),
        "slope": e["slope"], "slope_ci_low": e["slope_lo"], "slope_ci_high": e["slope_hi"],
        "e_fold_width": -1 / e["slope"] if e["slope"] < 0 else math.nan,
        "e_fold_ci_low": -1 / e["slope_lo"] if e["slope_lo"] < 0 else math.nan,
        "e_fold_ci_high": -1 / e["slope_hi"] if e["slope_hi"] < 0 else math.inf,
        "exp_r2": e["r2"], "power_r2": p["r2"] if p else math.nan,
        "exp_lack_of_fit_p": e["lack_of_fit"]["p"], "power_lack_of_fit_p": p["lack_of_fit"]["p"] if p else math.nan,
        "better": fit["better"],
    }


def paired_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """a's error over b's, paired by weight seed (rows of one setting): the geometric-mean ratio with its 95%
    paired t interval on the log scale, and the exact Wilcoxon p, over the seeds both have."""
    from sltlab.analysis import stats

    def logs(rows: list[dict[str, Any]]) -> dict[Any, float]:
        by: dict[Any, list[float]] = defaultdict(list)
        for r in rows:
            if math.isfinite(float(r["rel_error"])):
                by[r["seed"]].append(math.log(max(float(r["rel_error"]), 1e-30)))
        return {s: float(np.mean(v)) for s, v in by.items()}

    la, lb = logs(a), logs(b)
    shared = sorted(set(la) & set(lb))
    r = stats.paired({s: la[s] for s in shared}, {s: lb[s] for s in shared})
    return {"n_seeds": r.n, "ratio": math.exp(r.effect) if r.n else math.nan,
            "ci_low": math.exp(r.lo) if math.isfinite(r.lo) else math.nan,
            "ci_high": math.exp(r.hi) if math.isfinite(r.hi) else math.nan, "p": r.p, "p_wilcoxon": r.p_wilcoxon}
