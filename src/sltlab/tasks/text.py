"""Byte-level text for language modelling: corpora, train/validation split, batches and bits per byte.

Bytes by default: the vocabulary is the 256 byte values, so the loss per position is directly a cost per
byte. Bits per byte = mean cross-entropy (nats) / ln 2.

A BPE tokenizer is the option (`tokenize_bpe`, the parameter-golf setting: 1,024 tokens): byte-level BPE
trained with Hugging Face `tokenizers` on the train split only, cached. Its score is still bits per *byte*,
exactly: the summed token cross-entropy (nats) over the scored targets / (ln 2 x the UTF-8 bytes those targets
spell). Byte-level tokens spell exact byte strings, so the denominator is the validation text's own byte count
(checked when the text is tokenized), and with the byte tokenizer (one byte per token) the two definitions agree.
So a model cannot game the score by its tokenizer.

Corpora (found under `sltlab.paths.data_dir()`):
    tinyshakespeare  tinyshakespeare/input.txt; the first 90% trains, the last 10% validates (the usual split)
    wikitext-2       wikitext-2/train.txt and valid.txt (the official split, raw bytes of the tokenised files)
    any file path    its first (1 - val_fraction) trains, the rest validates
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sltlab.errors import ConfigError, DataError
from sltlab.paths import data_dir

if TYPE_CHECKING:
    from sltlab.tasks.tokens import ByteRule

VOCAB = 256
CORPORA: dict[str, tuple[str, ...]] = {
    "tinyshakespeare": ("tinyshakespeare/input.txt",),
    "wikitext-2": ("wikitext-2/train.txt", "wikitext-2/valid.txt"),
}


@dataclass(frozen=True)
class ByteCorpus:
    """Train and validation bytes as uint8 tensors (or token ids, when `token_bytes` is set), and where they
    came from. token_bytes[i]: how many bytes token i spells (None: the tensors are bytes); raw_sizes: the
    byte counts of the text the tokens came from; tokenizer_sha256 names a trained tokenizer."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    token_bytes: torch.Tensor | None = None
    raw_sizes: tuple[int, int] = (0, 0)
    tokenizer_sha256: str = ""
    # SentencePiece: a token's bytes depend on the token before it (sltlab.tasks.tokens.ByteRule); then
    # token_bytes is None and raw_sizes are the bytes the rule counts
    byte_rule: ByteRule | None = None

    @property
    def tokenized(self) -> bool:
        return self.token_bytes is not None or self.byte_rule is not None

    @property
    def sizes(self) -> dict[str, int]:
        if not self.tokenized:
            return {"train_bytes": int(self.train.numel()), "val_bytes": int(self.val.numel())}
        return {"train_bytes": self.raw_sizes[0], "val_bytes": self.raw_sizes[1],
                "train_tokens": int(self.train.numel()), "val_tokens": int(self.val.numel())}


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
        if data
        else torch.empty(0, dtype=torch.uint8)
    )


def split_bytes(data: bytes, val_fraction: float, name: str = "text") -> ByteCorpus:
    """The first (1 - val_fraction) of the bytes train, the rest validate (contiguous, so no leakage)."""
    if not 0 < val_fraction < 1:
        raise ConfigError("val_fraction", f"{val_fraction} is outside (0, 1)", "a number in (0, 1), e.g. 0.1")
    cut = int(len(data) * (1 - val_fraction))
    return ByteCorpus(name, _bytes_tensor(data[:cut]), _bytes_tensor(data[cut:]))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from None


def corpus_files(dataset: str, data_root: str | Path | None = None) -> list[Path]:
    """The files `load_corpus(dataset)` reads (what an LM run's data fingerprint covers), each checked to exist."""
    if dataset in CORPORA:
        root = data_dir(data_root)
        assert root is not None
        paths = [root / rel for rel in CORPORA[dataset]]
        for p in paths:
            if not p.is_file():
                raise DataError(
                    f"{dataset}: {p} is missing; put the corpus under {root} or pass --data-dir DIR "
                    f"(expected {', '.join(CORPORA[dataset])})"
                )
        return paths
    p = Path(dataset).expanduser()
    if p.is_dir():
        raise ConfigError("dataset", f"{dataset!r} is a directory, not a text file",
                          f"{' | '.join(CORPORA)} or the path of a text file")
    if not p.is_file():
        raise ConfigError(
            "dataset",
            f"{dataset!r} is neither a known corpus nor a file",
            f"{' | '.join(CORPORA)} or the path of a text file",
        )
    return [p]


