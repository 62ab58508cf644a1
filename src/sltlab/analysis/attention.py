"""How focused are a model's attention heads, and how different from each other?

The hypothesis under test says LayerNorm gives "more consistent but less diverse" tickets. Diversity has two
readings at the level of attention, and this module measures both, per layer and per head:

- **Normalised attention entropy** of each query row, H(row) / log(n), where n is the number of keys the row
  may attend to (padding and, for causal models, future positions excluded). 1 means uniform attention (the
  head averages), 0 means one-hot attention (the head points at one token). Rows of padding queries and rows
  with a single allowed key (where entropy is 0 by necessity) are left out.
- **Head diversity**: the Jensen-Shannon divergence between two heads' distributions over the same query row,
  in bits (so it lies in [0, 1]), averaged over rows and over all head pairs of a layer. 0 means every head
  attends identically; redundant heads lower it.

`attention_stats(model, inputs)` runs any sltlab model (bare attention, stack, encoder classifier, causal LM)
over an input set in batches and returns these numbers; `compare_models` does it for a ticket, its random
source and its dense/target counterpart on the same inputs, which is the comparison the report draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sltlab.errors import ConfigError
from sltlab.nn.transformer import CausalLM, EncoderClassifier, NormedAttention, Stack

LN2 = math.log(2.0)


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    """p * log(p) with 0 log 0 = 0 (natural log)."""
    return torch.where(p > 0, p * torch.log(p.clamp_min(1e-38)), torch.zeros_like(p))


def key_validity(pad_mask: torch.Tensor | None, shape: tuple[int, ...], causal: bool) -> torch.Tensor:
    """Bool (B, 1, T, T): which keys each query row may attend to (real tokens, and not the future if
    causal)."""
    B, _, T, _ = shape
    valid = torch.ones(B, 1, T, T, dtype=torch.bool)
    if pad_mask is not None:
        valid = valid & pad_mask.bool()[:, None, None, :]
    if causal:
        valid = valid & torch.ones(T, T, dtype=torch.bool).tril()
    return valid


def row_validity(pad_mask: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
    """Bool (B, 1, T): rows that count: a real query token with at least two keys it may attend to."""
    rows = keys.sum(-1) >= 2
    if pad_mask is not None:
        rows = rows & pad_mask.bool()[:, None, :]
    return rows


def row_entropy(attn: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of every row, (B, H, T): H(row) / log(number of allowed keys); NaN where < 2
    keys."""
    n = keys.sum(-1).to(attn.dtype)  # (B, 1, T)
    h = -_xlogx(attn * keys).sum(-1)
    return torch.where(n >= 2, h / torch.log(n.clamp_min(2.0)), torch.full_like(h, float("nan")))


