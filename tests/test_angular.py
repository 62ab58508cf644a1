"""The angular-velocity task and the `sltlab theory` command on tiny settings."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from sltlab.cli import main
from sltlab.errors import ConfigError
from sltlab.runs.store import Store
from sltlab.tasks import angular as ang
from sltlab.tickets.construct import NormAssumptionWarning


def test_angular_data_rotates_by_omega() -> None:
    pts, w = ang.angular_data(64, 6, seed=3, tag="t")
    assert pts.shape == (64, 6, 2) and w.shape == (64,)
    assert torch.allclose(pts.norm(dim=-1), torch.ones(64, 6), atol=1e-5)
    assert float(w.abs().max()) <= math.pi
    # the angle between consecutive points is w (mod 2 pi)
    z = torch.complex(pts[..., 0], pts[..., 1])
    step = torch.angle(z[:, 1:] * z[:, :-1].conj())
    diff = torch.remainder(step - w[:, None] + math.pi, 2 * math.pi) - math.pi
    assert float(diff.abs().max()) < 1e-3
    again, _ = ang.angular_data(64, 6, seed=3, tag="t")
    assert torch.equal(pts, again)
    x = ang.with_zero_token(pts)
    assert x.shape == (64, 7, 2) and not x[:, 0].any()


def test_config_validation_names_field() -> None:
    with pytest.raises(ConfigError, match="angular.seq_len"):
        ang.AngularConfig(seq_len=0)
    with pytest.raises(ConfigError, match="angular.source_init"):
        ang.AngularConfig(source_init="ones")


def test_trained_target_learns_and_ticket_converges() -> None:
    cfg = ang.AngularConfig(seq_len=6, train_steps=150, n_train=1024, n_test=256, lr=0.03, source_gain=2.0)
    target, m = ang.train_target(cfg)
    assert m["target_test_mse"] < 0.9 * m["label_var"]
    x, y = ang.angular_data(256, 6, 0, "test")
    errs = []
    for width in (4, 48):
        src, info = ang.mha_ticket(target, width, cfg)
        r = ang.evaluate_mha_ticket(target, src, x, y)
        errs.append(r["rel_error"])
        assert sum(info["solver_counts"].values()) == 2 * 2 * 2  # (QK, VO) x 2 x 2 entries
    assert errs[1] < 1e-3 < errs[0]
    # the ticket's task error approaches the target's
    src, _ = ang.mha_ticket(target, 48, cfg)
    r = ang.evaluate_mha_ticket(target, src, x, y)
    assert abs(r["ticket_mse"] - r["target_mse"]) < 1e-2 * r["target_mse"]


def test_trained_target_outside_norm_assumption_warns() -> None:
    cfg = ang.AngularConfig(seq_len=4, train_steps=5, n_train=64, n_test=32, source_gain=0.05)
    target, _ = ang.train_target(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = ang.mha_ticket(target, 8, cfg)
    assert info["norm_warning"]
    assert any(issubclass(w.category, NormAssumptionWarning) for w in caught)


def test_untrained_stack_per_block_errors() -> None:
    cfg = ang.AngularConfig(seq_len=5, n_test=64)
    small = ang.stack_ticket_errors(3, 4, cfg)
    large = ang.stack_ticket_errors(3, 48, cfg)
    assert len(large["per_block_rel_error"]) == 3
    assert max(large["per_block_rel_error"]) < 1e-3
    assert large["rel_error"] < small["rel_error"]
    # a longer sequence than the one the construction saw changes nothing in the construction
    longer = ang.stack_ticket_errors(3, 48, cfg, seq_len=20)
    assert longer["rel_error"] < 1e-3


TINY = """
[threshold]
d_models = [2]
per_coordinate = [2, 12]
gains = [1.0]
gain_d_model = 2
seeds = [0]
n_test = 32
[seqlen]
seq_lens = [4, 8]
widths = [24]
seeds = [0]
train_steps = 10
n_test = 32
"""


def test_theory_command_writes_store_csv_png_and_resumes(tmp_path, capsys) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(TINY)
    store, out = tmp_path / "s.db", tmp_path / "out"
    for exp in ("threshold", "seqlen"):
        rc = main(
            ["theory", exp, "--config", str(cfg), "--store", str(store), "--out-dir", str(out), "--quiet"]
        )
        assert rc == 0
    assert (out / "threshold.csv").read_text().count("\n") == 1 + 2
    assert (out / "seqlen.png").stat().st_size > 1000
    with Store(store) as s:
        runs = s.runs("theory")
    assert len(runs) == 2 + 2 * 2
    assert {r.config["experiment"] for r in runs} == {"threshold", "seqlen-mha", "seqlen-stack"}
    capsys.readouterr()
    rc = main(
        ["theory", "threshold", "--config", str(cfg), "--store", str(store), "--out-dir", str(out), "--quiet"]
    )
    assert rc == 0
    assert "0 cells run" in capsys.readouterr().out


def test_theory_command_bad_config_is_one_line(tmp_path, capsys) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[threshold]\nseeds = 'zero'\n")
    rc = main(["theory", "threshold", "--config", str(cfg), "--store", str(tmp_path / "s.db")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "theory.threshold.seeds" in err and "Traceback" not in err
    cfg.write_text("[construct]\nsolver = 'cplex'\n")
    assert main(["theory", "threshold", "--config", str(cfg), "--store", str(tmp_path / "s.db")]) == 2
    assert "construct.solver" in capsys.readouterr().err


def test_threshold_and_fit_on_synthetic_curve() -> None:
    from sltlab.commands.theory import fit_past, threshold_of

    # range-limited below width 40 (unreachable entries), exponential past it, one point under the floor
    rows = []
    for w, frac in ((10, 0.5), (20, 0.2), (30, 0.05), (40, 0.005), (50, 0.0), (60, 0.0), (70, 0.0)):
        for s in range(2):
            err = 0.9 if w < 40 else math.exp(-0.3 * w) * (1.0 + 0.1 * s)
            rows.append({"width": w, "seed": s, "unreachable_frac": frac, "rel_error": err})
    assert threshold_of(rows) == 40
    assert math.isnan(threshold_of([{"width": 8, "unreachable_frac": 0.5, "rel_error": 1.0}]))
    fit = fit_past(rows, 40, floor=1e-9)
    assert fit["exp_r2"] > 0.99 and fit["exp_slope"] == pytest.approx(-0.3, rel=0.05)
    assert fit_past(rows, 40, floor=1e-8)["below_floor"] == 2  # width 70, both seeds
