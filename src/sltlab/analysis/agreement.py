"""Functional consistency: do two tickets cut from the same random weights compute the same thing?

Mask overlap (Jaccard, sltlab.analysis.masks) says whether two tickets keep the same weights; two tickets can keep
different weights and still compute nearly the same function (many weights are interchangeable), or share most
weights and differ where it matters. These measures compare what the tickets *do* on the same inputs:

- `output_disagreement`: ||f_a(x) - f_b(x)||_F over the mean of ||f_a(x)||_F and ||f_b(x)||_F (0 = identical
  outputs; 2 = opposite);
- `prediction_disagreement`: the share of inputs whose predicted class differs (classifiers);
- `attention_disagreement`: the Jensen-Shannon divergence (bits) between the two tickets' attention distributions
  for the same query, head and layer, averaged over valid rows, heads and layers (0 = identical attention maps;
  1 = disjoint).
All are symmetric in the two tickets and pure functions of the outputs / maps given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sltlab.analysis.attention import (
    _pad_of,
    attention_maps,
    iter_batches,
    jsd,
    key_validity,
    row_validity,
)


def output_disagreement(ya: torch.Tensor, yb: torch.Tensor) -> float:
    """Relative Frobenius distance between two outputs of the same shape."""
    if ya.shape != yb.shape:
        raise ValueError(f"outputs differ in shape: {tuple(ya.shape)} vs {tuple(yb.shape)}")
    scale = 0.5 * (ya.double().norm() + yb.double().norm())
    if scale == 0:
        return 0.0
    return float((ya.double() - yb.double()).norm() / scale)


def prediction_disagreement(la: torch.Tensor, lb: torch.Tensor) -> float:
    """Share of rows whose argmax over the last dimension differs."""
    if la.shape != lb.shape:
        raise ValueError(f"logits differ in shape: {tuple(la.shape)} vs {tuple(lb.shape)}")
    return float((la.argmax(-1) != lb.argmax(-1)).double().mean())


def map_disagreement(a: torch.Tensor, b: torch.Tensor, pad_mask: torch.Tensor | None,
                     causal: bool) -> tuple[float, int]:
    """Summed JSD (bits) over valid (batch, head, query) rows of two attention maps (B, H, T, T), and the count."""
    keys = key_validity(pad_mask, tuple(a.shape), causal)
    rows = row_validity(pad_mask, keys)  # (B, 1|H, T)
    pa = torch.where(keys, a.double(), torch.zeros((), dtype=torch.float64))
    pb = torch.where(keys, b.double(), torch.zeros((), dtype=torch.float64))
    d = jsd(pa, pb, dim=-1)  # (B, H, T)
    valid = rows.expand_as(d)
    return float(d[valid].sum()), int(valid.sum())


@torch.no_grad()
def attention_disagreement(model_a: nn.Module, model_b: nn.Module, inputs: Mapping[str, torch.Tensor],
                           batch_size: int = 64) -> float:
    """Mean JSD (bits) between two models' attention maps on the same inputs, over valid rows, heads and layers
    (layers weighted equally)."""
    model_a.eval()
    model_b.eval()
    sums: list[float] = []
    counts: list[int] = []
    for batch in iter_batches(inputs, batch_size):
        ma, causal = attention_maps(model_a, batch)
        mb, _ = attention_maps(model_b, batch)
        if len(ma) != len(mb):
            raise ValueError(f"the models have {len(ma)} and {len(mb)} attention layers")
        pad = _pad_of(batch)
        if not sums:
            sums, counts = [0.0] * len(ma), [0] * len(ma)
        for i, (a, b) in enumerate(zip(ma, mb, strict=True)):
            s, c = map_disagreement(a, b, pad, causal)
            sums[i] += s
            counts[i] += c
    per_layer = [s / c for s, c in zip(sums, counts, strict=True) if c]
    return float(sum(per_layer) / len(per_layer)) if per_layer else float("nan")


def mean_pairwise(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]
    return float(sum(vals) / len(vals)) if vals else float("nan")
