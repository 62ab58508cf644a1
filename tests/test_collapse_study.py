"""The rank-collapse study: its config names bad fields, attention shapes are what they say, the construction is
exact under every mask and temperature, and `sltlab collapse` runs through the executor, records its claims plan
first, writes its files, and feeds the report's claims."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from sltlab.cli import main
from sltlab.errors import ConfigError
from sltlab.nn.transformer import MultiHeadAttention
from sltlab.runs.store import Store
from sltlab.tasks.collapse import CollapseStudy, run_cell, set_attention_shape

TINY = """
name = "collapse-test"
archs = ["block"]
depth = 3
d_model = 4
heads = 1
width = 64
source_gain = 2.0
norms = ["none", "pre-ln"]
masks = ["full", "window"]
window = 1
temperatures = [1.0]
sources = ["random", "constructed", "searched"]
shape_sources = ["constructed"]
seeds = [0, 1, 2]
seq_len = 5
n_inputs = 8
n_train = 32
batch_size = 8
[search]
steps = 3
[construct]
mitm_max = 32
"""


def test_bad_values_name_their_field() -> None:
    for kw, field in ((dict(masks=("full", "diagonal")), "study.masks[1]"),
                      (dict(norms=("pre-ln+affine",)), "study.norms[0]"),
                      (dict(heads=3), "study.heads"),
                      (dict(temperatures=(0.0,)), "study.temperatures[0]"),
                      (dict(mlp=True), "study.mlp"),
                      (dict(seeds=(0, 0)), "study.seeds")):
        with pytest.raises(ConfigError) as err:
            CollapseStudy(**kw)  # type: ignore[arg-type]
        assert err.value.field == field


def test_shapes_vary_one_factor_at_a_time() -> None:
    st = CollapseStudy(masks=("full", "causal", "window"), temperatures=(1.0, 2.0), norms=("none",), seeds=(0,))
    assert st.shapes() == [("full", 1.0), ("causal", 1.0), ("window", 1.0), ("full", 2.0)]
    cells = st.cells()
    assert len(cells) == 4 + 3 * 2  # every source at the base, random + constructed elsewhere
    assert {c.config_dict().get("window") for c in cells if c.mask == "window"} == {2}
    assert len({c.config_dict()["source"] for c in cells}) == 4


def test_window_and_temperature_are_what_they_say() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(4, 1, 3, 3)
    x = torch.randn(2, 5, 4)
    set_attention_shape(attn, 0, 1.0)  # a band of radius 0: each token sees itself only
    with torch.no_grad():
        y, _ = attn(x)
        assert torch.allclose(y, attn.o(attn.v(x)), atol=1e-6)
        set_attention_shape(attn, None, 2.0)
        hot, _ = attn(x)
        set_attention_shape(attn, None, 1.0)
        attn.q.weight.mul_(0.5)  # logits / 2 = temperature 2
        cold, _ = attn(x)
    assert torch.allclose(hot, cold, atol=1e-6)


def test_construction_is_exact_under_every_mask_and_temperature() -> None:
    errs = {}
    for mask, t in (("full", 1.0), ("causal", 1.0), ("window", 1.0), ("full", 3.0)):
        st = CollapseStudy(depth=2, d_model=4, heads=1, width=64, source_gain=2.0, norms=("pre-ln",), masks=(mask,),
                           temperatures=(t,), sources=("constructed",), seeds=(0,), seq_len=5, n_inputs=8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, _ = run_cell(st.cells()[0])
        errs[(mask, t)] = m["layer_rel_error"][0]
        assert len(m["mu_rel"]) == 2 and len(m["target_mu_rel"]) == 2
    assert max(errs.values()) < 1e-2, errs


def test_collapse_command_runs_records_its_plan_and_feeds_the_report(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    store, out = tmp_path / "s.db", tmp_path / "out"
    argv = ["collapse", str(cfg), "--store", str(store), "--out", str(out), "--executor", "serial", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Do tickets collapse like their random source?" in text
    for name in ("collapse.csv", "mu_depth.png", "shapes.png", "summary.md"):
        assert (out / name).is_file(), name
    with Store(store) as st:
        runs = st.runs("collapse")
        plans = st.runs("plan")
    assert len(runs) == 2 * 3 * 3 + 2 * 3 and len(plans) == 1  # norms x seeds x sources, + the window shape
    first = min(r.started for r in runs)
    assert plans[0].metrics["declared_at"] <= first  # declared before the first cell ran
    m = next(r.metrics for r in runs if r.config["source"] == "constructed" and r.config["arch"] == "block")
    assert len(m["mu"]) == 3 and all(0 <= v <= 1 for v in m["mu_rel"]) and math.isfinite(m["erank"][-1])
    # rerun: every cell is found in the store, nothing runs again
    assert main([*argv, "--no-run"]) == 0
    from sltlab.report.build import build_report

    res = build_report(store, tmp_path / "report")
    claims = res.summary["claims"]
    names = {c["name"] for c in claims}
    assert {"collapse-like-source", "ln-keeps-tickets-off-rank-one", "collapse-predicts-error"} <= names
    assert all(c["n"] == 3 for c in claims if c["name"] == "collapse-like-source")
    assert "Rank collapse across depth" in res.markdown.read_text()


def test_claim_measures_read_depth_as_declared() -> None:
    from sltlab.tasks.collapse import at_depth, measure_label

    row = {"metrics": {"mu_rel": [1e-1, 1e-3, 0.0]}}  # the last layer collapsed below float64's floor
    assert at_depth(row, "mu_rel") == at_depth(row, "mu_rel@last") == pytest.approx(-15)
    assert at_depth(row, "mu_rel@mean") == pytest.approx((-1 - 3 - 15) / 3)
    assert "mean over layers" in measure_label("mu_rel@mean")
    with pytest.raises(ConfigError, match="claims.claim"):
        from sltlab.analysis.claims import ClaimSpec, ClaimsPlan

        CollapseStudy(claims=ClaimsPlan(claim=(ClaimSpec("collapse-like-source", "mu_rel@first"),)))