def load_corpus(dataset: str, data_root: str | Path | None = None, val_fraction: float = 0.1) -> ByteCorpus:
    """`dataset` is a corpus name (tinyshakespeare, wikitext-2) or the path of any text file."""
    paths = corpus_files(dataset, data_root)
    if len(paths) == 2:
        return ByteCorpus(dataset, _bytes_tensor(_read(paths[0])), _bytes_tensor(_read(paths[1])))
    return split_bytes(_read(paths[0]), val_fraction, dataset if dataset in CORPORA else paths[0].name)


# Bumped whenever the BPE training rule changes, so a cached tokenizer is never reused across rules.
BPE_RULE = 1
MAX_BPE_VOCAB = 65536


def check_bpe_vocab(vocab_size: int, field: str = "vocab_size") -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 256 <= vocab_size <= MAX_BPE_VOCAB:
        raise ConfigError(field, f"{vocab_size!r} is not a BPE vocabulary size",
                          f"an integer in [256, {MAX_BPE_VOCAB}] (256 byte tokens plus the merges)")


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: byte {err.start} (0x{data[err.start]:02x}) is not valid UTF-8; a BPE tokenizer "
                        "needs UTF-8 text (the byte tokenizer takes any bytes)") from None


def train_bpe(train: bytes, vocab_size: int, cache: str | Path | None = None, name: str = "text"):  # noqa: ANN201
    """A byte-level BPE `tokenizers.Tokenizer` of `vocab_size` tokens trained on `train` only, cached as JSON
    under <cache>/bpe/<sha256 of the text, size and rule>/tokenizer.json (default: $SLTLAB_CACHE, else
    runs/cache). Deterministic: the same text gives the same merges in every process (tested in two fresh
    processes: the trainer's ties fall by count, then by the pair, not by hash-map order, for this rule)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from sltlab.tasks.tokenize import cache_dir

    check_bpe_vocab(vocab_size)
    key = hashlib.sha256(b"sltlab-bpe|%d|%d|" % (BPE_RULE, vocab_size) + train).hexdigest()
    path = cache_dir(cache) / "bpe" / key / "tokenizer.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            pass
    text = _utf8(train, f"{name} (train split)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator([text], trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(tok.to_str(), encoding="utf-8")
    os.replace(tmp, path)
    return tok


def token_byte_lengths(tok, vocab_size: int) -> torch.Tensor:  # noqa: ANN001
    """Bytes spelled by each token id of a byte-level BPE (its characters are one byte each); 0 past the
    trained vocabulary."""
    out = torch.zeros(vocab_size, dtype=torch.long)
    for piece, i in tok.get_vocab().items():
        if i < vocab_size:
            out[i] = len(piece)
    return out


def tokenize_bpe(corpus: ByteCorpus, vocab_size: int, cache: str | Path | None = None) -> ByteCorpus:
    """The corpus as BPE token ids (int32) with the tokenizer trained on its train split; checks that the
    validation tokens spell exactly the validation text's bytes (what makes bits per byte exact)."""
    tok = train_bpe(bytes(corpus.train.numpy().tobytes()), vocab_size, cache, corpus.name)
    lengths = token_byte_lengths(tok, vocab_size)
    parts = []
    for split in ("train", "val"):
        raw = bytes(getattr(corpus, split).numpy().tobytes())
        ids = tok.encode(_utf8(raw, f"{corpus.name} ({split} split)")).ids
        t = torch.tensor(ids, dtype=torch.int32)
        if int(lengths[t.long()].sum()) != len(raw):
            raise DataError(f"{corpus.name} ({split} split): the BPE tokens spell {int(lengths[t.long()].sum())} "
                            f"bytes, not the text's {len(raw)}; the tokenizer is not byte-exact")
        parts.append(t)
    sha = hashlib.sha256(tok.to_str().encode()).hexdigest()
    return ByteCorpus(corpus.name, parts[0], parts[1], lengths, (corpus.train.numel(), corpus.val.numel()), sha)


