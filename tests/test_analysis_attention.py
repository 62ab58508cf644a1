"""Attention entropy and head diversity against cases with known answers, and on real sltlab models."""

from __future__ import annotations

import math

import pytest
import torch

from sltlab.analysis.attention import (
    attention_stats,
    compare_models,
    diversity_of,
    entropy_of,
    jsd,
    synthetic_inputs,
)
from sltlab.errors import ConfigError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig


def uniform(B: int, H: int, T: int) -> torch.Tensor:
    return torch.full((B, H, T, T), 1.0 / T)


def one_hot(B: int, H: int, T: int, target: int = 0) -> torch.Tensor:
    a = torch.zeros(B, H, T, T)
    a[..., target] = 1.0
    return a


def test_uniform_attention_has_entropy_one() -> None:
    assert entropy_of(uniform(3, 4, 7)) == pytest.approx([1.0] * 4, abs=1e-6)


def test_one_hot_attention_has_entropy_zero() -> None:
    assert entropy_of(one_hot(2, 3, 5)) == pytest.approx([0.0] * 3, abs=1e-7)


def test_entropy_normalises_by_real_length_and_ignores_padding() -> None:
    B, H, T, real = 2, 2, 6, 4
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[:, :real] = True
    a = torch.zeros(B, H, T, T)
    a[..., :real] = 1.0 / real  # uniform over the real tokens only: entropy log(4) / log(4) = 1
    assert entropy_of(a, pad) == pytest.approx([1.0, 1.0], abs=1e-6)
    # Unnormalised by the padded length it would be log 4 / log 6 < 1: the padding must not count.
    assert math.log(real) / math.log(T) < 0.8


def test_entropy_of_two_equal_keys_out_of_four() -> None:
    a = torch.zeros(1, 1, 4, 4)
    a[..., :2] = 0.5
    assert entropy_of(a)[0] == pytest.approx(math.log(2) / math.log(4), abs=1e-6)


def test_causal_rows_normalise_by_allowed_keys() -> None:
    T = 5
    a = torch.tril(torch.ones(T, T))
    a = (a / a.sum(-1, keepdim=True))[None, None]  # uniform over the allowed past: entropy 1 on every row
    assert entropy_of(a, causal=True) == pytest.approx([1.0], abs=1e-6)


def test_identical_heads_have_zero_divergence() -> None:
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 1, 6, 6), -1).expand(2, 4, 6, 6).contiguous()
    assert diversity_of(a) == pytest.approx(0.0, abs=1e-6)


def test_disjoint_heads_have_divergence_one_bit() -> None:
    a = torch.cat([one_hot(1, 1, 4, 0), one_hot(1, 1, 4, 3)], dim=1)
    assert diversity_of(a) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(diversity_of(one_hot(1, 1, 4)))  # one head: no pairs


def test_jsd_is_symmetric_and_bounded() -> None:
    torch.manual_seed(1)
    p, q = torch.softmax(torch.randn(10, 8), -1), torch.softmax(torch.randn(10, 8), -1)
    assert torch.allclose(jsd(p, q), jsd(q, p))
    assert bool(((jsd(p, q) >= 0) & (jsd(p, q) <= 1)).all())


def _encoder(norm: str, mask: SupermaskConfig | None = None) -> torch.nn.Module:
    cfg = ModelConfig(d_model=16, n_heads=4, n_layers=2, vocab_size=50, max_len=12, norm=NormSpec.parse(norm))
    return build_model(ModelSpec("encoder-classifier", cfg, InitSpec(seed=3), mask))


def test_attention_stats_on_encoder_with_padding() -> None:
    inputs = synthetic_inputs("encoder-classifier", n=10, seq_len=12, vocab_size=50, seed=0)
    assert bool((inputs["attention_mask"].sum(1) < 12).any())  # some rows are padded
    stats = attention_stats(_encoder("pre-ln"), inputs, batch_size=4)
    assert len(stats["layers"]) == 2
    for layer in stats["layers"]:
        assert len(layer["entropy_per_head"]) == 4
        assert all(0.0 <= e <= 1.0 + 1e-6 for e in layer["entropy_per_head"])
        assert 0.0 <= layer["diversity"] <= 1.0
        assert layer["rows"] == int(inputs["attention_mask"].sum())
    # Batching must not change the numbers.
    whole = attention_stats(_encoder("pre-ln"), inputs, batch_size=10)
    assert whole["entropy"] == pytest.approx(stats["entropy"], rel=1e-6)
    assert whole["diversity"] == pytest.approx(stats["diversity"], rel=1e-6)


