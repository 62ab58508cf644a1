"""Supermasks on every weight-bearing layer kind of Hugging Face models (GPT-2's Conv1D, tied wte/lm_head, convs),
the clear error for a layer kind without a mask rule, and ticket folders (sltlab.save_ticket / load_ticket) that
rebuild tiny GPT-2, Llama and BERT models bit for bit and refuse corrupted folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import sltlab
from sltlab.errors import ArtifactError, ConfigError
from sltlab.nn.init import InitSpec, init_model
from sltlab.tickets import SupermaskConfig, apply_supermask, bake, get_masks, mask_coverage, supermasks
from sltlab.tickets.imp import ImpConfig, attach_prune_masks, bake_prune_masks, prune_masks, prune_round
from sltlab.tickets.search import SearchConfig, run_search

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
VOCAB = 64


def gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def llama() -> nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=16)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def bert() -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(seed))


def _loss(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(m, transformers.BertForSequenceClassification):
        return m(input_ids=x, labels=x[:, 0] % 2).loss
    return m(input_ids=x, labels=x).loss


# -- layer kinds ---------------------------------------------------------------------------------------------
def test_gpt2_every_attention_and_mlp_weight_masked_and_the_tied_embedding_once() -> None:
    m = gpt2()
    assert m.lm_head.weight is m.transformer.wte.weight  # the premise: GPT-2 ties them
    cov = apply_supermask(m, SupermaskConfig(keep=0.5))
    conv1d = [n for n, mod in m.named_modules() if isinstance(mod, transformers.pytorch_utils.Conv1D)]
    assert len(conv1d) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    masks = get_masks(m)
    assert set(conv1d) <= set(masks)
    assert "transformer.wte" in masks and "lm_head" not in masks  # one mask for the tied weight, named by its owner
    # coverage: every Conv1D and Embedding weight, 100% of the targeted weights
    assert cov.kinds["Conv1D"].masked_weights == cov.kinds["Conv1D"].weights == 2 * (16 * 48 + 16 * 16 + 2 * 16 * 64)
    assert cov.kinds["Conv1D"].masked_layers == cov.kinds["Conv1D"].layers == 8
    assert cov.kinds["Embedding"].masked_weights == cov.kinds["Embedding"].weights == (VOCAB + 16) * 16
    assert cov.tied == {"transformer.wte": ("lm_head",)}
    biases_and_norms = sum(p.numel() for n, p in m.named_parameters() if p.ndim == 1 and "scores" not in n)
    assert cov.masked + biases_and_norms == cov.total
    assert "Conv1D" in str(cov) and "tied" in str(cov)
    # one Supermask module on both users, over one original Parameter
    sm = m.transformer.wte.parametrizations.weight[0]
    assert m.lm_head.parametrizations.weight[0] is sm
    assert m.lm_head.parametrizations.weight.original is m.transformer.wte.parametrizations.weight.original
    # Conv1D weights are [in, out]: the mask has that shape and scales by 1/sqrt(in) at init
    c_fc = m.transformer.h[0].mlp.c_fc
    s = c_fc.parametrizations.weight[0].scores
    assert s.shape == (16, 64) and float(s.detach().abs().max()) <= 1 / 16**0.5 + 1e-6
    # forward and backward run; the tied scores' gradient is the sum over both uses
    m.eval()  # no dropout: the hand computation below must see the same function
    x = _ids()
    _loss(m, x).backward()
    assert all(smod.scores.grad is not None and smod.scores.grad.abs().sum() > 0 for smod in supermasks(m).values())
    g_both = sm.scores.grad.clone()
    for p in m.parameters():
        p.grad = None
    # the same gradient by hand: masked weight W*M used by the embedding and the head, straight-through to scores
    w = m.transformer.wte.parametrizations.weight.original
    eff = m.transformer.wte.weight
    assert torch.equal(eff, w * sm.hard_mask()) and torch.equal(m.lm_head.weight, eff)
    eff_leaf = eff.detach().requires_grad_(True)
    hidden = m.transformer(inputs_embeds=nn.functional.embedding(x, eff_leaf)).last_hidden_state
    logits = hidden @ eff_leaf.T
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    loss.backward()
    assert torch.allclose(g_both, eff_leaf.grad * w, rtol=1e-4, atol=1e-7)


def test_tied_weight_stays_tied_when_baked_and_outputs_match() -> None:
    m = gpt2()
    apply_supermask(m, SupermaskConfig(keep=0.3, scale="layer"))
    with torch.no_grad():
        m.transformer.wte.parametrizations.weight[0].scale.fill_(1.7)  # baking must apply mask and scale once
    m.eval()
    x = _ids(1)
    before = m(x).logits
    bake(m)
    assert m.lm_head.weight is m.transformer.wte.weight
    assert torch.equal(m(x).logits, before)


def test_tied_annealed_mask_samples_once_per_step() -> None:
    m = gpt2()
    apply_supermask(m, SupermaskConfig(method="annealed", keep=0.5, temperature=1.0))
    m.train()
    assert torch.equal(m.transformer.wte.weight, m.lm_head.weight)  # both uses see one sample
    run_search(m, _loss, [_ids()], SearchConfig(steps=2, lr=0.1), progress=False)


def test_tied_weight_excluded_through_one_user_is_an_error() -> None:
    with pytest.raises(ConfigError, match="lm_head.*shares its weight"):
        apply_supermask(gpt2(), SupermaskConfig(exclude=("lm_head",)))
    # targeting only the embedding masks the head too: one weight, one mask
    m = gpt2()
    apply_supermask(m, SupermaskConfig(targets=("transformer.wte",)))
    assert list(get_masks(m)) == ["transformer.wte"]
    assert torch.nn.utils.parametrize.is_parametrized(m.lm_head, "weight")


def test_llama_and_bert_every_linear_masked() -> None:
    for model in (llama(), bert()):
        cov = apply_supermask(model, SupermaskConfig(keep=0.5))
        assert cov.kinds["Linear"].masked_layers == cov.kinds["Linear"].layers > 0
        norms = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 1 and "scores" not in n)
        assert cov.masked + norms == cov.total


def test_conv_layers_are_maskable_and_imp_shares_tied_masks() -> None:
    net = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, (1, 1)))
    cov = apply_supermask(net, SupermaskConfig(keep=0.5))
    assert set(cov.kinds) == {"Conv1d", "Conv2d"} and cov.masked == 4 * 3 * 3 + 2 * 4
    # IMP: one prune mask for GPT-2's tied weight, pruning shows in both users, baking keeps the tie
    m = gpt2()
    pms = attach_prune_masks(m, ImpConfig(fraction=0.5))
    assert "transformer.wte" in pms and "lm_head" not in pms and len(prune_masks(m)) == 10
    prune_round(m, ImpConfig(fraction=0.5), 1)
    assert torch.equal(m.lm_head.weight, m.transformer.wte.weight)
    assert float((m.lm_head.weight == 0).float().mean()) >= 0.5
    bake_prune_masks(m)
    assert m.lm_head.weight is m.transformer.wte.weight


def test_targeted_layer_without_mask_rule_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2))
    with pytest.raises(ConfigError, match=r"'1' is a MultiheadAttention.*in_proj_weight"):
        apply_supermask(model, SupermaskConfig())
    # excluding it is the fix: its out_proj (a Linear) is excluded with it here
    cov = apply_supermask(model, SupermaskConfig(exclude=("1", "1.*")))
    assert cov.kinds["Linear"].masked_layers == 1 and cov.kinds["Linear"].layers == 2
    with pytest.raises(ConfigError, match="is a Bilinear"):
        attach_prune_masks(nn.Sequential(nn.Bilinear(2, 2, 2)), ImpConfig())


def test_coverage_of_an_unmasked_model() -> None:
    cov = mask_coverage(nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)))
    assert cov.masked == 0 and cov.total == 3 * 2 + 2 + 4 and cov.kinds["Linear"].layers == 1


# -- ticket folders ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [gpt2, llama, bert], ids=["gpt2", "llama", "bert"])
def test_round_trip_bit_identical(make, tmp_path: Path) -> None:  # noqa: ANN001
    m = make()
    init = InitSpec(scheme="kaiming-normal", seed=5)
    init_model(m, init)
    cfg = SupermaskConfig(keep=0.4, scope="global", train_norm=True, scale="layer")
    apply_supermask(m, cfg)
    run_search(m, _loss, [_ids(2)], SearchConfig(steps=3, lr=0.1), progress=False)
    assert any(n.endswith(".scale") for n, p in m.named_parameters() if p.requires_grad)
    out = sltlab.save_ticket(m, tmp_path / "t", init=init)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "floats.safetensors", "masks.bin", "ticket.json"]
    manifest = json.loads((out / "ticket.json").read_text())
    assert manifest["model_class"] == type(m).__name__ and manifest["init"]["seed"] == 5
    auto = "AutoModelForSequenceClassification" if make is bert else "AutoModelForCausalLM"
    assert manifest["auto_class"] == auto  # rebuilt with AutoModel*.from_config
    from safetensors.torch import load_file

    stored = load_file(out / "floats.safetensors")
    assert not any("original" in k for k in stored)  # no weight values
    assert any("norm" in k.lower() or "ln" in k for k in stored) and any(k.endswith(".scale") for k in stored)
    state = torch.get_rng_state()
    loaded = sltlab.load_ticket(out)
    assert torch.equal(torch.get_rng_state(), state)  # loading leaves the caller's RNG alone
    assert type(loaded) is type(m)
    for name, mask in get_masks(m).items():
        assert torch.equal(get_masks(loaded)[name], mask)
    m.eval()
    x = _ids(3)
    assert torch.equal(m(input_ids=x).logits, loaded(input_ids=x).logits)


def test_multicoated_and_frozen_masks_round_trip(tmp_path: Path) -> None:
    m = gpt2()
    init = InitSpec(seed=1)
    init_model(m, init)
    apply_supermask(m, SupermaskConfig(keep=0.6, coats=3, frozen_pruned=0.1, frozen_kept=0.1, frozen_seed=4))
    run_search(m, _loss, [_ids()], SearchConfig(steps=2, lr=0.1), progress=False)
    folder = sltlab.save_ticket(m, tmp_path / "t", init=init)
    loaded = sltlab.load_ticket(folder)
    m.eval()
    assert torch.equal(m(_ids(1)).logits, loaded(_ids(1)).logits)
    # the .slt artifact's mask table layout (tickets.artifact.code_supermasks): coats, frozen, one stream per coat
    table = json.loads((folder / "ticket.json").read_text())["masks"]
    assert all(e["coats"] == 3 and e["frozen"] is True and len(e["streams"]) == 3 for e in table)


def test_save_errors(tmp_path: Path) -> None:
    m = gpt2()
    with pytest.raises(ConfigError, match="no supermasks"):
        sltlab.save_ticket(m, tmp_path / "a", init=InitSpec())
    apply_supermask(m, SupermaskConfig())
    with pytest.raises(ConfigError, match="init"):
        sltlab.save_ticket(m, tmp_path / "a")
    # the weights are GPT-2's own random init, not the seeded one: a ticket cannot hold them
    with pytest.raises(ConfigError, match="stores no weights"):
        sltlab.save_ticket(m, tmp_path / "a", init=InitSpec(seed=0))
    with pytest.raises(ConfigError, match="not a transformers model"):
        sltlab.save_ticket(nn.Linear(2, 2), tmp_path / "a", init=InitSpec())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    m2 = gpt2()
    init_model(m2, InitSpec())
    apply_supermask(m2, SupermaskConfig())
    with pytest.raises(ConfigError, match="non-empty folder"):
        sltlab.save_ticket(m2, tmp_path / "full", init=InitSpec())


def _saved(tmp_path: Path) -> Path:
    m = gpt2()
    init_model(m, InitSpec(seed=2))
    apply_supermask(m, SupermaskConfig(keep=0.5, train_norm=True))
    run_search(m, _loss, [_ids()], SearchConfig(steps=2, lr=0.1), progress=False)
    return sltlab.save_ticket(m, tmp_path / "t", init=InitSpec(seed=2))


def test_corrupted_folders_are_rejected(tmp_path: Path) -> None:
    out = _saved(tmp_path)
    good = {p.name: p.read_bytes() for p in out.iterdir()}

    def restore() -> None:
        for name, data in good.items():
            (out / name).write_bytes(data)

    for name in ("masks.bin", "floats.safetensors", "config.json"):
        data = bytearray(good[name])
        data[len(data) // 2] ^= 0x01
        (out / name).write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match=f"{name} fails its SHA-256"):
            sltlab.load_ticket(out)
        restore()
    manifest = json.loads(good["ticket.json"])
    manifest["init"]["seed"] = 3  # a different seed would regenerate other weights
    (out / "ticket.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="ticket.json fails its SHA-256"):
        sltlab.load_ticket(out)
    (out / "ticket.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        sltlab.load_ticket(out)
    restore()
    (out / "masks.bin").unlink()
    with pytest.raises(ArtifactError, match="lacks masks.bin"):
        sltlab.load_ticket(out)
    with pytest.raises(ArtifactError, match="no ticket.json"):
        sltlab.load_ticket(tmp_path)
    restore()
    # a consistent manifest whose weights checksum is wrong (another torch's init): refused after the rebuild
    from sltlab.tickets import hf

    manifest = json.loads(good["ticket.json"])
    manifest["weights_sha256"] = "0" * 64
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["manifest_sha256"] = hf._sha(hf._canonical(body))
    (out / "ticket.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="regenerated weights fail"):
        sltlab.load_ticket(out)
    restore()
    assert isinstance(sltlab.load_ticket(out), nn.Module)
