"""Rank-collapse metrics against hand-computed values and an independent (numpy, loop-by-loop) computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sltlab.analysis import collapse as col


def reference(x: np.ndarray) -> dict[str, float]:
    """The same definitions written out with loops over tokens and columns (no shared code)."""
    t, d = x.shape
    mean = [sum(x[i, j] for i in range(t)) / t for j in range(d)]
    r = [[x[i, j] - mean[j] for j in range(d)] for i in range(t)]

    def comp(m: list[list[float]]) -> float:
        col_sums = [sum(abs(m[i][j]) for i in range(t)) for j in range(d)]
        row_sums = [sum(abs(m[i][j]) for j in range(d)) for i in range(t)]
        return math.sqrt(max(col_sums) * max(row_sums))

    fro_r = math.sqrt(sum(v * v for row in r for v in row))
    fro_x = math.sqrt(sum(float(v) ** 2 for v in x.ravel()))
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    cos = []
    for i in range(t):
        for k in range(i + 1, t):
            cos.append(abs(float(np.dot(x[i], x[k])) / (np.linalg.norm(x[i]) * np.linalg.norm(x[k]))))
    return {
        "res_l1linf": comp(r) / comp(x.tolist()),
        "mu": fro_r,
        "mu_rel": fro_r / fro_x,
        "erank": math.exp(-sum(v * math.log(v) for v in p if v > 0)),
        "sigma_min": float(s.min()),
        "abs_cos": sum(cos) / len(cos),
    }


def test_hand_computed_values() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    m = {k: float(v) for k, v in col.collapse_metrics(x).items()}
    assert m["res_l1linf"] == pytest.approx(math.sqrt(4 / 3 * 1) / 2)  # residual 4/3 x 1, X 2 x 2
    assert m["mu"] == pytest.approx(math.sqrt(12 / 9))
    assert m["mu_rel"] == pytest.approx(math.sqrt(12 / 9) / 2)
    s = np.array([math.sqrt(3), 1.0])  # X^T X = [[2, 1], [1, 2]]
    p = s / s.sum()
    assert m["erank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert m["sigma_min"] == pytest.approx(1.0)
    assert m["abs_cos"] == pytest.approx((0 + 2 / math.sqrt(2)) / 3)


def test_every_metric_equals_an_independent_computation_on_fixed_tensors() -> None:
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(3, 7, 5, generator=g) * torch.tensor([1.0, 0.1, 10.0])[:, None, None]
    got = col.collapse_metrics(batch)
    for b in range(3):
        ref = reference(batch[b].double().numpy())
        for name in col.METRICS:
            assert float(got[name][b]) == pytest.approx(ref[name], rel=1e-10), name


def test_identical_tokens_give_zero_residual_and_rank_one() -> None:
    x = torch.tensor([0.3, -1.2, 2.0, 0.5]).expand(6, 4)  # X = 1 x^T
    m = col.collapse_metrics(x)
    for name in ("res_l1linf", "mu", "mu_rel"):
        assert float(m[name]) == pytest.approx(0.0, abs=1e-12), name
    assert float(m["erank"]) == pytest.approx(1.0)
    assert float(m["sigma_min"]) == pytest.approx(0.0, abs=1e-12)
    assert float(m["abs_cos"]) == pytest.approx(1.0)
    # parallel tokens of different lengths: rank one, but not collapsed to one token
    c = torch.arange(1.0, 7.0)[:, None] * x
    mc = col.collapse_metrics(c)
    assert float(mc["erank"]) == pytest.approx(1.0) and float(mc["abs_cos"]) == pytest.approx(1.0)
    assert float(mc["mu_rel"]) > 0.1


def test_batch_summary_means_and_bad_shape() -> None:
    x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1))
    s = col.batch_summary(x)
    per = col.collapse_metrics(x)
    assert s["erank"] == pytest.approx(float(per["erank"].mean()))
    assert s["mu"] == pytest.approx(float(per["mu"].log().mean().exp()))
    with pytest.raises(ValueError, match="tokens, d"):
        col.mu(torch.ones(3))
