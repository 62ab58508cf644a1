"""Multicoated supermasks and partially frozen sources: options of the edge-popup supermask that default to it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import subprocess
import sys
import zlib

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import sltlab.tickets.artifact as art
from sltlab.errors import ArtifactError, ConfigError
from sltlab.nn.init import InitSpec, init_model
from sltlab.nn.norm import NormSpec
from sltlab.runs.store import make_run_id
from sltlab.tasks.approx import ApproxStudy, run_cell
from sltlab.tickets.checkpoint import load_checkpoint, save_checkpoint
from sltlab.tickets.search import SearchConfig, run_search
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import (
    VARIANT_DEFAULTS,
    Supermask,
    SupermaskConfig,
    _kth_largest_values,
    apply_supermask,
    bake,
    frozen_pattern,
    get_coat_counts,
    get_masks,
    mask_density,
    supermasks,
)

MULTI = {"coats": 3}
FROZEN = {"frozen_pruned": 0.2, "frozen_kept": 0.1}
BOTH = {"coats": 2, "frozen_pruned": 0.3, "frozen_kept": 0.1}


def _encoder(tiny_cfg, mask, norm="none", seed=0):
    cfg = tiny_cfg.with_norm(NormSpec.parse(norm))
    return build_model(ModelSpec("encoder-classifier", cfg, InitSpec(seed=seed), mask))


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 50, (64, 8), generator=g)
    y = x[:, 0] % 3
    while True:
        yield x, y


def _ce(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _keep_count(keep, n):
    return max(1, min(n, round(keep * n)))


# -- defaults change nothing -----------------------------------------------------------------------------------
def test_default_config_dict_has_no_new_keys():
    d = SupermaskConfig().to_dict()
    assert not set(VARIANT_DEFAULTS) & set(d)
    assert set(d) == {"method", "keep", "scope", "targets", "exclude", "scale", "train_norm", "free", "seed",
                      "temperature"}
    spec = ModelSpec("mha", ApproxStudy().cells()[0].source_spec().model, InitSpec(seed=10_000),
                     SupermaskConfig(keep=0.5, scale="layer"))
    assert not set(VARIANT_DEFAULTS) & set(json.loads(spec.to_json())["mask"])
    # the run id a default approximation cell had before the variants existed
    cell = ApproxStudy().cells()[0]
    assert make_run_id("approx", cell.config_dict(), cell.seed) == "approx-049c37366e98"


def test_variant_fields_are_hashed_and_round_trip_through_json(tiny_cfg):
    for kw in (MULTI, FROZEN, {"coats": 3, "coat_keeps": (0.5, 0.3, 0.1)}, {**FROZEN, "frozen_seed": 7}):
        cfg = SupermaskConfig(keep=0.5, **kw)
        assert set(kw) <= set(cfg.to_dict())
        spec = ModelSpec("encoder-classifier", tiny_cfg, InitSpec(seed=1), cfg)
        assert ModelSpec.from_json(spec.to_json()) == spec
    a = ApproxStudy(methods=("edge-popup", "multicoated", "partially-frozen")).cells()
    keys = {c.method: set(c.config_dict()) for c in a}
    assert keys["multicoated"] - keys["edge-popup"] == {"coats", "coat_keeps"}
    assert keys["partially-frozen"] - keys["edge-popup"] == {"frozen_pruned", "frozen_kept"}


# -- multicoated --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("keep", "coats", "coat_keeps"), [(0.5, 3, ()), (0.3, 2, ()), (0.6, 4, (0.6, 0.4, 0.2, 0.05))])
def test_multicoated_keeps_exact_fraction_per_coat_and_overall(tiny_cfg, keep, coats, coat_keeps):
    cfg = SupermaskConfig(keep=keep, coats=coats, coat_keeps=coat_keeps)
    model = _encoder(tiny_cfg, cfg)
    keeps = cfg.resolved_coat_keeps()
    assert keeps[0] == keep and len(keeps) == coats
    for name, count in get_coat_counts(model).items():
        n = count.numel()
        assert count.dtype == torch.uint8 and int(count.max()) == coats
        for i, k in enumerate(keeps, start=1):
            assert int((count >= i).sum()) == _keep_count(k, n), (name, i)
        sm = supermasks(model)[name]
        assert torch.equal(sm.hard_mask(), count.float() / coats)  # the few-valued multiplier
    assert mask_density(model) == pytest.approx(keep, abs=0.01)


def test_multicoated_global_scope_keeps_each_coat_overall(tiny_cfg):
    model = _encoder(tiny_cfg, SupermaskConfig(keep=0.4, coats=2, scope="global"))
    for sm in supermasks(model).values():  # uneven layers, so a global threshold must be uneven
        with torch.no_grad():
            sm.scores.mul_(torch.rand(()) * 10)
    counts = get_coat_counts(model)
    total = sum(c.numel() for c in counts.values())
    for i, k in enumerate((0.4, 0.2), start=1):
        assert sum(int((c >= i).sum()) for c in counts.values()) == round(k * total)


def _linear_pair(make_second):
    """Two Linear layers with the same weights and scores: a plain edge-popup supermask and `make_second`."""
    torch.manual_seed(0)
    a, b = nn.Linear(24, 16, bias=False), nn.Linear(24, 16, bias=False)
    b.load_state_dict(a.state_dict())
    scores = torch.randn(16, 24)
    for lin, sm in ((a, Supermask(a.weight.shape, "edge-popup", 0.3, scores.clone())),
                    (b, make_second(b.weight.shape, scores.clone()))):
        parametrize.register_parametrization(lin, "weight", sm, unsafe=True)
        lin.parametrizations.weight.original.requires_grad_(False)
    return a, b


def _descend(lin, steps=40):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 24, generator=g), torch.randn(32, 16, generator=g)
    opt = torch.optim.Adam([supermasks(lin)[""].scores], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        (lin(x) - y).pow(2).mean().backward()
        opt.step()
    return lin(x).detach()


def test_one_coat_through_the_variant_code_path_is_bit_identical_to_edge_popup():
    """The general path (coat counts from the multi-pivot selection, straight-through with a frozen mask) with one
    coat and nothing frozen must give exactly the plain path's masks, gradients and outputs, step after step."""
    empty = torch.zeros(16, 24, dtype=torch.bool)
    a, b = _linear_pair(lambda shape, s: Supermask(shape, "edge-popup", 0.3, s, coat_keeps=(0.3,),
                                                   frozen=(empty, empty)))
    assert supermasks(a)[""].is_plain and not supermasks(b)[""].is_plain
    ya, yb = _descend(a), _descend(b)
    assert torch.equal(ya, yb)
    sa, sb = supermasks(a)[""], supermasks(b)[""]
    assert torch.equal(sa.scores, sb.scores) and torch.equal(sa.hard_mask(), sb.hard_mask())
    # and coats=1 in a config is the plain supermask itself
    assert SupermaskConfig(coats=1) == SupermaskConfig()


