"""The parameter-golf recipe's parts: GQA, tied embeddings, soft-capped logits, golf init, warm-down and
temperature schedules, the BPE tokenizer's exact bits per byte, the int8 dense artifact, and the lm cell with them."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sltlab.errors import ArtifactError, ConfigError
from sltlab.nn.init import InitSpec, seeded_tensor
from sltlab.nn.transformer import ModelConfig, MultiHeadAttention
from sltlab.tasks.lm_run import LMStudy, counted_code_bytes, run_cell
from sltlab.tasks.text import eval_bpb, split_bytes, token_byte_lengths, tokenize_bpe, train_bpe
from sltlab.tickets.artifact import decode_ticket, export_ticket, load_ticket
from sltlab.tickets.quant import export_int8, load_int8
from sltlab.tickets.search import SearchConfig
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, supermasks

SRC = str(Path(__file__).resolve().parents[1] / "src")


# -- GQA --------------------------------------------------------------------------------------------------------
def test_gqa_shapes_and_output():
    attn = MultiHeadAttention(32, 8, 4, 4, n_kv_heads=2)
    assert attn.q.weight.shape == (32, 32) and attn.k.weight.shape == (8, 32) and attn.v.weight.shape == (8, 32)
    x = torch.randn(3, 5, 32)
    y, a = attn(x, causal=True, need_weights=True)
    assert y.shape == (3, 5, 32) and a.shape == (3, 8, 5, 5)
    # query heads 0..3 read kv head 0: recompute head 1 by hand from kv head 0
    q = attn.q(x).view(3, 5, 8, 4)[:, :, 1]
    k = attn.k(x).view(3, 5, 2, 4)[:, :, 0]
    logits = q @ k.transpose(1, 2) / 2.0
    logits = logits.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(a[:, 1], logits.softmax(-1))
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig(d_model=32, n_heads=8, n_kv_heads=3)


def test_gqa_with_all_heads_is_mha_bit_for_bit():
    base = ModelConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=50, max_len=16)
    full = build_model(ModelSpec("causal-lm", base, InitSpec(seed=3)))
    same = build_model(ModelSpec("causal-lm", ModelConfig(**{**base.__dict__, "n_kv_heads": 4}), InitSpec(seed=3)))
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(full(idx), same(idx))
    # and the spec JSON (hence artifact bytes) of a model without the recipe's options is unchanged
    assert "n_kv_heads" not in ModelSpec("causal-lm", base).to_json()


# -- tied embeddings and soft cap -----------------------------------------------------------------------------------
def _tied_spec(method: str | None = "edge-popup", **kw) -> ModelSpec:
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=1, vocab_size=40, max_len=8, tie_embeddings=True,
                      n_kv_heads=1, **kw)
    mask = SupermaskConfig(method=method, keep=0.5, seed=1) if method else None  # type: ignore[arg-type]
    return ModelSpec("causal-lm", cfg, InitSpec(scheme="golf", seed=1), mask)


def test_tied_embeddings_one_tensor_one_mask_stored_once(tmp_path):
    model = build_model(_tied_spec())
    assert model.lm_head.parametrizations.weight.original is model.tok_emb.parametrizations.weight.original
    sms = supermasks(model)
    assert model.lm_head.parametrizations.weight[0] is model.tok_emb.parametrizations.weight[0]
    assert sum(1 for n in sms if "lm_head" in n or "tok_emb" in n) == 1
    blob = export_ticket(model, _tied_spec(), tmp_path / "t.slt")
    names = [m["name"] for m in decode_ticket(blob).header["masks"]]
    assert sum("tok_emb" in n or "lm_head" in n for n in names) == 1
    back = load_ticket(tmp_path / "t.slt")
    idx = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    model.eval()
    assert torch.equal(back(idx), model(idx))
    # dense: the tied tensor is one float tensor in the artifact, not two
    dense = build_model(_tied_spec(None))
    q = export_int8(dense, _tied_spec(None))
    untied = ModelSpec("causal-lm", ModelConfig(d_model=16, n_heads=2, n_layers=1, vocab_size=40, max_len=8,
                                                n_kv_heads=1), InitSpec(scheme="golf", seed=1))
    assert len(export_int8(build_model(untied), untied)) > len(q) + 40 * 16 // 2


def test_logit_softcap_bounds_logits():
    spec = _tied_spec(None, logit_softcap=2.0)
    model = build_model(spec)
    with torch.no_grad():
        model.tok_emb.weight.mul_(100)
    out = model(torch.zeros(1, 8, dtype=torch.long))
    assert out.abs().max() <= 2.0 and out.abs().max() > 1.5
    with pytest.raises(ConfigError, match="logit_softcap"):
        ModelConfig(logit_softcap=-1.0)


# -- golf init --------------------------------------------------------------------------------------------------------
def test_golf_init_bounds():
    spec = _tied_spec(None)
    model = build_model(spec)
    d, V, ff = 16, 40, 64
    def bound(t):
        return float(t.abs().max())
    xav = math.sqrt(6 / (d + V))
    assert 0.9 * xav < bound(model.tok_emb.weight) <= xav
    fc1 = model.stack.blocks[0].mlp.fc1.weight
    assert 0.9 * math.sqrt(6 / d) < bound(fc1) <= math.sqrt(6 / d)  # He-uniform, fan_in d
    fc2 = model.stack.blocks[0].mlp.fc2.weight
    assert bound(fc2) <= math.sqrt(6 / (ff + d))
    q = model.stack.blocks[0].attn.q.weight
    assert 0.8 * math.sqrt(6 / (2 * d)) < bound(q) <= math.sqrt(6 / (2 * d))
    assert torch.equal(model.stack.blocks[0].norm1.weight, torch.ones(d))


def test_conv1d_fan_in_is_its_first_axis():
    """A weight stored [in, out] (transformers' Conv1D) takes its bound from `in`, with the same draws."""
    spec = InitSpec(scheme="kaiming-uniform", seed=0)
    a = seeded_tensor(spec, "h.0.c_fc.weight", (16, 64), in_first=True)
    b = seeded_tensor(spec, "h.0.c_fc.weight", (16, 64))
    torch.testing.assert_close(a, b * math.sqrt(64 / 16))
    assert float(a.abs().max()) <= math.sqrt(3 / 16)


_INIT_SCRIPT = """
import hashlib, torch
torch.set_num_threads(1)
from sltlab.nn.init import InitSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.tickets.spec import ModelSpec, build_model
cfg = ModelConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=64, max_len=16, tie_embeddings=True)
m = build_model(ModelSpec("causal-lm", cfg, InitSpec(scheme="golf", seed=7)))
h = hashlib.sha256()
for k, v in m.state_dict().items():
    h.update(k.encode()); h.update(v.numpy().tobytes())
print(h.hexdigest())
"""


def _in_fresh_process(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONHASHSEED": "random", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return out.stdout.strip()


def test_golf_init_bit_identical_across_processes():
    a, b = _in_fresh_process(_INIT_SCRIPT), _in_fresh_process(_INIT_SCRIPT)
    assert a == b and len(a) == 64
    cfg = ModelConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=64, max_len=16, tie_embeddings=True)
    m = build_model(ModelSpec("causal-lm", cfg, InitSpec(scheme="golf", seed=7)))
    import hashlib
    h = hashlib.sha256()
    for k, v in m.state_dict().items():
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    assert h.hexdigest() == a


# -- schedules ---------------------------------------------------------------------------------------------------------
def test_warmdown_schedule_values():
    cfg = SearchConfig(steps=10, lr=1.0, schedule="constant", warmup=2, warmdown_steps=4)
    assert [cfg.lr_at(s) for s in range(10)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    cos = SearchConfig(steps=10, lr=1.0, warmdown_steps=2)
    plain = SearchConfig(steps=10, lr=1.0)
    assert [cos.lr_at(s) for s in range(8)] == [plain.lr_at(s) for s in range(8)]
    assert cos.lr_at(8) == plain.lr_at(8) * 1.0 and cos.lr_at(9) == plain.lr_at(9) * 0.5
    with pytest.raises(ConfigError, match="warmdown_steps"):
        SearchConfig(steps=10, warmdown_steps=11)


def test_temperature_schedules():
    geo = SearchConfig(steps=5, temperature_start=1.0, temperature_end=0.0625)
    assert [geo.temperature_at(s) for s in range(5)] == [1.0, 0.5, 0.25, 0.125, 0.0625]
    lin = SearchConfig(steps=5, temperature_start=1.0, temperature_end=0.5, temperature_schedule="linear")
    assert [lin.temperature_at(s) for s in range(5)] == [1.0, 0.875, 0.75, 0.625, 0.5]
    const = SearchConfig(steps=5, temperature_start=0.7, temperature_end=0.5, temperature_schedule="constant")
    assert {const.temperature_at(s) for s in range(5)} == {0.7}
    with pytest.raises(ConfigError, match="temperature_schedule"):
        SearchConfig(temperature_schedule="cubic")  # type: ignore[arg-type]


# -- BPE and exact bits per byte -------------------------------------------------------------------------------------
class Uniform(torch.nn.Module):
    """Every token equally likely: loss ln V per predicted token, so bpb is countable by hand."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, self.vocab)


TOY = ("the cat sat on the mat. the cat ate the rat. " * 40).encode()


def test_bpe_bits_per_byte_by_hand(tmp_path):
    corpus = split_bytes(TOY, 0.25, "toy")
    # bytes: 256-way uniform = exactly 8 bits for every predicted byte
    assert eval_bpb(Uniform(256), corpus.val, 8) == pytest.approx(8.0, rel=1e-6)  # float32 losses
    tok = tokenize_bpe(corpus, 300, cache=tmp_path)
    val, lengths = tok.val.long(), tok.token_bytes
    assert int(lengths[val].sum()) == corpus.val.numel()  # the tokens spell the validation text exactly
    seq = 4
    n_win = (val.numel() - 1) // seq
    targets = torch.cat([val[i * seq + 1: i * seq + seq + 1] for i in range(n_win)])
    by_hand = targets.numel() * math.log2(300) / int(lengths[targets].sum())
    got = eval_bpb(Uniform(300), tok.val, seq, token_bytes=lengths)
    assert got == pytest.approx(by_hand, rel=1e-6)
    assert got < 8.0  # fewer, longer tokens: the same uniform guess costs fewer bits per byte
    # a BPE without merges is the byte model: the same bits per byte
    no_merges = tokenize_bpe(corpus, 256, cache=tmp_path)
    assert torch.equal(no_merges.token_bytes, torch.ones(256, dtype=torch.long))
    assert eval_bpb(Uniform(256), no_merges.val, 8, token_bytes=no_merges.token_bytes) == pytest.approx(8.0)
    # the cap counts bytes: at most max_bytes bytes of targets are scored
    capped = eval_bpb(Uniform(300), tok.val, seq, max_bytes=40, token_bytes=lengths)
    assert capped > 0


_BPE_SCRIPT = """
import hashlib, sys
from sltlab.tasks.text import train_bpe
text = open(sys.argv[1], "rb").read()
tok = train_bpe(text, 400, cache=sys.argv[2])
print(hashlib.sha256(tok.to_str().encode()).hexdigest())
"""


def test_bpe_is_deterministic_across_processes_and_cached(tmp_path):
    rng = random.Random(1)
    words = ["lottery", "ticket", "mask", "random", "weight", "attention", "norm", "layer", "head", "seed"]
    text = " ".join(rng.choice(words) + rng.choice(["", "s", "ed", "ing"]) for _ in range(4000)).encode()
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    a = _in_fresh_process(_BPE_SCRIPT, str(path), str(tmp_path / "c1"))
    b = _in_fresh_process(_BPE_SCRIPT, str(path), str(tmp_path / "c2"))
    assert a == b
    cached = list((tmp_path / "c1" / "bpe").glob("*/tokenizer.json"))
    assert len(cached) == 1
    tok = train_bpe(text, 400, cache=tmp_path / "c1")  # read from the cache
    import hashlib
    assert hashlib.sha256(tok.to_str().encode()).hexdigest() == a
    assert token_byte_lengths(tok, 400).max() > 3


# -- the int8 dense artifact -------------------------------------------------------------------------------------------
def test_int8_artifact_round_trip(tmp_path):
    """A small model under the challenge's rules: every tensor <= 65,536 elements stays a float (fp16, residual
    scales fp32), reloads to within fp16 rounding; damage is caught; a format-1 file (sltlab's first rule) loads."""
    spec = ModelSpec("causal-lm", ModelConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=64, max_len=16,
                                              residual_scales=True), InitSpec(seed=2))
    model = build_model(spec)
    blob = export_int8(model, spec, tmp_path / "d.int8")
    back = load_int8((tmp_path / "d.int8").read_bytes())
    for (n, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        if "attn_scale" in n or "mlp_scale" in n:
            assert torch.equal(a, b), n  # a control tensor: fp32
        else:
            assert torch.equal(a.half().float(), b), n
    n = sum(t.numel() for t in model.state_dict().values())
    assert len(blob) < 2.2 * n  # fp16, zlib'd, plus the header
    damaged = bytearray(blob)
    damaged[100] ^= 1
    with pytest.raises(ArtifactError, match="checksum"):
        load_int8(bytes(damaged))
    with pytest.raises(ArtifactError, match="magic"):
        load_int8(b"not an artifact" * 10)
    # format 1: per-row max|w| / 127 for every 2-D tensor, f32 for the rest
    import hashlib
    import json
    import struct
    import zlib
    from dataclasses import replace

    from sltlab.tickets.quant import MAGIC, quantize_rows
    entries, chunks = [], []
    for name, t in model.state_dict().items():
        if t.ndim >= 2:
            scale, q = quantize_rows(t)
            chunks += [scale.astype("<f2").tobytes(), q.tobytes()]
            entries.append({"name": name, "shape": list(t.shape), "kind": "int8", "aliases": []})
        else:
            chunks.append(t.numpy().astype("<f4").tobytes())
            entries.append({"name": name, "shape": list(t.shape), "kind": "f32", "aliases": []})
    header = json.dumps({"spec": replace(spec, mask=None).to_dict(), "tensors": entries}).encode()
    body = MAGIC + struct.pack("<HHI", 1, 0, len(header)) + header + zlib.compress(b"".join(chunks), 9)
    old = load_int8(body + hashlib.sha256(body).digest())
    w = model.stack.blocks[0].attn.q.weight
    step = w.abs().amax(1, keepdim=True) / 127
    assert ((old.stack.blocks[0].attn.q.weight - w).abs() <= step * 0.51 + 1e-8).all()


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> str:
    rng = random.Random(0)
    words = ["the ", "king ", "and ", "queen ", "of ", "ticket ", "lottery ", "mask "]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("".join(rng.choice(words) for _ in range(6000)))
    return str(path)


def _recipe(corpus_file: str, **kw) -> LMStudy:
    base = dict(dataset=corpus_file, d_model=16, n_heads=2, n_kv_heads=1, n_layers=1, seq_len=16, batch_size=8,
                steps=30, eval_bytes=2048, warmup=2, device="cpu", init="golf", tie_embeddings=True,
                logit_softcap=30.0, lr_schedule="constant", warmdown_steps=10, temperature_end=0.5,
                lr_annealed=0.1, lr_dense=1e-2, lr_edge_popup=0.05)
    base.update(kw)
    return LMStudy(**base)  # type: ignore[arg-type]


def test_recipe_cell_and_int8_dense_cell(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SLTLAB_CACHE", str(tmp_path / "cache"))
    study = _recipe(corpus_file, tokenizer="bpe", vocab_size=300, dense_d_model=8)
    runs = {r.method_text: r for r in study.cells()}
    ticket, dense = runs["annealed+scales"], runs["dense"]
    _, m, _ = run_cell(ticket, artifact_dir=tmp_path)
    assert m["artifact_bit_identical"] and m["val_bpb"] < 8 and m["val_tokens"] > 0
    assert m["code_bytes"] == counted_code_bytes() > 10_000
    out = tmp_path / "dense"
    out.mkdir()
    model, md, _ = run_cell(dense, artifact_dir=out)
    assert model.tok_emb.weight.shape == (300, 8)
    assert abs(md["int8_val_bpb"] - md["val_bpb"]) < 0.01
    assert md["int8_artifact_bytes"] == (out / "dense.int8").stat().st_size < md["artifact_bytes"]
    # the recipe's options enter the run id; the defaults do not
    cfg = ticket.config_dict()
    assert cfg["tie_embeddings"] is True and cfg["warmdown_steps"] == 10 and cfg["vocab_size"] == 300
    plain = LMStudy(dataset=corpus_file).cells()[0].config_dict()
    assert not {"tie_embeddings", "warmdown_steps", "vocab_size", "tokenizer", "n_kv_heads", "lr_scales",
                "forward_mask"} & set(plain)
    scaled = _recipe(corpus_file, lr_scales=0.05, forward_mask="threshold").cells()
    assert {r.method: r.config_dict().get("lr_scales") for r in scaled} == {
        "dense": None, "edge-popup": None, "annealed": 0.05}  # edge-popup's lr is 0.05 already: the same run
    assert {r.method: r.config_dict().get("forward_mask") for r in scaled} == {
        "dense": None, "edge-popup": None, "annealed": "threshold"}
    with pytest.raises(ConfigError, match="lm.tokenizer"):
        _recipe(corpus_file, tokenizer="wordpiece")
    with pytest.raises(ConfigError, match="lm.vocab_size"):
        _recipe(corpus_file, tokenizer="bpe", vocab_size=100)


def test_threshold_forward_trains_on_the_evaluated_mask():
    """forward_mask="threshold": the training forward is the eval forward (1[s > 0]); the scores still get the
    sigmoid(s/T) gradient; the default (sample) differs from it and keeps its spec JSON."""
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=1, vocab_size=40, max_len=8)
    spec = ModelSpec("causal-lm", cfg, InitSpec(seed=1),
                     SupermaskConfig(method="annealed", seed=1, forward_mask="threshold", temperature=0.5))
    model = build_model(spec)
    idx = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    out = model(idx)
    out.square().mean().backward()
    assert all(sm.scores.grad is not None and sm.scores.grad.abs().sum() > 0 for sm in supermasks(model).values())
    model.eval()
    assert torch.equal(out.detach(), model(idx))
    sampled = build_model(ModelSpec("causal-lm", cfg, InitSpec(seed=1), SupermaskConfig(method="annealed", seed=1)))
    sampled.train()
    assert not torch.equal(sampled(idx), out.detach())
    assert "forward_mask" not in SupermaskConfig(method="annealed").to_dict()
    with pytest.raises(ConfigError, match="forward_mask"):
        SupermaskConfig(method="annealed", forward_mask="mean")  # type: ignore[arg-type]
