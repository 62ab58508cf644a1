"""The one optimisation loop, for ticket search and dense training alike.

It optimises whatever in the model has requires_grad (scores, scales, norm affine, or every weight for dense
training) with Adam/AdamW/SGD under a constant or cosine schedule with optional warm-up, anneals the supermask
temperature when the model has annealed masks, and calls callbacks after every step (logging, evaluation, early stop).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from sltlab.errors import ConfigError
from sltlab.tickets.supermask import set_temperature, supermasks

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class SearchConfig:
    """steps: optimiser steps; lr: peak learning rate; temperature_start/end: annealed masks only (geometric)."""

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

    def __post_init__(self) -> None:
        self.validate()

    def lr_at(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "constant":
            return self.lr
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def temperature_at(self, step: int) -> float:
        t = step / max(1, self.steps - 1)
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
) -> list[dict[str, float]]:
    """Optimise the model's trainable tensors for cfg.steps steps over `batches` (cycled). Returns the history:
    one dict per `log_every` steps with step, loss, lr, temperature and seconds.

    free_lr: peak learning rate of the trainable tensors that are not mask scores (norm gain/bias, scales, a
    trained head), on the same schedule; None = cfg.lr. Scores want steps of order 0.1 while a LayerNorm gain
    near 1 is wrecked by them, so the LN-integrated ticket needs the two apart."""
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
    annealed = any(sm.method == "annealed" for sm in supermasks(model).values())
    history: list[dict[str, float]] = []
    it = _cycle(batches)
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for step in range(cfg.steps):
            lr = cfg.lr_at(step)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_ratio", 1.0)
            temp = cfg.temperature_at(step) if annealed else float("nan")
            if annealed:
                set_temperature(model, temp)
            loss = loss_fn(model, next(it))
            if not torch.isfinite(loss):
                raise ConfigError("search.lr", f"loss became {loss.item()} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            rec = {"step": step + 1, "loss": float(loss.detach()), "lr": lr, "temperature": temp,
                   "seconds": time.perf_counter() - t0}
            if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
                history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4g}")
            bar.update(1)
            for cb in callbacks or []:
                cb(step + 1, rec, model)
    except StopSearch:
        pass
    finally:
        bar.close()
        model.eval()
    return history