def test_multicoated_gradient_is_edge_popups():
    """Each of the K coats passes its gradient straight through and W_eff divides by K: dL/ds = dL/dW_eff * W."""
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    apply_supermask(lin, SupermaskConfig(keep=1.0, coats=3, coat_keeps=(1.0, 2 / 3, 1 / 3)))
    sm = supermasks(lin)[""]
    with torch.no_grad():
        sm.scores.copy_(torch.tensor([[0.3, 0.2, 0.1]]))
    assert torch.equal(sm.coat_count(), torch.tensor([[3, 2, 1]], dtype=torch.uint8))
    y = lin(torch.ones(1, 3))
    assert torch.allclose(y, torch.tensor([[1.0 + 2.0 * 2 / 3 + 3.0 / 3]]))
    (-y).sum().backward()
    assert torch.allclose(sm.scores.grad, torch.tensor([[-1.0, -2.0, -3.0]]))


def test_thresholds_never_sort_during_search(tiny_cfg, monkeypatch):
    model = _encoder(tiny_cfg, SupermaskConfig(keep=0.5, **BOTH))

    def no_sort(*args, **kwargs):
        raise AssertionError("a sort ran in the forward/backward pass")

    monkeypatch.setattr(torch, "sort", no_sort)
    monkeypatch.setattr(torch.Tensor, "sort", no_sort)
    monkeypatch.setattr(torch.Tensor, "argsort", no_sort)
    run_search(model, _ce, _batches(), SearchConfig(steps=3, lr=0.05), progress=False)
    sm = next(iter(supermasks(model).values()))
    assert sm.hard_mask() is sm.hard_mask()  # cached until the scores change
    monkeypatch.undo()
    flat = torch.randn(1001)
    ks = [500, 300, 7, 1, 1001]
    ref = flat.sort(descending=True).values
    assert torch.equal(_kth_largest_values(flat, ks), ref[[k - 1 for k in ks]])


