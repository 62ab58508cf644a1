"""Token data as the parameter-golf challenge ships it: uint16 token shards, a SentencePiece model, and bits per
byte counted by the challenge's byte rules.

Shards (openai/parameter-golf, data/download_hf_docs_and_tokenize.py and train_gpt.py's reader): a header of 256
little-endian int32, [0] = 20240520 (magic), [1] = 1 (version), [2] = the token count n, then n little-endian
uint16 token ids; the file is exactly 1,024 + 2n bytes. A split is every shard of a folder whose name matches
`*_train_*.bin` (or `*_val_*.bin`), in sorted order, concatenated. `read_shard` checks all of that and raises
DataError naming the file otherwise; `write_shard` writes the same format (for tests, and to convert a corpus).

Bytes of a token (the challenge's `build_sentencepiece_luts` and its eval): control, unknown and unused pieces
are boundaries and spell 0 bytes; a byte-fallback piece (<0xAB>) spells 1; any other piece spells the UTF-8 bytes
of its text without a leading "▁", plus 1 for that space unless the previous token is a boundary. The score is
then bits per byte = summed target loss (nats) / (ln 2 x the bytes the targets spell, each given its previous
token). These are the bytes of the text as the SentencePiece model *normalises* it (its normaliser, e.g. NFKC,
maps newlines to spaces and collapses runs of whitespace), not of the raw file: the challenge's rule, kept here.

A text corpus under a SentencePiece model (`tokenize_sentencepiece`): each split is [BOS] + encode(text), one
document, as the challenge prefixes every document with BOS; the byte count of the targets is checked against
the UTF-8 length of the decoded (normalised) text, the direct count, and a mismatch is a DataError.
`train_sentencepiece` trains a model on the train split with the challenge's trainer settings (BPE, byte
fallback, split digits, nmt_nfkc, no dummy prefix, pad/bos/eos/unk = 0/1/2/3), one line per sentence, cached by
the text's hash; a user can instead point at any model file (the challenge's fineweb_1024_bpe.model).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sltlab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from sltlab.tasks.text import ByteCorpus

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
#: The challenge's SentencePiece trainer settings (data/download_hf_docs_and_tokenize.py), bumped with SP_RULE.
SP_TRAINER: dict[str, Any] = {
    "model_type": "bpe", "character_coverage": 0.999, "byte_fallback": True, "split_digits": True,
    "normalization_rule_name": "nmt_nfkc", "add_dummy_prefix": False, "pad_id": 0, "bos_id": 1, "eos_id": 2,
    "unk_id": 3, "hard_vocab_limit": False,
}
SP_RULE = 1


# -- shards -------------------------------------------------------------------------------------------------------
def read_shard(path: str | Path) -> torch.Tensor:
    """The token ids of one challenge shard, as a uint16 tensor; DataError for anything that is not one."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
            if header.size != HEADER_INTS:
                raise DataError(f"{p}: {size} bytes is shorter than a shard header ({HEADER_BYTES} bytes)")
            if int(header[0]) != SHARD_MAGIC or int(header[1]) != SHARD_VERSION:
                raise DataError(f"{p}: not a token shard (magic {int(header[0])}, version {int(header[1])}; "
                                f"expected {SHARD_MAGIC}, {SHARD_VERSION})")
            n = int(header[2])
            if n < 0 or size != HEADER_BYTES + 2 * n:
                raise DataError(f"{p}: the header says {n:,} tokens ({HEADER_BYTES + 2 * n:,} bytes) but the file "
                                f"has {size:,} bytes; it is truncated or not a shard")
            tokens = np.frombuffer(f.read(2 * n), dtype="<u2")
    except OSError as err:
        raise DataError(f"cannot read {p}: {err}") from None
    return torch.from_numpy(tokens.astype(np.uint16))


def write_shard(path: str | Path, tokens: Any) -> None:
    """Write token ids (each in [0, 65535]) as a challenge shard."""
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
        raise DataError(f"{path}: token ids must lie in [0, 65535] to fit a uint16 shard")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, arr.size)
    Path(path).write_bytes(header.tobytes() + arr.astype("<u2").tobytes())


