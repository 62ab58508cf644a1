"""Folded sources: stages of blocks sharing one random block, a mask per layer (or per stage)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from sltlab.cli import main as cli_main
from sltlab.errors import ConfigError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.runs.store import make_run_id
from sltlab.tasks.approx import ApproxStudy
from sltlab.tasks.glue_run import GlueRunConfig
from sltlab.tasks.lm_run import LMStudy
from sltlab.tickets import artifact as art
from sltlab.tickets.checkpoint import load_checkpoint, save_checkpoint
from sltlab.tickets.search import SearchConfig, run_search
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, get_masks, supermasks

EDGE_POPUP = SupermaskConfig(keep=0.4, seed=3)
LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2")


def spec_of(arch: str = "causal-lm", fold: int | None = None, sharing: str = "unshared",
            mask: SupermaskConfig | None = EDGE_POPUP, n_layers: int = 4,
            norm: str = "pre-ln", **extra) -> ModelSpec:
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=n_layers, vocab_size=40, max_len=12, n_outputs=3,
                      norm=NormSpec.parse(norm), fold=fold, mask_sharing=sharing, **extra)  # type: ignore[arg-type]
    return ModelSpec(arch, cfg, InitSpec(seed=7), mask)  # type: ignore[arg-type]


def model_input(spec: ModelSpec) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    if spec.arch == "stack":
        return torch.randn(2, 12, 16, generator=g)
    return torch.randint(0, 40, (2, 12), generator=g)


def output(model: nn.Module, spec: ModelSpec) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(model_input(spec))
    return out[0] if isinstance(out, tuple) else out


def weight(model: nn.Module, name: str) -> torch.Tensor:
    """A module's random weight (under its supermask parametrization if it has one)."""
    m = dict(model.named_modules())[name]
    return m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight


def prefix(spec: ModelSpec) -> str:
    return "blocks" if spec.arch == "stack" else "stack.blocks"