# -- partially frozen ----------------------------------------------------------------------------------------------
def test_frozen_pattern_counts_disjointness_and_reproducibility():
    pruned, kept = frozen_pattern(3, "blocks.0.attn.q", (40, 25), 0.2, 0.1, 0.5)
    assert int(pruned.sum()) == 200 and int(kept.sum()) == 100 and not bool((pruned & kept).any())
    again = frozen_pattern(3, "blocks.0.attn.q", (40, 25), 0.2, 0.1, 0.5)
    assert torch.equal(again[0], pruned) and torch.equal(again[1], kept)
    assert not torch.equal(frozen_pattern(4, "blocks.0.attn.q", (40, 25), 0.2, 0.1, 0.5)[0], pruned)
    assert not torch.equal(frozen_pattern(3, "blocks.0.attn.k", (40, 25), 0.2, 0.1, 0.5)[0], pruned)


def test_frozen_pattern_is_identical_across_builds_and_processes(tiny_cfg):
    cfg = SupermaskConfig(keep=0.5, frozen_seed=9, **FROZEN)
    a, b = _encoder(tiny_cfg, cfg), _encoder(tiny_cfg, cfg)
    for (name, sa), sb in zip(supermasks(a).items(), supermasks(b).values(), strict=True):
        assert torch.equal(sa.frozen_pruned, sb.frozen_pruned) and torch.equal(sa.frozen_kept, sb.frozen_kept), name
    assert not any("frozen" in k for k in a.state_dict())  # never stored
    code = ("import hashlib, torch; from sltlab.tickets.supermask import frozen_pattern; "
            "p, k = frozen_pattern(9, 'blocks.1.mlp.fc1', (64, 16), 0.2, 0.1, 0.5); "
            "print(hashlib.sha256(p.numpy().tobytes() + k.numpy().tobytes()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    p, k = frozen_pattern(9, "blocks.1.mlp.fc1", (64, 16), 0.2, 0.1, 0.5)
    assert outs == {hashlib.sha256(p.numpy().tobytes() + k.numpy().tobytes()).hexdigest() + "\n"}


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_frozen_parts_hold_through_a_search_and_keep_counts_overall(tiny_cfg, scope):
    cfg = SupermaskConfig(keep=0.5, scope=scope, **FROZEN)
    model = _encoder(tiny_cfg, cfg)
    if scope == "layer":
        for name, m in get_masks(model).items():  # exact at the start (distinct scores)
            assert int(m.sum()) == _keep_count(0.5, m.numel()), name
    hist = run_search(model, _ce, _batches(), SearchConfig(steps=40, lr=0.05), progress=False, log_every=1)
    assert hist[-1]["loss"] < hist[0]["loss"]
    for name, sm in supermasks(model).items():
        m = sm.hard_mask().bool()
        assert bool(m[sm.frozen_kept].all()) and not bool(m[sm.frozen_pruned].any()), name
        assert sm.n_frozen_kept == round(0.1 * m.numel()) and sm.n_frozen_pruned == round(0.2 * m.numel())
    assert mask_density(model) == pytest.approx(0.5, abs=0.005)


def test_gradient_reaches_only_unfrozen_scores_and_frozen_scores_do_nothing(tiny_cfg):
    model = _encoder(tiny_cfg, SupermaskConfig(keep=0.5, **FROZEN))
    x, y = next(_batches())
    _ce(model, (x, y)).backward()
    for name, sm in supermasks(model).items():
        frozen = ~sm.unfrozen.bool()
        assert bool((sm.scores.grad[frozen] == 0).all()), name
        assert bool((sm.scores.grad[~frozen] != 0).any()), name
    model.eval()
    before = model(x).detach()
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    with torch.no_grad():
        for sm in supermasks(model).values():
            sm.scores[~sm.unfrozen.bool()] = torch.randn(int((~sm.unfrozen.bool()).sum())) * 100
    assert torch.equal(model(x), before)
    assert all(torch.equal(masks[k], m) for k, m in get_masks(model).items())


# -- bake, Hugging Face, combinations -------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [MULTI, FROZEN, BOTH])
def test_bake_equals_masked_forward(tiny_cfg, kw):
    model = _encoder(tiny_cfg, SupermaskConfig(keep=0.5, scale="head", **kw), norm="pre-ln")
    run_search(model, _ce, _batches(), SearchConfig(steps=5, lr=0.05), progress=False)
    x = torch.randint(0, 50, (4, 8))
    model.eval()
    y = model(x)
    counts = get_coat_counts(model)
    bake(model)
    assert not supermasks(model)
    assert torch.equal(model(x), y)
    for name, c in counts.items():
        w = dict(model.named_modules())[name].weight
        assert bool((w[c == 0] == 0).all())


def test_variants_on_a_huggingface_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg)
    init_model(model, InitSpec(seed=1))
    apply_supermask(model, SupermaskConfig(keep=0.5, targets=("encoder.*",), coats=3, frozen_pruned=0.2,
                                           frozen_kept=0.1, frozen_seed=4))
    assert len(supermasks(model)) == 2 * 6
    x = torch.randint(0, 64, (16, 10))
    target = torch.randn(16, 10, 32)

    def loss_fn(m, batch):
        return (m(input_ids=batch).last_hidden_state - target).pow(2).mean()

    masks0 = {k: v.clone() for k, v in get_coat_counts(model).items()}
    run_search(model, loss_fn, [x], SearchConfig(steps=10, lr=0.1), progress=False)
    counts = get_coat_counts(model)
    assert any(not torch.equal(masks0[k], c) for k, c in counts.items())
    for name, sm in supermasks(model).items():
        c = counts[name]
        assert bool((c[sm.frozen_kept] == 3).all()) and bool((c[sm.frozen_pruned] == 0).all()), name
    assert mask_density(model) == pytest.approx(0.5, abs=0.01)
    model.eval()
    y = model(input_ids=x).last_hidden_state
    bake(model)
    assert torch.equal(model(input_ids=x).last_hidden_state, y)


