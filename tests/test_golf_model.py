"""The parameter-golf submission's architecture, scale groups, mask start and presets (issue 22): counts against
the submission's log, each option against a direct computation, and every default left as it was."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sltlab.cli import main as cli_main
from sltlab.errors import ConfigError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import CausalLM, ModelConfig, MultiHeadAttention, apply_rotary, rotary_tables
from sltlab.runs.config import load_toml
from sltlab.tasks.lm_run import PRESETS, LMRun, byte_budget, study_from_dict
from sltlab.tickets.artifact import decode_ticket, export_ticket, load_ticket
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, mask_density, supermasks

GOLF = dict(n_kv_heads=4, mlp_mult=2, activation="relu", norm=NormSpec.parse("pre-rms+noaffine"), qk_norm=True,
            embed_norm=True, positions="rope", scale_groups="golf", tie_embeddings=True, logit_softcap=30.0)


def _counts(cfg: ModelConfig) -> tuple[int, int]:
    with torch.device("meta"):
        model = CausalLM(cfg)
    weights = sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    return weights, sum(p.numel() for p in model.parameters() if p.ndim < 2)


def test_the_submissions_shape_has_its_mask_bits_and_scale_floats():
    """16 x 1024, 8/4 heads, MLP x2, vocabulary 1024, tied: the log's mask_bits:118489088, scale_params:33920."""
    cfg = ModelConfig(d_model=1024, n_heads=8, n_layers=16, vocab_size=1024, max_len=2048, **GOLF)
    assert _counts(cfg) == (118_489_088, 33_920)
    # by hand: per block q, o (d^2), k, v (d^2 / 2), fc, proj (2 d^2); the embedding once; scales 2d + H, + d
    d, L = 1024, 16
    assert L * (2 * d * d + 2 * d * d // 2 + 2 * 2 * d * d) + 1024 * d == 118_489_088
    assert L * (2 * d + 8) + d == 33_920
    # a small one: the same rule, and rms without affine adds no parameter
    small = ModelConfig(d_model=32, n_heads=4, n_layers=3, vocab_size=50, max_len=16, **{**GOLF, "n_kv_heads": 2})
    assert _counts(small) == (3 * 7 * 32 * 32 + 50 * 32, 3 * (2 * 32 + 4) + 32)


def test_golf_scale_groups_are_what_the_ticket_trains_and_stores(tmp_path):
    cfg = ModelConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=50, max_len=16, **GOLF)
    mask = SupermaskConfig(method="annealed", forward_mask="threshold", score_init=0.0,
                           free=("*attn_scale", "*mlp_scale", "*head_scale", "pre_logit_scale"))
    spec = ModelSpec("causal-lm", cfg, InitSpec(scheme="golf", seed=3), mask)
    model = build_model(spec)
    free = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.endswith("scores")}
    assert sum(free.values()) == 2 * (32 + 32 + 4) + 32
    assert {n.rsplit(".", 1)[-1] for n in free} == {"attn_scale", "mlp_scale", "head_scale", "pre_logit_scale"}
    with torch.no_grad():  # learned values: the artifact must carry every one of them
        for p in model.parameters():
            if p.requires_grad and p.ndim != 2:
                p.copy_(torch.linspace(0.5, 1.5, p.numel()).reshape(p.shape))
    blob = export_ticket(model, spec, tmp_path / "t.slt", floats="float32")
    stored = decode_ticket(blob).header["floats"]
    assert sum(math.prod(f["shape"]) for f in stored) == sum(free.values())
    back = load_ticket(tmp_path / "t.slt")
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    assert torch.equal(back(idx), model(idx))


