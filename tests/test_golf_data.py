"""The challenge's data: token shards (read against the format written by hand), a SentencePiece model trained
here, bits per byte counted by the challenge's byte rules against a direct count, streamed batches, the passes
notice, and the training loss in bits per *byte* for tokenized text."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from sltlab.cli import main as cli_main
from sltlab.errors import DataError
from sltlab.tasks.lm_run import LMStudy, run_cell, study_from_dict
from sltlab.tasks.text import ByteCorpus, eval_bpb, split_bytes, stream_batches
from sltlab.tasks.tokens import (
    SHARD_MAGIC,
    encode_document,
    load_sentencepiece,
    load_shards,
    read_shard,
    sentencepiece_byte_rule,
    spelled_bytes,
    tokenize_sentencepiece,
    train_sentencepiece,
    write_shard,
)

WORDS = ["the", "king", "and", "queen", "of", "ticket", "lottery", "mask", "café", "naïve", "über", "東京", "42",
         "1987", "don't", "—"]


def _text(n: int, seed: int = 0, words: list[str] = WORDS) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + rng.choice([".", "!", ""]))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> bytes:
    return train_sentencepiece(_text(3000).encode(), 320, cache=tmp_path_factory.mktemp("cache"))


def test_shards_round_trip_and_reject_what_is_not_one(tmp_path):
    tokens = np.array([1, 5, 65535, 0, 7], dtype=np.uint16)
    write_shard(tmp_path / "x_train_000000.bin", tokens)
    raw = (tmp_path / "x_train_000000.bin").read_bytes()  # the format, by hand: 256 int32 then uint16
    assert len(raw) == 1024 + 10 and np.frombuffer(raw[:12], "<i4").tolist() == [SHARD_MAGIC, 1, 5]
    assert np.frombuffer(raw[1024:], "<u2").tolist() == tokens.tolist()
    assert read_shard(tmp_path / "x_train_000000.bin").tolist() == tokens.tolist()
    write_shard(tmp_path / "x_train_000001.bin", [9, 9])
    write_shard(tmp_path / "x_val_000000.bin", [3, 4, 5])
    train, val = load_shards(tmp_path)
    assert train.tolist() == [1, 5, 65535, 0, 7, 9, 9] and val.tolist() == [3, 4, 5]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a_val_0.bin").write_bytes(raw[:-2])  # truncated
    with pytest.raises(DataError, match="truncated"):
        read_shard(tmp_path / "bad" / "a_val_0.bin")
    (tmp_path / "bad" / "b_val_0.bin").write_bytes(b"\0" * 1030)
    with pytest.raises(DataError, match="not a token shard"):
        read_shard(tmp_path / "bad" / "b_val_0.bin")
    with pytest.raises(DataError, match="train"):
        load_shards(tmp_path / "bad")  # no train shard
    with pytest.raises(DataError, match="uint16"):
        write_shard(tmp_path / "y.bin", [70000])


def test_sentencepiece_bytes_by_the_challenges_rule_equal_a_direct_count(sp_model):
    sp = load_sentencepiece(sp_model)
    assert int(sp.vocab_size()) == 320
    rule = sentencepiece_byte_rule(sp, 320)
    assert sum(bool(sp.is_byte(i)) for i in range(320)) == 256 and int(rule.base[sp.bos_id()]) == 0
    # documents as the challenge writes them: each [BOS] + ids; text with accents, CJK (byte fallback), digits
    docs = [_text(40, seed) for seed in range(1, 6)] + [" leading space", "x"]
    stream = torch.cat([encode_document(sp, d) for d in docs])
    direct = sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in docs)
    assert spelled_bytes(rule, stream) == direct
    assert spelled_bytes(rule, stream, chunk=7) == direct  # the chunked count is the same count
    # normalisation is the model's: the bytes are those of the text it decodes to, here the same as the input's
    # but for runs of whitespace (nmt_nfkc folds them)
    assert direct <= sum(len(d.encode("utf-8")) for d in docs)


def test_bits_per_byte_by_hand_under_the_byte_rule(sp_model):
    corpus = split_bytes(_text(3000).encode(), 0.2, "toy")
    tok = tokenize_sentencepiece(corpus, sp_model, 320)
    assert tok.sizes["val_bytes"] == spelled_bytes(tok.byte_rule, tok.val) and tok.tokenizer_sha256

    class Uniform(torch.nn.Module):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*idx.shape, 320)

    seq = 16
    val = tok.val.long()
    n_win = (val.numel() - 1) // seq
    counted = sum(spelled_bytes(tok.byte_rule, val[i * seq: i * seq + seq + 1]) for i in range(n_win))
    by_hand = n_win * seq * math.log2(320) / counted
    assert eval_bpb(Uniform(), tok.val, seq, byte_rule=tok.byte_rule) == pytest.approx(by_hand, rel=1e-6)


def test_stream_batches_read_the_text_in_order_and_wrap():
    data = torch.arange(23)
    it = stream_batches(data, 2, 3)
    x, y = next(it)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]] and y.tolist() == [[1, 2, 3], [4, 5, 6]]
    next(it), next(it)
    x, _ = next(it)  # the fourth batch starts at 21 and wraps past the end
    assert x.tolist() == [[21, 22, 0], [1, 2, 3]]
    with pytest.raises(DataError, match="stream"):
        next(stream_batches(torch.arange(5), 2, 3))


def test_a_cell_on_shards_with_a_user_given_model(tmp_path, sp_model, monkeypatch):
    monkeypatch.setenv("SLTLAB_CACHE", str(tmp_path / "cache"))
    sp = load_sentencepiece(sp_model)
    (tmp_path / "sp.model").write_bytes(sp_model)
    shards = tmp_path / "shards"
    shards.mkdir()
    for split, seeds in (("train", range(10, 40)), ("val", range(40, 46))):
        write_shard(shards / f"toy_{split}_000000.bin",
                    torch.cat([encode_document(sp, _text(30, s)) for s in seeds]).numpy())
    study = study_from_dict(dict(dataset=f"shards:{shards}", tokenizer="sentencepiece", vocab_size=320,
                                 tokenizer_model=str(tmp_path / "sp.model"), methods=["annealed+scales"],
                                 preset="submission", warmdown_steps=4, d_model=16, n_heads=2, n_kv_heads=1,
                                 n_layers=1, mlp_mult=2, activation="relu", norm="pre-rms+noaffine", qk_norm=True,
                                 embed_norm=True, positions="rope", tie_embeddings=True, init="golf", seq_len=16,
                                 batch_size=4, steps=12, eval_bytes=4096, device="cpu"))
    _, m, _ = run_cell(study.cells()[0])
    assert 0 < m["val_bpb"] < 20 and m["val_tokens"] > 0 and m["tokenizer_sha256"]
    assert 0 < m["density"] <= 1.0


def test_train_bits_per_byte_for_bpe_and_the_passes_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLTLAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "c.txt"
    path.write_text(_text(600, words=WORDS[:8]))  # ASCII: the 90/10 byte split cuts no character
    study = LMStudy(dataset=str(path), methods=("edge-popup",), tokenizer="bpe", vocab_size=300, d_model=16,
                    n_heads=2, n_layers=1, seq_len=16, batch_size=8, steps=20, eval_bytes=2048, device="cpu")
    from sltlab.tasks.lm_run import prepare_corpus

    corpus = prepare_corpus(study)
    _, m, _ = run_cell(study.cells()[0], full_curve=True)
    tail = [loss for _, loss in m["_curve"][-5:]]
    per_token = sum(tail) / len(tail) / math.log(2)
    expect = per_token * corpus.train.numel() / corpus.sizes["train_bytes"]
    assert m["train_bpb_end"] == pytest.approx(expect, rel=1e-9)
    assert m["train_bpb_end"] < per_token  # a BPE token spells more than one byte
    # the command says how many passes the budget reads before it runs
    code = cli_main(["lm", "--dataset", str(path), "--methods", "edge-popup", "--set", "d_model=16", "--set",
                     "n_heads=2", "--set", "n_layers=1", "--set", "seq_len=16", "--set", "batch_size=64", "--set",
                     "steps=30", "--set", "eval_bytes=1024", "--store", str(tmp_path / "s.db"), "--executor",
                     "serial", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "passes over the train split" in out and "more than once" in out


def test_text_corpus_byte_check_catches_a_model_that_does_not_spell_its_text(sp_model, monkeypatch):
    import sltlab.tasks.tokens as tokens

    corpus = ByteCorpus("toy", torch.frombuffer(bytearray(b"the king\n" * 50), dtype=torch.uint8),
                        torch.frombuffer(bytearray(b"the queen\n" * 20), dtype=torch.uint8))
    real = tokens.sentencepiece_byte_rule

    def off_by_one(sp, n):  # noqa: ANN001, ANN202
        r = real(sp, n)
        return tokens.ByteRule(r.base + 1, r.leading_space, r.boundary)

    monkeypatch.setattr(tokens, "sentencepiece_byte_rule", off_by_one)
    with pytest.raises(DataError, match="decoded text"):
        tokenize_sentencepiece(corpus, sp_model, 320)
