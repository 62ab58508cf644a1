"""Iterative magnitude pruning (IMP) with rewinding: the weak-ticket reference for the strong tickets.

Frankle & Carbin (2019), with rewinding (Frankle et al. 2020): train the dense network, remove the smallest-
magnitude `fraction` of the weights that are still alive (per layer, or with one global threshold), set the
surviving weights back to their values at step `rewind_step` of the first training run (0: the original
initialisation, the classic lottery ticket), train again, and repeat for `rounds` rounds. After r rounds the
sparsity is 1 - (1 - fraction)^r: every round's kept count is computed from that formula directly (round(n *
(1 - fraction)^r)), so rounding errors never accumulate.

Implementation choice: the pruning mask is a `torch.nn.utils.parametrize` parametrization (`PruneMask`, W_eff
= W * mask with the mask a bool buffer), the same mechanism as the supermasks. The product makes the gradient
of every pruned weight exactly zero, so pruned weights stay pruned whatever the optimiser does with them, the
model code does not change, and `bake_prune_masks` turns the result into a plain (sparse-valued) model whose
state dict loads into the unmasked architecture (that is how IMP tickets are checkpointed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sltlab.errors import ConfigError
from sltlab.tickets.supermask import (
    maskable_groups,
    register_weight_mask,
    remove_weight_parametrizations,
    weight_parametrizations,
)


@dataclass(frozen=True)
class ImpConfig:
    """rounds: pruning rounds after the first dense run (so rounds + 1 trainings); fraction: share of the
    *remaining* weights pruned per round; scope: 'layer' (each layer loses the same share) or 'global' (one
    magnitude threshold over all pruned layers); rewind_step: the training step whose weights survivors are
    reset to (0: init);
    targets / exclude: fnmatch patterns over module names of the Linear / Embedding layers that are pruned."""

    rounds: int = 3
    fraction: float = 0.2
    scope: Literal["layer", "global"] = "layer"
    rewind_step: int = 0
    targets: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.rounds < 0:
            raise ConfigError("imp.rounds", f"{self.rounds} must be >= 0", "an integer >= 0")
        if not (0.0 < self.fraction < 1.0):
            raise ConfigError(
                "imp.fraction", f"{self.fraction} is outside (0, 1)", "a number in (0, 1), e.g. 0.2"
            )
        if self.scope not in ("layer", "global"):
            raise ConfigError("imp.scope", f"unknown scope {self.scope!r}", "layer | global")
        if self.rewind_step < 0:
            raise ConfigError(
                "imp.rewind_step", f"{self.rewind_step} must be >= 0", "an integer >= 0 (0: init)"
            )

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        self.validate()

    def sparsity_after(self, r: int) -> float:
        """The sparsity the schedule aims at after r pruning rounds: 1 - (1 - fraction)^r."""
        return 1.0 - (1.0 - self.fraction) ** r


class PruneMask(nn.Module):
    """The parametrization W -> W * mask; `mask` is a bool buffer (True = kept), saved in the state dict."""

    def __init__(self, shape: torch.Size, device: torch.device | str | None = None):
        super().__init__()
        # Built on the weight's device: a CPU mask on a GPU model would be copied over at every forward.
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def attach_prune_masks(model: nn.Module, cfg: ImpConfig) -> dict[str, PruneMask]:
    """Give every matching layer (`maskable_groups`: Linear, Embedding, Conv, transformers' Conv1D) an all-ones
    PruneMask, one per tied weight. Returns module name (the owner's) -> mask module."""
    groups = maskable_groups(model, cfg.targets, cfg.exclude)
    if not groups:
        raise ConfigError(
            "imp.targets",
            f"no maskable layer (Linear, Embedding, Conv) matches {list(cfg.targets)}",
            "fnmatch patterns over module names, e.g. '*' or 'stack.*'",
        )
    out = {}
    for users in groups:
        name, module = users[0]
        pm = PruneMask(module.weight.shape, module.weight.device)
        register_weight_mask(users, pm)  # a tied weight: one mask, shared by every user
        out[name] = pm
    return out


def prune_masks(model: nn.Module) -> dict[str, PruneMask]:
    """Module name -> its PruneMask, in module order."""
    return weight_parametrizations(model, PruneMask)


def _raw_weight(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_submodule(name).parametrizations.weight.original


def sparsity(model: nn.Module) -> float:
    """Pruned fraction over all pruned-able weights (those with a PruneMask)."""
    masks = [pm.mask for pm in prune_masks(model).values()]
    total = sum(m.numel() for m in masks)
    kept = sum(int(m.sum()) for m in masks)
    return 1.0 - kept / max(total, 1)


@torch.no_grad()
def prune_round(model: nn.Module, cfg: ImpConfig, round_index: int) -> float:
    """Prune by magnitude so that after this round (round_index >= 1) the sparsity is
    cfg.sparsity_after(round_index).

    Per layer: each layer keeps its round(n * (1 - fraction)^r) largest-magnitude surviving weights. Global:
    one threshold over all layers keeps round(N * (1 - fraction)^r) weights in total. Already-pruned weights
    never come back (they rank below every survivor). Returns the new overall sparsity.
    """
    if round_index < 1:
        raise ConfigError("imp.rounds", f"pruning round {round_index} must be >= 1")
    keep_frac = (1.0 - cfg.fraction) ** round_index
    pms = prune_masks(model)
    if not pms:
        raise ConfigError("imp", "the model has no prune masks; call attach_prune_masks first")
    # Survivors rank by |w|; pruned entries get -1 so they are never re-selected.
    ranks = {
        name: torch.where(
            pm.mask, _raw_weight(model, name).abs().float(), torch.full_like(pm.mask, -1.0, dtype=torch.float32)
        )
        for name, pm in pms.items()
    }
    if cfg.scope == "layer":
        for name, pm in pms.items():
            r = ranks[name].reshape(-1)
            k = max(1, round(r.numel() * keep_frac))
            idx = torch.topk(r, k, sorted=False).indices
            new = torch.zeros(r.numel(), dtype=torch.bool, device=r.device)
            new[idx] = True
            pm.mask.copy_(new.view_as(pm.mask))
    else:
        flat = torch.cat([r.reshape(-1) for r in ranks.values()])
        k = max(1, round(flat.numel() * keep_frac))
        idx = torch.topk(flat, k, sorted=False).indices
        new = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        new[idx] = True
        offset = 0
        for pm in pms.values():
            n = pm.mask.numel()
            pm.mask.copy_(new[offset : offset + n].view_as(pm.mask))
            offset += n
    return sparsity(model)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter (the raw, unmasked weights included): the state to rewind to."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@torch.no_grad()
def rewind(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Reset every parameter to `state` (masks are buffers and stay as they are)."""
    params = dict(model.named_parameters())
    missing = set(params) - set(state)
    if missing:
        raise ConfigError("imp.rewind_step", f"the rewind snapshot lacks {sorted(missing)[:3]}")
    for name, p in params.items():
        p.copy_(state[name])


def rewind_callback(
    cfg: ImpConfig, store: dict[str, dict[str, torch.Tensor]]
) -> Callable[[int, dict, nn.Module], None]:
    """A run_search callback that records the weights after step cfg.rewind_step into store['state'].

    (Step 0, the initialisation, is snapshotted by the caller before training starts.)"""

    def cb(step: int, rec: dict, model: nn.Module) -> None:
        if step == cfg.rewind_step:
            store["state"] = snapshot(model)

    return cb


@torch.no_grad()
def bake_prune_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Write W * mask into each pruned weight as a plain tensor and drop the parametrizations, in place.
    Returns the masks (module name -> bool tensor) so they can be stored beside the weights."""
    masks = {name: pm.mask.clone() for name, pm in prune_masks(model).items()}
    remove_weight_parametrizations(model, freeze=False)
    return masks
