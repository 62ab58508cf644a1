"""GLUE cells end to end on a tiny learnable task generated in GLUE layout: every method, the store contract,
checkpoints that reload, the sweep's resume, and the two CLI commands."""

from __future__ import annotations

import csv
import random
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from sltlab.cli import main
from sltlab.errors import ConfigError
from sltlab.runs.store import Store, make_run_id
from sltlab.tasks.glue_run import (
    QUICK,
    GlueRunConfig,
    GlueSweepConfig,
    TaskData,
    evaluate,
    prepare_data,
    run_cell,
    run_sweep,
)
from sltlab.tickets.checkpoint import checkpoint_extras, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
POS = ["good", "great", "fine", "superb", "lovely"]
NEG = ["bad", "awful", "poor", "dull", "boring"]
FILL = ["the", "film", "was", "a", "plot", "and", "very", "story", "it", "acting"]
TINY = {
    "d_model": 16,
    "n_heads": 2,
    "n_layers": 1,
    "max_len": 12,
    "vocab_size": 60,
    "batch_size": 16,
    "imp_rounds": 2,
    "imp_fraction": 0.5,
}


def _sentence(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILL) for _ in range(rng.randint(3, 6))]
    words.insert(rng.randint(0, len(words)), rng.choice(POS if label else NEG))
    return " ".join(words)


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    """SST-2 (a sentiment word decides the label) and STS-B (score = 5 x word overlap) in the GLUE layout."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    sst = root / "glue" / "SST-2"
    sst.mkdir(parents=True)
    for split, n in (("train", 400), ("dev", 120)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            y = rng.randint(0, 1)
            rows.append(f"{_sentence(rng, y)} \t{y}")
        (sst / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    sts = root / "glue" / "STS-B"
    sts.mkdir(parents=True)
    for split, n in (("train", 200), ("dev", 60)):
        rows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        for i in range(n):
            a = [rng.choice(FILL + POS) for _ in range(5)]
            k = rng.randint(0, 5)
            b = a[:k] + [rng.choice(NEG) for _ in range(5 - k)]
            rows.append(f"{i}\tg\tf\ty\t{i}\tnone\tnone\t{' '.join(a)}\t{' '.join(b)}\t{k:.3f}")
        (sts / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLTLAB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sst_data(glue_dir, tmp_path_factory) -> TaskData:
    return prepare_data(GlueRunConfig(task="sst2", **TINY), glue_dir, cache=tmp_path_factory.mktemp("cache"))


CONTRACT = {"main_metric", "main", "accuracy", "params_total", "params_trainable", "dev_n"}


@pytest.mark.parametrize(
    "method,norm,steps,floor",
    [
        ("dense", "pre-ln", 150, 0.85),
        ("edge-popup", "none", 150, 0.8),
        ("ln-integrated", "pre-ln", 150, 0.8),
        ("annealed", "pre-ln", 60, 0.0),
    ],
)
def test_cell_learns_records_contract_and_reloads(tmp_path, glue_dir, sst_data, method, norm, steps, floor):
    cfg = GlueRunConfig(task="sst2", method=method, norm=norm, seed=1, steps=steps, **TINY)
    with Store(tmp_path / "s.db") as store:
        rid, ran = run_cell(cfg, store, glue_dir, data=sst_data)
        assert ran
        rec = store.get(rid)
        m = rec.metrics
        assert set(m) >= CONTRACT and m["main_metric"] == "accuracy" and m["main"] == m["accuracy"]
        assert m["main"] >= floor, m  # the sentiment word is learnable; chance is 0.5
        assert rec.config["task"] == "sst2" and rec.config["method"] == method and rec.config["norm"] == norm
        assert rec.config["lr"] > 0 and rec.config["seed"] == 1
        assert m["dev_n"] == 120
        if method != "dense":
            if method == "annealed":  # the kept fraction is learned, not fixed
                assert 0.0 < m["density"] < 1.0
            else:
                assert m["density"] == pytest.approx(0.5, abs=0.02)
            assert m["params_trainable"] > 0.9 * m["params_total"]  # one score per masked weight
        else:
            assert "density" not in m and m["params_trainable"] <= m["params_total"]
        assert (store.artifact_dir(rid) / "tokenizer.json").is_file()
        model, spec = load_checkpoint(store.artifact_dir(rid) / "ticket.safetensors")
        assert evaluate(model, sst_data)["accuracy"] == pytest.approx(m["accuracy"])
        assert run_cell(cfg, store, glue_dir, data=sst_data) == (rid, False)  # finished: skipped


def test_imp_rounds_follow_schedule_and_ticket_reloads(tmp_path, glue_dir, sst_data):
    cfg = GlueRunConfig(
        task="sst2",
        method="imp",
        norm="pre-ln",
        steps=150,
        imp_rewind_step=5,
        **{**TINY, "imp_rounds": 2, "imp_fraction": 0.5},
    )
    with Store(tmp_path / "s.db") as store:
        rid, _ = run_cell(cfg, store, glue_dir, data=sst_data)
        m = store.get(rid).metrics
        assert [r["round"] for r in m["rounds"]] == [0, 1, 2]
        for r in m["rounds"]:
            assert r["sparsity"] == pytest.approx(1 - 0.5 ** r["round"], abs=0.01)
        assert m["density"] == pytest.approx(0.25, abs=0.01) and m["main"] == m["rounds"][-1]["main"]
        assert m["rounds"][0]["main"] > 0.7
        path = store.artifact_dir(rid) / "ticket.safetensors"
        model, _ = load_checkpoint(path)
        masks = {k: v.bool() for k, v in checkpoint_extras(path).items()}
        q = model.get_submodule("stack.blocks.0.attn.q").weight
        assert (q[~masks["mask::stack.blocks.0.attn.q"]] == 0).all()
        assert evaluate(model, sst_data)["accuracy"] == pytest.approx(m["accuracy"])


def test_imp_saves_every_round_mask(tmp_path, glue_dir, sst_data):
    from sltlab.analysis.masks import imp_round_overlap, overall_density
    from sltlab.tickets.checkpoint import ROUND_MASKS_FILE, load_round_masks
    from sltlab.tickets.imp import prune_masks

    p = 0.5
    cfg = GlueRunConfig(
        task="sst2", method="imp", norm="none", steps=10, **{**TINY, "imp_rounds": 3, "imp_fraction": p}
    )
    with Store(tmp_path / "s.db") as store:
        rid, _ = run_cell(cfg, store, glue_dir, data=sst_data)
        art = store.artifact_dir(rid)
        rounds = load_round_masks(art / ROUND_MASKS_FILE)
        final = {k[len("mask::") :]: v.bool() for k, v in checkpoint_extras(art / "ticket.safetensors").items()}
        m = store.get(rid).metrics
    from sltlab.paths import fingerprint
    from sltlab.tasks.glue import split_files

    # the run id is the hash of the config and of the data it read
    data = fingerprint(split_files("sst2", glue_dir))
    assert rid == make_run_id("glue", {**cfg.resolved().to_dict(), "data": data}, cfg.seed)
    assert len(rounds) == 4 and all(set(r) == set(final) for r in rounds)
    # the last round is the ticket in the checkpoint, bit for bit
    assert all(torch.equal(rounds[-1][k], final[k]) and rounds[-1][k].dtype == torch.bool for k in final)
    # every prunable weight (each Linear / Embedding of the model) has a mask
    with torch.no_grad():
        from sltlab.tasks.glue_run import model_spec
        from sltlab.tickets.imp import attach_prune_masks
        from sltlab.tickets.spec import build_model

        fresh = build_model(model_spec(cfg, sst_data.encoder.vocab_size, 2))
        attach_prune_masks(fresh, cfg.imp_config())
    assert set(prune_masks(fresh)) == set(final)
    for r, masks in enumerate(rounds):
        for name, mask in masks.items():  # each layer keeps round(n (1-p)^r) of its weights (layer scope)
            assert int(mask.sum()) == max(1, round(mask.numel() * (1 - p) ** r)), (r, name)
        assert overall_density(masks) == pytest.approx((1 - p) ** r, abs=2e-3)
        assert overall_density(masks) == pytest.approx(1 - m["rounds"][r]["sparsity"], abs=1e-12)
        if r:
            assert all((masks[k] & ~rounds[r - 1][k]).sum() == 0 for k in masks)  # pruned weights stay pruned
    for row in imp_round_overlap(rounds):
        # nested masks: the overlap with the previous round is the share of it that survives
        assert row["jaccard_prev"] == row["retention"] == pytest.approx(1 - p, abs=2e-3)
        assert row["jaccard_final"] == pytest.approx((1 - p) ** (3 - row["round"]), abs=4e-3)


def test_round_mask_file_errors(tmp_path):
    from sltlab.errors import ArtifactError
    from sltlab.tickets.checkpoint import load_round_masks, save_round_masks

    rounds = [{"a": torch.ones(3, 5, dtype=torch.bool)}, {"a": torch.eye(3, 5, dtype=torch.bool)}]
    path = save_round_masks(tmp_path / "r.safetensors", rounds)
    assert [torch.equal(x["a"], y["a"]) for x, y in zip(rounds, load_round_masks(path), strict=True)] == [True, True]
    with pytest.raises(ArtifactError, match="do not exist"):
        load_round_masks(tmp_path / "absent.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip the last mask bits
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_round_masks(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="not a readable"):
        load_round_masks(tmp_path / "junk.safetensors")
    with pytest.raises(ArtifactError, match="no IMP round masks"):
        save_round_masks(tmp_path / "empty.safetensors", [])


def test_stsb_regression_cell(tmp_path, glue_dir):
    cfg = GlueRunConfig(task="stsb", method="dense", norm="pre-ln", steps=120, **TINY)
    with Store(tmp_path / "s.db") as store:
        rid, _ = run_cell(cfg, store, glue_dir)
        m = store.get(rid).metrics
    assert m["main_metric"] == "spearman" and {"spearman", "pearson"} <= set(m)
    assert -1 <= m["pearson"] <= 1 and m["main"] == m["spearman"]


def test_head_option_and_norm_affine_in_spec():
    from sltlab.tasks.glue_run import model_spec
    from sltlab.tickets.spec import build_model

    masked = build_model(model_spec(GlueRunConfig(method="edge-popup", **TINY), 60, 2))
    trained = build_model(model_spec(GlueRunConfig(method="edge-popup", head="trained", **TINY), 60, 2))
    assert hasattr(masked.head, "parametrizations") and not masked.head.parametrizations.weight.original.requires_grad
    assert not hasattr(trained.head, "parametrizations") and trained.head.weight.requires_grad
    assert trained.stack.blocks[0].attn.q.parametrizations.weight.original.requires_grad is False
    ln = build_model(model_spec(GlueRunConfig(method="ln-integrated", **TINY), 60, 2))
    assert ln.stack.blocks[0].norm1.weight.requires_grad and ln.stack.norm_f.bias.requires_grad
    dense = build_model(model_spec(GlueRunConfig(method="dense", **TINY), 60, 2))
    assert not dense.stack.blocks[0].norm1.weight.requires_grad  # pre-ln: frozen affine, as the norm spec says


def test_affine_lr_is_hashed_only_when_set():
    base = GlueRunConfig(method="ln-integrated", **TINY)
    assert "affine_lr" not in base.to_dict()  # ids of runs made before the field existed stay valid
    tuned = GlueRunConfig(method="ln-integrated", affine_lr=0.01, **TINY)
    assert tuned.to_dict()["affine_lr"] == 0.01
    assert make_run_id("glue", base.to_dict(), 0) != make_run_id("glue", tuned.to_dict(), 0)
    with pytest.raises(ConfigError, match="'affine_lr'"):
        GlueRunConfig(method="dense", affine_lr=0.01)


def test_config_errors():
    with pytest.raises(ConfigError, match="'norm'.*needs a norm"):
        GlueRunConfig(method="ln-integrated", norm="none")
    with pytest.raises(ConfigError, match="'method'"):
        GlueRunConfig.from_dict({"method": "lottery"})
    with pytest.raises(ConfigError, match="task"):
        GlueRunConfig(task="squad")
    with pytest.raises(ConfigError, match="run.d_modle"):
        GlueSweepConfig(run={"d_modle": 3}).cells()
    with pytest.raises(ConfigError, match="run.seed"):
        GlueSweepConfig(run={"seed": 3}).cells()
    cells = GlueSweepConfig(
        tasks=("rte",), methods=("dense", "ln-integrated"), norms=("none", "pre-ln"), seeds=(0, 1)
    ).cells()
    assert len(cells) == 6  # ln-integrated x none cannot exist and is skipped
    assert GlueRunConfig(norm="LN").norm == "pre-ln"
    per_task = GlueSweepConfig(
        tasks=("rte",),
        methods=("dense",),
        norms=("none",),
        task={"rte": {"steps": 7}, "cola": {"steps": 9}},
        method={"dense": {"lr": 0.01}},
        run={"steps": 5},
    ).cells()
    assert [(c.steps, c.lr) for c in per_task] == [(7, 0.01)]
    with pytest.raises(ConfigError, match="task.squad"):
        GlueSweepConfig(task={"squad": {"steps": 1}}).cells()


def test_sweep_resumes(tmp_path, glue_dir):
    sweep = GlueSweepConfig(
        tasks=("sst2",),
        methods=("dense", "edge-popup"),
        norms=("none",),
        seeds=(0,),
        run={**TINY, "steps": 20},
    )
    logs: list[str] = []
    with Store(tmp_path / "s.db") as store:
        first = run_sweep(sweep, store, glue_dir, progress=False, log=logs.append)
        second = run_sweep(sweep, store, glue_dir, progress=False, log=logs.append)
    assert len(first["ran"]) == 2 and not first["failed"]
    assert second["skipped"] == first["ran"] and not second["ran"]


def test_cli_glue_and_table(tmp_path, glue_dir, capsys):
    store = tmp_path / "cli.db"
    sets = [a for k, v in {**TINY, "steps": 20}.items() for a in ("--set", f"{k}={v}")]
    rc = main(
        [
            "glue",
            "--task",
            "sst2",
            "--method",
            "dense,edge-popup",
            "--norm",
            "none",
            "--seeds",
            "0,1",
            "--data-dir",
            str(glue_dir),
            "--store",
            str(store),
            "--quiet",
            *sets,
        ]
    )
    assert rc == 0
    out = tmp_path / "table"
    assert main(["glue-table", "--store", str(store), "--out", str(out)]) == 0
    md = (out / "glue_table.md").read_text()
    assert "| sst2 | accuracy | dense |" in md and "(2)" in md
    rows = list(csv.DictReader((out / "glue_table.csv").open()))
    assert {r["method"] for r in rows} == {"dense", "edge-popup"} and all(r["n"] == "2" for r in rows)
    with Store(store) as s:
        vals = [r.metrics["main"] for r in s.runs("glue") if r.config["method"] == "dense"]
    assert float(rows[0]["mean"]) == pytest.approx(float(np.mean(vals)))
    capsys.readouterr()
    assert main(["glue", "--task", "nope", "--method", "dense", "--store", str(store)]) == 2
    assert "unknown GLUE task" in capsys.readouterr().err
    assert main(["glue", "--task", "sst2", "--store", str(store), "--data-dir", str(tmp_path / "missing")]) == 2


def test_quick_preset_matches_config_file():
    data = tomllib.loads((ROOT / "configs" / "glue_quick.toml").read_text())
    assert data["sweep"]["run"] == QUICK
    cells = GlueSweepConfig.from_dict(data["sweep"]).cells()
    assert len(cells) == 5 * (3 * 2 + 1 * 1) * 2  # ln-integrated only with pre-ln
    full = tomllib.loads((ROOT / "configs" / "glue_full.toml").read_text())
    assert GlueSweepConfig.from_dict(full["sweep"]).cells()


def test_table_labels_settings_by_what_differs():
    from sltlab.commands.glue_table import summarise, to_markdown
    from sltlab.runs.store import RunRecord

    def rec(seed, main_value, **extra):
        config = {"task": "sst2", "method": "ln-integrated", "norm": "pre-ln", "seed": seed, "lr": 0.1,
                  "steps": 400, **extra}
        metrics = {"main": main_value, "main_metric": "accuracy", "density": 0.5}
        return RunRecord(f"glue-{seed}{extra}", "glue", "finished", seed, config, metrics, {"total_s": 1.0},
                         None, "0", "h", 0.0, 1.0)

    rows = summarise([rec(0, 0.70), rec(1, 0.72), rec(0, 0.75, affine_lr=0.01), rec(1, 0.77, affine_lr=0.01)])
    assert [(r["setting_label"], r["n"]) for r in rows] == [("default", 2), ("affine_lr=0.01", 2)]
    assert rows[0]["mean"] == pytest.approx(0.71) and rows[1]["mean"] == pytest.approx(0.76)
    md = to_markdown(rows)
    assert "| sst2 | accuracy | ln-integrated | affine_lr=0.01 |" in md and "| default |" in md


def test_score_seed_and_held_out_selection(glue_dir: Path, tmp_path: Path) -> None:
    """Weight seed and score seed apart; held-out training rows that nothing trains on; the lr of each norm
    chosen on them (never on dev), every other cell run at the chosen lr only; the plan recorded first."""
    from sltlab.report.sections_claims import selected_runs
    from sltlab.runs.executor import ExecOptions
    from sltlab.tasks.glue_run import run_study
    from sltlab.tasks.plans import study_plans

    base = {**TINY, "steps": 6, "holdout": 60}
    legacy = GlueRunConfig(task="sst2", method="edge-popup", norm="none", seed=0, **TINY)
    same = GlueRunConfig(task="sst2", method="edge-popup", norm="none", seed=0, score_seed=None, **TINY)
    assert legacy.to_dict() == same.to_dict() and "score_seed" not in legacy.to_dict()  # run ids unchanged
    data = prepare_data(GlueRunConfig(task="sst2", **base), glue_dir)
    assert len(data.train) == 340 and data.holdout is not None and len(data.holdout) == 60
    sweep = GlueSweepConfig.from_dict({
        "study": "tiny-sst2", "tasks": ["sst2"], "methods": ["edge-popup"], "norms": ["none", "post-ln"],
        "seeds": [0, 1], "score_seeds": [0, 1], "lr_grid": {"none": [0.05, 0.3], "post-ln": [0.01, 0.03]},
        "run": base, "claims": {"claim": [{"name": "acc", "measure": "dev_main", "margin": 0.05}]},
    })
    assert len(sweep.cells()) == 16 and len(sweep.grid_cells()) == 4
    with Store(tmp_path / "s.db") as store:
        report = run_study(sweep, store, ExecOptions(executor="serial"), glue_dir, log=lambda _m: None)
        assert report.ok and len(report.run_ids) == 8  # 2 norms x 2 weight seeds x 2 score seeds at the chosen lr
        recs = store.runs("glue")
        assert len(recs) == 4 + 8 - 2  # the grid's chosen points are final cells too: not run twice
        assert "tiny-sst2" in study_plans(store)
    for r in recs:
        assert 0.0 <= r.metrics["holdout_main"] <= 1.0 and r.metrics["holdout_n"] == 60
        assert r.config["lr"] in (0.05, 0.3, 0.01, 0.03)
    kept, audit = selected_runs("glue", recs)
    assert {r.run_id for r in kept} == set(report.run_ids)
    for a in audit:  # the choice follows the held-out score
        means = {k: v for k, v in a["candidates"].items()}
        assert a["chosen"] == max(means, key=means.get) and a["metric"] == "holdout_main"
    # score seeds differ in masks and batch order, not in weights: the ticket masks differ, the random source not
    by = {(r.config["norm"], r.config["seed"], r.config.get("score_seed")): r for r in kept}
    from sltlab.analysis.masks import jaccard, load_ticket_masks

    a, b = by[("none", 0, 0)], by[("none", 0, 1)]
    ma = load_ticket_masks(tmp_path / "artifacts" / a.run_id / "ticket.safetensors")[0]
    mb = load_ticket_masks(tmp_path / "artifacts" / b.run_id / "ticket.safetensors")[0]
    assert a.config["lr"] == b.config["lr"] and 0.0 < jaccard(ma, mb) < 1.0
    wa, wb = (load_checkpoint(tmp_path / "artifacts" / r.run_id / "ticket.safetensors")[0].state_dict()
              for r in (a, b))
    weights = [k for k in wa if k.endswith(".original")]
    assert weights and all(torch.equal(wa[k], wb[k]) for k in weights)  # the same random network