# -- bad settings ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"keep": 0.3, "frozen_kept": 0.4}, "mask.frozen_kept"),
        ({"keep": 0.7, "frozen_pruned": 0.4}, "mask.frozen_pruned"),
        ({"frozen_pruned": 1.0}, "mask.frozen_pruned"),
        ({"frozen_kept": -0.1}, "mask.frozen_kept"),
        ({"method": "annealed", "frozen_kept": 0.1}, "mask.frozen_kept"),
        ({"coats": 0}, "mask.coats"),
        ({"method": "annealed", "coats": 2}, "mask.coats"),
        ({"coats": 2, "coat_keeps": (0.5,)}, "mask.coat_keeps"),
        ({"coats": 2, "coat_keeps": (0.4, 0.2)}, "mask.coat_keeps"),
        ({"coats": 2, "coat_keeps": (0.5, 0.5)}, "mask.coat_keeps"),
        ({"keep": 0.5, "coats": 3, "frozen_kept": 0.2}, "mask.frozen_kept"),  # innermost coat keeps 1/6
        ({"frozen_seed": -1, "frozen_kept": 0.1}, "mask.frozen_seed"),
    ],
)
def test_inconsistent_settings_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        SupermaskConfig(**kw)
    assert err.value.field == field


def test_approx_study_names_its_own_fields():
    with pytest.raises(ConfigError, match=r"study\.frozen_kept"):
        ApproxStudy(methods=("partially-frozen",), keep=0.5, frozen_kept=0.6)
    with pytest.raises(ConfigError, match=r"study\.coats"):
        ApproxStudy(methods=("multicoated",), coats=1)
    ApproxStudy(methods=("edge-popup",), frozen_kept=0.9)  # unused settings are not checked against keep


