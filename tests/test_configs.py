"""Every config the repo ships parses into its typed config: a README command must never meet a stale file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sltlab.runs.config import from_dict, load_toml
from sltlab.tasks.approx import load_study as load_approx
from sltlab.tasks.collapse import load_study as load_collapse
from sltlab.tasks.glue_run import GlueSweepConfig
from sltlab.tasks.lm_run import load_study as load_lm
from sltlab.tasks.peft import SweepConfig
from sltlab.tasks.theory.config import load_config as load_theory

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def _load(path: Path) -> object:
    kind = path.stem.split("_")[0]
    if kind in ("approx", "hypothesis"):  # hypothesis.toml: the pre-registered approximation study
        return load_approx(str(path))
    if kind == "glue":
        return GlueSweepConfig.from_dict(load_toml(path)["sweep"]).cells()
    if kind == "lm":
        return load_lm(str(path))
    if kind == "peft":
        return from_dict(SweepConfig, load_toml(path)["sweep"], prefix="sweep")
    if kind == "theory":
        return load_theory(str(path))
    if kind == "collapse":
        return load_collapse(str(path)).cells()
    raise AssertionError(f"{path.name}: no loader for configs named {kind}_*.toml; add one here")


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path: Path) -> None:
    assert _load(path)
