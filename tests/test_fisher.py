"""Empirical Fisher, its per-task normalisation and combination, top-fraction masks, component mapping and
parameter change (sltlab.analysis.fisher), on tiny models built in the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sltlab.analysis import fisher as fm
from sltlab.errors import ConfigError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 2)
        self.unused = nn.Parameter(torch.ones(4))  # never in the graph: its Fisher must be exactly 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def nll(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _data(n: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


def _manual_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                out[n] += p.grad.detach() ** 2
    return {n: v / len(x) for n, v in out.items()}


def test_fisher_is_mean_of_squared_per_sample_gradients() -> None:
    m = Tiny()
    x, y = _data()
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    got = fm.empirical_fisher(m, nll, batches)
    want = _manual_fisher(m, x, y)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)


def test_fisher_of_unused_parameter_is_zero_and_flags_restored() -> None:
    m = Tiny()
    m.fc.bias.requires_grad_(False)
    x, y = _data()
    got = fm.empirical_fisher(m, nll, [(x, y)], params=["fc.weight", "unused", "fc.bias"])
    assert torch.count_nonzero(got["unused"]) == 0
    assert got["fc.weight"].sum() > 0 and got["fc.bias"].sum() > 0
    assert m.fc.bias.requires_grad is False and m.fc.weight.requires_grad is True


def test_fisher_max_samples_and_errors() -> None:
    m = Tiny()
    x, y = _data(10)
    got = fm.empirical_fisher(m, nll, [(x, y)], max_samples=3)
    want = _manual_fisher(m, x[:3], y[:3])
    torch.testing.assert_close(got["fc.weight"], want["fc.weight"], rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="no parameter named"):
        fm.empirical_fisher(m, nll, [(x, y)], params=["nope"])
    with pytest.raises(ConfigError, match="no samples"):
        fm.empirical_fisher(m, nll, [])
    with pytest.raises(ConfigError, match="1-D"):
        fm.empirical_fisher(m, lambda mod, b: nll(mod, b).mean(), [(x, y)])


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5),
    fraction=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
)
def test_top_fraction_keeps_exactly_round_f_n(sizes: list[int], fraction: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = {f"p{i}": torch.rand(s, generator=g) for i, s in enumerate(sizes)}
    masks = fm.top_fraction_mask(scores, fraction)
    n = sum(sizes)
    assert sum(int(m.sum()) for m in masks.values()) == round(fraction * n)
    kept = torch.cat([scores[k][masks[k]] for k in scores])
    dropped = torch.cat([scores[k][~masks[k]] for k in scores])
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()


def test_top_fraction_ties_are_deterministic_and_bad_fraction_errors() -> None:
    scores = {"a": torch.zeros(5), "b": torch.zeros(5)}
    m1, m2 = fm.top_fraction_mask(scores, 0.3), fm.top_fraction_mask(scores, 0.3)
    assert all(torch.equal(m1[k], m2[k]) for k in scores)
    assert m1["a"].tolist() == [True, True, True, False, False]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="fraction"):
            fm.top_fraction_mask(scores, bad)


def test_normalise_and_combine_global_and_cv() -> None:
    f = {
        "t1": {"w": torch.tensor([1.0, 3.0])},
        "t2": {"w": torch.tensor([10.0, 0.0])},
        "t3": {"w": torch.tensor([0.0, 5.0])},
    }
    norm = fm.normalise_per_task(f)
    for t in f:
        assert float(norm[t]["w"].sum()) == pytest.approx(1.0)
    glob = fm.combine_fisher(f)
    torch.testing.assert_close(glob["w"], torch.tensor([0.25 + 1.0 + 0.0, 0.75 + 0.0 + 1.0]))
    cv = fm.combine_fisher(f, exclude=["t2"])  # never looks at t2
    torch.testing.assert_close(cv["w"], torch.tensor([0.25, 1.75]))
    with pytest.raises(ConfigError, match="no task left"):
        fm.combine_fisher({"t1": f["t1"]}, exclude=["t1"])
    with pytest.raises(ConfigError, match="positive"):
        fm.normalise_per_task({"t": {"w": torch.zeros(2)}})


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("encoder.encoder.layer.3.output.LayerNorm.weight", (3, "output.LayerNorm")),
        ("bert.encoder.layer.0.attention.output.LayerNorm.bias", (0, "attention.LayerNorm")),
        ("bert.encoder.layer.1.attention.self.query.weight", (1, "query")),
        ("encoder.layer.2.intermediate.dense.bias", (2, "intermediate")),
        ("encoder.layer.2.output.dense.weight", (2, "output")),
        ("embeddings.LayerNorm.weight", (None, "embeddings.LayerNorm")),
        ("embeddings.word_embeddings.weight", (None, "embeddings")),
        ("stack.blocks.1.attn.q.parametrizations.weight.original", (1, "query")),
        ("stack.blocks.0.norm2.bias", (0, "output.LayerNorm")),
        ("head.weight", (None, "head")),
        ("something.else", (None, "other")),
    ],
)
def test_component_of(name: str, key: tuple[int | None, str]) -> None:
    assert fm.component_of(name) == key


def test_parameter_change_and_tables(tmp_path: Path) -> None:
    before = {
        "encoder.layer.0.output.LayerNorm.weight": torch.ones(4),
        "encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2),
        "encoder.layer.1.attention.self.query.weight": torch.zeros(2, 2),
    }
    after = {
        "encoder.layer.0.output.LayerNorm.weight": torch.tensor([1.0, 1.0, 3.0, 1.0]),
        "encoder.layer.0.attention.self.query.weight": torch.full((2, 2), -0.1),
        "encoder.layer.1.attention.self.query.weight": torch.zeros(2, 2),
        "head.weight": torch.ones(3),
    }
    d = fm.parameter_change(before, after)
    assert d[(0, "output.LayerNorm")] == pytest.approx(0.5)
    assert d[(0, "query")] == pytest.approx(0.1) and d[(1, "query")] == 0.0
    assert (None, "head") not in d  # only in `after`
    assert fm.rank_components(d)[0][0] == "output.LayerNorm"
    md = fm.component_markdown(d)
    assert "| output.LayerNorm | 0.5 |" in md
    png = fm.plot_component_heatmap(d, tmp_path / "d.png", log=True)
    assert png.stat().st_size > 1000
    with pytest.raises(ConfigError):
        fm.parameter_change({"a": torch.ones(1)}, {"b": torch.ones(1)})


def test_save_load_roundtrip(tmp_path: Path) -> None:
    f = {"a.weight": torch.rand(3, 2), "b": torch.rand(5)}
    p = fm.save_fisher(tmp_path / "f.safetensors", f, {"task": "rte"})
    back = fm.load_fisher(p)
    assert set(back) == set(f) and all(torch.equal(back[k], f[k]) for k in f)
    with pytest.raises(ConfigError, match="does not exist"):
        fm.load_fisher(tmp_path / "missing.safetensors")
