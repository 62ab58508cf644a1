import math

import pytest
import torch

from sltlab.errors import ConfigError
from sltlab.nn.init import InitSpec, init_model, seeded_tensor
from sltlab.nn.norm import NormSpec, RMSNorm
from sltlab.nn.transformer import EncoderClassifier, ModelConfig, MultiHeadAttention
from sltlab.tickets.spec import ModelSpec, build_model

NORMS = ["none", "pre-ln", "post-ln", "pre-rms", "post-rms", "pre-ln+affine"]


def _weights(model):
    return {k: v for k, v in model.state_dict().items() if "norm" not in k}


def test_models_differing_only_in_norm_share_names_and_weights(tiny_cfg):
    ref = None
    for norm in NORMS:
        model = EncoderClassifier(tiny_cfg.with_norm(NormSpec.parse(norm)))
        init_model(model, InitSpec(seed=3))
        w = _weights(model)
        if ref is None:
            ref = w
        assert w.keys() == ref.keys(), norm
        for k in ref:
            assert torch.equal(w[k], ref[k]), (norm, k)


def test_norm_spec_parse_and_errors():
    s = NormSpec.parse("post-rms+affine")
    assert (s.kind, s.placement, s.affine) == ("rmsnorm", "post", "trainable")
    assert NormSpec.parse("none").kind == "none"
    with pytest.raises(ConfigError, match="norm"):
        NormSpec.parse("pre-batchnorm")


def test_pre_and_post_norm_forward_differ_and_rms_normalises(tiny_cfg):
    x = torch.randint(0, 50, (2, 7))
    outs = {}
    for norm in ("none", "pre-ln", "post-ln"):
        m = EncoderClassifier(tiny_cfg.with_norm(NormSpec.parse(norm)))
        init_model(m, InitSpec(seed=1))
        outs[norm] = m(x)
    assert not torch.allclose(outs["pre-ln"], outs["post-ln"])
    rms = RMSNorm(8)
    y = rms(torch.randn(4, 8) * 10)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(4), atol=1e-3)


def test_attention_widths_independent_of_model_width():
    mha = MultiHeadAttention(d=16, n_heads=2, n_k=40, n_v=24)
    y, attn = mha(torch.randn(3, 5, 16), need_weights=True)
    assert y.shape == (3, 5, 16) and attn.shape == (3, 2, 5, 5)
    assert mha.q.weight.shape == (80, 16) and mha.o.weight.shape == (16, 48)
    # the fused kernel and the explicit softmax agree
    y2, _ = mha(torch.randn(3, 5, 16) * 0 + 1)
    y3, _ = mha(torch.randn(3, 5, 16) * 0 + 1, need_weights=True)
    assert torch.allclose(y2, y3, atol=1e-5)


def test_causal_and_padding_masks():
    mha = MultiHeadAttention(d=8, n_heads=2, n_k=4, n_v=4)
    x = torch.randn(1, 6, 8)
    _, a = mha(x, causal=True, need_weights=True)
    assert torch.all(a.triu(1) == 0)
    pad = torch.tensor([[True, True, True, False, False, False]])
    _, a = mha(x, pad_mask=pad, need_weights=True)
    assert torch.all(a[..., 3:] == 0)
    # changing padded positions does not change real ones
    x2 = x.clone()
    x2[:, 3:] = 100.0
    y1, _ = mha(x, pad_mask=pad)
    y2, _ = mha(x2, pad_mask=pad)
    assert torch.allclose(y1[:, :3], y2[:, :3], atol=1e-5)


def test_init_is_order_and_module_independent():
    a = seeded_tensor(InitSpec(seed=5), "stack.blocks.0.attn.q.weight", (8, 4))
    _ = seeded_tensor(InitSpec(seed=5), "stack.blocks.1.attn.q.weight", (8, 4))
    b = seeded_tensor(InitSpec(seed=5), "stack.blocks.0.attn.q.weight", (8, 4))
    c = seeded_tensor(InitSpec(seed=6), "stack.blocks.0.attn.q.weight", (8, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("scheme", ["kaiming-uniform", "kaiming-normal", "xavier-uniform", "signed-constant",
                                    "scaled-signed-constant", "theory"])
def test_init_schemes(scheme):
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=1, n_k=16, n_v=16, mlp=False)
    m = build_model(ModelSpec("mha", cfg, InitSpec(scheme=scheme, seed=0, density=0.5)))
    q, v = m.attn.q.weight, m.attn.v.weight
    if scheme == "theory":
        assert q.abs().max() <= 16 ** 0.25 and q.abs().max() > 0.9 * 16 ** 0.25
        assert v.abs().max() <= 1.0 and v.abs().max() > 0.9
    elif "signed-constant" in scheme:
        assert len(torch.unique(q.abs())) == 1
        std = 1 / math.sqrt(16)  # kaiming std with gain 1
        expect = std / math.sqrt(0.5) if scheme.startswith("scaled") else std
        assert torch.allclose(q.abs(), torch.full_like(q, expect))
    else:
        assert 0.1 < float(q.detach().std()) < 1.0


def test_bad_model_config():
    with pytest.raises(ConfigError, match="n_heads"):
        ModelConfig(d_model=10, n_heads=3)
    with pytest.raises(ConfigError, match="vocab_size"):
        EncoderClassifier(ModelConfig(d_model=8, n_heads=2))


def test_spec_json_round_trip(tiny_cfg):
    from sltlab.tickets.supermask import SupermaskConfig

    spec = ModelSpec("encoder-classifier", tiny_cfg, InitSpec(seed=2), SupermaskConfig(keep=0.3, scale="head"))
    assert ModelSpec.from_json(spec.to_json()) == spec
