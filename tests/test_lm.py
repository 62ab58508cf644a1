"""Byte-level LM: corpora, batches, bits per byte, the lm cell (dense / edge-popup / annealed+scales), CLI."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

import sltlab
from sltlab.cli import main as cli_main
from sltlab.errors import ConfigError, DataError
from sltlab.paths import data_dir
from sltlab.runs.store import Store
from sltlab.tasks.lm_run import LMStudy, parse_method, run_cell, run_study
from sltlab.tasks.text import eval_bpb, load_corpus, random_batches, split_bytes


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> str:
    """A small text with learnable structure: repeated words in random order."""
    rng = random.Random(0)
    words = ["the ", "king ", "and ", "queen ", "of ", "ticket ", "lottery ", "mask "]
    text = "".join(rng.choice(words) for _ in range(6000))
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(text)
    return str(path)


def tiny(corpus_file: str, **kw) -> LMStudy:
    base = dict(
        dataset=corpus_file,
        d_model=16,
        n_heads=2,
        n_layers=1,
        seq_len=16,
        batch_size=8,
        steps=40,
        eval_bytes=2048,
        lr_edge_popup=0.05,
        lr_annealed=0.1,
        lr_dense=1e-2,
        warmup=2,
        device="cpu",
    )
    base.update(kw)
    return LMStudy(**base)  # type: ignore[arg-type]


# -- text --------------------------------------------------------------------------------------------------
def test_split_is_contiguous_and_complete():
    c = split_bytes(b"0123456789", 0.2)
    assert bytes(c.train.tolist()) == b"01234567" and bytes(c.val.tolist()) == b"89"
    with pytest.raises(ConfigError, match="val_fraction"):
        split_bytes(b"abc", 1.5)


def test_load_corpus_errors(tmp_path):
    with pytest.raises(ConfigError, match="dataset"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="tinyshakespeare"):
        load_corpus("tinyshakespeare", tmp_path)  # a data folder without the corpus


def test_batches_are_shifted_windows_and_seeded():
    data = torch.arange(200, dtype=torch.uint8)
    it1 = random_batches(data, 4, 10, torch.Generator().manual_seed(1))
    it2 = random_batches(data, 4, 10, torch.Generator().manual_seed(1))
    x, y = next(it1)
    assert x.shape == (4, 10) and torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x, next(it2)[0])


class _Uniform(nn.Module):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, 256)


class _Oracle(nn.Module):
    """Knows the next byte of an arithmetic sequence: near-zero loss."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot((idx + 1) % 256, 256).float() * 50


def test_bits_per_byte_of_reference_models():
    data = torch.arange(1000, dtype=torch.int64).remainder(256).to(torch.uint8)
    assert math.isclose(eval_bpb(_Uniform(), data, 32), 8.0, rel_tol=1e-6)
    assert eval_bpb(_Oracle(), data, 32) < 1e-6
    with pytest.raises(DataError, match="shorter"):
        eval_bpb(_Uniform(), data[:10], 32)


@pytest.mark.skipif(
    data_dir(required=False) is None or not (data_dir(required=False) / "tinyshakespeare").is_dir(),
    reason="shared data not available",
)
def test_tinyshakespeare_split():
    c = load_corpus("tinyshakespeare")
    total = c.sizes["train_bytes"] + c.sizes["val_bytes"]
    assert total > 1_000_000 and abs(c.sizes["val_bytes"] / total - 0.1) < 0.001


# -- config ------------------------------------------------------------------------------------------------
def test_methods_and_validation(corpus_file):
    assert parse_method("annealed+scales") == ("annealed", True)
    assert parse_method("dense") == ("dense", False)
    with pytest.raises(ConfigError, match=r"lm.methods\[1\]"):
        tiny(corpus_file, methods=("dense", "magic"))
    with pytest.raises(ConfigError, match="lm.norm"):
        tiny(corpus_file, norm="batchnorm")
    with pytest.raises(ConfigError, match="lm.keep"):
        tiny(corpus_file, keep=0.0)
    spec = tiny(corpus_file, methods=("annealed+scales",)).cells()[0].spec()
    assert spec.model.residual_scales and spec.options["logit_scale"] and spec.mask.scale == "head"


# -- cells -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dense", "edge-popup", "annealed+scales"])
def test_cell_learns_and_exports_a_bit_exact_ticket(corpus_file, tmp_path, method):
    study = tiny(corpus_file, methods=(method,))
    model, metrics, timings = run_cell(study.cells()[0], artifact_dir=tmp_path)
    assert metrics["val_bpb"] < 5.0, metrics["val_bpb"]  # far below uniform (8) on this 8-word text
    assert metrics["params"] > 0 and timings["tokens_per_s"] > 0 and timings["train_s"] > 0
    assert "tokens_per_s" not in metrics  # wall clock: a timing, so identical runs have identical metrics
    expect_density = 1.0 if method == "dense" else 0.5
    assert abs(metrics["density"] - expect_density) < 0.02 or method.startswith("annealed")
    assert metrics["artifact_bytes"] == (tmp_path / "ticket.slt").stat().st_size
    assert metrics["artifact_bit_identical"] is True
    if method == "dense":  # all weights as fp32 floats
        assert metrics["artifact_bytes"] > 4 * metrics["params"] * 0.9
    else:  # masks near 1 bit/weight at density 0.5 or below, a few floats
        assert metrics["mask_bits_per_weight"] <= 1.02
        assert metrics["artifact_bytes"] < metrics["params"] / 8 * 1.2 + 4000
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    loaded = sltlab.load_ticket(tmp_path / "ticket.slt")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_same_config_same_result(corpus_file):
    study = tiny(corpus_file, methods=("edge-popup",), steps=10)
    a = run_cell(study.cells()[0])[1]
    b = run_cell(study.cells()[0])[1]
    assert a["val_bpb"] == b["val_bpb"] and a["curve"] == b["curve"]


def test_study_resumes_and_cli_prints_table(corpus_file, tmp_path, capsys):
    db = tmp_path / "runs.db"
    study = tiny(corpus_file, methods=("edge-popup",), steps=8, store=str(db))
    ids = run_study(study, progress=False, log=lambda s: None)
    logs: list[str] = []
    assert run_study(study, progress=False, log=logs.append) == ids
    assert any("already finished" in s for s in logs)
    with Store(db) as store:
        rec = store.get(ids[0])
    assert rec.kind == "lm" and rec.config["method"] == "edge-popup" and rec.config["seed"] == 0
    assert {"val_bpb", "artifact_bytes", "params", "density"} <= set(rec.metrics) and "tokens_per_s" in rec.timings
    code = cli_main(
        [
            "lm",
            "--dataset",
            corpus_file,
            "--methods",
            "annealed+scales",
            "--steps",
            "6",
            "--d-model",
            "16",
            "--n-heads",
            "2",
            "--n-layers",
            "1",
            "--seq-len",
            "16",
            "--batch-size",
            "4",
            "--eval-bytes",
            "512",
            "--device",
            "cpu",
            "--store",
            str(db),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| annealed+scales | 0 |" in out
    assert cli_main(["lm", "--dataset", corpus_file, "--methods", "bogus", "--store", str(db)]) == 2
    assert "lm.methods" in capsys.readouterr().err
