"""Masks over a pretrained encoder's frozen weights (peft methods mask and mask+ln), what every peft run saves,
and `sltlab peft export`: a peft LN-tuning adapter that Hugging Face peft loads, and plain state-dict diffs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from test_peft import N_HEAD, N_LN, _batches, _write_rte, _write_tiny_model_dir, tiny_model

from sltlab.cli import main as cli_main
from sltlab.errors import ConfigError
from sltlab.runs.store import Store
from sltlab.tasks import peft
from sltlab.tasks.glue import load_split
from sltlab.tickets import get_masks, set_keep, supermasks
from sltlab.tickets.artifact import binary_entropy


def _eval_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_mask_starts_with_every_weight_kept_and_equals_the_pretrained_model() -> None:
    m = tiny_model()
    pretrained = copy.deepcopy(m)
    cov = peft.attach_masks(m)
    # every Linear of the blocks (q, k, v, attention out, intermediate, output), not the embeddings nor the head
    assert cov.kinds["Linear"].masked_layers == 2 * 6 and cov.kinds["Embedding"].masked_layers == 0
    assert not any("embeddings" in n or n.startswith("head") for n in supermasks(m))
    assert peft.density_at(0, 40, 0.5) == 1.0
    set_keep(m, peft.density_at(0, 40, 0.5))
    assert all(bool(mask.all()) for mask in get_masks(m).values())
    batch = _batches()[0]
    assert torch.equal(_eval_logits(m, batch), _eval_logits(pretrained, batch))  # bit for bit
    # the first training step's loss is the pretrained model's (same dropout draws)
    cfg = peft.PeftConfig(task="rte", method="mask", lr=1e-2, epochs=1, fraction=0.5)
    hist = peft.train_masked(m, peft.trainable_masks(m, "mask"), [batch], cfg, progress=False)
    ref = peft.train_masked(pretrained, peft.trainable_masks(pretrained, "ln"), [batch],
                            peft.PeftConfig(task="rte", method="ln", lr=1e-2, epochs=1), progress=False)
    assert hist[0]["loss"] == ref[0]["loss"]


def test_density_schedule() -> None:
    vals = [peft.density_at(s, 20, 0.7) for s in range(21)]
    assert vals[0] == 1.0 and vals[10] == pytest.approx(0.7) and vals[20] == pytest.approx(0.7)
    assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))


@pytest.mark.parametrize("method", ["mask", "mask+ln"])
def test_mask_methods_train_exactly_masks_ln_and_head(method: str) -> None:
    m = tiny_model()
    peft.attach_masks(m)
    masks = peft.trainable_masks(m, method)
    ln = set(peft.layernorm_names(m))
    expected = set(peft.score_names(m)) | set(peft.head_names(m)) | (ln if method == "mask+ln" else set())
    assert set(masks) == expected and all(bool(v.all()) for v in masks.values())
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    cfg = peft.PeftConfig(task="rte", method=method, lr=5e-2, epochs=4, fraction=0.5, weight_decay=0.5)
    peft.train_masked(m, masks, _batches(), cfg, progress=False)
    for n, p in m.named_parameters():
        same = torch.equal(before[n].view(torch.int32), p.detach().view(torch.int32))
        assert same == (n not in expected), n  # trained tensors moved, every other one is bit-identical
    # the density target is met exactly in every layer
    for mask in get_masks(m).values():
        assert int(mask.sum()) == round(0.5 * mask.numel())
    assert peft.count(masks) - peft.count(masks, peft.score_names(m)) == N_HEAD + (N_LN if method == "mask+ln" else 0)


def test_config_and_cli_grammar(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = peft.PeftConfig(task="rte", method="mask+ln", lr=1e-2)
    assert cfg.fraction == peft.DEFAULT_MASK_DENSITY and cfg.label == "mask+ln@0.9"
    assert peft.parse_method("mask@0.5") == ("mask", 0.5, "individual")
    assert peft.make_config("rte", "mask", 1e-2, 0, {}).label == "mask@0.9"
    with pytest.raises(ConfigError, match="fraction"):
        peft.PeftConfig(task="rte", method="mask", lr=1e-2, fraction=1.5)
    with pytest.raises(ConfigError, match="needs a model with supermasks"):
        peft.trainable_masks(tiny_model(), "mask")
    # an ln run's config (and so its run id) is what it was before the mask methods existed
    assert peft.PeftConfig(task="rte", method="ln", lr=1e-3).record()["fraction"] is None
    from argparse import Namespace

    from sltlab.commands.peft import _methods

    assert _methods(Namespace(method="mask,mask+ln,ln", fraction="0.5,0.8", mask_source=None)) == [
        "mask@0.5", "mask@0.8", "mask+ln@0.5", "mask+ln@0.8", "ln"]
    assert _methods(Namespace(method="mask", fraction=None, mask_source=None)) == ["mask"]
    with pytest.raises(ConfigError, match="--mask-source"):
        _methods(Namespace(method="mask", fraction=None, mask_source="cv"))
    rc = cli_main(["peft", "export", "nope", "--store", str(tmp_path / "s.db")])
    assert rc == 2 and "--peft" in capsys.readouterr().err
    rc = cli_main(["peft", "exprt", "x", "--peft", str(tmp_path / "o"), "--store", str(tmp_path / "s.db")])
    assert rc == 2 and "unexpected arguments" in capsys.readouterr().err


def test_runs_save_what_they_trained_and_export(tmp_path: Path) -> None:
    peft_lib = pytest.importorskip("peft")
    model_dir = _write_tiny_model_dir(tmp_path / "tiny-bert")
    data = _write_rte(tmp_path / "data")
    store = Store(tmp_path / "s.db")
    base = {"model": str(model_dir), "max_len": 16, "epochs": 2, "batch_size": 8, "fisher_samples": 6,
            "fisher_tasks": ["rte"]}
    ids = {}
    for method in ("ln", "ln-fisher@0.5", "bitfit", "mask@0.5", "mask+ln@0.5"):
        cfg = peft.make_config("rte", method, 1e-2, 0, base)
        ids[method] = peft.run_peft(cfg, store, data_dir=str(data), progress=False)
    pre = peft.pristine(str(model_dir))
    dev = peft.Batches(pre, load_split("rte", "dev", data_dir=str(data)), 16, 64, shuffle=False)
    batch = next(iter(peft.Batches(pre, load_split("rte", "train", data_dir=str(data)), 16, 24,
                                   shuffle=False)))
    for method, rid in ids.items():
        m = store.get(rid).metrics
        folder = store.artifact_dir(rid)
        assert (folder / "trained.safetensors").is_file() and (folder / "trained.json").is_file()
        # what the method must store: its trained floats, and the mask bits as the artifact coder codes them
        if method.startswith("mask"):
            assert m["stored_floats"] == N_HEAD + (N_LN if method == "mask+ln@0.5" else 0)
            assert m["mask_density"] == pytest.approx(0.5, abs=1e-3)
            entropy_bits = m["mask_weights"] * binary_entropy(0.5)
            assert entropy_bits <= m["mask_bits"] <= 1.02 * entropy_bits + 64
            assert m["stored_bytes"] == 4 * m["stored_floats"] + m["mask_bits"] // 8
            assert 0 < m["masked_share"] < 1
        else:
            assert m["mask_bits"] == 0 and m["stored_bytes"] == 4 * m["stored_floats"]
            assert m["stored_floats"] == m["trainable"]
        # the rebuilt model scores exactly what the run recorded
        model = peft.load_run_model(store, rid)
        got = peft.evaluate(model, dev)
        assert got["accuracy"] == m["accuracy"], method
        want = _eval_logits(model, batch)
        out = tmp_path / "export" / method
        what, _ = peft.export_run(store, rid, out)
        if method.startswith("ln"):
            assert "peft" in what and (out / "adapter_config.json").is_file()
            adapter_cfg = json.loads((out / "adapter_config.json").read_text())
            assert adapter_cfg["peft_type"] == "LN_TUNING" and adapter_cfg["base_model_name_or_path"] == str(model_dir)
            loaded = peft_lib.PeftModel.from_pretrained(peft.exported_base(out), str(out))
            assert type(loaded.peft_config["default"]).__name__ == "LNTuningConfig"
        else:
            assert "diff" in what
            loaded = peft.load_diff(out)
        assert torch.equal(_eval_logits(loaded, batch), want), method
    # the CLI writes the same adapter
    rc = cli_main(["peft", "export", ids["ln"], "--peft", str(tmp_path / "cli"), "--store", str(tmp_path / "s.db")])
    assert rc == 0 and (tmp_path / "cli" / "adapter_model.safetensors").is_file()
