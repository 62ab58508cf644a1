"""The subset-sum construction of tickets: exact solvers against brute force, MILP time limit and fallback,
the linear building block, fixed masks on supermasks, and the approximation study's `construct` method."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from sltlab.errors import ConfigError
from sltlab.tasks.approx import ApproxStudy, run_cell
from sltlab.tickets import construct as cons
from sltlab.tickets.construct import (
    ConstructConfig,
    NormAssumptionWarning,
    construct_linear,
    greedy_subset_sums,
    milp_subset_sum,
    mitm_subset_sum,
    set_fixed_mask,
    solve_subset_sums,
)
from sltlab.tickets.supermask import Supermask


def brute_force(c: np.ndarray, t: float) -> float:
    best = abs(t)
    for bits in itertools.product([0, 1], repeat=len(c)):
        best = min(best, abs(float(np.dot(bits, c)) - t))
    return best


@pytest.mark.parametrize("m", [1, 5, 10])
def test_exact_solvers_match_brute_force(m: int) -> None:
    rng = np.random.default_rng(m)
    for _ in range(5):
        c = rng.uniform(-1, 1, m) * rng.uniform(-1, 1, m)
        t = float(rng.uniform(-1, 1))
        opt = brute_force(c, t)
        z = mitm_subset_sum(c, t)
        assert abs(c @ z - t) == pytest.approx(opt, abs=1e-12)
        zm, optimal = milp_subset_sum(c, t, time_limit=10.0)
        assert optimal and zm is not None
        assert abs(c @ zm - t) <= opt + 1e-7
        # greedy is allowed to be worse, never better than the optimum
        zg = greedy_subset_sums(c[None], np.array([t]))[0]
        assert abs(c @ zg - t) >= opt - 1e-12


def test_auto_uses_mitm_then_milp_and_records_labels() -> None:
    rng = np.random.default_rng(0)
    C = rng.uniform(-1, 1, (3, 6))
    T = rng.uniform(-0.5, 0.5, 3)
    _, labels = solve_subset_sums(C, T, ConstructConfig(solver="auto", mitm_max=8))
    assert labels == ["mitm"] * 3
    _, labels = solve_subset_sums(C, T, ConstructConfig(solver="auto", mitm_max=4, time_limit=10.0))
    assert labels == ["milp"] * 3


def test_milp_time_limit_falls_back_to_greedy() -> None:
    rng = np.random.default_rng(1)
    C = rng.uniform(-1, 1, (4, 40))
    T = rng.uniform(-1, 1, 4)
    Z, labels = solve_subset_sums(C, T, ConstructConfig(solver="milp", time_limit=0.0))
    assert set(labels) <= {"greedy-fallback", "milp-timelimit"}
    assert "greedy-fallback" in labels
    G = greedy_subset_sums(C, T)
    got = np.abs((C * Z).sum(1) - T)
    assert np.all(got <= np.abs((C * G).sum(1) - T) + 1e-12)


def test_milp_without_solution_uses_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cons, "milp_subset_sum", lambda c, t, tl: (None, False))
    C = np.array([[0.5, 0.25, 0.125]])
    Z, labels = solve_subset_sums(C, np.array([0.625]), ConstructConfig(solver="milp"))
    assert labels == ["greedy-fallback"]
    assert float((C * Z).sum()) == pytest.approx(0.625)


def test_bad_config_names_field() -> None:
    with pytest.raises(ConfigError, match="construct.solver"):
        ConstructConfig(solver="cplex")
    with pytest.raises(ConfigError, match="construct.time_limit"):
        ConstructConfig(time_limit=-1)


def test_linear_construction_structure_and_brute_force_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    d_in, d_out, m = 3, 2, 8
    n = d_in * m + 2  # two spare units are pruned entirely
    a = torch.rand(n, d_in, generator=g) * 2 - 1
    b = torch.rand(d_out, n, generator=g) * 2 - 1
    w = (torch.rand(d_out, d_in, generator=g) * 2 - 1) * 0.5
    c = construct_linear(w, a, b, cfg=ConstructConfig(solver="mitm"))
    # first layer: exactly one connection per used hidden unit, none for the spare ones
    assert c.mask_a.sum(1).tolist() == [1] * (d_in * m) + [0, 0]
    assert not c.mask_b[:, d_in * m :].any()
    realised = (b * c.mask_b) @ (a * c.mask_a)
    assert torch.allclose(realised.double(), c.approx, atol=1e-6)
    for l_out in range(d_out):
        for j in range(d_in):
            units = range(j * m, (j + 1) * m)
            cand = np.array([float(b[l_out, i] * a[i, j]) for i in units])
            opt = brute_force(cand, float(w[l_out, j]))
            assert abs(float(c.approx[l_out, j] - w[l_out, j])) == pytest.approx(opt, abs=1e-6)


def test_set_fixed_mask_edge_popup_and_annealed() -> None:
    mask = torch.tensor([[True, False, True], [False, False, True]])
    for method in ("edge-popup", "annealed"):
        sm = Supermask(mask.shape, method, 0.5, torch.randn(mask.shape))
        set_fixed_mask(sm, mask)
        assert torch.equal(sm.hard_mask().bool(), mask)
    # an empty layer: edge-popup keeps one weight, so the scale goes to zero (refused without a scale)
    sm = Supermask(mask.shape, "edge-popup", 0.5, torch.randn(mask.shape))
    with pytest.raises(ConfigError, match="mask.scale"):
        set_fixed_mask(sm, torch.zeros_like(mask))
    sm = Supermask(mask.shape, "edge-popup", 0.5, torch.randn(mask.shape), scale="layer")
    set_fixed_mask(sm, torch.zeros_like(mask))
    assert not sm(torch.randn(mask.shape)).any()


def _study(**kw) -> ApproxStudy:
    base = dict(
        d_model=4,
        heads=(2,),
        widths=(8, 40, 80),
        variants=("none",),
        methods=("construct",),
        seeds=(0,),
        source_init="theory",
        n_train=64,
        n_test=128,
        seq_len=5,
    )
    base.update(kw)
    return ApproxStudy(**base)


def test_approx_finder_error_falls_with_width_and_masks_match() -> None:
    errors = []
    for cell in _study().cells():
        source, metrics, _ = run_cell(cell)
        errors.append(metrics["rel_error"])
        assert metrics["solver_counts"] == {"mitm": 2 * 2 * 4 * 4}  # heads x (QK, VO) x d x d entries
        # q mask keeps one connection per used hidden unit (width // d units per coordinate)
        qmask = source.attn.q.parametrizations.weight[0].hard_mask()
        used = (cell.width // 4) * 4
        assert int(qmask.sum()) == 2 * used
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2 < errors[0]


def test_small_init_scale_warns_and_stays_far() -> None:
    study = _study(widths=(40,), source_init="kaiming-uniform", source_gain=0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, metrics, _ = run_cell(study.cells()[0])
    assert any(issubclass(w.category, NormAssumptionWarning) for w in caught)
    assert metrics["unreachable_entries"] > 0
    assert metrics["rel_error"] > 0.1
    assert math.isfinite(metrics["qk_norm_ratio"]) and metrics["qk_norm_ratio"] > 1


def test_warm_start_runs_search_from_constructed_ticket() -> None:
    from sltlab.tasks.approx import evaluate_pair, forward_out, random_inputs
    from sltlab.tickets.search import SearchConfig
    from sltlab.tickets.spec import build_model

    study = _study(widths=(80,), search=SearchConfig(steps=15, lr=0.01), scale="none")
    run = study.cells()[0]
    target, source = build_model(run.target_spec()), build_model(run.source_spec())
    x = random_inputs(0, 64, 5, 4, "train")
    with torch.no_grad():
        y, _ = forward_out(target, x)
    x_test = random_inputs(0, 64, 5, 4, "test")
    from sltlab.tasks.theory.warmstart import warm_start

    out = warm_start(
        run, source, target, x, y, evaluate=lambda m: evaluate_pair(m, target, x_test)["rel_error"]
    )
    assert out["warm_error_before"] < 0.2
    assert math.isfinite(out["warm_error_after"])
    assert 0.0 <= out["warm_mask_changed_fraction"] <= 1.0


def test_stack_construct_per_block() -> None:
    study = ApproxStudy(
        module="stack",
        n_blocks=2,
        d_model=4,
        heads=(1,),
        widths=(64,),
        variants=("none",),
        methods=("construct",),
        seeds=(0,),
        source_init="theory",
        n_train=64,
        n_test=64,
        seq_len=4,
    )
    _, metrics, _ = run_cell(study.cells()[0])
    assert len(metrics["per_block_rel_error"]) == 2
    assert max(metrics["per_block_rel_error"]) < 0.05
    # with an MLP the target must be a ReLU MLP (and the source paired: tests/test_construct_blocks.py)
    with pytest.raises(ConfigError, match="study.activation"):
        run_cell(
            ApproxStudy(
                module="stack",
                mlp=True,
                d_model=4,
                heads=(1,),
                widths=(8,),
                variants=("none",),
                methods=("construct",),
                seeds=(0,),
                n_train=8,
                n_test=8,
            ).cells()[0]
        )
