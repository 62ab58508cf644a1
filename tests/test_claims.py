"""The claims layer, selection off the reported data, and law fits with the weight seed as the unit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from sltlab.analysis.claims import ClaimSet, ClaimSpec, ClaimsPlan, make_claim, shared_units, sizing
from sltlab.analysis.fits import fit_laws_by_seed, predict
from sltlab.analysis.selection import check_select_on, select
from sltlab.errors import ConfigError


def _arms(effect: float, n: int = 10, sd: float = 0.01, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    base = rng.normal(0.3, 0.05, n)  # weight seeds differ a lot; the pairing removes it
    return ({i: float(base[i] + effect + rng.normal(0, sd)) for i in range(n)},
            {i: float(base[i]) for i in range(n)})


def test_verdicts_follow_the_rule() -> None:
    cs = ClaimSet()
    a, b = _arms(0.05)
    up = cs.add(make_claim("up", "s", "ln", "none", "m", a, b, "greater", margin=0.01))
    down = cs.add(make_claim("down", "s", "ln", "none", "m", a, b, "less", margin=0.01))
    a0, b0 = _arms(0.0, n=12, sd=0.002)
    same = cs.add(make_claim("same", "s", "ln", "none", "m", a0, b0, "greater", margin=0.01))
    nomargin = cs.add(make_claim("nomargin", "s", "ln", "none", "m", a0, b0, "greater"))
    a1, b1 = _arms(0.0, n=2)
    tiny = cs.add(make_claim("tiny", "s", "ln", "none", "m", a1, b1, "two-sided", margin=0.01))
    # a real difference (0.003, sd 0.0005 over 12 seeds) inside the declared margin: negligible, not "supported"
    a2, b2 = _arms(0.003, n=12, sd=0.0005)
    small = cs.add(make_claim("small", "s", "ln", "none", "m", a2, b2, "greater", margin=0.01))
    cs.finalize()
    assert small.p_holm < 0.05 and small.p_tost_holm < 0.05
    assert small.verdict == "equivalent within margin"
    assert up.verdict == "supported"
    assert down.verdict == "contradicted"
    assert same.verdict == "equivalent within margin"
    assert nomargin.verdict == "inconclusive"  # no difference and no margin: never "the same"
    assert tiny.verdict == "inconclusive"  # fewer than 3 weight seeds
    # Holm over every p-value of the set: 6 difference tests + 5 TOSTs (nomargin has none; tiny has 2 units)
    assert cs.m == 11
    assert all(c.p_holm >= c.result.p for c in cs.claims if math.isfinite(c.result.p))
    assert up.alpha_mde == pytest.approx(0.05 / 11)
    assert math.isfinite(up.mde) and up.mde > 0
    d = up.as_dict()
    assert d["n"] == 10 and set(d["values"]) == {str(i) for i in range(10)} and d["verdict"] == "supported"


def test_holm_can_turn_a_nominal_win_into_inconclusive() -> None:
    # differences 0.01 + (-0.006, 0.006, -0.006, 0.006, 0, 0): t = 4.56 with 5 df, p = 0.006
    b = {i: 0.3 + 0.1 * i for i in range(6)}
    a = {i: b[i] + 0.01 + d for i, d in enumerate((-0.006, 0.006, -0.006, 0.006, 0.0, 0.0))}
    alone = ClaimSet()
    c1 = alone.add(make_claim("x", "s", "ln", "none", "m", a, b, "greater"))
    alone.finalize()
    crowd = ClaimSet()
    c2 = crowd.add(make_claim("x", "s", "ln", "none", "m", a, b, "greater"))
    for i in range(30):
        x, y = _arms(0.0, n=6, seed=100 + i)
        crowd.add(make_claim(f"noise{i}", "s", "ln", "none", "m", x, y))
    crowd.finalize()
    assert c1.result.p < 0.05 and c1.verdict == "supported"
    assert c2.verdict == "inconclusive" and c2.p_holm > c1.p_holm


def test_shared_units_drop_what_one_arm_lacks() -> None:
    a, b, dropped = shared_units({0: 1.0, 1: 2.0, 2: float("nan")}, {0: 1.5, 1: 2.5, 3: 0.0})
    assert set(a) == set(b) == {0, 1} and dropped == 2


def test_plan_validation_and_sizing() -> None:
    with pytest.raises(ConfigError, match="direction"):
        ClaimSpec("x", "m", direction="up")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="twice"):
        ClaimsPlan(claim=(ClaimSpec("x", "m"), ClaimSpec("x", "m2")))
    plan = ClaimsPlan(claim=(ClaimSpec("x", "m", margin=0.02, sd=0.02), ClaimSpec("y", "m")))
    rows = sizing(plan, n_tests=20, n_units=12)
    assert rows[0]["n_difference"] > 10 and rows[0]["n_equivalence"] > 10 and "n_difference" not in rows[1]


def test_selection_refuses_dev() -> None:
    for bad in ("dev", "test"):
        with pytest.raises(ConfigError, match="optimistic"):
            check_select_on(bad, "study.select_on")
    check_select_on("train-holdout", "study.select_on")


def test_approx_and_glue_configs_cannot_choose_on_dev() -> None:
    from sltlab.tasks.approx import ApproxStudy
    from sltlab.tasks.glue_run import GlueSweepConfig

    with pytest.raises(ConfigError, match="study.select_on"):
        ApproxStudy(lr_grid=(0.01, 0.1), select_on="dev")
    with pytest.raises(ConfigError, match="select_on"):
        GlueSweepConfig(lr_grid={"*": [0.1, 0.3]}, select_on="dev", run={"holdout": 100})
    with pytest.raises(ConfigError, match="run.holdout"):
        GlueSweepConfig(lr_grid={"*": [0.1, 0.3]})  # a grid with nothing held out to choose on


def test_peft_sweep_cannot_choose_on_dev() -> None:
    pytest.importorskip("transformers")
    from sltlab.tasks.peft.config import SweepConfig

    with pytest.raises(ConfigError, match="select_on"):
        SweepConfig(tasks=("rte",), methods=("ln",), select_on="dev")
    sw = SweepConfig(tasks=("rte",), methods=("ln",))
    assert sw.chooses and sw.base["holdout"] == 500  # a grid of two: runs hold rows out to choose on


@dataclass
class Rec:
    config: dict
    metrics: dict = field(default_factory=dict)


def test_select_chooses_on_the_held_out_metric_never_on_dev() -> None:
    recs = []
    # lr 0.1 wins on dev, lr 0.01 on held-out data: the choice must follow held-out
    for lr, hold, dev in ((0.01, 0.2, 0.5), (0.1, 0.4, 0.1)):
        recs.append(Rec({"variant": "none", "search": {"lr": lr}, "seed": 0, "score_seed": 0},
                        {"holdout_rel_error": hold, "rel_error": dev}))
    for seed in (1, 2):  # the chosen lr's other seeds
        recs.append(Rec({"variant": "none", "search": {"lr": 0.01}, "seed": seed, "score_seed": 0},
                        {"holdout_rel_error": 9.0, "rel_error": 9.0}))
    sel = select(recs, ("search.lr",), "holdout_rel_error", lower_is_better=True)
    (choice,) = sel.choices
    assert choice.chosen == "[0.01]" and choice.n_units == 1  # only seed 0 is shared by both candidates
    assert [r.config["seed"] for r in sel.kept] == [0, 1, 2]


def test_select_tie_goes_to_the_first_listed() -> None:
    recs = [Rec({"norm": "none", "lr": lr, "seed": 0}, {"holdout_main": 0.8}) for lr in (0.3, 0.1)]
    sel = select(recs, ("lr",), "holdout_main", lower_is_better=False, order={"lr": [0.3, 0.1]})
    assert sel.choices[0].chosen == "[0.3]"


def _points(law: str, seeds: int = 8, widths=(16, 32, 64, 128), noise: float = 0.02, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for s in range(seeds):
        off = rng.normal(0, 0.2)  # each weight seed its own level
        for w in widths:
            logerr = (-0.9 * math.log(w) if law == "power" else -0.02 * w) + off + rng.normal(0, noise)
            for _ in range(3):  # score seeds: repeated points of their weight seed, not units
                out.append((s, w, math.exp(logerr + rng.normal(0, noise / 2))))
    return out


def test_fits_use_seed_means_and_detect_the_wrong_law() -> None:
    fit = fit_laws_by_seed(_points("power"))
    assert fit["n_seeds"] == 8 and fit["power"]["n_seeds"] == 8  # units are weight seeds, not 96 points
    p = fit["power"]
    assert p["slope_lo"] < -0.9 < p["slope_hi"]
    assert p["lack_of_fit"]["p"] > 0.01  # the true law fits within the seeds' spread
    assert fit["exp"]["lack_of_fit"]["p"] < 1e-6  # the exponential misses the curvature
    assert fit["better"] == "power"
    assert [lo["from"] for lo in fit["local"]] == [16, 32, 64]
    assert all(lo["lo"] < -0.9 < lo["hi"] for lo in fit["local"])
    fe = fit_laws_by_seed(_points("exp"))
    assert fe["better"] == "exp"


def test_fits_never_extrapolate() -> None:
    fit = fit_laws_by_seed(_points("power"))
    assert predict(fit, "power", [16, 128]).shape == (2,)
    with pytest.raises(ValueError, match="measured range"):
        predict(fit, "power", [256])
    two = fit_laws_by_seed(_points("power", widths=(16, 64)))
    assert math.isnan(two["power"]["lack_of_fit"]["p"]) and two["better"].startswith("n/a")
