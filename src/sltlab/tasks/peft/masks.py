"""Which parameters a PEFT method trains: gradient masks over the pretrained model, and the mask methods' supermasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sltlab.analysis import fisher as fisher_mod
from sltlab.errors import ConfigError
from sltlab.tasks.peft.config import MASK_EXCLUDE, MASK_METHODS, MASK_TARGETS, METHODS
from sltlab.tickets.supermask import MaskCoverage, SupermaskConfig, apply_supermask, supermasks


def body_names(model: nn.Module) -> list[str]:
    """Parameters of the pretrained part (everything but the head), in module order; mask scores included."""
    return [n for n, _ in model.named_parameters() if fisher_mod.component_of(n)[1] != "head"]


def score_names(model: nn.Module) -> list[str]:
    """The supermask scores of a masked model (empty for the other methods)."""
    return [n for n, _ in model.named_parameters() if n.endswith(".scores")]


def attach_masks(model: nn.Module) -> MaskCoverage:
    """Put an edge-popup supermask on every Linear weight of the encoder's blocks (MASK_TARGETS minus
    MASK_EXCLUDE), keeping every weight (keep = 1), with scores |W|. Returns the coverage."""
    cov = apply_supermask(model, SupermaskConfig(keep=1.0, targets=MASK_TARGETS, exclude=MASK_EXCLUDE))
    with torch.no_grad():
        for name, sm in supermasks(model).items():
            sm.scores.copy_(model.get_submodule(name).parametrizations.weight.original.abs())
    return cov


def density_at(step: int, steps: int, density: float) -> float:
    """The kept fraction before training step `step` (0-based): cubic from 1 to `density` over the first half
    of the steps (Zhu & Gupta's gradual pruning schedule), then `density`."""
    ramp = max(1, round(0.5 * steps))
    left = max(0.0, 1.0 - step / ramp)
    return density + (1.0 - density) * left**3


def head_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if fisher_mod.component_of(n)[1] == "head"]


def layernorm_names(model: nn.Module) -> list[str]:
    return [n for n in body_names(model) if fisher_mod.is_layernorm_param(n)]


def trainable_masks(
    model: nn.Module,
    method: str,
    *,
    fraction: float | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Bool masks (shaped like the parameters) of the scalars each method trains; absent names stay frozen.

    full: everything. bitfit: every bias of the body + head. ln: every LayerNorm gain and bias + head. random:
    as many scalars as `ln` trains in the body, drawn uniformly from all body scalars with `seed` + head.
    ln-fisher: the top round(fraction * N_LN) LayerNorm scalars by `scores` (a Fisher dict covering the
    LayerNorm names) + head. mask: every supermask score (the model must carry them: `attach_masks`) + head;
    mask+ln: the same + every LayerNorm gain and bias. The head is always trained: a fresh head is needed for
    any new task.
    """
    params = dict(model.named_parameters())
    ones = {n: torch.ones_like(params[n], dtype=torch.bool) for n in head_names(model)}
    body = body_names(model)
    if method in MASK_METHODS:
        scored = score_names(model)
        if not scored:
            raise ConfigError("method", f"{method} needs a model with supermasks", "call attach_masks(model) first")
        chosen = scored + (layernorm_names(model) if method == "mask+ln" else [])
        return {**{n: torch.ones_like(params[n], dtype=torch.bool) for n in chosen}, **ones}
    if method == "full":
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    if method == "bitfit":
        chosen = [n for n in body if n.endswith("bias")]
        return {**{n: torch.ones_like(params[n], dtype=torch.bool) for n in chosen}, **ones}
    ln = layernorm_names(model)
    if not ln:
        raise ConfigError("model", "has no LayerNorm parameters", "a BERT-family model")
    if method == "ln":
        return {**{n: torch.ones_like(params[n], dtype=torch.bool) for n in ln}, **ones}
    if method == "random":
        k = sum(params[n].numel() for n in ln)
        sizes = [params[n].numel() for n in body]
        g = torch.Generator().manual_seed(int(seed))
        # drawn on the CPU from the seeded stream (the same subset on every device), then moved beside each tensor
        flat = torch.zeros(sum(sizes), dtype=torch.bool, device="cpu")
        flat[torch.randperm(flat.numel(), generator=g, device="cpu")[:k]] = True
        out: dict[str, torch.Tensor] = {}
        start = 0
        for n, size in zip(body, sizes, strict=True):
            m = flat[start : start + size]
            start += size
            if m.any():
                out[n] = m.reshape(params[n].shape).to(params[n].device, copy=True)
        return {**out, **ones}
    if method == "ln-fisher":
        if fraction is None or scores is None:
            raise ConfigError("fraction", "ln-fisher needs a fraction and Fisher scores", "a number in (0, 1]")
        missing = [n for n in ln if n not in scores]
        if missing:
            raise ConfigError("fisher", f"has no entry for {missing[0]!r}", "a Fisher dict of this model's LayerNorms")
        masks = fisher_mod.top_fraction_mask({n: scores[n] for n in ln}, fraction)
        return {**{n: m.to(params[n].device) for n, m in masks.items() if m.any()}, **ones}
    raise ConfigError("method", f"unknown method {method!r}", " | ".join(METHODS))


def count(masks: Mapping[str, torch.Tensor], names: list[str] | None = None) -> int:
    """Number of True scalars (over `names` only if given)."""
    return int(sum(int(m.sum()) for n, m in masks.items() if names is None or n in names))


class GradientMasks:
    """Freeze a model except the True scalars of `masks`: requires_grad per tensor, a gradient hook per
    partial one.

    `decay(lr, weight_decay)` is decoupled (AdamW-style) weight decay through the masks, skipping biases and
    LayerNorms as BERT does; use it with the optimiser's own weight_decay = 0. `remove()` drops the hooks.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        self.model = model
        self.masks = dict(masks)
        self._handles: list[Any] = []
        self._partial: dict[str, torch.Tensor] = {}
        named = dict(model.named_parameters())
        unknown = [n for n in masks if n not in named]
        if unknown:
            raise ConfigError("masks", f"no parameter named {unknown[0]!r}", "names from model.named_parameters()")
        for n, p in named.items():
            m = self.masks.get(n)
            if m is not None and tuple(m.shape) != tuple(p.shape):
                raise ConfigError("masks", f"mask for {n} has shape {tuple(m.shape)}, not {tuple(p.shape)}")
            p.requires_grad_(m is not None and bool(m.any()))
            if m is not None and p.requires_grad and not bool(m.all()):
                fm = m.to(device=p.device, dtype=p.dtype)
                self._partial[n] = fm
                self._handles.append(p.register_hook(lambda g, fm=fm: g * fm))

    @torch.no_grad()
    def decay(self, lr: float, weight_decay: float) -> None:
        if weight_decay <= 0:
            return
        for n, p in self.model.named_parameters():
            if not p.requires_grad or n.endswith("bias") or n.endswith(".scores") or fisher_mod.is_layernorm_param(n):
                continue  # mask scores rank weights: decaying them would only rescale the ranking
            m = self._partial.get(n)
            if m is None:
                p.mul_(1.0 - lr * weight_decay)
            else:  # frozen scalars: factor exactly 1.0, so bit-identical
                p.mul_(1.0 - lr * weight_decay * m)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
