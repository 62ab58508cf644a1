import pytest
import torch
from torch import nn

from sltlab.errors import ConfigError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.tickets.search import SearchConfig, run_search
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import (
    SupermaskConfig,
    apply_supermask,
    bake,
    free_parameter_names,
    get_masks,
    mask_density,
    supermasks,
)


def _encoder(tiny_cfg, mask, norm="none"):
    cfg = tiny_cfg.with_norm(NormSpec.parse(norm))
    return build_model(ModelSpec("encoder-classifier", cfg, InitSpec(seed=0), mask))


def _toy_batches(n_out=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 50, (64, 8), generator=g)
    y = (x[:, 0] % n_out)
    while True:
        yield x, y


def _ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.5, 1.0])
def test_edge_popup_keeps_exact_fraction_per_layer(tiny_cfg, keep):
    model = _encoder(tiny_cfg, SupermaskConfig(keep=keep))
    for name, m in get_masks(model).items():
        k = max(1, round(keep * m.numel()))
        assert int(m.sum()) == k, name


def test_global_scope_keeps_fraction_overall_not_per_layer(tiny_cfg):
    model = _encoder(tiny_cfg, SupermaskConfig(keep=0.3, scope="global"))
    for sm in supermasks(model).values():  # make layers differ so a global threshold must be uneven
        with torch.no_grad():
            sm.scores.mul_(torch.rand(()) * 10)
    masks = get_masks(model)
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int(m.sum()) for m in masks.values()) - round(0.3 * total)) <= 1
    assert len({round(float(m.float().mean()), 3) for m in masks.values()}) > 1