def jsd(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between distributions along `dim` (0 for equal, 1 for disjoint)."""
    m = 0.5 * (p + q)
    kl = _xlogx(p) + _xlogx(q) - 2 * _xlogx(m)
    return (0.5 * kl.sum(dim) / LN2).clamp_min(0.0)


def pairwise_head_jsd(attn: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(H, H) mean JSD between heads over the valid rows. attn: (B, H, T, T); rows: (B, 1, T) bool."""
    H = attn.shape[1]
    out = torch.zeros(H, H, dtype=torch.float64)
    n_rows = rows.sum().item()
    if n_rows == 0:
        return torch.full((H, H), float("nan"), dtype=torch.float64)
    r = rows[:, 0]  # (B, T)
    for i in range(H):
        for j in range(i + 1, H):
            d = jsd(attn[:, i], attn[:, j])  # (B, T)
            out[i, j] = out[j, i] = d[r].double().mean()
    return out


@dataclass
class LayerAccumulator:
    """Running sums for one layer, so statistics over many batches equal those over the whole input set."""

    n_heads: int
    entropy_sum: torch.Tensor = field(init=False)
    rows: int = 0
    jsd_sum: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.entropy_sum = torch.zeros(self.n_heads, dtype=torch.float64)
        self.jsd_sum = torch.zeros(self.n_heads, self.n_heads, dtype=torch.float64)

    def add(self, attn: torch.Tensor, pad_mask: torch.Tensor | None, causal: bool) -> None:
        attn = attn.detach().float()
        keys = key_validity(pad_mask, tuple(attn.shape), causal)
        rows = row_validity(pad_mask, keys)
        n = int(rows.sum())
        if n == 0:
            return
        ent = row_entropy(attn, keys)  # (B, H, T)
        sel = rows.expand_as(ent)
        self.entropy_sum += torch.stack([ent[:, h][sel[:, h]].double().sum() for h in range(self.n_heads)])
        if self.n_heads > 1:
            self.jsd_sum += pairwise_head_jsd(attn, rows) * n
        self.rows += n

    def result(self) -> dict[str, Any]:
        if self.rows == 0:
            nan = float("nan")
            return {
                "entropy_per_head": [nan] * self.n_heads,
                "entropy": nan,
                "diversity": nan,
                "head_jsd": [],
                "rows": 0,
            }
        ent = (self.entropy_sum / self.rows).tolist()
        pair = self.jsd_sum / self.rows
        H = self.n_heads
        div = float(pair[torch.triu(torch.ones(H, H, dtype=torch.bool), 1)].mean()) if H > 1 else float("nan")
        return {
            "entropy_per_head": ent,
            "entropy": float(sum(ent) / H),
            "diversity": div,
            "head_jsd": pair.tolist(),
            "rows": self.rows,
        }


def entropy_of(attn: torch.Tensor, pad_mask: torch.Tensor | None = None, causal: bool = False) -> list[float]:
    """Mean normalised entropy per head of one batch of attention maps (B, H, T, T)."""
    acc = LayerAccumulator(attn.shape[1])
    acc.add(attn, pad_mask, causal)
    return acc.result()["entropy_per_head"]


def diversity_of(attn: torch.Tensor, pad_mask: torch.Tensor | None = None, causal: bool = False) -> float:
    """Mean pairwise head JSD (bits) of one batch of attention maps (B, H, T, T); NaN for a single head."""
    acc = LayerAccumulator(attn.shape[1])
    acc.add(attn, pad_mask, causal)
    return acc.result()["diversity"]


# -- running models ------------------------------------------------------------------------------------------


def attention_maps(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
    """Per-layer attention maps (B, H, T, T) of one batch, and whether the model is causal.

    batch: {"input_ids", "attention_mask"} for token models, {"x", optional "pad_mask"} for a bare attention
    (arch mha) or a stack over continuous inputs.
    """
    with torch.no_grad():
        if isinstance(model, EncoderClassifier):
            _, attns = model(batch["input_ids"], batch.get("attention_mask"), need_weights=True)
            return list(attns), False
        if isinstance(model, CausalLM):
            _, attns = model(batch["input_ids"], need_weights=True)
            return list(attns), True
        if isinstance(model, Stack):
            _, attns, _ = model(batch["x"], batch.get("pad_mask"), need_weights=True)
            return list(attns), False
        if isinstance(model, NormedAttention):
            _, a = model(batch["x"], batch.get("pad_mask"), need_weights=True)
            return [a], False
    raise ConfigError(
        "model",
        f"cannot read attention maps from a {type(model).__name__}",
        "an sltlab NormedAttention, Stack, EncoderClassifier or CausalLM",
    )


def _pad_of(batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    if "attention_mask" in batch and batch["attention_mask"] is not None:
        return batch["attention_mask"].bool()
    pm = batch.get("pad_mask")
    return pm.bool() if pm is not None else None


def iter_batches(inputs: Mapping[str, torch.Tensor], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    n = next(iter(inputs.values())).shape[0]
    for i in range(0, n, batch_size):
        yield {k: v[i : i + batch_size] for k, v in inputs.items() if v is not None}


def attention_stats(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "attention",
) -> dict[str, Any]:
    """Entropy per head and layer, and head diversity per layer, over the whole input set.

    Returns {"layers": [{"layer", "entropy_per_head", "entropy", "diversity", "head_jsd", "rows"}, ...],
    "entropy": mean over layers, "diversity": mean over layers}.
    """
    if batch_size < 1:
        raise ConfigError("batch_size", f"{batch_size} must be at least 1", "an integer >= 1")
    was_training = model.training
    model.eval()
    accs: list[LayerAccumulator] = []
    n = next(iter(inputs.values())).shape[0]
    try:
        for batch in tqdm(
            iter_batches(inputs, batch_size),
            total=math.ceil(n / batch_size),
            desc=desc,
            disable=not progress,
            leave=False,
        ):
            maps, causal = attention_maps(model, batch)
            if not accs:
                accs = [LayerAccumulator(int(a.shape[1])) for a in maps]
            pad = _pad_of(batch)
            for acc, a in zip(accs, maps, strict=True):
                acc.add(a, pad, causal)
    finally:
        model.train(was_training)
    layers = [{"layer": i, **acc.result()} for i, acc in enumerate(accs)]
    return {
        "layers": layers,
        "entropy": _nanmean([la["entropy"] for la in layers]),
        "diversity": _nanmean([la["diversity"] for la in layers]),
    }


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def compare_models(
    models: Mapping[str, nn.Module],
    inputs: Mapping[str, torch.Tensor],
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """attention_stats for several models (e.g. ticket, random source, dense/target) on the same inputs."""
    return {
        label: attention_stats(m, inputs, batch_size, progress, desc=f"attention {label}")
        for label, m in models.items()
    }


def synthetic_inputs(
    arch: str,
    n: int,
    seq_len: int,
    d_model: int = 0,
    vocab_size: int = 0,
    seed: int = 0,
    min_len: int | None = None,
) -> dict[str, torch.Tensor]:
    """A seeded input set for a model without a dataset at hand.

    mha / stack: Gaussian vectors (the approximation study's input distribution), no padding. Token models:
    uniform random token ids (never 0 = [PAD]) with random lengths in [min_len, seq_len] and zero padding
    after, so the padding mask is exercised.
    """
    if n < 1 or seq_len < 2:
        raise ConfigError("inputs", f"n={n}, seq_len={seq_len}", "n >= 1 and seq_len >= 2")
    g = torch.Generator().manual_seed(seed)
    if arch in ("mha", "stack"):
        if d_model < 1:
            raise ConfigError("inputs.d_model", "continuous inputs need the model width", "an integer >= 1")
        return {"x": torch.randn(n, seq_len, d_model, generator=g)}
    if vocab_size < 2:
        raise ConfigError("inputs.vocab_size", f"{vocab_size}", "the model's vocabulary size (>= 2)")
    lo = max(2, min(min_len or seq_len // 2, seq_len))
    lengths = torch.randint(lo, seq_len + 1, (n,), generator=g)
    ids = torch.randint(1, vocab_size, (n, seq_len), generator=g)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    if arch == "causal-lm":
        return {"input_ids": ids}
    return {"input_ids": ids * mask, "attention_mask": mask}
