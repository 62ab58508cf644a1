"""One grammar for every study command; --dry-run changes nothing; the executor flags' bad values are one line;
runs export --mlflow and --track round-trip through MLflow's own client."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sltlab.cli import main
from sltlab.runs.executor import ExecOptions, run_cells
from sltlab.runs.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from executor_cells import toy_cells  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"

APPROX = """
name = "t"
heads = [1]
widths = [16, 32]
variants = ["none"]
seeds = [0, 1]
n_train = 64
n_test = 32
[search]
steps = 5
"""


def _studies(tmp_path: Path) -> dict[str, list[str]]:
    cfg = tmp_path / "a.toml"
    cfg.write_text(APPROX)
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be\n" * 50)
    return {
        "approx": ["approx", str(cfg), "--set", "keep=0.3"],
        "theory": ["theory", "width", str(ROOT / "configs" / "theory_quick.toml"), "--set", "width.seeds=[0]"],
        # the data files' fingerprint is part of a run id, so even a dry run reads them
        "glue": ["glue", "--task", "sst2", "--method", "edge-popup", "--quick", "--set", "steps=5",
                 "--data-dir", str(FIXTURES)],
        "peft": ["peft", "--task", "mrpc", "--method", "ln", "--quick", "--set", "epochs=1"],
        "lm": ["lm", "--methods", "dense", "--set", "steps=5", "--dataset", str(text)],
    }


COMMON = ["--executor", "serial", "--workers", "1", "--threads", "1", "--retries", "0", "--seeds", "0",
          "--device", "cpu", "--precision", "fp32", "--quiet", "--dry-run"]


@pytest.mark.parametrize("study", ["approx", "theory", "glue", "peft", "lm"])
def test_every_study_takes_the_common_flags_and_dry_run_writes_nothing(study, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = _studies(tmp_path)[study]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    store = tmp_path / "store" / "s.db"
    assert main([*argv, *COMMON, "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"cells in {store}" in out and " new " in out
    assert not store.exists() and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # --seeds narrowed the sweep: no cell of another seed is listed
    assert all(" s=1" not in line and "seed 1" not in line for line in out.splitlines())


def test_version_and_help_show_the_grammar(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("sltlab ")
    with pytest.raises(SystemExit):
        main(["glue", "--help"])
    text = capsys.readouterr().out
    assert "--executor" in text and "--dry-run" in text and "ray://HOST:10001" in text


@pytest.mark.parametrize("flags,named", [
    (["--executor", "slurm"], "--executor"),
    (["--workers", "0"], "--workers"),
    (["--threads", "0"], "--threads"),
    (["--executor", "ray", "--address", "127.0.0.1:1"], "--address"),
    (["--address", "auto"], "--address"),
    (["--track", "wandb:x"], "--track"),
])
def test_bad_executor_flags_are_one_line(flags, named, tmp_path, capsys):
    cfg = tmp_path / "a.toml"
    cfg.write_text(APPROX)
    store = tmp_path / "s.db"
    rc = main(["approx", str(cfg), "--store", str(store), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and named in err and "Traceback" not in err
    assert not store.exists()


def test_track_without_mlflow_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    cfg = tmp_path / "a.toml"
    cfg.write_text(APPROX)
    rc = main(["approx", str(cfg), "--store", str(tmp_path / "s.db"), "--track", f"mlflow:{tmp_path / 'ml'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "--track" in err and "pip install 'sltlab[mlflow]'" in err


@pytest.mark.parametrize("backend", ["folder", "sqlite"])
def test_runs_export_mlflow_round_trip(backend, tmp_path, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from sltlab.runs.tracking import tracking_uri

    store_path = tmp_path / "s.db"
    cells = toy_cells(2) + toy_cells(3, per_seed={2: {"diverge": True}})[2:]
    with Store(store_path) as store:
        run_cells(cells, store, ExecOptions(executor="serial", progress=False))
    uri = str(tmp_path / "mlruns") if backend == "folder" else f"sqlite:///{tmp_path / 'ml.db'}"
    assert main(["runs", "export", "--store", str(store_path), "--mlflow", uri]) == 0
    got = capsys.readouterr()
    assert "exported 3 runs" in got.out
    # a new MLflow database migrates itself; its log chatter (37 lines from alembic) is not the user's business
    assert not [ln for ln in got.err.splitlines() if "INFO" in ln or "alembic" in ln], got.err[:500]
    assert main(["runs", "export", "--store", str(store_path), "--mlflow", uri]) == 0  # idempotent
    client = MlflowClient(tracking_uri=tracking_uri(uri))
    exp = client.get_experiment_by_name("sltlab")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3
    with Store(store_path) as store:
        for run in runs:
            rec = store.get(run.data.tags["sltlab.run_id"])
            assert run.data.params["seed"] == str(rec.config["seed"]) and run.data.params["size"] == "64"
            assert run.data.tags["sltlab.status"] == rec.status
            assert run.data.tags["sltlab.commit"] == rec.provenance["commit"]
            assert run.data.tags["sltlab.torch"] == rec.provenance["torch"]
            if rec.status == "finished":
                assert run.data.metrics["value"] == pytest.approx(rec.metrics["value"])
                hist = client.get_metric_history(run.info.run_id, "curve.loss")
                assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == \
                    [(s, pytest.approx(v)) for s, v in rec.curves["loss"]]
                assert "toy.bin" in {a.path for a in client.list_artifacts(run.info.run_id)}
            else:
                assert run.data.metrics["diverged_step"] == 40


def test_track_logs_live_from_the_driver(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from sltlab.runs.tracking import tracking_uri

    uri = str(tmp_path / "mlruns")
    with Store(tmp_path / "s.db") as store:
        run_cells(toy_cells(2), store, ExecOptions(executor="local", workers=2, progress=False,
                                                   track=f"mlflow:{uri}"))
    client = MlflowClient(tracking_uri=tracking_uri(uri))
    runs = client.search_runs([client.get_experiment_by_name("sltlab").experiment_id])
    assert {r.data.tags["sltlab.executor"] for r in runs} == {"local"} and len(runs) == 2
