import subprocess
import sys

import pytest

from sltlab.runs.store import Store
from sltlab.tasks.approx import ApproxStudy, load_study, run_study
from sltlab.tickets.search import SearchConfig

SMALL = dict(d_model=8, heads=(2,), n_train=512, n_test=128, batch_size=64, seq_len=6, seeds=(0,),
             search=SearchConfig(steps=150, lr=0.05))


def test_error_falls_with_width_for_each_variant(tmp_path):
    study = ApproxStudy(widths=(4, 32), variants=("none", "pre-ln", "ln-integrated"), store=str(tmp_path / "s.db"),
                        **SMALL)
    ids = run_study(study, progress=False, log=lambda _: None)
    with Store(study.store) as store:
        recs = [store.get(i) for i in ids]
    for variant in study.variants:
        err = {r.config["width"]: r.metrics["rel_error"] for r in recs if r.config["variant"] == variant}
        assert err[32] < 0.8 * err[4], (variant, err)
        assert all(0 < e < 1.5 for e in err.values())
    assert all((store.path.parent / "artifacts" / i / "ticket.safetensors").is_file() for i in ids)


def test_stack_records_per_block_errors(tmp_path):
    study = ApproxStudy(module="stack", n_blocks=2, mlp=True, widths=(8,), variants=("pre-ln",),
                        store=str(tmp_path / "s.db"), **{**SMALL, "search": SearchConfig(steps=5)})
    (rid,) = run_study(study, progress=False, log=lambda _: None)
    with Store(study.store) as store:
        m = store.get(rid).metrics
    assert len(m["per_block_rel_error"]) == 2 and len(m["per_block_branch_rel_error"]) == 2
    assert m["branch_rel_error"] > 0


def test_sweep_resumes_without_redoing_finished_cells(tmp_path):
    study = ApproxStudy(widths=(4, 8), variants=("none",), store=str(tmp_path / "s.db"),
                        **{**SMALL, "search": SearchConfig(steps=3)})
    ids = run_study(study, progress=False, log=lambda _: None)
    with Store(study.store) as store:
        first = {i: store.get(i).finished for i in ids}
    logs: list[str] = []
    assert run_study(study, progress=False, log=logs.append) == ids
    with Store(study.store) as store:
        assert {i: store.get(i).finished for i in ids} == first
    assert "2 of 2 cells already finished" in logs[0]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sltlab.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "body, expect",
    [
        ("keep = 1.5", "study.keep"),
        ('variants = ["none", "pre-batchnorm"]', "study.variants[1]"),
        ("widths = [4, 16]\nd_model = 16\nheads = [2]", "study.widths[0]"),
        ('module = "conv"', "study.module"),
        ("[search]\nlr = -1.0", "search.lr"),
    ],
)
def test_bad_config_gives_one_clear_line(tmp_path, body, expect):
    cfg = tmp_path / "c.toml"
    cfg.write_text(body + "\n")
    out = _cli("approx", str(cfg), "--store", str(tmp_path / "s.db"), cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sltlab: error:") and expect in lines[0], out.stderr


def test_missing_config_file_names_the_path(tmp_path):
    out = _cli("approx", "no/such.toml", cwd=tmp_path)
    assert out.returncode == 2 and "no/such.toml" in out.stderr and "Traceback" not in out.stderr


def test_quick_config_parses():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for name in ("approx_quick.toml", "approx_full.toml", "approx_depth.toml"):
        study = load_study(str(root / "configs" / name))
        assert len(study.cells()) > 0


def test_cli_help_lists_and_explains_commands(tmp_path):
    out = _cli("--help", cwd=tmp_path)
    assert out.returncode == 0 and "approx" in out.stdout and "runs" in out.stdout
    out = _cli("approx", "--help", cwd=tmp_path)
    assert out.returncode == 0 and "examples:" in out.stdout and "ln-integrated" in out.stdout
