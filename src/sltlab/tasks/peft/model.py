"""The pretrained encoder (loaded once per process), a fresh copy with a seeded head, losses and dev scores."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sltlab.analysis import fisher as fisher_mod
from sltlab.runs.store import Store
from sltlab.tasks.metrics import compute_metrics
from sltlab.tasks.peft.data import Batches
from sltlab.tasks.pretrained import Pretrained, load_pretrained, resolve_model_path, wrap_encoder


def per_sample_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Negative log-likelihood per example: cross-entropy, or half the squared error for regression."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    y = batch["labels"]
    if out.shape[-1] == 1:
        return 0.5 * (out.squeeze(-1) - y.float()) ** 2
    return F.cross_entropy(out, y, reduction="none")


def mean_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return per_sample_loss(model, batch).mean()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches) -> dict[str, float]:
    """Official metric(s) of the task on `batches` (in points)."""
    model.eval()
    preds, labels = [], []
    for batch in batches:
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        preds.append(out.squeeze(-1) if out.shape[-1] == 1 else out.argmax(-1))
        labels.append(batch["labels"])
    return compute_metrics(batches.split.task, torch.cat(preds).cpu().numpy(), torch.cat(labels).cpu().numpy())


_ENCODERS: dict[str, Pretrained] = {}


def pristine(model: str | None) -> Pretrained:
    """The loaded pretrained model (head for 2 classes, seed 0), cached per process; copy before changing
    it."""
    path = resolve_model_path(None if model in (None, "", "default") else model)
    key = str(path.resolve())
    if key not in _ENCODERS:
        _ENCODERS[key] = load_pretrained(path, 2, 0)
    return _ENCODERS[key]


def fresh_model(pre: Pretrained, n_outputs: int, seed: int, pooling: str) -> nn.Module:
    """A copy of the pretrained encoder with a new head drawn from `seed`."""
    enc = copy.deepcopy(pre.model.encoder)
    return wrap_encoder(enc, pre.model.head.in_features, n_outputs, seed, pooling=pooling)


def _table_json(table: Mapping[fisher_mod.ComponentKey, float]) -> dict[str, float]:
    return {f"{'all' if layer is None else layer}:{c}": v for (layer, c), v in table.items()}


def table_from_json(d: Mapping[str, float]) -> dict[fisher_mod.ComponentKey, float]:
    """Inverse of the store encoding "layer:component" -> value."""
    out: dict[fisher_mod.ComponentKey, float] = {}
    for k, v in d.items():
        layer, comp = k.split(":", 1)
        out[(None if layer == "all" else int(layer), comp)] = float(v)
    return out


def _run_id(kind: str, config: dict[str, Any], seed: int | None = 0) -> str:
    from sltlab.runs.store import make_run_id

    return make_run_id(kind, config, seed)


def _finished(store: Store, kind: str, config: dict[str, Any], seed: int | None = 0) -> bool:
    return store.is_finished(_run_id(kind, config, seed))