def test_each_option_against_a_direct_computation():
    torch.manual_seed(0)
    # rotary: q.k depends on positions only through their difference
    cos, sin = rotary_tables(12, 8, 10000.0, torch.device("cpu"))
    q, k = torch.randn(8), torch.randn(8)
    rq = apply_rotary(q.expand(1, 1, 12, 8), cos, sin)[0, 0]
    rk = apply_rotary(k.expand(1, 1, 12, 8), cos, sin)[0, 0]
    assert torch.allclose(rq[5] @ rk[2], rq[9] @ rk[6], atol=1e-5)
    assert torch.allclose(rq[0], q)  # position 0 is not rotated
    # qk_norm + rope in the attention, recomputed by hand for one head
    attn = MultiHeadAttention(16, 2, 8, 8, qk_norm=True, rope_base=10000.0)
    x = torch.randn(1, 12, 16)
    y, a = attn(x, causal=True, need_weights=True)
    qh = F.rms_norm(attn.q(x).view(1, 12, 2, 8).transpose(1, 2), (8,))
    kh = F.rms_norm(attn.k(x).view(1, 12, 2, 8).transpose(1, 2), (8,))
    qh, kh = apply_rotary(qh, cos, sin), apply_rotary(kh, cos, sin)
    logits = (qh[0, 1] @ kh[0, 1].T) / math.sqrt(8)
    logits = logits.masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(a[0, 1], logits.softmax(-1))
    # the SDPA path (is_causal) agrees with the weights path
    torch.testing.assert_close(attn(x, causal=True)[0], y)
    # relu2 and mlp_mult; embed_norm; no position table with rope
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=1, vocab_size=20, max_len=12, mlp_mult=3, activation="relu2",
                      positions="rope", embed_norm=True)
    model = build_model(ModelSpec("causal-lm", cfg, InitSpec(seed=1)))
    mlp = model.stack.blocks[0].mlp
    assert mlp.fc1.weight.shape == (48, 16) and model.pos_emb is None
    h = torch.randn(3, 16)
    torch.testing.assert_close(mlp(h), mlp.fc2(torch.relu(mlp.fc1(h)) ** 2))
    with pytest.raises(ConfigError, match="mlp_mult"):
        ModelConfig(mlp_mult=2, d_ff=64)
    with pytest.raises(ConfigError, match="positions"):
        ModelConfig(d_model=12, n_heads=4, positions="rope")  # head width 3 cannot be paired
    with pytest.raises(ConfigError, match="activation"):
        ModelConfig(activation="swish")  # type: ignore[arg-type]


def test_defaults_unchanged_and_causal_sdpa_bit_identical():
    """A model without the new options builds and computes as before: its spec JSON lacks them, and the causal
    SDPA path gives the bits of the explicit triangular mask it replaced."""
    base = ModelConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=50, max_len=16, n_kv_heads=2)
    js = ModelSpec("causal-lm", base).to_json()
    for key in ("mlp_mult", "qk_norm", "embed_norm", "positions", "rope_base", "scale_groups"):
        assert key not in js
    assert "score_init" not in SupermaskConfig(method="annealed").to_dict()
    model = build_model(ModelSpec("causal-lm", base, InitSpec(seed=5)))
    model.eval()
    idx = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(16))[None]
    attn = model.stack.blocks[0].attn
    h = model.stack.blocks[0].norm1(x)
    q = attn.q(h).view(3, 16, 4, 8).transpose(1, 2)
    k = attn.k(h).view(3, 16, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
    v = attn.v(h).view(3, 16, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
    tri = torch.ones(16, 16, dtype=torch.bool).tril()
    old = F.scaled_dot_product_attention(q, k, v, attn_mask=tri, scale=1 / math.sqrt(8))
    new = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / math.sqrt(8))
    assert torch.equal(old, new)
    assert torch.equal(attn(h, causal=True)[0], attn.o(old.transpose(1, 2).reshape(3, 16, 32)))


def test_a_zero_start_keeps_every_weight_and_the_mask_keeps_ties():
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=1, vocab_size=20, max_len=8, tie_embeddings=True)
    spec = ModelSpec("causal-lm", cfg, InitSpec(seed=0),
                     SupermaskConfig(method="annealed", forward_mask="threshold", score_init=0.0))
    model = build_model(spec)
    assert mask_density(model) == 1.0  # the submission's log: mask_active 1.000 at step 0
    sm = next(iter(supermasks(model).values()))
    with torch.no_grad():
        sm.scores[0, :3] = torch.tensor([-1e-6, 0.0, 1e-6])
    assert sm.hard_mask()[0, :3].tolist() == [0.0, 1.0, 1.0]  # 1[s >= 0]
    plain = build_model(ModelSpec("causal-lm", cfg, InitSpec(seed=0),
                                  SupermaskConfig(method="annealed", forward_mask="threshold")))
    assert 0.4 < mask_density(plain) < 0.6  # the seeded, centred start
    with pytest.raises(ConfigError, match="score_init"):
        SupermaskConfig(method="edge-popup", score_init=0.0)


def _cpu_study(**kw):
    data = load_toml("configs/lm_golf_cpu.toml")
    data.update(kw)
    return study_from_dict(data)


