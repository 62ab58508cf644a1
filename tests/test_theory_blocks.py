"""`sltlab theory blocks`: whole-block constructed tickets through the executor, the stated bound holding in every
sequence, searched tickets beside them, the fits with the weight seed as the unit, and the report's section."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest

from sltlab.cli import main
from sltlab.errors import ConfigError
from sltlab.runs.store import Store
from sltlab.tasks.theory.config import load_config

TINY = """
[construct]
mitm_max = 32
[blocks]
d_model = 4
heads = 1
blocks = 2
widths = [48, 64]
variants = ["none", "pre-ln"]
affine_variants = []
seeds = [0, 1, 2]
source_gain = 2.0
n_test = 32
bound_inputs = 16
search_widths = [48]
search_variants = ["pre-ln"]
search_inits = ["theory"]
search_settings = ["default", "warm"]
search_seeds = [0, 1, 2]
search_steps = 3
n_train = 64
"""


def test_bad_blocks_settings_name_their_field(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(TINY)
    with pytest.raises(ConfigError, match=r"theory.blocks.search_settings\[0\]"):
        load_config(str(cfg), sets=['blocks.search_settings=["longer"]'])
    with pytest.raises(ConfigError, match="theory.blocks.bound_inputs"):
        load_config(str(cfg), sets=["blocks.bound_inputs=64"])
    assert load_config(str(cfg), sets=['blocks.affine_variants=["pre-rms"]']).blocks.affine_variants == ("pre-rms",)


def test_blocks_experiment_runs_and_the_report_tests_its_claims(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(TINY)
    store, out = tmp_path / "s.db", tmp_path / "out"
    argv = ["theory", "blocks", str(cfg), "--store", str(store), "--out-dir", str(out), "--executor", "serial",
            "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    text = capsys.readouterr().out
    assert "bound_holds_min=1" in text and "e_fold_width=" in text
    with Store(store) as st:
        runs = st.runs("theory")
    construct = [r for r in runs if r.config["experiment"] == "blocks-construct"]
    assert len(construct) == 2 * 2 * 3 and len(runs) == len(construct) + 2 * 3
    for r in construct:
        assert len(r.metrics["per_block_rel_error"]) == 2
        assert r.metrics["bound_holds"] == [1.0, 1.0]  # the stated bound holds in every sequence, every block
    widest = [r.metrics["per_block_rel_error"][-1] for r in construct if r.config["width"] == 64]
    assert max(widest) < 0.1
    with open(out / "blocks.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"construct", "search/default/theory", "search/warm/theory"}
    assert (out / "blocks.png").is_file() and (out / "blocks_search.png").is_file()
    from sltlab.report.build import build_report

    res = build_report(store, tmp_path / "report")
    names = {c["name"] for c in res.summary["claims"]}
    assert {"ln-slows-error-growth", "construction-beats-search"} <= names
    md = res.markdown.read_text()
    assert "Theory: constructed tickets for whole blocks" in md and "e-fold width [95% CI]" in md
    # blocks runs are not mixed into the error-vs-width section's settings
    assert "[theory-blocks]" not in md
