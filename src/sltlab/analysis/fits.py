"""Which law does error-vs-width follow? Fit both, with the weight seed as the unit, and test each against the data.

exponential: log(err) = a + b * width      (the theory's prediction for constructed tickets)
power:       log(err) = a + b * log(width) (what gradient-searched masks often show instead)

`fit_laws_by_seed` is what reports use:
- the points are per-weight-seed means (score seeds averaged within a weight seed first), so a seed never counts as
  several observations;
- each law's slope is fitted per weight seed and summarised across seeds with a t interval (the seeds are the
  replicates; one seed's slopes at different widths share its target, so pooling its points would understate the
  uncertainty);
- a lack-of-fit F test per law against the replicate spread: the law plus a per-seed offset against the saturated
  additive model (a free mean per width plus a per-seed offset). A small p says the law misses the shape of the
  curve by more than the seeds scatter, however high its R²;
- local slopes between consecutive widths (per seed, t interval across seeds) show where the curve bends;
- R² of each law on the per-seed means, for comparison only.
Nothing here extrapolates: `predict` refuses widths outside the measured range.

`fit_laws` (every point, no seeds) stays for the quick summary files of `sltlab approx`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from sltlab.analysis.stats import mean_ci

LAWS = ("exp", "power")


def _linfit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return float(a), float(b), r2


def _x(law: str, w: np.ndarray) -> np.ndarray:
    return w if law == "exp" else np.log(w)


def fit_laws(widths: Sequence[float], errors: Sequence[float]) -> dict[str, Any]:
    """Fit both laws on every (width, error) point. Returns slopes, intercepts, R^2 and `better` (by R^2 only: a
    description, not a test; reports use fit_laws_by_seed)."""
    w = np.asarray(widths, dtype=float)
    e = np.asarray(errors, dtype=float)
    ok = np.isfinite(e) & (e > 0) & (w > 0)
    w, e = w[ok], e[ok]
    y = np.log(e)
    ea, eb, er2 = _linfit(w, y)
    pa, pb, pr2 = _linfit(np.log(w), y)
    better = "n/a"
    if math.isfinite(er2) and math.isfinite(pr2):
        better = "exponential" if er2 > pr2 else "power"
    return {
        "n_points": int(len(w)), "n_widths": int(len(np.unique(w))),
        "exp_intercept": ea, "exp_slope": eb, "exp_r2": er2,
        "exp_decay_width": (-1.0 / eb) if eb and eb < 0 else float("nan"),
        "power_intercept": pa, "power_slope": pb, "power_r2": pr2, "better": better,
        "falls": bool(eb < 0 and pb < 0) if math.isfinite(eb) and math.isfinite(pb) else False,
    }


def seed_means(points: Sequence[tuple[Hashable, float, float]]) -> dict[Hashable, dict[float, float]]:
    """{weight seed: {width: mean log error}} from (seed, width, error) points (score seeds averaged in log space;
    non-positive or non-finite errors dropped)."""
    acc: dict[Hashable, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for seed, w, e in points:
        if isinstance(e, int | float) and math.isfinite(e) and e > 0 and w > 0:
            acc[seed][float(w)].append(math.log(e))
    return {s: {w: float(np.mean(v)) for w, v in sorted(ws.items())} for s, ws in acc.items()}


def _lack_of_fit(law: str, table: dict[Hashable, dict[float, float]], widths: list[float]) -> dict[str, float]:
    """F test of `law` + seed offsets against width means + seed offsets, on the complete seeds."""
    seeds = [s for s, ws in table.items() if all(w in ws for w in widths)]
    k, j = len(widths), len(seeds)
    out = {"F": math.nan, "df1": math.nan, "df2": math.nan, "p": math.nan, "n_seeds": j}
    if k < 3 or j < 2:
        return out
    y = np.array([table[s][w] for s in seeds for w in widths])
    seed_d = np.kron(np.eye(j), np.ones((k, 1)))  # one column per seed (the offsets)
    xw = _x(law, np.array(widths * j))
    law_x = np.column_stack([seed_d, xw])
    sat_x = np.column_stack([seed_d, np.kron(np.ones((j, 1)), np.eye(k))[:, 1:]])
    ss_law = float(np.sum((y - law_x @ np.linalg.lstsq(law_x, y, rcond=None)[0]) ** 2))
    ss_sat = float(np.sum((y - sat_x @ np.linalg.lstsq(sat_x, y, rcond=None)[0]) ** 2))
    df1, df2 = k - 2, (k - 1) * (j - 1)
    if ss_sat <= 1e-300:
        return {**out, "df1": df1, "df2": df2, "F": math.inf, "p": 0.0 if ss_law > 1e-12 else 1.0}
    f = ((ss_law - ss_sat) / df1) / (ss_sat / df2)
    return {"F": float(f), "df1": df1, "df2": df2, "p": float(sps.f.sf(f, df1, df2)), "n_seeds": j}


def fit_laws_by_seed(points: Sequence[tuple[Hashable, float, float]], level: float = 0.95) -> dict[str, Any]:
    """Both laws fitted with the weight seed as the unit (see the module docstring).

    points: (weight seed, width, error), score seeds included as repeated points of their weight seed. Returns, per
    law ('exp', 'power'): slope (mean of per-seed slopes) with its t interval, intercept, R² on the per-seed means,
    and the lack-of-fit test; plus local slopes between consecutive widths, the widths, n seeds, and `better`
    ('exp' / 'power' when exactly one law passes the lack-of-fit test at 0.05, else 'neither' / 'both' /
    'n/a')."""
    table = seed_means(points)
    widths = sorted({w for ws in table.values() for w in ws})
    out: dict[str, Any] = {"widths": widths, "n_seeds": len(table), "level": level}
    if len(widths) < 2 or not table:
        out.update({law: None for law in LAWS}, local=[], better="n/a")
        return out
    xs_all = np.array([w for ws in table.values() for w in ws])
    ys_all = np.array([v for ws in table.values() for v in ws.values()])
    for law in LAWS:
        slopes, intercepts = [], []
        for ws in table.values():
            if len(ws) >= 2:
                w = np.array(list(ws))
                a, b, _ = _linfit(_x(law, w), np.array(list(ws.values())))
                slopes.append(b)
                intercepts.append(a)
        ci = mean_ci(slopes, level)
        a0, b0, r2 = _linfit(_x(law, xs_all), ys_all)
        out[law] = {"slope": ci.estimate, "slope_lo": ci.lo, "slope_hi": ci.hi, "n_seeds": ci.n,
                    "intercept": float(np.mean(intercepts)) if intercepts else math.nan, "r2": r2,
                    "pooled_slope": b0, "pooled_intercept": a0, "lack_of_fit": _lack_of_fit(law, table, widths)}
    local = []
    for w0, w1 in zip(widths, widths[1:], strict=False):
        per = [(ws[w1] - ws[w0]) / math.log(w1 / w0) for ws in table.values() if w0 in ws and w1 in ws]
        ci = mean_ci(per, level)
        local.append({"from": w0, "to": w1, "power_slope": ci.estimate, "lo": ci.lo, "hi": ci.hi, "n": ci.n})
    out["local"] = local
    passes = {law: (out[law]["lack_of_fit"]["p"] >= 0.05) for law in LAWS
              if math.isfinite(out[law]["lack_of_fit"]["p"])}
    if len(passes) < 2:
        out["better"] = "n/a (fewer than 3 widths: no lack-of-fit test)"
    elif passes["exp"] and not passes["power"]:
        out["better"] = "exp"
    elif passes["power"] and not passes["exp"]:
        out["better"] = "power"
    else:
        out["better"] = "both" if all(passes.values()) else "neither"
    return out


def predict(fit: dict[str, Any], law: str, widths: Sequence[float]) -> np.ndarray:
    """The fitted law's error at `widths`, which must lie within the measured range (no extrapolation)."""
    lo, hi = min(fit["widths"]), max(fit["widths"])
    w = np.asarray(widths, dtype=float)
    if (w < lo - 1e-9).any() or (w > hi + 1e-9).any():
        raise ValueError(f"widths outside the measured range [{lo:g}, {hi:g}]: a fit is not extrapolated")
    f = fit[law]
    return np.exp(f["pooled_intercept"] + f["pooled_slope"] * _x(law, w))
