"""The one optimisation loop, for ticket search and dense training alike.

It optimises whatever in the model has requires_grad (scores, scales, norm affine, or every weight for dense
training) with Adam/AdamW/SGD under a constant or cosine schedule with optional warm-up, anneals the supermask
temperature when the model has annealed masks, and calls callbacks after every step (logging, evaluation, early stop).

Devices: the loop runs where the model lives (batches are the loss function's business) and never waits for the
device inside the step loop except every `log_every` steps, when the losses of the window are fetched in one go,
logged and checked for divergence. `precision` bf16 / fp16 autocasts the loss function (forward, and so backward);
the parameters, the optimiser state and the masks stay float32.

Divergence: at each of those checks a non-finite loss, or a loss above DIVERGE_FACTOR x max(initial loss,
`loss_scale`), raises DivergedError (step, reason, loss): the run is a result ("diverged"), not a failure.
Stalling: the returned history says how much moved (`mask_changed_fraction`, `param_changed_fraction`) and
`stalled` when nothing did (a learning rate too small to change any mask or weight).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from sltlab.errors import ConfigError, DivergedError
from sltlab.runs.device import autocast, grad_scaler, model_device
from sltlab.tickets.supermask import get_masks, set_temperature, supermasks

#: A loss above this multiple of its initial value (or of the caller's `loss_scale`, if larger) is divergence.
#: 1e3 leaves room for the noisy start of every study here (losses of order 0.1-10 that fall, never climb 10x in a
#: healthy run), while an exploded run is caught within `log_every` steps.
DIVERGE_FACTOR = 1e3

LossFn = Callable[[nn.Module, Any], torch.Tensor]
#: Options added after run ids were first published: left out of `SearchConfig.to_dict` at these values.
LATER_DEFAULTS: dict[str, Any] = {"warmdown_steps": 0, "temperature_schedule": "geometric"}


@dataclass(frozen=True)
class SearchConfig:
    """steps: optimiser steps; lr: peak learning rate; temperature_start/end: annealed masks only.

    warmdown_steps: the last this many steps scale the scheduled rate by (steps - step) / warmdown_steps, a linear
    fall to 0 (the parameter-golf recipe: constant, then a warm-down over the last iterations); 0 = none.
    temperature_schedule: geometric (T0 (T1/T0)^t, the default), linear (T0 + (T1 - T0) t) or constant (T0), with
    t = step / (steps - 1) from 0 to 1."""

    steps: int = 1000
    lr: float = 0.1
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup: int = 0
    grad_clip: float = 0.0
    temperature_start: float = 1.0
    temperature_end: float = 0.05
    warmdown_steps: int = 0
    temperature_schedule: Literal["geometric", "linear", "constant"] = "geometric"

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError("search.steps", f"{self.steps} must be at least 1", "an integer >= 1")
        if self.lr <= 0:
            raise ConfigError("search.lr", f"{self.lr} must be positive", "a number > 0")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ConfigError("search.optimizer", f"unknown optimizer {self.optimizer!r}", "adam | adamw | sgd")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError("search.schedule", f"unknown schedule {self.schedule!r}", "constant | cosine")
        if not (0 < self.temperature_end <= self.temperature_start):
            raise ConfigError("search.temperature_end", "needs 0 < temperature_end <= temperature_start")
        if isinstance(self.warmdown_steps, bool) or not isinstance(self.warmdown_steps, int) or not (
                0 <= self.warmdown_steps <= self.steps):
            raise ConfigError("search.warmdown_steps", f"{self.warmdown_steps!r} is not a step count within the "
                              f"{self.steps} steps", f"an integer in [0, {self.steps}] (0 = no warm-down)")
        if self.temperature_schedule not in ("geometric", "linear", "constant"):
            raise ConfigError("search.temperature_schedule", f"unknown schedule {self.temperature_schedule!r}",
                              "geometric | linear | constant")

    def __post_init__(self) -> None:
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        """The fields, less the later options at their defaults: what a study hashes into run ids, so that adding
        an option never moves an earlier run's id."""
        out = dataclasses.asdict(self)
        for name, default in LATER_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out

    def lr_at(self, step: int) -> float:
        return self._scheduled_lr(step) * self._warmdown(step)

    def _warmdown(self, step: int) -> float:
        left = self.steps - step
        if self.warmdown_steps and left < self.warmdown_steps:
            return max(left, 0) / self.warmdown_steps
        return 1.0

    def _scheduled_lr(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "constant":
            return self.lr
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def temperature_at(self, step: int) -> float:
        t = step / max(1, self.steps - 1)
        if self.temperature_schedule == "constant":
            return self.temperature_start
        if self.temperature_schedule == "linear":
            return self.temperature_start + (self.temperature_end - self.temperature_start) * t
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** t


def make_optimizer(params: list[nn.Parameter] | list[dict[str, Any]], cfg: SearchConfig) -> torch.optim.Optimizer:
    """params: tensors, or torch's parameter groups (dicts with "params" and any per-group option)."""
    if not params:
        raise ConfigError("search", "nothing to optimise: no parameter of the model requires a gradient")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class StopSearch(Exception):
    """Raise from a callback to end the search early (the history so far is kept)."""


Callback = Callable[[int, dict[str, float], nn.Module], None]


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ConfigError("data", "the batch iterable is empty")


class History(list[dict[str, float]]):
    """run_search's log (a list, one dict per logged step) plus what moved during the search.

    mask_changed_fraction: share of supermask entries that differ from the start (None without supermasks);
    param_changed_fraction: share of the trainable scalars other than scores that differ (None if there are
    none); stalled: nothing moved at all (both zero or absent), i.e. the learning rate was too small to matter."""

    mask_changed_fraction: float | None = None
    param_changed_fraction: float | None = None

    @property
    def stalled(self) -> bool:
        return not (self.mask_changed_fraction or self.param_changed_fraction)

    def movement(self) -> dict[str, Any]:
        """The three as metrics a study stores (None values left out)."""
        out: dict[str, Any] = {"stalled": self.stalled}
        for k in ("mask_changed_fraction", "param_changed_fraction"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


@torch.no_grad()
def _changed_fraction(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float | None:
    if not before:
        return None
    changed = torch.stack([(before[k] != after[k]).sum() for k in before]).sum()
    return float(changed) / sum(t.numel() for t in before.values())


def run_search(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    cfg: SearchConfig,
    callbacks: list[Callback] | None = None,
    progress: bool = True,
    desc: str = "search",
    log_every: int = 10,
    free_lr: float | None = None,
    precision: str = "fp32",
    loss_scale: float = 0.0,
) -> History:
    """Optimise the model's trainable tensors for cfg.steps steps over `batches` (cycled). Returns the history:
    one dict per `log_every` steps with step, loss, lr, temperature and seconds, and what moved (History).

    free_lr: peak learning rate of the trainable tensors that are not mask scores (norm gain/bias, scales, a
    trained head), on the same schedule; None = cfg.lr. Scores want steps of order 0.1 while a LayerNorm gain
    near 1 is wrecked by them, so the LN-integrated ticket needs the two apart.
    precision: fp32 | bf16 | fp16, the autocast of the loss function (sltlab.runs.device).
    loss_scale: the divergence bound is DIVERGE_FACTOR x max(initial loss, loss_scale); a loss whose healthy
    start can be far below its natural scale (a warm-started search) passes that scale.
    Callbacks run after every step; their record carries "loss" only on logged steps (fetching it every step
    would make the host wait for the device)."""
    if log_every < 1:
        raise ConfigError("log_every", f"{log_every} must be at least 1", "an integer >= 1")
    params = [p for p in model.parameters() if p.requires_grad]
    if free_lr is None:
        opt = make_optimizer(params, cfg)
    else:
        if free_lr <= 0:
            raise ConfigError("free_lr", f"{free_lr} must be positive", "a number > 0, or leave it unset")
        score_ids = {id(sm.scores) for sm in supermasks(model).values()}
        scores = [p for p in params if id(p) in score_ids]
        free = [p for p in params if id(p) not in score_ids]
        groups = [{"params": scores, "lr_ratio": 1.0}, {"params": free, "lr_ratio": free_lr / cfg.lr}]
        opt = make_optimizer([g for g in groups if g["params"]], cfg)
    device = model_device(model)
    scaler = grad_scaler(device, precision)
    annealed = any(sm.method == "annealed" for sm in supermasks(model).values())
    score_ids = {id(sm.scores) for sm in supermasks(model).values()}
    masks_before = {k: m.clone() for k, m in get_masks(model).items()}
    free_before = {n: p.detach().clone() for n, p in model.named_parameters()
                   if p.requires_grad and id(p) not in score_ids}
    history = History()
    it = _cycle(batches)
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    pending: list[torch.Tensor] = []  # this window's losses, still on the device
    initial: float | None = None
    try:
        for step in range(cfg.steps):
            lr = cfg.lr_at(step)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_ratio", 1.0)
            temp = cfg.temperature_at(step) if annealed else float("nan")
            if annealed:
                set_temperature(model, temp)
            with autocast(device, precision):
                loss = loss_fn(model, next(it))
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
            else:
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            pending.append(loss.detach())
            rec: dict[str, float] = {"step": step + 1, "lr": lr, "temperature": temp}
            if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
                losses = torch.stack(pending).float().tolist()  # the only wait for the device in the loop
                first_step = step + 2 - len(pending)
                pending.clear()
                if initial is None:
                    initial = losses[0]
                _check_divergence(losses, first_step, initial, loss_scale)
                rec["loss"] = losses[-1]
                rec["seconds"] = time.perf_counter() - t0
                history.append(
                    {"step": rec["step"], "loss": rec["loss"], "lr": lr, "temperature": temp, "seconds": rec["seconds"]}
                )
                bar.set_postfix(loss=f"{rec['loss']:.4g}")
            bar.update(1)
            for cb in callbacks or []:
                cb(step + 1, rec, model)
    except StopSearch:
        pass
    finally:
        bar.close()
        model.eval()
    history.mask_changed_fraction = _changed_fraction(masks_before, get_masks(model))
    history.param_changed_fraction = _changed_fraction(
        free_before, {n: p.detach() for n, p in model.named_parameters() if n in free_before})
    return history


def _check_divergence(losses: list[float], first_step: int, initial: float, loss_scale: float) -> None:
    bound = DIVERGE_FACTOR * max(initial, loss_scale)
    for i, v in enumerate(losses):
        if not math.isfinite(v):
            raise DivergedError(f"loss became {v}; lower the learning rate", step=first_step + i, loss=v)
        if bound > 0 and v > bound:
            raise DivergedError(
                f"loss {v:.4g} grew past {DIVERGE_FACTOR:g} x its initial value {initial:.4g}; lower the learning rate",
                step=first_step + i,
                loss=v,
            )