def check_length(corpus: ByteCorpus, seq_len: int) -> None:
    for part in ("train", "val"):
        if getattr(corpus, part).numel() < seq_len + 1:
            raise DataError(
                f"{corpus.name}: the {part} split has {getattr(corpus, part).numel()} bytes, fewer than "
                f"seq_len + 1 = {seq_len + 1}; use a longer text or a smaller seq_len"
            )


def random_batches(
    data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x, y) batches of random windows; y is x shifted by one byte. The generator fixes the order."""
    n = data.numel() - seq_len - 1
    if n < 0:
        raise DataError(f"text of {data.numel()} bytes is shorter than seq_len + 1 = {seq_len + 1}")
    # drawn where the text is (the CPU, with the seeded CPU generator: the same windows on every device)
    offsets = torch.arange(seq_len + 1, device=data.device)
    while True:
        starts = torch.randint(0, n + 1, (batch_size,), generator=generator, device=generator.device)
        starts = starts.to(data.device)
        win = data[starts[:, None] + offsets[None]].long()
        yield win[:, :-1], win[:, 1:]


def stream_batches(data: torch.Tensor, batch_size: int, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x, y) batches read in order, as the parameter-golf challenge's loader reads its shards: each step
    takes the next batch_size * seq_len + 1 tokens, x = all but the last as batch_size rows of seq_len, y = all but
    the first; the stream wraps to the start at the end of the data. No randomness: the order is the text's."""
    span = batch_size * seq_len + 1
    n = data.numel()
    if n < span:
        raise DataError(f"the train split has {n} tokens, fewer than batch_size x seq_len + 1 = {span} for one "
                        "streamed batch; use a longer text, a smaller batch, or data_order = 'random'")
    offsets = torch.arange(span, device=data.device)
    pos = 0
    while True:
        chunk = data[(pos + offsets) % n].long()
        pos = (pos + span) % n
        yield chunk[:-1].view(batch_size, seq_len), chunk[1:].view(batch_size, seq_len)


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-byte cross-entropy in nats."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def eval_bpb(
    model: nn.Module,
    data: torch.Tensor,
    seq_len: int,
    batch_size: int = 32,
    max_bytes: int | None = None,
    progress: bool = False,
    token_bytes: torch.Tensor | None = None,
    byte_rule: ByteRule | None = None,
) -> float:
    """Validation bits per byte over non-overlapping windows of seq_len predictions from the start of `data`
    (each window's first byte is predicted from that byte alone; the same rule for every method compared).
    max_bytes caps how many bytes are scored, for quick runs.

    token_bytes (a tokenized `data`): bytes spelled by each token id; bits per byte is then the summed token
    loss / (ln 2 x the bytes the scored targets spell), and max_bytes caps those bytes. byte_rule (a
    SentencePiece `data`, sltlab.tasks.tokens.ByteRule): the same with each target's bytes given the token before
    it, the parameter-golf challenge's rule."""
    n_pred = data.numel() - 1
    if max_bytes is not None:
        if token_bytes is None and byte_rule is None:
            n_pred = min(n_pred, max_bytes)
        else:
            per = (byte_rule.count(data[:-1], data[1:]) if byte_rule is not None
                   else token_bytes.to(data.device)[data[1:].long()])
            n_pred = min(n_pred, int((per.cumsum(0) <= max_bytes).sum()))
    n_win = n_pred // seq_len
    if n_win < 1:
        raise DataError(
            f"validation text of {data.numel()} bytes is shorter than seq_len + 1 = {seq_len + 1}"
        )
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    offsets = torch.arange(seq_len + 1, device=data.device)
    try:
        for i in tqdm(range(0, n_win, batch_size), desc="eval bpb", disable=not progress, leave=False):
            starts = torch.arange(i, min(i + batch_size, n_win), device=data.device) * seq_len
            win = data[starts[:, None] + offsets[None]].long()
            logits = model(win[:, :-1])
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), win[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss)
            if byte_rule is not None:
                count += int(byte_rule.count(win[:, :-1], win[:, 1:]).sum())
            elif token_bytes is None:
                count += win[:, 1:].numel()
            else:
                count += int(token_bytes.to(data.device)[win[:, 1:]].sum())
    finally:
        model.train(was_training)
    return total / count / math.log(2)
