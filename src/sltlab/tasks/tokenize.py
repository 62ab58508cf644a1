"""Tokenisation for the text tasks: a WordPiece tokenizer trained on a task's training text, or a pretrained
one.

Training a small WordPiece vocabulary on the task's own training text keeps the embedding table (which an SLT
masks like any other weight) small, and needs no download. The vocabulary is built here (`build_vocab`), not by
`tokenizers`' WordPieceTrainer: that trainer breaks ties between equally frequent merges in hash-map order, which
differs from process to process, so the same text gave a different vocabulary (and different GLUE scores) in every
fresh folder. `build_vocab` is a pure function of the text and the settings: merges are chosen by count, ties by
the pair's text. `tokenizers` then only encodes, with a WordPiece model made from that vocabulary. The trained
tokenizer is cached as JSON under `$SLTLAB_CACHE` (default runs/cache)/tokenizers/<sha256 of the training text and
settings>/tokenizer.json, so every run of a sweep reuses it; `TextEncoder.vocab_sha256` names the vocabulary in a
run's metrics.

Sentence pairs are encoded the usual BERT way: `[CLS] a [SEP] b [SEP]`, truncated to max_len (longest first)
and padded with [PAD] = id 0; `attention_mask` is 1 on real tokens.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sltlab.errors import ConfigError, DataError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CACHE_ENV = "SLTLAB_CACHE"
CONTINUE = "##"  # WordPiece's prefix of a sub-word that continues a word
# Bumped whenever build_vocab's rule changes, so a cached tokenizer is never reused across rules.
VOCAB_RULE = 2


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
    def vocab_sha256(self) -> str:
        """SHA-256 of the vocabulary in id order (see `vocab_sha256`): equal hashes, equal token ids."""
        tok = self._tok
        vocab = tok.get_vocab(with_added_tokens=True) if self.kind == "tokenizers" else tok.get_vocab()
        return vocab_sha256([t for t, _ in sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))])

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
        json.dumps(
            {"v": VOCAB_RULE, "vocab": spec.vocab_size, "lower": spec.lowercase, "minf": spec.min_frequency}
        ).encode()
    )
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _normaliser(spec: TokenizerSpec):
    from tokenizers import normalizers, pre_tokenizers

    norm = [normalizers.NFD(), normalizers.StripAccents()]
    if spec.lowercase:
        norm.insert(0, normalizers.Lowercase())
    return normalizers.Sequence(norm), pre_tokenizers.BertPreTokenizer()


def _merged(a: str, b: str) -> str:
    return a + b[len(CONTINUE):]


def build_vocab(texts: Iterable[str], spec: TokenizerSpec = TokenizerSpec()) -> list[str]:
    """The WordPiece vocabulary of `texts` in id order: the specials, every character seen (word-initial as itself,
    inside a word with the ## prefix), then sub-words made by merging the most frequent adjacent pair, pair counts
    weighted by word frequency, until `vocab_size` tokens (the characters are always kept, so a text with more
    distinct characters than that gets a larger vocabulary). A pair is merged only if it occurs at least
    `min_frequency` times. Ties go to the pair whose text sorts first, so the result depends on nothing but the
    text and the settings."""
    norm, pre = _normaliser(spec)
    words: Counter[str] = Counter()
    for t in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    # Words in sorted order: the counts below do not depend on it, but every loop over them then runs the same way.
    items = sorted(words.items())
    symbols = [[w[0], *(CONTINUE + c for c in w[1:])] for w, _ in items]
    freq = [n for _, n in items]
    vocab = list(SPECIALS)
    seen = set(vocab)
    for tok in sorted({t for syms in symbols for t in syms}):
        if tok not in seen:
            vocab.append(tok)
            seen.add(tok)
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, syms in enumerate(symbols):
        for pair in zip(syms, syms[1:], strict=False):
            pairs[pair] += freq[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < spec.vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -neg:
            continue  # a stale entry: the pair's count changed since it was pushed
        if -neg < spec.min_frequency:
            break
        new = _merged(*pair)
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            syms = symbols[i]
            for old in zip(syms, syms[1:], strict=False):
                pairs[old] -= freq[i]
                touched.add(old)
            out, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and (syms[j], syms[j + 1]) == pair:
                    out.append(new)
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            symbols[i] = out
            for p2 in zip(out, out[1:], strict=False):
                pairs[p2] += freq[i]
                where.setdefault(p2, set()).add(i)
                touched.add(p2)
        pairs.pop(pair, None)
        for p2 in sorted(touched - {pair}):
            n = pairs.get(p2, 0)
            if n > 0:
                heapq.heappush(heap, (-n, p2))
            else:
                pairs.pop(p2, None)
                where.pop(p2, None)
        if new not in seen:  # two different pairs can spell the same sub-word
            vocab.append(new)
            seen.add(new)
    return vocab


def vocab_sha256(vocab: Sequence[str]) -> str:
    """A name for a vocabulary: SHA-256 of its tokens in id order, one per line."""
    return hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()


def _wordpiece(vocab: Sequence[str], spec: TokenizerSpec):
    """A `tokenizers` WordPiece tokenizer over `vocab` (BERT pre-tokenisation, [CLS] a [SEP] b [SEP])."""
    from tokenizers import Tokenizer, decoders, models, processors

    tok = Tokenizer(
        models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", continuing_subword_prefix=CONTINUE)
    )
    tok.normalizer, tok.pre_tokenizer = _normaliser(spec)
    tok.decoder = decoders.WordPiece(prefix=CONTINUE)
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return tok


def train_tokenizer(
    texts: Sequence[str],
    spec: TokenizerSpec = TokenizerSpec(),
    cache: str | os.PathLike | None = None,
) -> TextEncoder:
    """Build (or load from the cache) a WordPiece tokenizer on `texts`; the vocabulary is `build_vocab`'s. The cache
    key hashes texts and spec."""
    from tokenizers import Tokenizer

    if not texts:
        raise DataError("cannot train a tokenizer on no text")
    fp = _fingerprint(texts, spec)
    path = cache_dir(cache) / "tokenizers" / fp / "tokenizer.json"
    if path.is_file():
        return TextEncoder(Tokenizer.from_file(str(path)), kind="tokenizers", fingerprint=fp)
    tok = _wordpiece(build_vocab(texts, spec), spec)
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

        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception on a malformed file
            raise DataError(f"tokenizer {p} is not a readable tokenizer.json: {err}") from None
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
