"""The search loop's guards: a diverging run raises DivergedError (step, reason, loss) at the next log check, a run
whose learning rate moved nothing is flagged as stalled, and losses are fetched once per log window."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sltlab.errors import DivergedError, SltlabError
from sltlab.tickets.search import DIVERGE_FACTOR, SearchConfig, run_search


def _scripted(values: list[float]):
    """A model with one trainable scalar and a loss that follows `values` step by step (then stays at the last)."""
    model = nn.Linear(1, 1, bias=False)
    calls = {"n": 0}

    def loss_fn(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        v = values[min(calls["n"], len(values) - 1)]
        calls["n"] += 1
        return m(batch).sum() * 0 + torch.tensor(v)

    return model, loss_fn


def test_non_finite_loss_is_divergence_with_its_step() -> None:
    model, loss_fn = _scripted([1.0, 0.9, 0.8, float("nan"), 0.5])
    with pytest.raises(DivergedError) as err:
        run_search(model, loss_fn, [torch.ones(1, 1)], SearchConfig(steps=20, lr=0.1), progress=False, log_every=10)
    e = err.value
    assert isinstance(e, SltlabError)
    assert e.step == 4 and math.isnan(e.loss) and "nan" in e.reason and "step 4" in str(e)


def test_loss_past_the_bound_is_divergence() -> None:
    grown = 1.0 * DIVERGE_FACTOR * 1.5
    model, loss_fn = _scripted([1.0, 2.0, 50.0, grown])
    with pytest.raises(DivergedError, match="grew past 1000 x its initial value 1") as err:
        run_search(model, loss_fn, [torch.ones(1, 1)], SearchConfig(steps=12, lr=0.1), progress=False, log_every=5)
    assert err.value.step == 4 and err.value.loss == grown


def test_loss_scale_keeps_a_warm_start_from_counting_as_divergence() -> None:
    """A search that starts far below its natural scale may rise without diverging (theory's warm start)."""
    model, loss_fn = _scripted([1e-6, 1e-3, 0.5])
    hist = run_search(model, loss_fn, [torch.ones(1, 1)], SearchConfig(steps=6, lr=0.1), progress=False,
                      log_every=3, loss_scale=1.0)
    assert [h["loss"] for h in hist] == [0.5, 0.5]
    with pytest.raises(DivergedError):
        run_search(*_scripted([1e-6, 1e-3, 0.5]), [torch.ones(1, 1)], SearchConfig(steps=6, lr=0.1),
                   progress=False, log_every=3)


def test_history_is_logged_every_log_every_steps_and_at_the_end() -> None:
    model, loss_fn = _scripted([3.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625])
    seen: list[dict] = []
    hist = run_search(model, loss_fn, [torch.ones(1, 1)], SearchConfig(steps=7, lr=0.1), progress=False,
                      log_every=3, callbacks=[lambda step, rec, m: seen.append(dict(rec))])
    assert [h["step"] for h in hist] == [3, 6, 7]
    assert [h["loss"] for h in hist] == [1.0, 0.125, 0.0625]
    # callbacks run every step; the loss is in their record on logged steps only
    assert [r["step"] for r in seen] == list(range(1, 8))
    assert ["loss" in r for r in seen] == [False, False, True, False, False, True, True]


def test_approx_cell_with_a_huge_learning_rate_diverges() -> None:
    from sltlab.tasks.approx import ApproxStudy, run_cell

    study = ApproxStudy(widths=(16,), variants=("none",), seeds=(0,), n_train=128, n_test=32, batch_size=16,
                        search=SearchConfig(steps=40, lr=1e6))
    with pytest.raises(DivergedError) as err:
        run_cell(study.cells()[0])
    assert err.value.step is not None and err.value.step <= 10 and err.value.loss > DIVERGE_FACTOR


def test_a_learning_rate_too_small_to_move_anything_is_flagged() -> None:
    from sltlab.tasks.approx import ApproxStudy, run_cell

    def cell(lr: float) -> dict:
        study = ApproxStudy(widths=(16,), variants=("none",), seeds=(0,), n_train=128, n_test=32, batch_size=16,
                            search=SearchConfig(steps=20, lr=lr))
        return run_cell(study.cells()[0])[1]

    still = cell(1e-12)
    assert still["stalled"] is True and still["mask_changed_fraction"] == 0.0
    assert still["param_changed_fraction"] == 0.0  # the layer scale (1 + 1e-12 == 1 in float32)
    moved = cell(0.05)
    assert moved["stalled"] is False and 0 < moved["mask_changed_fraction"] < 1


def test_dense_training_movement() -> None:
    model = nn.Linear(3, 1)
    x = torch.ones(4, 3)

    def loss_fn(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        return m(b).pow(2).mean()

    hist = run_search(model, loss_fn, [x], SearchConfig(steps=3, lr=0.1), progress=False)
    assert hist.mask_changed_fraction is None and hist.param_changed_fraction == 1.0 and not hist.stalled
    assert hist.movement() == {"stalled": False, "param_changed_fraction": 1.0}