def shard_files(folder: str | Path, split: str) -> list[Path]:
    """The shards of a split ("train" or "val") in a folder: *_{split}_*.bin, sorted."""
    return sorted(Path(folder).glob(f"*_{split}_*.bin"))


def load_shards(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) token ids of a shard folder, each split's shards concatenated in name order."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError("dataset", f"shard folder {str(root)!r} does not exist",
                          "shards:DIR with DIR holding *_train_*.bin and *_val_*.bin token shards")
    out = []
    for split in ("train", "val"):
        files = shard_files(root, split)
        if not files:
            raise DataError(f"{root}: no *_{split}_*.bin shard; the challenge's folders hold fineweb_train_*.bin "
                            "and fineweb_val_*.bin")
        parts = [read_shard(f) for f in files]
        out.append(parts[0] if len(parts) == 1 else torch.cat(parts))
    return out[0], out[1]


# -- SentencePiece and the byte rules -------------------------------------------------------------------------------
def _spm() -> Any:
    try:
        import sentencepiece as spm
    except ImportError:  # a core dependency; only a broken install lands here
        raise ConfigError("tokenizer", "the sentencepiece package is not installed",
                          "pip install sentencepiece (sltlab depends on it)") from None
    return spm


def load_sentencepiece(model: bytes, source: str = "SentencePiece model") -> Any:
    """A SentencePieceProcessor from a model's bytes; DataError if they are not a model."""
    spm = _spm()
    try:
        return spm.SentencePieceProcessor(model_proto=model)
    except Exception as err:  # sentencepiece raises RuntimeError/OSError for a bad proto
        raise DataError(f"{source}: not a SentencePiece model ({type(err).__name__}: {err})") from None


def read_sentencepiece(path: str | Path) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("tokenizer_model", f"{str(p)!r} is not a file",
                          "the path of a SentencePiece .model file (e.g. fineweb_1024_bpe.model)")
    data = p.read_bytes()
    load_sentencepiece(data, str(p))
    return data


