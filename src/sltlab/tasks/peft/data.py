"""GLUE text tokenised once per split and tokenizer (cached on disk), batched through a DataLoader."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sltlab.runs.device import (
    to_device,
)
from sltlab.tasks.glue import GlueSplit, get_task
from sltlab.tasks.pretrained import Pretrained


@dataclass
class Tokenized:
    """A split tokenised once: every row's token ids (and token types) unpadded, back to back, and its labels.

    Kept ragged so a batch is padded to its own longest row, exactly as the tokenizer's padding="longest" on that
    batch would: the same tensors as tokenising per batch, without tokenising every batch of every epoch."""

    ids: torch.Tensor  # int64, all rows concatenated
    types: torch.Tensor | None  # int64 token type ids, same layout (None when the model takes none)
    offsets: torch.Tensor  # int64 [n + 1]: row i is ids[offsets[i]:offsets[i + 1]]
    labels: torch.Tensor | None
    pad_id: int
    pad_type: int = 0
    left: bool = False  # the tokenizer pads on the left

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        starts = self.offsets[idx].tolist()
        ends = self.offsets[[i + 1 for i in idx]].tolist()
        width = max(e - b for b, e in zip(starts, ends, strict=True))
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.int64, device="cpu")
        att = torch.zeros((len(idx), width), dtype=torch.int64, device="cpu")
        types = None if self.types is None else torch.full_like(ids, self.pad_type)
        for r, (b, e) in enumerate(zip(starts, ends, strict=True)):
            cols = slice(width - (e - b), width) if self.left else slice(0, e - b)
            ids[r, cols] = self.ids[b:e]
            att[r, cols] = 1
            if types is not None and self.types is not None:
                types[r, cols] = self.types[b:e]
        out = {"input_ids": ids, "attention_mask": att}
        if types is not None:
            out["token_type_ids"] = types
        if self.labels is not None:
            out["labels"] = self.labels[idx]
        return out


def token_cache_dir() -> Path:
    """Where tokenised splits are kept: $SLTLAB_CACHE/tokens, else ~/.cache/sltlab/tokens. (Not inside the model
    folder: the bundled model lives in site-packages.)"""
    root = os.environ.get("SLTLAB_CACHE") or str(Path.home() / ".cache" / "sltlab")
    return Path(root).expanduser() / "tokens"


def _tokenizer_hash(pre: Pretrained) -> str:
    """A hash of the tokenizer's files (what decides the ids), computed once per loaded model."""
    import hashlib

    cached = getattr(pre, "_tokenizer_sha", None)
    if cached:
        return str(cached)
    h = hashlib.sha256(pre.model_type.encode())
    for name in sorted(("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                        "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")):
        f = pre.path / name
        if f.is_file():
            h.update(name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    digest = h.hexdigest()
    pre._tokenizer_sha = digest  # type: ignore[attr-defined]
    return digest


def tokenize_split(pre: Pretrained, split: GlueSplit, max_len: int, cache: bool = True) -> Tokenized:
    """Tokenise every row of `split` once (pairs truncated longest-first to max_len), reading / writing a cache
    file keyed by a hash of the tokenizer's files, the texts, the labels and max_len (safetensors, no pickle)."""
    import hashlib

    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    regression = get_task(split.task).is_regression
    h = hashlib.sha256(f"{_tokenizer_hash(pre)}|{max_len}|{split.task}|{regression}".encode())
    for texts in (split.texts_a, split.texts_b or []):
        h.update(len(texts).to_bytes(8, "little"))
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    if split.labels is not None:
        h.update(np.ascontiguousarray(split.labels).tobytes())
    path = token_cache_dir() / f"{h.hexdigest()[:32]}.safetensors"
    tok = pre.tokenizer
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    pad_type = int(getattr(tok, "pad_token_type_id", 0) or 0)
    left = getattr(tok, "padding_side", "right") == "left"
    with_types = pre.model_type != "distilbert"
    lab_dtype = torch.float32 if regression else torch.long
    labels = None if split.labels is None else torch.as_tensor(split.labels, dtype=lab_dtype)
    if cache and path.is_file():
        try:
            t = load_file(str(path))
            return Tokenized(t["ids"], t.get("types"), t["offsets"], labels, pad_id, pad_type, left)
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged cache file is rebuilt below
    enc = tok(list(split.texts_a), None if split.texts_b is None else list(split.texts_b), truncation=True,
              max_length=max_len, padding=False)
    rows = enc["input_ids"]
    lengths = torch.tensor([0] + [len(r) for r in rows], dtype=torch.int64, device="cpu")
    offsets = torch.cumsum(lengths, 0)
    ids = torch.tensor([i for r in rows for i in r], dtype=torch.int64, device="cpu")
    types = None
    if with_types and "token_type_ids" in enc:
        types = torch.tensor([i for r in enc["token_type_ids"] for i in r], dtype=torch.int64, device="cpu")
    out = Tokenized(ids, types, offsets, labels, pad_id, pad_type, left)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            save_file({"ids": ids, "offsets": offsets, **({"types": types} if types is not None else {})},
                      str(tmp))
            tmp.replace(path)
        except OSError:
            pass  # a cache that cannot be written only costs the next run its tokenising
    return out


class _Rows(torch.utils.data.Dataset):
    """Row indices: the collate function of a Tokenized split builds the batch from them."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _SeededBatches(torch.utils.data.Sampler):
    """Index batches, reshuffled every pass by one seeded generator (so the order is a function of the seed)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.gen = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n = self.n
        order = torch.randperm(n, generator=self.gen, device="cpu").tolist() if self.shuffle else list(range(n))
        for i in range(0, n, self.batch_size):
            yield order[i : i + self.batch_size]


class Batches:
    """Mini-batches of a GlueSplit, tokenised once (`tokenize_split`) and served by a torch DataLoader (pinned
    memory and non-blocking copies when `device` is a GPU); reshuffled every pass with a seeded generator when
    shuffle is on."""

    def __init__(
        self,
        pre: Pretrained,
        split: GlueSplit,
        max_len: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | None = None,
    ):
        self.pre, self.split, self.max_len, self.batch_size = pre, split, max_len, batch_size
        self.shuffle = shuffle
        self.device = device or torch.device("cpu")
        self.data = tokenize_split(pre, split, max_len)
        self.sampler = _SeededBatches(len(self.data), batch_size, shuffle, seed)
        self.loader = torch.utils.data.DataLoader(
            _Rows(len(self.data)),
            batch_sampler=self.sampler,
            collate_fn=self.data.collate,
            pin_memory=self.device.type == "cuda",
            # its own generator: a DataLoader draws a base seed per pass, which must not come from (and so shift)
            # the global stream that dropout uses
            generator=torch.Generator().manual_seed(0),
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            yield {k: to_device(v, self.device) for k, v in batch.items()}


def split_holdout(split: GlueSplit, holdout: int | None, seed: int) -> tuple[GlueSplit, GlueSplit | None]:
    """(the rows left for training, the `holdout` rows held out), drawn with their own stream of `seed` before
    any subsample, so the held-out rows are the same for every method and seed and no run, Fisher run or lr
    choice trains on them. None / 0 = nothing held out."""
    if not holdout:
        return split, None
    if holdout >= len(split):
        from sltlab.errors import ConfigError

        raise ConfigError("holdout", f"{holdout} rows held out of a training split of {len(split)}",
                          f"fewer than {len(split)} rows, e.g. {max(1, len(split) // 10)}")
    pick = np.sort(np.random.default_rng([seed, 1]).choice(len(split), size=holdout, replace=False))
    return split.subset(np.setdiff1d(np.arange(len(split)), pick)), split.subset(pick)


def fixed_subsample(split: GlueSplit, limit: int | None, seed: int) -> GlueSplit:
    """A seeded subsample of `limit` rows (all rows, in file order, when limit is None or covers the
    split)."""
    if limit is None or limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return split.subset(idx)