def test_search_changes_masks_not_weights_and_lowers_loss(tiny_cfg):
    model = _encoder(tiny_cfg, SupermaskConfig(keep=0.5))
    weights = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("original")}
    before = {k: v.clone() for k, v in get_masks(model).items()}
    hist = run_search(model, _ce, _toy_batches(), SearchConfig(steps=60, lr=0.05), progress=False, log_every=1)
    after = get_masks(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert sum(h["loss"] for h in hist[-10:]) < sum(h["loss"] for h in hist[:10])


def test_straight_through_gradient_reaches_scores_of_dropped_weights():
    # Both weights help (we want a larger output); only one is kept, yet both scores must be pushed up.
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    apply_supermask(lin, SupermaskConfig(keep=0.5))
    sm = supermasks(lin)[""]
    with torch.no_grad():
        sm.scores.copy_(torch.tensor([[-0.2, -0.5]]))  # ranking the scores themselves: weight 0 is kept
    assert torch.equal(sm.hard_mask(), torch.tensor([[1.0, 0.0]]))
    y = lin(torch.tensor([[1.0, 1.0]]))
    (-y).sum().backward()
    assert torch.allclose(sm.scores.grad, torch.tensor([[-1.0, -2.0]]))  # dL/ds = dL/dW_eff * W


def test_annealed_gradient_matches_sigmoid_straight_through():
    lin = nn.Linear(3, 1, bias=False)
    apply_supermask(lin, SupermaskConfig(method="annealed", keep=0.5, temperature=0.7))
    sm = supermasks(lin)[""]
    lin.train()
    x = torch.ones(1, 3)
    lin(x).sum().backward()
    w = lin.parametrizations.weight.original
    p = torch.sigmoid(sm.scores.detach() / 0.7)
    assert torch.allclose(sm.scores.grad, w * p * (1 - p) / 0.7)


def test_bake_gives_same_outputs_as_masked_model(tiny_cfg):
    model = _encoder(tiny_cfg, SupermaskConfig(keep=0.4, scale="head"), norm="pre-ln")
    run_search(model, _ce, _toy_batches(), SearchConfig(steps=5, lr=0.05), progress=False)
    x = torch.randint(0, 50, (4, 8))
    model.eval()
    y = model(x)
    masks = get_masks(model)
    bake(model)
    assert not supermasks(model)
    assert torch.allclose(model(x), y, atol=1e-6)
    for name, m in masks.items():
        w = dict(model.named_modules())[name].weight
        assert torch.all(w[~m] == 0)


def test_annealed_temperature_matters_and_eval_is_deterministic(tiny_cfg):
    model = _encoder(tiny_cfg, SupermaskConfig(method="annealed", keep=0.5, temperature=1.0))
    sm = next(iter(supermasks(model).values()))
    sm.train()

    def sample_spread(t):
        sm.temperature = t
        samples = torch.stack([sm.mask_for_forward().detach() for _ in range(20)])
        return float(samples.std(0).mean())

    assert sample_spread(1.0) > 0.3  # high T: near-random masks
    with torch.no_grad():
        sm.scores.copy_(torch.randn_like(sm.scores))
    assert sample_spread(1e-3) < 0.05  # T -> 0: samples concentrate on 1[s > 0]
    sm.eval()
    assert torch.equal(sm.mask_for_forward(), (sm.scores > 0).float())
    # the first samples have density ~ keep
    fresh = _encoder(tiny_cfg, SupermaskConfig(method="annealed", keep=0.2, temperature=1.0))
    fresh.train()
    s0 = next(iter(supermasks(fresh).values()))
    assert abs(float(s0.mask_for_forward().detach().mean()) - 0.2) < 0.08


def test_ln_integrated_frees_masks_and_norm_affine_only(tiny_cfg):
    model = _encoder(tiny_cfg, SupermaskConfig(keep=0.5, train_norm=True), norm="pre-ln+affine")
    names = free_parameter_names(model)
    assert names and all(n.endswith(".scores") or "norm" in n for n in names)
    assert any("norm" in n for n in names)
    frozen = _encoder(tiny_cfg, SupermaskConfig(keep=0.5), norm="pre-ln")
    assert all(n.endswith(".scores") for n in free_parameter_names(frozen))


def test_free_lr_steps_norm_affine_apart_from_scores(tiny_cfg):
    """One plain SGD step: scores move by lr * grad, the LN gain/bias by free_lr * grad, whatever the other is."""
    cfg = SearchConfig(steps=1, lr=0.1, optimizer="sgd", momentum=0.0, grad_clip=0.0, schedule="constant")

    def one_step(free_lr):
        model = _encoder(tiny_cfg, SupermaskConfig(keep=0.5, train_norm=True), norm="pre-ln+affine")
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        run_search(model, _ce, _toy_batches(), cfg, progress=False, free_lr=free_lr)
        return {n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad}

    same, apart = one_step(None), one_step(1.0)
    for name in same:
        if name.endswith(".scores"):
            assert torch.equal(same[name], apart[name]), name
        else:
            # atol: a few float32 ulps of a gain near 1, where the step is added and read back
            torch.testing.assert_close(apart[name], same[name] * 10, rtol=1e-3, atol=5e-7)
    assert any(not n.endswith(".scores") and same[n].abs().sum() > 0 for n in same)
    with pytest.raises(ConfigError, match="free_lr"):
        run_search(_encoder(tiny_cfg, SupermaskConfig()), _ce, _toy_batches(), cfg, progress=False, free_lr=0.0)


def test_bad_mask_config():
    with pytest.raises(ConfigError, match=r"mask.keep"):
        SupermaskConfig(keep=1.5)
    with pytest.raises(ConfigError, match=r"mask.keep"):
        SupermaskConfig(keep=0.0)
    with pytest.raises(ConfigError, match="mask.targets"):
        apply_supermask(nn.Sequential(nn.Linear(2, 2)), SupermaskConfig(targets=("nothing*",)))


def test_supermask_on_huggingface_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    from sltlab.nn.init import init_model

    init_model(model, InitSpec(seed=1))
    apply_supermask(model, SupermaskConfig(keep=0.5, targets=("bert.encoder.*",), train_norm=True))
    masks0 = {k: v.clone() for k, v in get_masks(model).items()}
    assert len(masks0) == 2 * 6  # q, k, v, attention out, intermediate, output per layer
    originals = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(".original")}
    x = torch.randint(0, 64, (16, 10))
    y = torch.randint(0, 2, (16,))

    def loss_fn(m, batch):
        return m(input_ids=batch[0], labels=batch[1]).loss

    run_search(model, loss_fn, [(x, y)], SearchConfig(steps=15, lr=0.1), progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in originals.items())
    assert any(not torch.equal(masks0[k], m) for k, m in get_masks(model).items())
    assert abs(mask_density(model) - 0.5) < 0.01
    assert any("LayerNorm" in n for n in free_parameter_names(model))
