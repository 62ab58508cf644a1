"""Iterative magnitude pruning: the sparsity schedule 1-(1-p)^r, magnitude order, rewinding, baking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sltlab.errors import ConfigError
from sltlab.nn.init import InitSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.tickets.imp import (
    ImpConfig,
    attach_prune_masks,
    bake_prune_masks,
    prune_masks,
    prune_round,
    rewind,
    rewind_callback,
    snapshot,
    sparsity,
)
from sltlab.tickets.search import SearchConfig, run_search
from sltlab.tickets.spec import ModelSpec, build_model


def _model() -> nn.Module:
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=1, vocab_size=50, max_len=8, n_outputs=2)
    return build_model(ModelSpec("encoder-classifier", cfg, InitSpec(seed=3)))


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_sparsity_after_r_rounds_is_one_minus_keep_power(scope, fraction):
    model = _model()
    cfg = ImpConfig(rounds=4, fraction=fraction, scope=scope)
    attach_prune_masks(model, cfg)
    total = sum(pm.mask.numel() for pm in prune_masks(model).values())
    n_layers = len(prune_masks(model))
    for r in range(1, cfg.rounds + 1):
        s = prune_round(model, cfg, r)
        expected = 1 - (1 - fraction) ** r
        assert cfg.sparsity_after(r) == pytest.approx(expected)
        # per-layer rounding costs at most half a weight per layer
        slack = (n_layers if scope == "layer" else 1) / total
        assert abs(s - expected) <= slack + 1e-12
        if scope == "layer":
            for pm in prune_masks(model).values():
                n = pm.mask.numel()
                assert int(pm.mask.sum()) == max(1, round(n * (1 - fraction) ** r))


def test_prunes_smallest_magnitudes_and_never_revives():
    model = _model()
    cfg = ImpConfig(rounds=2, fraction=0.5)
    attach_prune_masks(model, cfg)
    prune_round(model, cfg, 1)
    for name, pm in prune_masks(model).items():
        w = model.get_submodule(name).parametrizations.weight.original.abs()
        assert w[pm.mask].min() >= w[~pm.mask].max()  # survivors are the largest magnitudes
    first = {n: pm.mask.clone() for n, pm in prune_masks(model).items()}
    with torch.no_grad():  # make the pruned weights huge: they must still not come back
        for name, pm in prune_masks(model).items():
            model.get_submodule(name).parametrizations.weight.original[~pm.mask] = 1e6
    prune_round(model, cfg, 2)
    for n, pm in prune_masks(model).items():
        assert not (pm.mask & ~first[n]).any()


def test_masked_weights_are_zero_in_forward_and_get_no_gradient():
    model = _model()
    attach_prune_masks(model, ImpConfig(fraction=0.5))
    prune_round(model, ImpConfig(fraction=0.5), 1)
    lin = model.get_submodule("stack.blocks.0.attn.q")
    pm = prune_masks(model)["stack.blocks.0.attn.q"]
    assert (lin.weight[~pm.mask] == 0).all()
    ids = torch.randint(0, 50, (4, 8))
    model(ids).sum().backward()
    g = lin.parametrizations.weight.original.grad
    assert g is not None and (g[~pm.mask] == 0).all() and g[pm.mask].abs().sum() > 0


def test_rewind_to_step_k_and_bake_loads_into_plain_model():
    model = _model()
    cfg = ImpConfig(rounds=1, fraction=0.5, rewind_step=3)
    attach_prune_masks(model, cfg)
    init = snapshot(model)
    saved: dict = {}
    ids = torch.randint(0, 50, (16, 8))
    y = torch.randint(0, 2, (16,))

    def loss(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    run_search(
        model,
        loss,
        [(ids, y)],
        SearchConfig(steps=6, lr=1e-2),
        callbacks=[rewind_callback(cfg, saved)],
        progress=False,
    )
    k = saved["state"]
    name = "stack.blocks.0.mlp.fc1.parametrizations.weight.original"
    trained = dict(model.named_parameters())[name].detach().clone()
    assert not torch.equal(k[name], init[name]) and not torch.equal(k[name], trained)
    prune_round(model, cfg, 1)
    rewind(model, k)
    assert torch.equal(dict(model.named_parameters())[name], k[name])
    assert sparsity(model) == pytest.approx(0.5, abs=0.01)
    masks = bake_prune_masks(model)
    plain = _model()
    plain.load_state_dict(model.state_dict())
    fc1 = plain.get_submodule("stack.blocks.0.mlp.fc1").weight
    assert (fc1[~masks["stack.blocks.0.mlp.fc1"]] == 0).all()
    assert torch.allclose(plain(ids), model(ids))


def test_bad_config():
    with pytest.raises(ConfigError, match="imp.fraction"):
        ImpConfig(fraction=1.0)
    with pytest.raises(ConfigError, match="imp.scope"):
        ImpConfig(scope="net")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="imp.targets"):
        attach_prune_masks(_model(), ImpConfig(targets=("nothing*",)))
    with pytest.raises(ConfigError, match="prune masks"):
        prune_round(_model(), ImpConfig(), 1)
