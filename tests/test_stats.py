"""Statistics for comparing norm variants over few seeds: known answers and graceful degradation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sltlab.analysis.stats import (
    bootstrap_ci,
    bootstrap_diff_ci,
    cliffs_delta,
    fmt_p,
    hedges_g,
    holm,
    kruskal_wallis,
    magnitude,
    mann_whitney,
)


def test_bootstrap_ci_contains_mean_and_is_reproducible() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    ci = bootstrap_ci(x)
    assert ci.estimate == 3.0 and ci.n == 5
    assert 1.0 <= ci.lo < 3.0 < ci.hi <= 5.0
    assert bootstrap_ci(x) == ci  # seeded


def test_bootstrap_degenerate_inputs() -> None:
    assert math.isnan(bootstrap_ci([]).estimate)
    one = bootstrap_ci([2.0, float("nan")])
    assert one.estimate == 2.0 and one.n == 1 and math.isnan(one.lo)
    assert one.fmt() == "2 (n=1)"
    assert bootstrap_ci([]).fmt() == "n/a"
    const = bootstrap_ci([1.5, 1.5, 1.5])
    assert const.lo == const.hi == 1.5


def test_bootstrap_diff_ci_sign() -> None:
    d = bootstrap_diff_ci([10, 11, 12, 13], [1, 2, 3, 4])
    assert d.estimate == pytest.approx(9.0)
    assert d.lo > 0


def test_cliffs_delta_extremes() -> None:
    assert cliffs_delta([5, 6, 7], [1, 2, 3]) == 1.0
    assert cliffs_delta([1, 2, 3], [5, 6, 7]) == -1.0
    assert cliffs_delta([1, 2, 3], [1, 2, 3]) == 0.0
    assert magnitude(1.0) == "large" and magnitude(0.1) == "negligible" and magnitude(float("nan")) == "n/a"


def test_hedges_g_known_value() -> None:
    # means differ by 1, pooled sd 1 (var 1 each), n=3+3 -> correction 1 - 3/(4*6-9) = 0.8
    a, b = [0.0, 1.0, 2.0], [-1.0, 0.0, 1.0]
    assert hedges_g(a, b) == pytest.approx(0.8)
    assert math.isnan(hedges_g([1.0], [2.0, 3.0]))


def test_mann_whitney_separated_groups() -> None:
    out = mann_whitney([10, 11, 12, 13, 14], [1, 2, 3, 4, 5])
    assert out["U"] == 25.0
    assert out["p"] == pytest.approx(2 / math.comb(10, 5), rel=1e-6)  # exact two-sided p
    assert out["cliffs_delta"] == 1.0 and out["effect"] == "large"
    one_sided = mann_whitney([10, 11, 12, 13, 14], [1, 2, 3, 4, 5], alternative="greater")
    assert one_sided["p"] == pytest.approx(1 / math.comb(10, 5), rel=1e-6)


def test_mann_whitney_tolerates_empty_and_constant() -> None:
    assert math.isnan(mann_whitney([], [1, 2])["p"])
    assert mann_whitney([1, 1], [1, 1])["p"] == 1.0


def test_kruskal_wallis() -> None:
    out = kruskal_wallis({"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9], "empty": []})
    assert out["dropped"] == ["empty"] and out["n"] == 9
    assert out["H"] == pytest.approx(7.2)  # 12/(9*10) * 3*(2^2+5^2+8^2) - 3*10
    assert out["p"] == pytest.approx(math.exp(-7.2 / 2), rel=1e-6)  # chi2 with 2 dof
    assert out["epsilon_squared"] == pytest.approx(7.2 / 8)
    assert math.isnan(kruskal_wallis({"a": [1, 2]})["p"])


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adj = holm([0.5, float("nan")])
    assert adj[0] == 0.5 and math.isnan(adj[1])
    assert fmt_p(0.0001) == "<0.001" and fmt_p(float("nan")) == "n/a" and fmt_p(0.25) == "0.250"


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=8),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8),
)
def test_cliffs_delta_is_antisymmetric_and_bounded(a: list[float], b: list[float]) -> None:
    d = cliffs_delta(a, b)
    assert -1.0 <= d <= 1.0
    assert cliffs_delta(b, a) == pytest.approx(-d)
    ci = bootstrap_ci(a, n_boot=200)
    assert ci.lo <= ci.hi + 1e-9 and min(a) - 1e-9 <= ci.estimate <= max(a) + 1e-9
    assert np.isfinite(ci.lo)
