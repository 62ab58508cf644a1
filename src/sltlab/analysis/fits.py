"""Which law does error-vs-width follow? Fit both and say which fits better, honestly.

exponential: log(err) = a + b * width      (the theory's prediction for constructed tickets)
power:       log(err) = a + b * log(width) (what gradient-searched masks often show instead)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _linfit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return float(a), float(b), r2


def fit_laws(widths: Sequence[float], errors: Sequence[float]) -> dict[str, Any]:
    """Fit both laws on every (width, error) point (seeds included). Returns slopes, intercepts, R^2 and `better`.

    exp_slope is d log(err) / d width (per unit width); exp_decay_width = -1/exp_slope is the width over which the
    error falls by a factor e. power_slope is the exponent p in err ~ width^p.
    """
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
        "n_points": int(len(w)),
        "n_widths": int(len(np.unique(w))),
        "exp_intercept": ea,
        "exp_slope": eb,
        "exp_r2": er2,
        "exp_decay_width": (-1.0 / eb) if eb and eb < 0 else float("nan"),
        "power_intercept": pa,
        "power_slope": pb,
        "power_r2": pr2,
        "better": better,
        "falls": bool(eb < 0 and pb < 0) if math.isfinite(eb) and math.isfinite(pb) else False,
    }