def test_constructed_masks_refuse_variants(tiny_cfg):
    from sltlab.tickets.construct import set_fixed_mask

    model = _encoder(tiny_cfg, SupermaskConfig(keep=0.5, **FROZEN))
    sm = next(iter(supermasks(model).values()))
    with pytest.raises(ConfigError, match="multicoated or partially frozen"):
        set_fixed_mask(sm, torch.ones_like(sm.scores, dtype=torch.bool))


# -- storage -------------------------------------------------------------------------------------------------------
def _lm_spec(mask_kw, scope="layer"):
    from sltlab.nn.transformer import ModelConfig

    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=2, vocab_size=40, max_len=24,
                      norm=NormSpec.parse("pre-ln+affine"))
    mask = SupermaskConfig(keep=0.4, scope=scope, scale="layer", train_norm=True, seed=5, **mask_kw)
    return ModelSpec("causal-lm", cfg, InitSpec(seed=11), mask)


def _trained(spec):
    model = build_model(spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("kw", [MULTI, FROZEN, BOTH])
def test_ticket_artifact_round_trips_variants_exactly(tmp_path, kw, scope):
    spec = _lm_spec(kw, scope)
    model = _trained(spec)
    path = tmp_path / "t.slt"
    art.export_ticket(model, spec, path)
    parts = art.read_ticket(path)
    assert parts.version == 2
    check = art.verify_parts(parts)
    assert check["bit_identical"]
    back = check["model"]
    for (name, c), c2 in zip(get_coat_counts(model).items(), get_coat_counts(back).values(), strict=True):
        assert torch.equal(c, c2), name
    x = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    if kw.get("coats", 1) > 1:
        assert set(parts.coats) == set(parts.masks)


def test_plain_tickets_stay_version_1_and_frozen_parts_are_not_coded():
    plain = art.decode_ticket(art.export_ticket(_trained(_lm_spec({})), _lm_spec({})))
    frozen = art.decode_ticket(art.export_ticket(_trained(_lm_spec(FROZEN)), _lm_spec(FROZEN)))
    assert plain.version == 1 and "streams" not in plain.header["masks"][0]
    # 30% of every layer is regenerated, not stored: fewer mask bytes than the plain ticket's
    assert frozen.sizes["masks"] < 0.85 * plain.sizes["masks"]


def _reseal(blob: bytes, edit) -> bytes:
    parts = art.decode_ticket(blob)
    header = json.loads(json.dumps(parts.header))
    edit(header)
    payload = blob[parts.sizes["header"]:-32]
    h = zlib.compress(json.dumps(header).encode())
    body = struct.pack("<8sHHI", art.MAGIC, 2, 0, len(h)) + h + payload
    return body + hashlib.sha256(body).digest()


def test_variant_tickets_that_disagree_with_their_spec_are_refused():
    spec = _lm_spec(BOTH)
    blob = art.export_ticket(_trained(spec), spec)

    def other_fractions(h):
        h["spec"]["mask"]["frozen_pruned"] = 0.25

    def other_seed(h):
        h["spec"]["mask"]["frozen_seed"] = 1

    def plain_spec(h):
        for k in ("coats", "frozen_pruned", "frozen_kept"):
            h["spec"]["mask"].pop(k)

    def bad_chain(h):
        h["masks"][0]["streams"][1][0] += 1

    with pytest.raises(ArtifactError, match="regenerated frozen pattern"):
        art.decode_ticket(_reseal(blob, other_fractions))
    # same counts over other frozen weights: a well-formed but different ticket, which the probe exposes
    assert not art.verify_parts(art.decode_ticket(_reseal(blob, other_seed)))["bit_identical"]
    with pytest.raises(ArtifactError, match="contradict"):
        art.decode_ticket(_reseal(blob, plain_spec))
    with pytest.raises(ArtifactError, match="bad count in coat 2"):
        art.decode_ticket(_reseal(blob, bad_chain))


def test_altered_frozen_parts_are_refused_at_export():
    spec = _lm_spec(FROZEN)
    model = _trained(spec)
    sm = next(iter(supermasks(model).values()))
    sm.frozen_offset[sm.frozen_pruned.nonzero()[0].tolist()[0]] = float("inf")  # a pruned weight now frozen kept
    sm._cache_key = None
    with pytest.raises(ArtifactError, match="not the ones its spec draws"):
        art.export_ticket(model, spec)
    other = dataclasses.replace(spec, mask=dataclasses.replace(spec.mask, frozen_pruned=0.0, frozen_kept=0.0))
    with pytest.raises(ArtifactError, match="disagrees with the spec"):
        art.export_ticket(_trained(spec), other)
    with pytest.raises(ArtifactError, match="plain supermask"):
        art.export_ticket(_trained(other), spec)


@pytest.mark.parametrize("kw", [MULTI, FROZEN])
def test_checkpoint_round_trips_variants(tmp_path, tiny_cfg, kw):
    spec = ModelSpec("encoder-classifier", tiny_cfg, InitSpec(seed=4), SupermaskConfig(keep=0.3, **kw))
    model = _trained(spec)
    path = save_checkpoint(tmp_path / "t.safetensors", model, spec)
    loaded, spec2 = load_checkpoint(path)
    assert spec2 == spec
    x = torch.randint(0, 50, (3, 9))
    assert torch.equal(loaded(x), model(x))
    for c, c2 in zip(get_coat_counts(model).values(), get_coat_counts(loaded).values(), strict=True):
        assert torch.equal(c, c2)


# -- the approximation study ---------------------------------------------------------------------------------------
def test_approx_variant_cells_search_the_variant():
    study = ApproxStudy(d_model=8, heads=(2,), widths=(8,), variants=("none",), seeds=(0,), n_train=256, n_test=64,
                        batch_size=32, seq_len=4, methods=("edge-popup", "multicoated", "partially-frozen"),
                        search=SearchConfig(steps=20, lr=0.05))
    out = {}
    for cell in study.cells():
        source, metrics, _ = run_cell(cell)
        out[cell.method] = (source, metrics)
        assert metrics["density"] == pytest.approx(0.5, abs=0.01)
    assert all(int(c.max()) == 3 for c in get_coat_counts(out["multicoated"][0]).values())
    sms = supermasks(out["partially-frozen"][0])
    assert all(sm.n_frozen_pruned > 0 and sm.n_frozen_kept > 0 for sm in sms.values())
    assert all(sm.is_plain for sm in supermasks(out["edge-popup"][0]).values())
    # the frozen pattern follows the run seed, not the score seed
    cell = next(c for c in study.cells() if c.method == "partially-frozen")
    other = dataclasses.replace(cell, score_seed=5)
    assert other.source_spec().mask.frozen_seed == cell.source_spec().mask.frozen_seed == cell.seed
