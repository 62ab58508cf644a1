"""Mask density, overlap and consistency against known answers, and on masks read back from checkpoints."""

from __future__ import annotations

import pytest
import torch

from sltlab.analysis.masks import (
    chance_jaccard,
    consistency,
    density_by_layer,
    density_by_type,
    density_table,
    hamming,
    imp_round_overlap,
    jaccard,
    layer_label,
    load_ticket_masks,
    masks_from_tensors,
    module_type,
    overlap,
)
from sltlab.errors import ArtifactError, ConfigError
from sltlab.nn.init import InitSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.tickets.checkpoint import save_checkpoint
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, get_masks


def rand_mask(shape: tuple[int, ...], p: float, seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


def test_identical_masks_have_jaccard_one_and_hamming_zero() -> None:
    m = {"a": rand_mask((10, 10), 0.4, 0), "b": rand_mask((5,), 0.5, 1)}
    assert jaccard(m, m) == 1.0
    assert hamming(m, m) == 0.0


def test_complementary_masks() -> None:
    a = rand_mask((20, 20), 0.5, 2)
    assert jaccard(a, ~a) == 0.0
    assert hamming(a, ~a) == 1.0


def test_jaccard_small_example() -> None:
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert hamming(a, b) == pytest.approx(0.5)


def test_independent_random_masks_meet_chance_level() -> None:
    p = 0.5
    a, b = rand_mask((200, 200), p, 3), rand_mask((200, 200), p, 4)
    assert chance_jaccard(p, p) == pytest.approx(1 / 3)
    assert jaccard(a, b) == pytest.approx(1 / 3, abs=0.01)
    c = consistency([{"w": a}, {"w": b}, {"w": a}])
    assert c["n_pairs"] == 3
    assert c["chance"] == pytest.approx(1 / 3, abs=0.01)
    # pairs: (a,b) ~1/3, (a,a) = 1, (b,a) ~1/3 -> mean ~5/9
    assert c["jaccard"] == pytest.approx(5 / 9, abs=0.01)
    assert 0.0 < c["excess"] < 1.0


def test_density_by_layer_and_type_weight_by_size() -> None:
    masks = {
        "stack.blocks.0.attn.q": torch.ones(4, 4, dtype=torch.bool),
        "stack.blocks.0.attn.k": torch.zeros(4, 4, dtype=torch.bool),
        "stack.blocks.1.mlp.fc1": torch.ones(8, 4, dtype=torch.bool),
        "tok_emb": torch.zeros(10, 4, dtype=torch.bool),
        "head": torch.ones(2, 4, dtype=torch.bool),
    }
    assert density_by_layer(masks) == {"emb": 0.0, "L0": 0.5, "L1": 1.0, "head": 1.0}
    assert density_by_type(masks) == {"q": 1.0, "k": 0.0, "mlp": 1.0, "emb": 0.0, "head": 1.0}
    assert density_table(masks)["L0"] == {"q": 1.0, "k": 0.0}


@pytest.mark.parametrize(
    ("name", "kind", "layer"),
    [
        ("attn.q", "q", "L0"),
        ("stack.blocks.2.attn.o", "o", "L2"),
        ("blocks.1.mlp.fc2", "mlp", "L1"),
        ("pos_emb", "emb", "emb"),
        ("lm_head", "head", "head"),
        ("bert.encoder.layer.3.attention.self.value", "v", "L3"),
        ("bert.encoder.layer.3.attention.output.dense", "o", "L3"),
        ("bert.encoder.layer.3.output.dense", "mlp", "L3"),
    ],
)
def test_module_names(name: str, kind: str, layer: str) -> None:
    assert module_type(name) == kind
    assert layer_label(name) == layer


def test_overlap_reports_per_layer_and_rejects_mismatches() -> None:
    a = {"blocks.0.attn.q": rand_mask((6, 6), 0.5, 0), "blocks.1.attn.q": rand_mask((6, 6), 0.5, 1)}
    b = {"blocks.0.attn.q": a["blocks.0.attn.q"].clone(), "blocks.1.attn.q": ~a["blocks.1.attn.q"]}
    out = overlap(a, b)
    assert out["per_layer"] == {"L0": 1.0, "L1": 0.0}
    with pytest.raises(ConfigError):
        overlap(a, {"blocks.0.attn.q": a["blocks.0.attn.q"]})
    with pytest.raises(ConfigError):
        overlap(
            a,
            {"blocks.0.attn.q": torch.ones(3, 3, dtype=torch.bool), "blocks.1.attn.q": a["blocks.1.attn.q"]},
        )


def test_imp_round_overlap_of_nested_masks() -> None:
    scores = torch.rand(100, generator=torch.Generator().manual_seed(0))
    rounds = [{"w": scores >= q} for q in (0.0, 0.2, 0.36, 0.488)]  # nested: keep 100%, ~80%, ~64%, ~51%
    out = imp_round_overlap(rounds)
    assert [r["round"] for r in out] == [1, 2, 3]
    for r, prev in zip(out, rounds, strict=False):
        assert r["jaccard_prev"] == pytest.approx(r["density"] / (int(prev["w"].sum()) / 100))  # nested: |B|/|A|
        assert r["retention"] == pytest.approx(r["jaccard_prev"])
    assert out[-1]["jaccard_final"] == 1.0


def test_masks_from_tensors_reads_rounds_and_final() -> None:
    t = {
        "round0.w": torch.ones(4, dtype=torch.bool),
        "round1.w": torch.tensor([1, 1, 0, 0], dtype=torch.bool),
        "scores": torch.zeros(3),
    }
    final, rounds = masks_from_tensors(t)
    assert len(rounds) == 2 and torch.equal(final["w"], rounds[1]["w"])


def test_ticket_checkpoint_round_trip_and_score_seed_consistency(tmp_path) -> None:
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=2, mlp=True)
    paths = []
    for score_seed in (0, 1):
        spec = ModelSpec("stack", cfg, InitSpec(seed=0), SupermaskConfig(keep=0.5, seed=score_seed))
        model = build_model(spec)
        path = save_checkpoint(tmp_path / f"t{score_seed}.safetensors", model, spec)
        masks, rounds, spec_back = load_ticket_masks(path)
        assert rounds == [] and spec_back == spec
        assert all(torch.equal(masks[k], v) for k, v in get_masks(model).items())
        paths.append(masks)
    assert set(density_by_type(paths[0])) == {"q", "k", "v", "o", "mlp"}
    c = consistency(paths)
    # Two untrained score draws are independent: overlap near chance (1/3), far from identical.
    assert c["jaccard"] == pytest.approx(1 / 3, abs=0.08)
    dense = ModelSpec("stack", cfg, InitSpec(seed=0))
    path = save_checkpoint(tmp_path / "dense.safetensors", build_model(dense), dense, which="all")
    with pytest.raises(ArtifactError):
        load_ticket_masks(path)