def test_presets_fill_under_the_config_and_switch_with_set():
    sub = _cpu_study()
    assert sub.preset == "submission"
    for key, value in PRESETS["submission"].items():
        assert getattr(sub, key) == value, key
    slt = _cpu_study(preset="sltlab")
    for key, value in PRESETS["sltlab"].items():
        assert getattr(slt, key) == value, key
    assert _cpu_study(lr_annealed=0.05).lr_annealed == 0.05  # the config's own setting wins
    a = LMRun(sub, "annealed+scales", 0).config_dict()
    b = LMRun(slt, "annealed+scales", 0).config_dict()
    assert a["score_init"] == 0.0 and "score_init" not in b and a["scale_groups"] == "golf"
    assert "preset" not in a  # the resolved settings are hashed, not the name
    with pytest.raises(ConfigError, match="lm.preset"):
        _cpu_study(preset="fastest")


def test_score_seed_moves_scores_and_batches_not_weights():
    small = dict(preset="sltlab", d_model=32, n_layers=1, tokenizer="bytes")
    plain = LMRun(_cpu_study(**small), "annealed+scales", 4)
    other = LMRun(_cpu_study(**small, score_seed=9), "annealed+scales", 4)
    assert "score_seed" not in plain.config_dict() and other.config_dict()["score_seed"] == 9
    a, b = build_model(plain.spec()), build_model(other.spec())
    wa = {n: p for n, p in a.named_parameters() if n.endswith("original")}
    wb = {n: p for n, p in b.named_parameters() if n.endswith("original")}
    assert all(torch.equal(wa[n], wb[n]) for n in wa)  # the same random network
    assert not torch.equal(supermasks(a)["tok_emb"].scores, supermasks(b)["tok_emb"].scores)


def _tiny_corpora(root: Path) -> Path:
    """A data folder of the two corpora's files (a dry run only fingerprints them; tests never read ../shared)."""
    (root / "tinyshakespeare").mkdir(parents=True)
    (root / "tinyshakespeare" / "input.txt").write_text("First Citizen: speak, speak.\n" * 50)
    (root / "wikitext-2").mkdir()
    for split in ("train", "valid", "test"):
        (root / "wikitext-2" / f"{split}.txt").write_text(f" = {split} = \n the tower is tall .\n" * 50)
    return root


def test_dry_run_prints_the_submissions_shape_and_budget(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SLTLAB_DATA", str(_tiny_corpora(tmp_path / "data")))
    assert cli_main(["lm", "configs/lm_golf.toml", "--dry-run", "--store", str(tmp_path / "s.db")]) == 0
    out = capsys.readouterr().out
    for text in ("16 layers x d 1024", "8 heads / 4 key-value heads", "118,489,088 mask bits",
                 "33,920 scale floats", "14,811,136", "67,840", "16,000,000", "preset submission"):
        assert text in out, text
    budget = byte_budget(_cpu_study())
    assert budget["total_max"] == budget["mask_bytes_max"] + budget["float_bytes"] + budget["code_bytes"]
    assert cli_main(["lm", "configs/lm_golf.toml", "--dry-run", "--store", str(tmp_path / "s.db"),
                     "--set", "preset=sltlab"]) == 0
    out = capsys.readouterr().out
    assert "preset sltlab" in out and "450 scale floats" in out and "lr 0.02" in out


@pytest.mark.parametrize(("sets", "field"), [
    (["preset=fastest"], "lm.preset"),
    (["scale_groups=all"], "lm.scale_groups"),
    (["data_order=shuffled"], "lm.data_order"),
    (["activation=swish"], "lm.activation"),
    (["tokenizer_model=x.model", "tokenizer=bpe"], "lm.tokenizer_model"),
    (["dataset=shards:/nonexistent", "tokenizer=bytes"], "lm.tokenizer"),
    (["mlp_mult=0"], "lm.mlp_mult"),
])
def test_bad_golf_settings_are_one_clear_line(sets, field, capsys, tmp_path):
    argv = ["lm", "configs/lm_golf_cpu.toml", "--dry-run", "--store", str(tmp_path / "s.db")]
    for s in sets:
        argv += ["--set", s]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "s.db").exists()


def test_a_missing_tokenizer_model_or_shard_folder_is_named_before_any_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SLTLAB_DATA", str(_tiny_corpora(tmp_path / "data")))
    for sets in (["tokenizer_model=" + str(tmp_path / "none.model")],
                 ["dataset=shards:" + str(tmp_path / "none"), "tokenizer_model=" + str(tmp_path / "none.model")]):
        argv = ["lm", "configs/lm_golf_cpu.toml", "--store", str(tmp_path / "s.db")]
        for s in sets:
            argv += ["--set", s]
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "none" in err[0]
        assert not (tmp_path / "s.db").exists()
