"""Whole-block constructed tickets: the ReLU pair against brute-force subset sums, the MLP through a paired
source, norms (copied, folded, refused), and the stated error bound through blocks and LayerNorms."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from sltlab.errors import ConfigError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.theory import PairedMLP
from sltlab.nn.transformer import MLP, ModelConfig
from sltlab.tasks.approx import ApproxStudy, run_cell
from sltlab.tickets.bound import mlp_matrices, mlp_terms, norm_out, pair_maps, propagation
from sltlab.tickets.construct import ConstructConfig, construct_mlp, construct_relu_pair, construct_ticket
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, apply_supermask


def best_subset_error(c: np.ndarray, t: float) -> float:
    return min(abs(float(np.dot(bits, c)) - t) for bits in itertools.product([0, 1], repeat=len(c)))


def masked(w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return w * m.to(w.dtype)


def test_relu_pair_is_two_optimal_subset_sums_and_reproduces_a_relu_layer() -> None:
    g = torch.Generator().manual_seed(0)
    out_dim, in_dim, units = 3, 2, 10
    W = torch.rand(out_dim, in_dim, generator=g, dtype=torch.float64) - 0.5
    a = torch.rand(units * in_dim, in_dim, generator=g, dtype=torch.float64) * 2 - 1
    b = torch.rand(out_dim, units * in_dim, generator=g, dtype=torch.float64) * 2 - 1
    c = construct_relu_pair(W, a, b, signed=True, cfg=ConstructConfig(solver="mitm"))
    # The first mask keeps one connection per unit, inside the unit's own input block.
    assert int(c.mask_a.sum(1).max()) <= 1
    for j in range(in_dim):
        assert not c.mask_a[j * units : (j + 1) * units, [k for k in range(in_dim) if k != j]].any()
    # Each half of each entry is the optimal subset sum over that sign's candidates (independent brute force).
    worst = 0.0
    for l_, j in itertools.product(range(out_dim), range(in_dim)):
        block = range(j * units, (j + 1) * units)
        for sign, got in ((1, c.plus), (-1, c.minus)):
            cand = np.array([float(b[l_, i] * a[i, j]) for i in block if sign * a[i, j] > 0])
            best = best_subset_error(cand, float(W[l_, j]))
            assert abs(float(got[l_, j]) - float(W[l_, j])) == pytest.approx(best, abs=1e-12)
            worst = max(worst, best)
    assert c.max_abs_error == pytest.approx(worst, abs=1e-12)
    # The pruned pair computes exactly S+ relu(x) - S- relu(-x), and relu of it is the target ReLU layer up to
    # the subset-sum errors: |relu(pair x) - relu(W x)| <= ||[S+ - W, S- - W]|| ||x|| on random inputs.
    am, bm = masked(a, c.mask_a), masked(b, c.mask_b)
    x = torch.randn(200, in_dim, generator=g, dtype=torch.float64)
    pair = torch.relu(x @ am.T) @ bm.T
    assert torch.allclose(pair, x.clamp(min=0) @ c.plus.T - (-x).clamp(min=0) @ c.minus.T, atol=1e-12)
    d = torch.linalg.matrix_norm(torch.cat([c.plus - W, c.minus - W], 1), ord=2)
    err = (torch.relu(pair) - torch.relu(x @ W.T)).norm(dim=1)
    assert bool((err <= d * x.norm(dim=1) + 1e-12).all())


def test_unsigned_pair_keeps_only_positive_units() -> None:
    g = torch.Generator().manual_seed(1)
    W = torch.rand(2, 3, generator=g, dtype=torch.float64) - 0.5
    a = torch.rand(24, 3, generator=g, dtype=torch.float64) * 2 - 1
    b = torch.rand(2, 24, generator=g, dtype=torch.float64) * 2 - 1
    c = construct_relu_pair(W, a, b, signed=False)
    assert bool((a[c.mask_a] > 0).all())
    x = torch.rand(50, 3, generator=g, dtype=torch.float64)  # >= 0, as after a ReLU
    got = torch.relu(x @ masked(a, c.mask_a).T) @ masked(b, c.mask_b).T
    assert torch.allclose(got, x @ c.plus.T, atol=1e-12)


def _mlp_pair(d: int = 4, d_ff: int = 8, units: int = 24) -> tuple[MLP, PairedMLP]:
    from sltlab.nn.init import init_model

    target = MLP(d, d_ff, activation="relu")
    init_model(target, InitSpec("kaiming-uniform", seed=3))
    source = PairedMLP(d, d_ff, units)
    init_model(source, InitSpec("theory", seed=4, gain=2.0))  # candidates up to 4: every entry in range
    apply_supermask(source, SupermaskConfig(keep=0.5))
    return target, source


def test_mlp_construction_reproduces_a_relu_mlp_within_its_bound() -> None:
    target, source = _mlp_pair()
    masks, info = construct_mlp(target, source)
    from sltlab.tickets.construct import set_fixed_masks

    set_fixed_masks(source, masks)
    assert info["unreachable_entries"] == 0 and info["fc1_max_abs_error"] < 0.1
    sp, sm = pair_maps(source.fc1)
    w1 = target.fc1.weight.detach().double()
    assert float((sp - w1).abs().max()) == pytest.approx(info["fc1_max_abs_error"], abs=1e-6) or float(
        (sm - w1).abs().max()) == pytest.approx(info["fc1_max_abs_error"], abs=1e-6)
    x = torch.randn(1, 256, 4, generator=torch.Generator().manual_seed(5)).double()
    with torch.no_grad():
        err = (source.double()(x) - target.double()(x)).norm(dim=-1).amax()
    _, own = mlp_terms(mlp_matrices(target, source), x, torch.zeros(1, dtype=torch.float64))
    assert 0 < float(err) <= float(own[0])


def test_mlp_construction_refuses_what_it_cannot_build() -> None:
    target, source = _mlp_pair()
    gelu = MLP(4, 8, activation="gelu")
    with pytest.raises(ConfigError, match="ReLU"):
        construct_mlp(gelu, source)
    with pytest.raises(ConfigError, match="PairedMLP"):
        construct_mlp(target, MLP(4, 8, activation="relu"))


def _stack_pair(norm: str, width: int = 80, d: int = 4, blocks: int = 2, affine: bool = False):
    ns = NormSpec.parse(norm)
    tcfg = ModelConfig(d_model=d, n_heads=1, n_layers=blocks, mlp=True, activation="relu",
                       norm=NormSpec(ns.kind, ns.placement, "frozen"), final_norm=False)
    target = build_model(ModelSpec("stack", tcfg, InitSpec("kaiming-uniform", seed=0),
                                   options={"random_norm_affine": True} if affine else {}))
    scfg = ModelConfig(d_model=d, n_heads=1, n_layers=blocks, n_k=width, n_v=width, mlp=True, activation="relu",
                       norm=ns, final_norm=False)
    source = build_model(ModelSpec("stack", scfg, InitSpec("theory", seed=10_000, gain=2.0),
                                   SupermaskConfig(keep=0.5, scale="layer", train_norm=ns.affine == "trainable"),
                                   {"mlp_pairs": 2 * width // d}))
    return target, source


# Exact meet-in-the-middle for every entry: a pair's sign halves hold up to ~30 of the 40 units per coordinate.
EXACT = ConstructConfig(mitm_max=32)


def bounded_variance_inputs(n: int, t: int, d: int, s0: float = 0.5) -> torch.Tensor:
    """Gaussian tokens, each rescaled so that its standard deviation is at least s0."""
    x = torch.randn(n, t, d, generator=torch.Generator().manual_seed(7))
    sig = x.std(-1, unbiased=False, keepdim=True)
    return torch.where(sig < s0, x * (s0 / sig.clamp(min=1e-6)), x)


@pytest.mark.parametrize("norm", ["none", "pre-ln", "post-ln", "pre-rms", "post-rms"])
def test_block_construction_stays_within_the_stated_bound(norm: str) -> None:
    target, source = _stack_pair(norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        construct_ticket(source, target, EXACT)
    prop = propagation(source, target, bounded_variance_inputs(32, 6, 4))
    for b in range(2):
        err, bound = prop["error"][b], prop["bound"][b]
        assert bool((err <= bound * (1 + 1e-9)).all()), (norm, b)
        assert float(err.max()) > 0
        # triangle inequality: e_b <= delta_b + amp_b e_(b-1), measured
        if b:
            assert bool((err <= prop["delta"][b] + prop["amplification"][b] * prop["error"][b - 1] + 1e-12).all())
    assert float(prop["error"][-1].median() / prop["target_scale"].median()) < 1e-2


def test_layernorm_bound_amplifies_errors_at_small_variance() -> None:
    """The guarantee's limit: LN's local gain is 1/sigma. The bound holds for real perturbations, and it is
    (rightly) 100x larger for inputs 100x less spread."""
    ln = torch.nn.LayerNorm(8).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, 8, generator=g, dtype=torch.float64)
    e = torch.randn(64, 5, 8, generator=g, dtype=torch.float64) * 1e-3
    size = e.norm(dim=-1).amax(-1)
    for scale in (1.0, 0.01):
        with torch.no_grad():
            moved = (ln(x * scale + e) - ln(x * scale)).norm(dim=-1).amax(-1)
        assert bool((moved <= norm_out(ln, x * scale, size) * (1 + 1e-9)).all())
    tiny = size * 1e-3  # small enough for the linear regime at both scales
    ratio = norm_out(ln, x * 0.01, tiny) / norm_out(ln, x, tiny)
    assert 50 < float(ratio.median()) <= 100  # 1/sigma, damped only by LayerNorm's eps


def test_norm_affine_is_copied_into_ln_integrated_tickets_and_folded_for_pre_rms() -> None:
    target, source = _stack_pair("pre-ln+affine", affine=True)
    info = construct_ticket(source, target, EXACT)
    assert set(info["norms"].values()) == {"copied"}
    assert torch.equal(source.blocks[1].norm2.bias, target.blocks[1].norm2.bias)
    x = bounded_variance_inputs(16, 6, 4)
    prop = propagation(source, target, x)
    assert bool((prop["error"][-1] <= prop["bound"][-1]).all())
    target, source = _stack_pair("pre-rms", affine=True)
    info = construct_ticket(source, target, EXACT)
    assert set(info["norms"].values()) == {"folded"}
    with torch.no_grad():
        rel = (source(x)[0] - target(x)[0]).norm() / target(x)[0].norm()
    assert float(rel) < 0.05
    with pytest.raises(ConfigError, match="bound.norms"):  # a folded gain: the norms differ, no bound
        propagation(source, target, x)
    target, source = _stack_pair("pre-ln", affine=True)
    with pytest.raises(ConfigError, match=r"\+affine"):
        construct_ticket(source, target, EXACT)


def test_approx_study_constructs_block_tickets_and_names_its_requirements() -> None:
    kw = dict(module="stack", target="own", n_blocks=2, mlp=True, d_model=4, heads=(1,), widths=(80,),
              variants=("pre-ln",), methods=("construct",), seeds=(0,), source_init="theory", source_gain=2.0,
              n_train=8, n_test=64, seq_len=4, construct=EXACT)
    with pytest.raises(ConfigError, match="study.activation"):
        ApproxStudy(**kw)
    with pytest.raises(ConfigError, match="study.source_mlp"):
        ApproxStudy(**kw, activation="relu")
    study = ApproxStudy(**kw, activation="relu", source_mlp="paired")
    run = study.cells()[0]
    assert run.config_dict()["source_mlp"] == "paired"
    assert "source_mlp" not in ApproxStudy(module="stack", widths=(16,)).cells()[0].config_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, metrics, _ = run_cell(run)
    assert len(metrics["per_block_rel_error"]) == 2 and max(metrics["per_block_rel_error"]) < 1e-2
    assert metrics["mlp_unreachable_entries"] == 0 and math.isfinite(metrics["mlp_max_abs_error"])
