"""The report's IMP section and `sltlab analyze` of an IMP run, from real IMP cells on the GLUE fixtures (a few
steps each), a run made before round masks were saved, and stores with no or single-round IMP runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sltlab.cli import main
from sltlab.report import build_report
from sltlab.runs.store import Store
from sltlab.tasks.glue_run import GlueRunConfig, run_cell

FIXTURES = Path(__file__).parent / "fixtures"
TINY = {
    "d_model": 16,
    "n_heads": 2,
    "n_layers": 1,
    "max_len": 12,
    "vocab_size": 60,
    "batch_size": 16,
    "steps": 3,
    "imp_rounds": 2,
    "imp_fraction": 0.5,
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def imp_store(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("imp") / "s.db"
    ids = {}
    with Store(path) as store:
        for norm in ("none", "pre-ln"):
            cfg = GlueRunConfig(task="sst2", method="imp", norm=norm, **TINY)
            ids[norm], _ = run_cell(cfg, store, FIXTURES, cache=path.parent / "cache")
        # a run as older code left it: per-round metrics, no round masks on disk
        old = {**GlueRunConfig(task="sst2", method="imp", norm="none", seed=1, **TINY).to_dict()}
        ids["old"] = store.start("glue", old, 1)
        rounds = [{"round": r, "sparsity": 1 - 0.5**r, "main": 0.5 + 0.1 * r} for r in range(3)]
        store.finish(ids["old"], {"main_metric": "accuracy", "main": 0.7, "rounds": rounds})
    return path, ids


def test_report_imp_section(imp_store, tmp_path) -> None:
    path, ids = imp_store
    res = build_report(path, tmp_path / "r", max_attention_runs=1, n_inputs=4)
    md = res.markdown.read_text()
    section = md.split("## IMP: the ticket across pruning rounds", 1)[1].split("\n## ", 1)[0]
    assert "![IMP masks across rounds, sst2, 2 rounds pruning 0.5 of the survivors (layer scope)" in section
    assert (tmp_path / "r" / "figures" / "imp_rounds_0.png").read_bytes()[:8] == PNG
    assert "1 → 0.5 → 0.25" in section and "– → 0.5 → 0.5" in section  # kept fraction; Jaccard with previous
    assert "have no saved round masks" in section and ids["old"] in section
    summary = json.loads(res.json.read_text())
    by_run = {r["run_id"]: r for r in summary["imp_rounds"]}
    for norm in ("none", "pre-ln"):
        rows = by_run[ids[norm]]["rounds"]
        assert by_run[ids[norm]]["masks"] and [r["round"] for r in rows] == [0, 1, 2]
        assert [r["density"] for r in rows] == pytest.approx([1.0, 0.5, 0.25], abs=1e-3)
        assert [r["jaccard_final"] for r in rows] == pytest.approx([0.25, 0.5, 1.0], abs=1e-3)
        assert all(0.0 <= r["main"] <= 1.0 for r in rows)
    old = by_run[ids["old"]]
    assert not old["masks"] and [r["density"] for r in old["rounds"]] == [1.0, 0.5, 0.25]
    assert old["rounds"][1]["jaccard_prev"] is None  # NaN in the JSON: the overlap is missing, not zero
    (cross,) = summary["imp_cross_norm"]
    assert (cross["a"], cross["b"]) == ("none", "pre-ln") and cross["jaccard"][0] == 1.0  # round 0: all kept
    assert all(cross["chance"][r] < cross["jaccard"][r] <= 1.0 for r in (1, 2))  # same weights: above chance
    assert md.index("## The question and the claims") < md.index("## IMP: the ticket across pruning rounds")


def test_cli_analyze_imp_run(imp_store, capsys) -> None:
    path, ids = imp_store
    capsys.readouterr()
    assert main(["analyze", ids["pre-ln"], "--store", str(path), "--n-inputs", "4", "--data-dir", str(FIXTURES)]) == 0
    text = capsys.readouterr().out
    assert "IMP rounds: each prunes 0.5 of the surviving weights (layer scope)" in text
    lines = [ln.split() for ln in text.splitlines() if ln.strip()[:1].isdigit() and len(ln.split()) == 6]
    assert [ln[:5] for ln in lines] == [
        ["0", "1", "1", "n/a", "0.25"],
        ["1", "0.5", "0.5", "0.5", "0.5"],
        ["2", "0.25", "0.25", "0.5", "1"],
    ]
    assert main(["analyze", ids["old"], "--store", str(path), "--json", "--n-inputs", "4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "imp_rounds" not in data and any("no IMP round masks" in n for n in data["notes"])


def test_report_says_what_imp_data_is_missing(tmp_path) -> None:
    Store(tmp_path / "e.db").close()
    md = build_report(tmp_path / "e.db", tmp_path / "e").markdown.read_text()
    assert "No finished GLUE IMP runs" in md
    with Store(tmp_path / "one.db") as store:
        cfg = GlueRunConfig(task="sst2", method="imp", norm="none", **{**TINY, "imp_rounds": 1}).to_dict()
        rid = store.start("glue", cfg, 0)
        store.finish(rid, {"main_metric": "accuracy", "main": 0.6})
    res = build_report(tmp_path / "one.db", tmp_path / "one", max_attention_runs=1, n_inputs=4)
    assert "all with fewer than 2 pruning rounds (imp_rounds = 1)" in res.markdown.read_text()
    assert "GLUE IMP runs with 2+ pruning rounds" in res.missing


def test_one_head_has_no_diversity_panel_or_row(tmp_path):
    """H = 1: no pair of heads, so no head-diversity row in the table and no empty diversity panel in the figure."""
    import io

    import matplotlib.image as mpimg

    from sltlab.report import plots
    from sltlab.report.build import build_report
    from sltlab.tasks.approx import ApproxStudy, run_study
    from sltlab.tickets.search import SearchConfig

    study = ApproxStudy(d_model=8, heads=(1,), widths=(8,), variants=("none", "pre-ln"), seeds=(0,), n_train=32,
                        n_test=16, batch_size=16, seq_len=4, search=SearchConfig(steps=2, lr=0.05))
    run_study(study, str(tmp_path / "s.db"), progress=False, log=lambda _m: None)
    res = build_report(tmp_path / "s.db", tmp_path / "r", max_attention_runs=1, n_inputs=4)
    section = res.markdown.read_text().split("## Attention entropy and head diversity", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("|") and "diversity" in ln]
    assert rows == [] and "| entropy |" in section
    one_row = plots.attention_layers({"entropy": {"ticket|none": [[0.5]]}, "diversity": {"ticket|none": [[float(
        "nan")]]}}, "t")
    two_rows = plots.attention_layers({"entropy": {"ticket|none": [[0.5]]}, "diversity": {"ticket|none": [[0.1]]}},
                                      "t")
    h1 = mpimg.imread(io.BytesIO(one_row)).shape[0]
    h2 = mpimg.imread(io.BytesIO(two_rows)).shape[0]
    assert h1 < h2  # one panel row (entropy) instead of an empty diversity row
