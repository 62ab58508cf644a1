"""Tokenisation for the text tasks: a WordPiece tokenizer trained on a task's training text, or a pretrained
one.

Training a small WordPiece vocabulary on the task's own training text keeps the embedding table (which an SLT
masks like any other weight) small, and needs no download. The trained tokenizer is cached as JSON under
`$SLTLAB_CACHE` (default runs/cache)/tokenizers/<sha256 of the training text and settings>/tokenizer.json, so
every run of a sweep reuses it and the same inputs always give the same vocabulary.

Sentence pairs are encoded the usual BERT way: `[CLS] a [SEP] b [SEP]`, truncated to max_len (longest first)
and padded with [PAD] = id 0; `attention_mask` is 1 on real tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sltlab.errors import ConfigError, DataError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CACHE_ENV = "SLTLAB_CACHE"


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where trained tokenizers live: the explicit path, else $SLTLAB_CACHE, else runs/cache."""
    return Path(explicit or os.environ.get(CACHE_ENV) or Path("runs") / "cache")


@dataclass(frozen=True)
class TokenizerSpec:
    """vocab_size: WordPiece vocabulary (specials included); lowercase: fold case before splitting;
    min_frequency: drop rarer sub-words; pretrained: a tokenizer.json path or a Hugging Face tokenizer name or
    local directory (then nothing is trained)."""

    vocab_size: int = 8000
    lowercase: bool = True
    min_frequency: int = 2
    pretrained: str = ""

    def validate(self) -> None:
        if self.vocab_size < len(SPECIALS) + 1:
            raise ConfigError("tokenizer.vocab_size", f"{self.vocab_size} is too small", "an integer >= 6")
        if self.min_frequency < 1:
            raise ConfigError("tokenizer.min_frequency", f"{self.min_frequency} must be >= 1", "an integer >= 1")

    def __post_init__(self) -> None:
        self.validate()


class TextEncoder:
    """Encodes single sentences or pairs to padded input_ids / attention_mask tensors of shape (N,
    max_len)."""

    def __init__(self, backend, *, kind: str, fingerprint: str):
        self._tok = backend
        self.kind = kind  # "tokenizers" (a tokenizers.Tokenizer) or "transformers" (a PreTrainedTokenizer)
        self.fingerprint = fingerprint

    @property
    def vocab_size(self) -> int:
        if self.kind == "tokenizers":
            return int(self._tok.get_vocab_size(with_added_tokens=True))
        return int(len(self._tok))

    @property
    def pad_id(self) -> int:
        if self.kind == "tokenizers":
            return int(self._tok.token_to_id("[PAD]"))
        return int(self._tok.pad_token_id or 0)

    def save(self, path: str | os.PathLike) -> bool:
        """Write a trained tokenizer as tokenizer.json (atomically), so a run's artifacts can be re-encoded
        without retraining. Returns False for a Hugging Face tokenizer: its name in the config is enough."""
        if self.kind != "tokenizers":
            return False
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._tok.save(str(tmp))
        os.replace(tmp, path)
        return True

    def encode(
        self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None, max_len: int = 128
    ) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask (int64) of shape (len(texts_a), max_len)."""
        if max_len < 4:
            raise ConfigError("max_len", f"{max_len} is too short for [CLS] a [SEP] b [SEP]", "an integer >= 4")
        if texts_b is not None and len(texts_b) != len(texts_a):
            raise DataError(f"sentence pairs differ in count: {len(texts_a)} vs {len(texts_b)}")
        if self.kind == "transformers":
            enc = self._tok(
                list(texts_a),
                None if texts_b is None else list(texts_b),
                padding="max_length",
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}
        self._tok.enable_truncation(max_length=max_len, strategy="longest_first")
        self._tok.enable_padding(length=max_len, pad_id=self.pad_id, pad_token="[PAD]")
        if texts_b is None:
            encs = self._tok.encode_batch(list(texts_a))
        else:
            encs = self._tok.encode_batch(list(zip(texts_a, texts_b, strict=True)))
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long).reshape(len(encs), max_len)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.long).reshape(len(encs), max_len)
        return {"input_ids": ids, "attention_mask": mask}


def _fingerprint(texts: Iterable[str], spec: TokenizerSpec) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps({"v": 1, "vocab": spec.vocab_size, "lower": spec.lowercase, "minf": spec.min_frequency}).encode()
    )
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _new_wordpiece(spec: TokenizerSpec):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    norm = [normalizers.NFD(), normalizers.StripAccents()]
    if spec.lowercase:
        norm.insert(0, normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok, processors


def train_tokenizer(
    texts: Sequence[str],
    spec: TokenizerSpec = TokenizerSpec(),
    cache: str | os.PathLike | None = None,
) -> TextEncoder:
    """Train (or load from the cache) a WordPiece tokenizer on `texts`. The cache key hashes texts and
    spec."""
    from tokenizers import Tokenizer, trainers

    if not texts:
        raise DataError("cannot train a tokenizer on no text")
    fp = _fingerprint(texts, spec)
    path = cache_dir(cache) / "tokenizers" / fp / "tokenizer.json"
    if path.is_file():
        return TextEncoder(Tokenizer.from_file(str(path)), kind="tokenizers", fingerprint=fp)
    tok, processors = _new_wordpiece(spec)
    trainer = trainers.WordPieceTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=list(SPECIALS),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"tokenizer.json.{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return TextEncoder(tok, kind="tokenizers", fingerprint=fp)


def load_pretrained(name_or_path: str) -> TextEncoder:
    """A given tokenizer: a tokenizer.json file, or a Hugging Face tokenizer name / local directory."""
    p = Path(name_or_path)
    if p.is_file() and p.suffix == ".json":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(p))
        if tok.token_to_id("[PAD]") is None:
            raise DataError(f"tokenizer {p} has no [PAD] token; train one with sltlab or pass a HF tokenizer")
        return TextEncoder(tok, kind="tokenizers", fingerprint=hashlib.sha256(p.read_bytes()).hexdigest()[:16])
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # noqa: BLE001 - hub/file errors come in many types
        raise DataError(f"cannot load the pretrained tokenizer {name_or_path!r}: {err}") from err
    if tok.pad_token_id is None:
        raise DataError(f"tokenizer {name_or_path!r} has no padding token")
    return TextEncoder(tok, kind="transformers", fingerprint=f"hf:{name_or_path}")


def make_encoder(
    train_texts: Sequence[str],
    spec: TokenizerSpec = TokenizerSpec(),
    cache: str | os.PathLike | None = None,
) -> TextEncoder:
    """The pretrained tokenizer named in spec, else one trained on train_texts (cached)."""
    if spec.pretrained:
        return load_pretrained(spec.pretrained)
    return train_tokenizer(train_texts, spec, cache)
