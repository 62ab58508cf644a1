"""Byte-level text for language modelling: corpora, train/validation split, batches and bits per byte.

Bytes, not tokens: the vocabulary is the 256 byte values, so the loss per position is directly a cost per
byte and models with different tokenisers could not game the score. Bits per byte = mean cross-entropy (nats)
/ ln 2.

Corpora (found under `sltlab.paths.data_dir()`):
    tinyshakespeare  tinyshakespeare/input.txt; the first 90% trains, the last 10% validates (the usual split)
    wikitext-2       wikitext-2/train.txt and valid.txt (the official split, raw bytes of the tokenised files)
    any file path    its first (1 - val_fraction) trains, the rest validates
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sltlab.errors import ConfigError, DataError
from sltlab.paths import data_dir

VOCAB = 256
CORPORA: dict[str, tuple[str, ...]] = {
    "tinyshakespeare": ("tinyshakespeare/input.txt",),
    "wikitext-2": ("wikitext-2/train.txt", "wikitext-2/valid.txt"),
}


@dataclass(frozen=True)
class ByteCorpus:
    """Train and validation bytes as uint8 tensors, and where they came from."""

    name: str
    train: torch.Tensor
    val: torch.Tensor

    @property
    def sizes(self) -> dict[str, int]:
        return {"train_bytes": int(self.train.numel()), "val_bytes": int(self.val.numel())}


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


def load_corpus(dataset: str, data_root: str | Path | None = None, val_fraction: float = 0.1) -> ByteCorpus:
    """`dataset` is a corpus name (tinyshakespeare, wikitext-2) or the path of any text file."""
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
        if len(paths) == 2:
            corpus = ByteCorpus(dataset, _bytes_tensor(_read(paths[0])), _bytes_tensor(_read(paths[1])))
        else:
            corpus = split_bytes(_read(paths[0]), val_fraction, dataset)
    else:
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
        corpus = split_bytes(_read(p), val_fraction, p.name)
    return corpus


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
) -> float:
    """Validation bits per byte over non-overlapping windows of seq_len predictions from the start of `data`
    (each window's first byte is predicted from that byte alone; the same rule for every method compared).
    max_bytes caps how many bytes are scored, for quick runs."""
    n_pred = data.numel() - 1
    if max_bytes is not None:
        n_pred = min(n_pred, max_bytes)
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
            count += win[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count / math.log(2)