def perturb(model: nn.Module, seed: int = 0) -> None:
    """Stand-in for a search: move every trainable tensor off its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    model.eval()


# -- fold = n_layers is today's network ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["causal-lm", "encoder-classifier", "stack"])
@pytest.mark.parametrize("mask", [None, SupermaskConfig(keep=0.4, seed=3), SupermaskConfig(method="annealed")])
def test_fold_n_layers_is_bit_identical_to_unfolded(arch, mask):
    plain, full = spec_of(arch, None, mask=mask), spec_of(arch, 4, mask=mask)
    a, b = build_model(plain), build_model(full)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(output(a, plain), output(b, full))
    # the spec JSON (checkpoints, artifact headers) does not even mention folding when nothing is folded
    assert full.to_json() == plain.to_json() and "fold" not in plain.to_json()


def test_run_ids_of_existing_configs_are_unchanged():
    # Ids computed before folding existed (main at 454474e); a folding field at its default, or fold = n_layers,
    # must not move them.
    # target="own": the target every run had before shared targets existed (issue 20); own-target ids are unchanged
    approx = ApproxStudy(module="stack", n_blocks=4, mlp=True, widths=(32,), variants=("pre-ln",), seeds=(0,),
                         target="own")
    lm = LMStudy(n_layers=4, methods=("edge-popup",))
    glue = GlueRunConfig(n_layers=4).resolved()
    assert make_run_id("approx", approx.cells()[0].config_dict(), 0) == "approx-5eb2bc3acbcb"
    assert make_run_id("lm", lm.cells()[0].config_dict(), 0) == "lm-fe40a8990f1f"
    assert make_run_id("glue", glue.to_dict(), 0) == "glue-e7756d860a2f"
    same = dataclasses.replace(approx, folds=(4,)).cells()[0]
    assert make_run_id("approx", same.config_dict(), 0) == "approx-5eb2bc3acbcb"
    assert make_run_id("lm", dataclasses.replace(lm, fold=4).cells()[0].config_dict(), 0) == "lm-fe40a8990f1f"
    full = dataclasses.replace(glue, fold=4, mask_sharing="shared")
    assert make_run_id("glue", full.to_dict(), 0) == "glue-e7756d860a2f"
    # folded cells are other runs, and say so in their config
    folded = dataclasses.replace(approx, folds=(1,)).cells()[0].config_dict()
    assert folded["fold"] == 1 and make_run_id("approx", folded, 0) != "approx-5eb2bc3acbcb"
    lm_cfg = dataclasses.replace(lm, fold=1, mask_sharing="shared").cells()[0].config_dict()
    assert (lm_cfg["fold"], lm_cfg["mask_sharing"]) == (1, "shared")
    assert dataclasses.replace(glue, fold=2).to_dict()["fold"] == 2


# -- fold = 1: one allocation, a mask per layer --------------------------------------------------------------
@pytest.mark.parametrize("arch", ["causal-lm", "encoder-classifier", "stack"])
def test_fold_1_shares_one_allocation_with_distinct_masks(arch):
    spec = spec_of(arch, 1)
    model = build_model(spec)
    p = prefix(spec)
    for lin in LINEARS:
        ws = [weight(model, f"{p}.{i}.{lin}") for i in range(4)]
        assert all(w is ws[0] for w in ws)  # the same Parameter object ...
        assert len({w.data_ptr() for w in ws}) == 1  # ... hence one allocation
        masks = [get_masks(model)[f"{p}.{i}.{lin}"] for i in range(4)]
        assert all(not torch.equal(masks[0], m) for m in masks[1:])  # each layer its own mask
    # norms stay per layer
    norms = {dict(model.named_modules())[f"{p}.{i}.norm1"].weight.data_ptr() for i in range(4)}
    assert len(norms) == 4
    # one block of random weights, not four: the distinct storages hold a quarter of the unfolded blocks' floats
    def block_floats(m: nn.Module) -> int:
        seen = {}
        for n, t in m.named_parameters():
            if ".blocks." in f".{n}" and not n.endswith("scores") and t.ndim == 2:
                seen[t.data_ptr()] = t.numel()
        return sum(seen.values())

    assert 4 * block_floats(model) == block_floats(build_model(spec_of(arch, None)))


def test_stage_weights_are_drawn_from_their_first_blocks_names():
    unfolded = build_model(spec_of("causal-lm", None))
    two = build_model(spec_of("causal-lm", 2))
    for i, owner in enumerate([0, 0, 2, 2]):
        for lin in LINEARS:
            assert torch.equal(weight(two, f"stack.blocks.{i}.{lin}"), weight(unfolded, f"stack.blocks.{owner}.{lin}"))
    assert weight(two, "stack.blocks.0.attn.q") is not weight(two, "stack.blocks.2.attn.q")
    # unshared masks are the unfolded model's masks, layer by layer (same scores seeded by each layer's name)
    assert all(torch.equal(get_masks(two)[k], m) for k, m in get_masks(unfolded).items())


def test_shared_masks_one_per_stage():
    spec = spec_of("causal-lm", 2, "shared")
    model = build_model(spec)
    sms = supermasks(model)  # a shared mask is listed once, under its owner: the stage's first block
    per_stage = {n: sm for n, sm in sms.items() if ".blocks." in n}
    assert len({id(sm) for sm in per_stage.values()}) == len(per_stage) == 2 * len(LINEARS)
    modules = dict(model.named_modules())
    masks = get_masks(model)
    for lin in LINEARS:
        assert modules[f"stack.blocks.1.{lin}"].parametrizations.weight[0] is sms[f"stack.blocks.0.{lin}"]
        assert modules[f"stack.blocks.3.{lin}"].parametrizations.weight[0] is sms[f"stack.blocks.2.{lin}"]
        assert sms[f"stack.blocks.0.{lin}"] is not sms[f"stack.blocks.2.{lin}"]
        assert f"stack.blocks.1.{lin}" not in masks
    # the stage's mask is its first block's mask in the unshared model
    unshared = get_masks(build_model(spec_of("causal-lm", 2)))
    assert torch.equal(masks["stack.blocks.2.attn.q"], unshared["stack.blocks.2.attn.q"])
    # trainable scores: one tensor per stage per linear, plus the embeddings' and the head's
    scores = [n for n, p in model.named_parameters() if n.endswith("scores")]
    assert len(scores) == 2 * len(LINEARS) + 3


def test_shared_masks_under_a_global_threshold_count_a_stage_once():
    spec = spec_of("causal-lm", 1, "shared", mask=SupermaskConfig(keep=0.3, scope="global"))
    model = build_model(spec)
    sms = art.stored_supermasks(model)
    kept = sum(int(sm.hard_mask().sum()) for sm in sms.values())
    total = sum(sm.scores.numel() for sm in sms.values())
    assert kept == round(0.3 * total)


def test_gradients_of_a_shared_weight_add_over_depth_and_stay_tied():
    spec = spec_of("causal-lm", 1, mask=None)
    model = build_model(spec)
    x = model_input(spec)
    batches = iter([(x, x)] * 3)

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return m(batch[0]).logsumexp(-1).mean()

    before = weight(model, "stack.blocks.0.attn.q").detach().clone()
    run_search(model, loss_fn, batches, SearchConfig(steps=3, lr=1e-2), progress=False)
    after = [weight(model, f"stack.blocks.{i}.attn.q") for i in range(4)]
    assert not torch.equal(before, after[0]) and all(w is after[0] for w in after)


# -- every mask method; artifacts ----------------------------------------------------------------------------
MASKS = {
    "edge-popup": SupermaskConfig(keep=0.4, seed=3, scale="head", train_norm=True),
    "annealed": SupermaskConfig(method="annealed", keep=0.4, seed=3),
    "multicoated": SupermaskConfig(keep=0.5, coats=3, seed=3),
    "partially-frozen": SupermaskConfig(keep=0.5, frozen_pruned=0.2, frozen_kept=0.1, frozen_seed=4, seed=3),
    "global": SupermaskConfig(keep=0.3, scope="global", seed=3),
}


@pytest.mark.parametrize("sharing", ["unshared", "shared"])
@pytest.mark.parametrize("method", list(MASKS))
def test_folded_ticket_round_trips_bit_identically(method, sharing, tmp_path):
    spec = spec_of("causal-lm", 1, sharing, mask=MASKS[method], norm="pre-ln+affine", residual_scales=True)
    model = build_model(spec)
    perturb(model)
    path = tmp_path / "t.slt"
    blob = art.export_ticket(model, spec, path)
    parts = art.decode_ticket(blob)
    assert parts.spec == spec and parts.header["spec"]["model"]["fold"] == 1
    assert len(parts.masks) == (4 if sharing == "unshared" else 1) * len(LINEARS) + 3
    loaded = art.load_ticket(path)
    assert torch.equal(output(loaded, spec), output(model, spec))
    for name, m in get_masks(model).items():
        assert torch.equal(get_masks(loaded)[name], m)
    assert weight(loaded, "stack.blocks.3.mlp.fc2") is weight(loaded, "stack.blocks.0.mlp.fc2")
    assert art.verify_parts(parts)["bit_identical"]
    # the loaded model re-exports to the same bytes
    assert art.export_ticket(loaded, spec) == blob


def test_shared_masks_make_a_smaller_artifact_and_inspect_shows_the_folding(tmp_path, capsys):
    sizes = {}
    for sharing in ("unshared", "shared"):
        spec = spec_of("causal-lm", 1, sharing)
        model = build_model(spec)
        perturb(model)
        sizes[sharing] = len(art.export_ticket(model, spec, tmp_path / f"{sharing}.slt"))
    assert sizes["shared"] < sizes["unshared"]
    assert cli_main(["inspect", str(tmp_path / "shared.slt"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "folded: 1 stage(s) x 4 layers share one random block each (one mask per stage)" in out
    assert "verify: OK" in out


def test_dense_folded_network_stores_its_tied_weights_once(tmp_path):
    spec = spec_of("causal-lm", 2, mask=None)
    model = build_model(spec)
    perturb(model)  # a dense run: every weight trained
    parts = art.decode_ticket(art.export_ticket(model, spec, tmp_path / "d.slt"))
    q = [n for n in parts.floats if n.endswith("attn.q.weight")]
    assert q == ["stack.blocks.0.attn.q.weight", "stack.blocks.2.attn.q.weight"]
    loaded = art.build_from_parts(parts)
    assert torch.equal(output(loaded, spec), output(model, spec))
    assert weight(loaded, "stack.blocks.1.attn.q") is weight(loaded, "stack.blocks.0.attn.q")
    # and a checkpoint of all its tensors loads back (every alias by its name)
    save_checkpoint(tmp_path / "c.safetensors", model, spec, which="all")
    again, _ = load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(output(again, spec), output(model, spec))


# -- bad values: one clear line -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"fold": 0}, "model.fold", "do not divide n_layers=4"),
        ({"fold": 3}, "model.fold", "one of [1, 2, 4]"),
        ({"fold": 8}, "model.fold", "do not divide"),
        ({"fold": 1, "mask_sharing": "per-head"}, "model.mask_sharing", "unknown mask sharing"),
        ({"mask_sharing": "shared"}, "model.mask_sharing", "fold is not set"),
    ],
)
def test_bad_folding_values(kwargs, field, words):
    with pytest.raises(ConfigError) as err:
        ModelConfig(d_model=16, n_heads=2, n_layers=4, **kwargs)
    assert err.value.field == field and words in str(err.value) and "\n" not in str(err.value)


def test_bad_folding_values_in_the_studies(tmp_path, capsys):
    with pytest.raises(ConfigError, match="study.folds\\[1\\]"):
        ApproxStudy(module="stack", n_blocks=4, widths=(32,), folds=(2, 3))
    with pytest.raises(ConfigError, match="study.mask_sharing"):
        ApproxStudy(module="stack", n_blocks=4, widths=(32,), mask_sharing="shared")
    with pytest.raises(ConfigError, match="one mask per target block"):
        ApproxStudy(module="stack", n_blocks=2, widths=(32,), folds=(1,), mask_sharing="shared", methods=("construct",))
    with pytest.raises(ConfigError, match="'lm.fold'"):
        LMStudy(n_layers=4, fold=0)
    with pytest.raises(ConfigError, match="'fold'"):
        GlueRunConfig(n_layers=4, fold=3)
    with pytest.raises(ConfigError, match="'mask_sharing'"):
        GlueRunConfig(n_layers=4, mask_sharing="shared")
    with pytest.raises(ConfigError, match="IMP does not support folded"):
        GlueRunConfig(n_layers=4, fold=2, method="imp")
    GlueRunConfig(n_layers=4, fold=4, method="imp")  # fold = n_layers is the unfolded model
    bad = tmp_path / "bad.toml"
    bad.write_text('n_layers = 4\nfold = 3\nmethods = ["edge-popup"]\n')
    assert cli_main(["lm", str(bad), "--store", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lm.fold" in err and "one of [1, 2, 4]" in err


def test_lm_counts_a_folded_models_weights_once():
    from sltlab.tasks.lm_run import count_weights

    one, unfolded = build_model(spec_of("causal-lm", 1)), build_model(spec_of("causal-lm", None))
    block = 12 * 16 * 16  # q, k, v, o (16x16 each) and the 16x64, 64x16 MLP
    assert count_weights(unfolded) - count_weights(one) == 3 * block