def test_compare_ticket_random_and_stack_models() -> None:
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=2, mlp=False, norm=NormSpec.parse("none"))
    spec = ModelSpec("stack", cfg, InitSpec(seed=1))
    ticket = build_model(ModelSpec("stack", cfg, InitSpec(seed=1), SupermaskConfig(keep=0.3, seed=5)))
    inputs = synthetic_inputs("stack", n=6, seq_len=5, d_model=8, seed=2)
    out = compare_models({"ticket": ticket, "random": build_model(spec)}, inputs)
    assert set(out) == {"ticket", "random"}
    # A 30% mask changes the attention logits, so the statistics must differ from the unmasked source's.
    assert out["ticket"]["entropy"] != pytest.approx(out["random"]["entropy"], abs=1e-9)


def test_causal_lm_and_bare_attention_run() -> None:
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=1, vocab_size=30, max_len=8)
    lm = build_model(ModelSpec("causal-lm", cfg, InitSpec(seed=0)))
    st = attention_stats(lm, synthetic_inputs("causal-lm", 4, 8, vocab_size=30))
    assert 0 < st["entropy"] <= 1
    mha = build_model(ModelSpec("mha", ModelConfig(d_model=8, n_heads=2, n_layers=1), InitSpec(seed=0)))
    st2 = attention_stats(mha, synthetic_inputs("mha", 4, 6, d_model=8))
    assert len(st2["layers"]) == 1


def test_bad_inputs_raise_config_errors() -> None:
    with pytest.raises(ConfigError):
        synthetic_inputs("encoder-classifier", 4, 8)
    with pytest.raises(ConfigError):
        attention_stats(torch.nn.Linear(2, 2), {"x": torch.zeros(1, 2, 2)})


def test_run_models_for_a_glue_ticket_uses_dev_sentences(tmp_path, monkeypatch) -> None:
    """A GLUE ticket is analysed on real dev sentences encoded with the run's own (re-trained, cached)
    tokenizer, next to its random source and the dense run of the same shape, norm and seed."""
    from sltlab.paths import data_dir
    from sltlab.runs.store import Store
    from sltlab.tasks.replay import run_models
    from sltlab.tasks.tokenize import TokenizerSpec, make_encoder
    from sltlab.tickets.checkpoint import save_checkpoint

    root = data_dir(required=False)
    if root is None or not (root / "glue" / "SST-2" / "dev.tsv").is_file():
        pytest.skip("GLUE SST-2 is not under the data directory")
    monkeypatch.setenv("SLTLAB_CACHE", str(tmp_path / "cache"))
    import numpy as np

    from sltlab.tasks.glue import load_split

    train = load_split("sst2", "train", root)
    rng = np.random.default_rng(0)
    train = train.subset(np.sort(rng.choice(len(train), 300, replace=False)))
    enc = make_encoder(list(train.texts_a), TokenizerSpec(vocab_size=300))
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=1, vocab_size=enc.vocab_size, max_len=24)
    base = {
        "task": "sst2",
        "norm": "pre-ln",
        "seed": 0,
        "d_model": 8,
        "vocab_size": 300,
        "max_len": 24,
        "train_limit": 300,
        "data_seed": 0,
    }
    with Store(tmp_path / "s.db") as store:
        for method, mask in (("dense", None), ("edge-popup", SupermaskConfig(keep=0.5))):
            rid = store.start("glue", {**base, "method": method}, 0)
            spec = ModelSpec("encoder-classifier", cfg, InitSpec(seed=0), mask)
            save_checkpoint(
                store.artifact_dir(rid) / "ticket.safetensors",
                build_model(spec),
                spec,
                which="all" if mask is None else "trainable",
            )
            store.finish(rid, {"main": 0.5})
        rm = run_models(store, store.get(rid), n_inputs=20, data_dir=str(root))
    assert rm.input_source.startswith("GLUE sst2 dev"), rm.input_source
    assert set(rm.models) == {"ticket", "random", "dense"}
    assert rm.inputs["input_ids"].shape == (20, 24)
    stats = compare_models(rm.models, rm.inputs)
    assert all(0 < s["entropy"] <= 1 for s in stats.values())