@dataclass(frozen=True)
class ByteRule:
    """Bytes each token spells under the challenge's rule: base[t] + (leading_space[t] and not boundary[prev])."""

    base: torch.Tensor            # int64 per token id
    leading_space: torch.Tensor   # bool per token id
    boundary: torch.Tensor        # bool per token id

    def count(self, prev: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Bytes spelled by each target token given the token before it (same shapes, int64 out)."""
        dev = target.device
        base, lead, bound = (t.to(dev) for t in (self.base, self.leading_space, self.boundary))
        t, p = target.long(), prev.long()
        return base[t] + (lead[t] & ~bound[p]).long()


def sentencepiece_byte_rule(sp: Any, vocab_size: int) -> ByteRule:
    """The challenge's lookup tables for a SentencePiece model, sized max(its vocabulary, vocab_size)."""
    n = max(int(sp.vocab_size()), vocab_size)
    base = np.zeros(n, dtype=np.int64)
    lead = np.zeros(n, dtype=np.bool_)
    bound = np.ones(n, dtype=np.bool_)
    for i in range(int(sp.vocab_size())):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        bound[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteRule(torch.from_numpy(base), torch.from_numpy(lead), torch.from_numpy(bound))


def train_sentencepiece(train: bytes, vocab_size: int, cache: str | Path | None = None,
                        name: str = "text") -> bytes:
    """A SentencePiece model of `vocab_size` pieces trained on `train` with the challenge's settings (SP_TRAINER),
    one line per sentence, cached under <cache>/sentencepiece/<sha256>/tokenizer.model; returns its bytes."""
    from sltlab.tasks.text import _utf8
    from sltlab.tasks.tokenize import cache_dir

    key = hashlib.sha256(b"sltlab-sp|%d|%d|" % (SP_RULE, vocab_size) + train).hexdigest()
    path = cache_dir(cache) / "sentencepiece" / key / "tokenizer.model"
    if path.is_file():
        data = path.read_bytes()
        try:
            load_sentencepiece(data)
            return data
        except DataError:  # a damaged cache entry is rebuilt, never trusted
            pass
    lines = [line for line in _utf8(train, f"{name} (train split)").split("\n") if line.strip()]
    buf = io.BytesIO()
    try:
        _spm().SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
                                          num_threads=1, minloglevel=2, **SP_TRAINER)
    except RuntimeError as err:
        raise DataError(f"{name}: SentencePiece could not train {vocab_size} pieces on the train split ({err}); "
                        "use a smaller vocab_size or a longer text") from None
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


def encode_document(sp: Any, text: str) -> torch.Tensor:
    """[BOS] + the SentencePiece ids of `text`, as int32 (the challenge's document layout, no EOS)."""
    ids = [int(sp.bos_id())] + list(sp.encode(text))
    return torch.tensor(ids, dtype=torch.int32)


def spelled_bytes(rule: ByteRule, ids: torch.Tensor, chunk: int = 1 << 24) -> int:
    """Bytes the targets ids[1:] spell, each after its previous token (in chunks: shards hold billions)."""
    total = 0
    for i in range(1, ids.numel(), chunk):
        j = min(i + chunk, ids.numel())
        total += int(rule.count(ids[i - 1 : j - 1], ids[i:j]).sum())
    return total


def sentencepiece_sha(model: bytes) -> str:
    return hashlib.sha256(model).hexdigest()


def tokenize_sentencepiece(corpus: ByteCorpus, model: bytes, vocab_size: int) -> ByteCorpus:
    """A text ByteCorpus as SentencePiece ids ([BOS] + encode(split), int32 per split) with the challenge's byte
    rule; checks, per split, that the targets' counted bytes equal the UTF-8 bytes of the decoded text."""
    from sltlab.tasks.text import ByteCorpus, _utf8

    sp = load_sentencepiece(model)
    check_vocab(sp, vocab_size)
    rule = sentencepiece_byte_rule(sp, vocab_size)
    parts, sizes = [], []
    for split in ("train", "val"):
        text = _utf8(bytes(getattr(corpus, split).numpy().tobytes()), f"{corpus.name} ({split} split)")
        ids = encode_document(sp, text)
        counted = spelled_bytes(rule, ids)
        direct = len(sp.decode(ids[1:].tolist()).encode("utf-8"))
        if counted != direct:
            raise DataError(f"{corpus.name} ({split} split): the byte rule counts {counted} bytes but the decoded "
                            f"text has {direct}; this SentencePiece model's pieces do not spell its text")
        parts.append(ids)
        sizes.append(counted)
    return ByteCorpus(corpus.name, parts[0], parts[1], None, (sizes[0], sizes[1]), sentencepiece_sha(model), rule)


def check_vocab(sp: Any, vocab_size: int) -> None:
    if int(sp.vocab_size()) != vocab_size:
        raise ConfigError("lm.vocab_size", f"{vocab_size} differs from the SentencePiece model's "
                          f"{int(sp.vocab_size())} pieces", f"vocab_size = {int(sp.vocab_size())}")


def shard_corpus(folder: str | Path, model: bytes, vocab_size: int) -> ByteCorpus:
    """A challenge shard folder as a ByteCorpus: token ids as stored (uint16), the model's byte rule, the bytes
    the rule counts per split. Token ids at or above vocab_size are a DataError."""
    from sltlab.tasks.text import ByteCorpus

    sp = load_sentencepiece(model)
    check_vocab(sp, vocab_size)
    rule = sentencepiece_byte_rule(sp, vocab_size)
    train, val = load_shards(folder)
    for split, t in (("train", train), ("val", val)):
        top = int(t.numpy().max()) if t.numel() else 0
        if top >= vocab_size:
            raise DataError(f"{folder} ({split}): token id {top} is outside the vocabulary of {vocab_size}")
    return ByteCorpus(Path(folder).name, train, val, None, (spelled_bytes(rule, train), spelled_bytes(rule, val)),
                      sentencepiece_sha(model), rule)
