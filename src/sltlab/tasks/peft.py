"""Parameter-efficient fine-tuning of a pretrained BERT-family model: full, BitFit, LayerNorm-only, random
subset and Fisher-selected LayerNorm subsets (ValizadehAslani & Liang, "LayerNorm: a key component in
parameter-efficient fine-tuning"; issue 7).

Why parameter-level gradient masks: a method such as "the top 20% of LayerNorm scalars by Fisher information"
trains part of a tensor. Turning requires_grad on for the tensor and multiplying its gradient by a 0/1 mask
keeps Adam's moments of the frozen scalars at exactly zero, so their update is exactly zero; weight decay is
applied by us through the same mask (the optimiser's own decay is off), so a frozen scalar is bit-identical
after training. The trainable count of a run is therefore the number of True entries of its masks, exactly.

One run = one (task, method, fraction, mask source, lr, seed) cell, recorded in the store as kind "peft". The
lr grid is the paper's: every point is a run; the report takes the best on dev. Fisher information (for
ln-fisher masks and the component ranking) is computed once per (task, model, settings) on the pretrained
encoder with the seed-0 head and recorded as kind "peft-fisher" with its safetensors in the run's artifact
folder.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sltlab.analysis import fisher as fisher_mod
from sltlab.errors import ConfigError, SltlabError
from sltlab.runs.config import check_range
from sltlab.runs.store import Store
from sltlab.tasks.glue import GlueSplit, get_task, load_split
from sltlab.tasks.metrics import compute_metrics, main_metric
from sltlab.tasks.pretrained import Pretrained, load_pretrained, model_key, resolve_model_path, wrap_encoder

METHODS: tuple[str, ...] = ("full", "bitfit", "ln", "random", "ln-fisher")
MASK_SOURCES: tuple[str, ...] = ("individual", "global", "cv")
#: The paper's small per-method grid, shifted for few-step CPU runs: whole-network updates want a small lr, a
#: few thousand scalars (plus the head) a large one.
DEFAULT_LR_GRID: dict[str, tuple[float, ...]] = {
    "full": (3e-5, 1e-4),
    "bitfit": (1e-3, 1e-2),
    "ln": (1e-3, 1e-2),
    "random": (1e-3, 1e-2),
    "ln-fisher": (1e-3, 1e-2),
}
#: Tasks whose Fisher the global / cv mask sources combine (the report's tasks).
DEFAULT_FISHER_TASKS: tuple[str, ...] = ("rte", "mrpc", "stsb", "cola")


@dataclass(frozen=True)
class PeftConfig:
    """One fine-tuning run. The defaults are the paper's sizes; configs/peft_quick.toml shrinks them for CPUs.

    subsample: training examples (a fixed subsample drawn with data_seed, the same for every method and seed;
    None = the whole training set). dev_limit: dev examples scored (a fixed subsample; None = all). fraction:
    only for ln-fisher, the share of LayerNorm scalars trained. mask_source: whose Fisher ranks them
    (individual = this task; global = all fisher_tasks, each normalised to sum 1, summed; cv = the same
    without this task). fisher_samples: training examples the empirical Fisher averages over.
    """

    task: str
    method: str
    lr: float
    seed: int = 0
    fraction: float | None = None
    mask_source: str = "individual"
    model: str = "default"
    max_len: int = 128
    epochs: int = 3
    subsample: int | None = None
    dev_limit: int | None = None
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    pooling: str = "mean"
    data_seed: int = 0
    fisher_samples: int = 1000
    fisher_tasks: tuple[str, ...] = DEFAULT_FISHER_TASKS

    def validate(self) -> None:
        get_task(self.task)
        if self.method not in METHODS:
            raise ConfigError("method", f"unknown method {self.method!r}", " | ".join(METHODS))
        if self.method == "ln-fisher":
            if self.fraction is None:
                raise ConfigError("fraction", "ln-fisher needs --fraction", "a number in (0, 1], e.g. 0.2")
            check_range("fraction", self.fraction, 0.0, 1.0, lo_open=True)
            if self.mask_source not in MASK_SOURCES:
                raise ConfigError("mask_source", f"unknown source {self.mask_source!r}", " | ".join(MASK_SOURCES))
            if self.mask_source == "cv" and not [t for t in self.fisher_tasks if get_task(t).name != self.task]:
                raise ConfigError(
                    "fisher_tasks",
                    "cv needs at least one task other than the target",
                    "task names, e.g. rte, mrpc, stsb, cola",
                )
        elif self.fraction is not None:
            raise ConfigError("fraction", f"only ln-fisher takes a fraction, not {self.method}", "omit it")
        check_range("lr", self.lr, 0.0, None, lo_open=True)
        for name in ("max_len", "epochs", "batch_size", "fisher_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{getattr(self, name)} must be at least 1", "a positive integer")
        for name in ("subsample", "dev_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(name, f"{v} must be at least 1", "a positive integer or omitted (all)")
        check_range("warmup_frac", self.warmup_frac, 0.0, 1.0, hi_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, None)
        for t in self.fisher_tasks:
            get_task(t)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", get_task(self.task).name)
        object.__setattr__(self, "fisher_tasks", tuple(get_task(t).name for t in self.fisher_tasks))
        if self.method != "ln-fisher":
            object.__setattr__(self, "mask_source", "individual")
        self.validate()

    def record(self) -> dict[str, Any]:
        """The store config: every field (so the run id is a hash of all of them)."""
        out = dataclasses.asdict(self)
        out["fisher_tasks"] = list(self.fisher_tasks)
        return out

    @property
    def label(self) -> str:
        """The method's table name: full, bitfit, ln, random, ln-fisher@0.2 (+ /global, /cv)."""
        if self.method != "ln-fisher":
            return self.method
        src = "" if self.mask_source == "individual" else f"/{self.mask_source}"
        return f"ln-fisher@{self.fraction:g}{src}"


# -------------------- trainable selection --------------------


def body_names(model: nn.Module) -> list[str]:
    """Parameters of the pretrained part (everything but the head), in module order."""
    return [n for n, _ in model.named_parameters() if fisher_mod.component_of(n)[1] != "head"]


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
    LayerNorm names) + head. The head is always trained: a fresh head is needed for any new task.
    """
    params = dict(model.named_parameters())
    ones = {n: torch.ones_like(params[n], dtype=torch.bool) for n in head_names(model)}
    body = body_names(model)
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
        flat = torch.zeros(sum(sizes), dtype=torch.bool)
        flat[torch.randperm(flat.numel(), generator=g)[:k]] = True
        out: dict[str, torch.Tensor] = {}
        start = 0
        for n, size in zip(body, sizes, strict=True):
            m = flat[start : start + size]
            start += size
            if m.any():
                out[n] = m.reshape(params[n].shape).clone()
        return {**out, **ones}
    if method == "ln-fisher":
        if fraction is None or scores is None:
            raise ConfigError("fraction", "ln-fisher needs a fraction and Fisher scores", "a number in (0, 1]")
        missing = [n for n in ln if n not in scores]
        if missing:
            raise ConfigError("fisher", f"has no entry for {missing[0]!r}", "a Fisher dict of this model's LayerNorms")
        masks = fisher_mod.top_fraction_mask({n: scores[n] for n in ln}, fraction)
        return {**{n: m for n, m in masks.items() if m.any()}, **ones}
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
                fm = m.to(p.dtype)
                self._partial[n] = fm
                self._handles.append(p.register_hook(lambda g, fm=fm: g * fm))

    @torch.no_grad()
    def decay(self, lr: float, weight_decay: float) -> None:
        if weight_decay <= 0:
            return
        for n, p in self.model.named_parameters():
            if not p.requires_grad or n.endswith("bias") or fisher_mod.is_layernorm_param(n):
                continue
            m = self._partial.get(n)
            if m is None:
                p.mul_(1.0 - lr * weight_decay)
            else:  # frozen scalars: factor exactly 1.0, so bit-identical
                p.mul_(1.0 - lr * weight_decay * m)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# -------------------- data --------------------


class Batches:
    """Tokenised mini-batches of a GlueSplit; reshuffled every pass with a seeded generator when shuffle is
    on."""

    def __init__(
        self,
        pre: Pretrained,
        split: GlueSplit,
        max_len: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
    ):
        self.pre, self.split, self.max_len, self.batch_size = pre, split, max_len, batch_size
        self.shuffle = shuffle
        self.gen = torch.Generator().manual_seed(int(seed))
        self.regression = get_task(split.task).is_regression

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self.gen).tolist() if self.shuffle else list(range(n))
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            a = [self.split.texts_a[j] for j in idx]
            b = None if self.split.texts_b is None else [self.split.texts_b[j] for j in idx]
            batch = self.pre.encode(a, b, self.max_len)
            if self.split.labels is not None:
                lab = self.split.labels[np.asarray(idx, dtype=np.int64)]
                batch["labels"] = torch.as_tensor(lab, dtype=torch.float32 if self.regression else torch.long)
            yield batch


def fixed_subsample(split: GlueSplit, limit: int | None, seed: int) -> GlueSplit:
    """A seeded subsample of `limit` rows (all rows, in file order, when limit is None or covers the
    split)."""
    if limit is None or limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return split.subset(idx)


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
    return compute_metrics(batches.split.task, torch.cat(preds).numpy(), torch.cat(labels).numpy())


# -------------------- model cache --------------------

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


# -------------------- Fisher --------------------


def fisher_config(cfg: PeftConfig, task: str) -> dict[str, Any]:
    """The store config of the Fisher run a PEFT run with `cfg` uses for `task`."""
    return {
        "task": get_task(task).name,
        "model": cfg.model,
        "max_len": cfg.max_len,
        "samples": cfg.fisher_samples,
        "pooling": cfg.pooling,
        "data_seed": cfg.data_seed,
        "head_seed": 0,
    }


def ensure_fisher(
    store: Store, cfg: PeftConfig, task: str, data_dir: str | None = None, progress: bool = False
) -> dict[str, torch.Tensor]:
    """The empirical Fisher of every body parameter for `task` (computed once, then read from the store)."""
    fcfg = fisher_config(cfg, task)
    path = store.artifact_dir(_run_id("peft-fisher", fcfg)) / "fisher.safetensors"
    if _finished(store, "peft-fisher", fcfg) and path.is_file():
        return fisher_mod.load_fisher(path)
    run_id = store.start("peft-fisher", fcfg, 0)
    try:
        t0 = time.perf_counter()
        info = get_task(task)
        pre = pristine(cfg.model)
        model = fresh_model(pre, info.n_outputs, 0, cfg.pooling)
        model.eval()
        train = fixed_subsample(load_split(task, "train", data_dir=data_dir), cfg.fisher_samples, cfg.data_seed + 1)
        batches = Batches(pre, train, cfg.max_len, 1, shuffle=False)
        fisher = fisher_mod.empirical_fisher(
            model, per_sample_loss, batches, params=body_names(model), progress=progress
        )
        fisher_mod.save_fisher(path, fisher, {"task": info.name, "model": cfg.model})
        table = fisher_mod.aggregate_by_component(fisher, "mean")
        store.finish(
            run_id,
            {"fisher_by_component": _table_json(table), "path": str(path)},
            {"wall_s": time.perf_counter() - t0},
        )
    except BaseException as err:
        store.fail(run_id, f"{type(err).__name__}: {err}")
        raise
    return fisher


def mask_scores(store: Store, cfg: PeftConfig, data_dir: str | None, progress: bool) -> dict[str, torch.Tensor]:
    """Fisher scores ranking the LayerNorm scalars for `cfg.mask_source` (normalised over the LayerNorms)."""
    if cfg.mask_source == "individual":
        tasks = [cfg.task]
    elif cfg.mask_source == "global":
        tasks = sorted(set(cfg.fisher_tasks) | {cfg.task})
    else:
        tasks = [t for t in cfg.fisher_tasks if t != cfg.task]
    fishers = {}
    for t in tasks:
        f = ensure_fisher(store, cfg, t, data_dir, progress)
        fishers[t] = {n: v for n, v in f.items() if fisher_mod.is_layernorm_param(n)}
    return fisher_mod.combine_fisher(fishers)


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


# -------------------- one run --------------------


def run_peft(cfg: PeftConfig, store: Store, data_dir: str | None = None, progress: bool = True) -> str:
    """Fine-tune, score on dev and record one run; skipped (same id returned) when the store has it
    finished."""
    record = cfg.record()
    run_id = _run_id("peft", record, cfg.seed)
    if store.is_finished(run_id):
        return run_id
    scores = mask_scores(store, cfg, data_dir, progress) if cfg.method == "ln-fisher" else None
    run_id = store.start("peft", record, cfg.seed)
    try:
        t0 = time.perf_counter()
        info = get_task(cfg.task)
        pre = pristine(cfg.model)
        train = fixed_subsample(load_split(cfg.task, "train", data_dir=data_dir), cfg.subsample, cfg.data_seed)
        dev = fixed_subsample(load_split(cfg.task, info.dev_splits[0], data_dir=data_dir), cfg.dev_limit, cfg.data_seed)
        model = fresh_model(pre, info.n_outputs, cfg.seed, cfg.pooling)
        masks = trainable_masks(model, cfg.method, fraction=cfg.fraction, scores=scores, seed=cfg.seed)
        before = (
            {n: p.detach().clone() for n, p in model.named_parameters() if n in body_names(model)}
            if cfg.method == "full"
            else {}
        )
        history = train_masked(
            model,
            masks,
            Batches(pre, train, cfg.max_len, cfg.batch_size, shuffle=True, seed=cfg.seed),
            cfg,
            progress=progress,
            desc=f"{cfg.task} {cfg.label} lr={cfg.lr:g} s{cfg.seed}",
        )
        t_train = time.perf_counter() - t0
        scores_dev = evaluate(model, Batches(pre, dev, cfg.max_len, 64, shuffle=False))
        body = body_names(model)
        n_body = sum(p.numel() for n, p in model.named_parameters() if n in body)
        n_total = sum(p.numel() for p in model.parameters())
        trainable = count(masks)
        trainable_body = count(masks, body)
        metrics: dict[str, Any] = {
            "main_metric": main_metric(cfg.task),
            "main": scores_dev[main_metric(cfg.task)],
            **scores_dev,
            "trainable": trainable,
            "trainable_body": trainable_body,
            "total": n_total,
            "total_body": n_body,
            "share": trainable_body / n_body,
            "share_with_head": trainable / n_total,
            "final_loss": history[-1]["loss"] if history else float("nan"),
            "train_n": len(train),
            "dev_n": len(dev),
            "wall_s": time.perf_counter() - t0,
        }
        if cfg.method == "full":
            after = {n: p.detach() for n, p in model.named_parameters() if n in before}
            metrics["change_by_component"] = _table_json(fisher_mod.parameter_change(before, after))
        store.finish(run_id, metrics, {"train_s": t_train, "wall_s": metrics["wall_s"]})
    except BaseException as err:
        store.fail(run_id, f"{type(err).__name__}: {err}")
        raise
    return run_id


def train_masked(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    batches: Sized,
    cfg: PeftConfig,
    *,
    progress: bool = True,
    desc: str = "peft",
) -> list[dict[str, float]]:
    """AdamW (decay through the masks) with warm-up and cosine decay, via the one loop `run_search`.

    `batches` is any re-iterable sized collection of batch dicts (a `Batches`, or a list in tests); one epoch
    is one pass over it.
    """
    from sltlab.tickets.search import SearchConfig, run_search

    torch.manual_seed(cfg.seed)  # dropout
    steps = len(batches) * cfg.epochs
    gm = GradientMasks(model, masks)
    scfg = SearchConfig(
        steps=steps,
        lr=cfg.lr,
        optimizer="adamw",
        weight_decay=0.0,
        schedule="cosine",
        warmup=int(cfg.warmup_frac * steps),
        grad_clip=cfg.grad_clip,
    )

    def decay(step: int, rec: dict[str, float], m: nn.Module) -> None:
        gm.decay(rec["lr"], cfg.weight_decay)

    try:
        return run_search(model, mean_loss, batches, scfg, callbacks=[decay], progress=progress, desc=desc)
    finally:
        gm.remove()


# -------------------- sweeps --------------------


@dataclass(frozen=True)
class SweepConfig:
    """A grid of PEFT runs (configs/peft_quick.toml). methods: "full", "ln-fisher@0.2", "ln-fisher@0.2/cv" ...

    lr_select: "all" runs every lr of the grid for every seed; "first-seed" runs the grid for the first seed
    and only the best lr (by dev main metric) for the other seeds, which halves the cost at 2 seeds. base:
    every other PeftConfig field (max_len, epochs, subsample, ...).
    """

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1)
    extra_methods: tuple[str, ...] = ()
    lr_select: str = "first-seed"
    lr_grid: dict[str, Any] = dataclasses.field(default_factory=dict)
    base: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr_select not in ("all", "first-seed"):
            raise ConfigError("lr_select", f"got {self.lr_select!r}", "all | first-seed")
        if not self.seeds:
            raise ConfigError("seeds", "is empty", "a list of integers")
        for m in (*self.methods, *self.extra_methods):
            parse_method(m)
        for k in self.lr_grid:
            if k not in METHODS:
                raise ConfigError(f"lr_grid.{k}", "is not a method", " | ".join(METHODS))
        reserved = {"task", "method", "fraction", "mask_source", "lr", "seed"} & set(self.base)
        if reserved:
            raise ConfigError(f"base.{sorted(reserved)[0]}", "is set by the sweep", "other PeftConfig fields")
        if not self.tasks or not self.methods:
            raise ConfigError("tasks" if not self.tasks else "methods", "is empty", "a non-empty list")
        object.__setattr__(self, "tasks", tuple(get_task(t).name for t in self.tasks))
        for m in self.lr_grid:
            for lr in self.grid(m):
                check_range(f"lr_grid.{m}", lr, 0.0, None, lo_open=True)
        base = default_base(self.base)  # every base field checked now, not after hours of runs
        resolve_model_path(None if base["model"] in ("", "default") else base["model"])

    def grid(self, method: str) -> tuple[float, ...]:
        vals = self.lr_grid.get(method, DEFAULT_LR_GRID[method])
        if isinstance(vals, int | float):
            vals = (vals,)
        return tuple(float(v) for v in vals)


def parse_method(text: str) -> tuple[str, float | None, str]:
    """ "ln-fisher@0.2/cv" -> ("ln-fisher", 0.2, "cv"); "ln" -> ("ln", None, "individual")."""
    rest, _, source = text.partition("/")
    method, _, frac = rest.partition("@")
    if method not in METHODS:
        raise ConfigError("methods", f"unknown method {text!r}", "full | bitfit | ln | random | ln-fisher@F[/SRC]")
    if method == "ln-fisher" and not frac:
        raise ConfigError("methods", f"{text!r} needs a fraction", "ln-fisher@0.2")
    if source and source not in MASK_SOURCES:
        raise ConfigError("methods", f"unknown mask source in {text!r}", " | ".join(MASK_SOURCES))
    try:
        fraction = float(frac) if frac else None
    except ValueError:
        raise ConfigError("methods", f"bad fraction in {text!r}", "ln-fisher@0.2") from None
    if fraction is not None and not 0 < fraction <= 1:  # also NaN
        raise ConfigError("methods", f"the fraction in {text!r} is outside (0, 1]", "ln-fisher@0.2")
    return method, fraction, source or "individual"


def make_config(task: str, method_text: str, lr: float, seed: int, base: Mapping[str, Any]) -> PeftConfig:
    from sltlab.runs.config import from_dict

    method, fraction, source = parse_method(method_text)
    return from_dict(
        PeftConfig,
        {
            **base,
            "task": task,
            "method": method,
            "fraction": fraction,
            "mask_source": source,
            "lr": lr,
            "seed": seed,
        },
    )


def best_lr(store: Store, cfgs: list[PeftConfig]) -> PeftConfig | None:
    """The config of the grid with the highest dev main metric (None while any grid point is unfinished)."""
    best: tuple[float, PeftConfig] | None = None
    for c in cfgs:
        rid = _run_id("peft", c.record(), c.seed)
        if not store.is_finished(rid):
            return None
        main = float(store.get(rid).metrics["main"])
        if best is None or main > best[0]:
            best = (main, c)
    return best[1] if best else None


def run_sweep(
    sweep: SweepConfig,
    store: Store,
    data_dir: str | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
) -> list[str]:
    """Run the grid; this shard takes every n-th task. Order: the methods' lr grids on the first seed, then
    the other seeds (at the best lr when lr_select is first-seed), then the same for `extra_methods`.

    Finished runs are skipped, so an interrupted sweep resumes. Returns the run ids of this shard.
    """
    index, n_shards = shard
    tasks = [t for i, t in enumerate(sweep.tasks) if i % n_shards == index]
    done: list[str] = []
    first, others = sweep.seeds[0], sweep.seeds[1:]

    def one(cfg: PeftConfig) -> None:
        done.append(run_peft(cfg, store, data_dir, progress))
        log(_summary(store, done[-1]))

    for methods in (sweep.methods, sweep.extra_methods):
        for task in tasks:
            for m in methods:
                grid_seeds = sweep.seeds if sweep.lr_select == "all" else (first,)
                for seed in grid_seeds:
                    for lr in sweep.grid(parse_method(m)[0]):
                        one(make_config(task, m, lr, seed, sweep.base))
        if sweep.lr_select != "first-seed":
            continue
        for task in tasks:
            for m in methods:
                grid = [make_config(task, m, lr, first, sweep.base) for lr in sweep.grid(parse_method(m)[0])]
                chosen = best_lr(store, grid)
                if chosen is None:
                    raise ConfigError("lr_select", f"the lr grid of {task} {m} did not finish", "rerun the sweep")
                for seed in others:
                    one(dataclasses.replace(chosen, seed=seed))
    return done


def _summary(store: Store, run_id: str) -> str:
    rec = store.get(run_id)
    c, m = rec.config, rec.metrics
    lab = c["method"] + (f"@{c['fraction']:g}" if c.get("fraction") is not None else "")
    return (
        f"{run_id}  {c['task']:5s} {lab:16s} lr={c['lr']:<7g} seed={c['seed']}  "
        f"{m['main_metric']}={m['main']:.2f}  trainable={m['trainable']}  ({m['wall_s']:.0f}s)"
    )


def base_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run config shared by all cells of a sweep (what a report filters on)."""
    return {k: v for k, v in record.items() if k not in ("task", "method", "fraction", "mask_source", "lr", "seed")}


def default_base(base: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep's base settings completed with PeftConfig's defaults (for matching store records)."""
    cfg = make_config("rte", "full", 1.0, 0, base)
    return base_settings(cfg.record())


def model_label(model: str) -> str:
    return model_key(resolve_model_path(None if model in ("", "default") else model))


# -------------------- report --------------------

#: The paper's claims, as (a, b, relation): ">" a beats b, ">=" a is not worse, "~" the two are equivalent.
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("full", "bitfit", ">="),
    ("bitfit", "ln", "~"),
    ("ln", "random", ">"),
    ("full", "ln", ">="),
    ("ln", "ln-fisher@0.5", "~"),
    ("ln", "ln-fisher@0.2", "~"),
    ("ln", "ln-fisher@0.1", "~"),
)
#: Equivalence margin of "~", in points of the main metric.
MARGIN = 2.0


@dataclass
class Cell:
    """The runs of one (task, method label) at its chosen lr: scores in points, per seed."""

    task: str
    label: str
    lr: float
    scores: dict[int, float]
    runs: list[Any]
    grid: dict[float, dict[int, float]]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.scores.values()))) if self.scores else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(list(self.scores.values()), ddof=1)) if len(self.scores) > 1 else float("nan")


def collect_cells(sweep: SweepConfig, store: Store) -> dict[tuple[str, str], Cell]:
    """Finished runs of this sweep's settings grouped by (task, label), at the lr chosen on dev.

    The lr is chosen as the sweep ran it: by the first seed's score (first-seed) or by the seed mean (all).
    """
    want = default_base(sweep.base)
    groups: dict[tuple[str, str], dict[float, list[Any]]] = {}
    for rec in store.runs("peft"):
        c = rec.config
        if base_settings(c) != want or c["task"] not in sweep.tasks:
            continue
        cfg = PeftConfig(**{**c, "fisher_tasks": tuple(c["fisher_tasks"])})
        groups.setdefault((cfg.task, cfg.label), {}).setdefault(cfg.lr, []).append(rec)
    cells = {}
    first = sweep.seeds[0]
    for key, by_lr in groups.items():
        grid = {lr: {r.seed: 100 * float(r.metrics["main"]) for r in recs} for lr, recs in by_lr.items()}

        def rank(lr: float, grid: dict[float, dict[int, float]] = grid) -> float:
            if sweep.lr_select == "first-seed":
                return grid[lr].get(first, float("-inf"))
            return float(np.mean(list(grid[lr].values())))

        lr = max(grid, key=rank)
        cells[key] = Cell(key[0], key[1], lr, dict(sorted(grid[lr].items())), by_lr[lr], grid)
    return cells


def _fmt(x: float, d: int = 1) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{d}f}"


def _claim_rows(
    cells: Mapping[tuple[str, str], Cell], tasks: list[str], baselines: Mapping[str, float] | None = None
) -> list[str]:
    """One row per claim. `baselines` (task -> majority score) lets a row count the pairs in which both
    methods merely reproduce the majority baseline: those pairs agree for a trivial reason."""
    from sltlab.analysis.stats import bootstrap_ci, fmt_p, mann_whitney

    rows = [
        "| claim | pairs (task, seed) | both at baseline | mean diff a−b [95% CI] | Mann-Whitney p "
        "(task-centred) | Cliff's δ | verdict |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for a, b, rel in CLAIMS:
        diffs, xa, xb = [], [], []
        trivial = 0
        for t in tasks:
            ca, cb = cells.get((t, a)), cells.get((t, b))
            if ca is None or cb is None:
                continue
            centre = float(np.mean([c.mean for (tt, _), c in cells.items() if tt == t]))
            for s in sorted(set(ca.scores) & set(cb.scores)):
                diffs.append(ca.scores[s] - cb.scores[s])
                base = (baselines or {}).get(t)
                if base is not None and max(abs(ca.scores[s] - base), abs(cb.scores[s] - base)) < 0.05:
                    trivial += 1
                xa.append(ca.scores[s] - centre)
                xb.append(cb.scores[s] - centre)
        if not diffs:
            rows.append(f"| {a} {rel} {b} | 0 | – | – | – | – | not run |")
            continue
        ci = bootstrap_ci(diffs)
        mw = mann_whitney(xa, xb)
        lo, hi = ci.lo, ci.hi
        if not (math.isfinite(lo) and math.isfinite(hi)):
            verdict = "too few pairs"
        elif rel == ">":
            verdict = "holds (CI > 0)" if lo > 0 else ("reversed (CI < 0)" if hi < 0 else "not shown (CI spans 0)")
        elif rel == ">=":
            verdict = "holds (a not below b)" if hi >= 0 and ci.estimate >= -MARGIN else "fails (a below b)"
            if lo > 0:
                verdict = "holds (a > b)"
        else:
            verdict = (
                f"holds (CI within ±{MARGIN:g})"
                if lo >= -MARGIN and hi <= MARGIN
                else "differ (CI excludes 0)"
                if lo > 0 or hi < 0
                else "inconclusive (CI wide)"
            )
        rows.append(
            f"| {a} {rel} {b} | {len(diffs)} | {trivial if baselines else '–'} | "
            f"{ci.estimate:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
            f"{fmt_p(mw['p'])} | {mw['cliffs_delta']:+.2f} ({mw['effect']}) | {verdict} |"
        )
    return rows


def _fisher_tables(sweep: SweepConfig, store: Store) -> tuple[dict[str, Any], list[str]]:
    """Per-task and combined Fisher component tables from the sweep's Fisher runs."""
    cfg = make_config(sweep.tasks[0], "full", 1.0, 0, sweep.base)
    per_task: dict[str, dict[str, torch.Tensor]] = {}
    for t in sorted(set(sweep.tasks) | set(cfg.fisher_tasks)):
        fcfg = fisher_config(cfg, t)
        rid = _run_id("peft-fisher", fcfg)
        path = store.artifact_dir(rid) / "fisher.safetensors"
        if store.is_finished(rid) and path.is_file():
            per_task[t] = fisher_mod.load_fisher(path)
    if not per_task:
        return {}, []
    norm = fisher_mod.normalise_per_task(per_task)
    tables = {t: fisher_mod.aggregate_by_component(f, "mean") for t, f in norm.items()}
    combined = fisher_mod.aggregate_by_component(fisher_mod.combine_fisher(per_task), "mean")
    return {"combined": combined, **tables}, sorted(per_task)


def majority_baseline(task: str, base: Mapping[str, Any], data_dir: str | None) -> float:
    """Dev main metric (points) of predicting the training subsample's majority class (STS-B: its mean).

    Why: at CPU scale a fine-tuned model may not leave this baseline, and the table must say so.
    """
    info = get_task(task)
    train = fixed_subsample(load_split(task, "train", data_dir=data_dir), base["subsample"], base["data_seed"])
    dev = fixed_subsample(load_split(task, info.dev_splits[0], data_dir=data_dir), base["dev_limit"], base["data_seed"])
    assert train.labels is not None and dev.labels is not None
    if info.is_regression:
        const = np.full(len(dev), float(np.mean(train.labels)))
    else:
        const = np.full(len(dev), int(np.bincount(train.labels.astype(np.int64)).argmax()))
    return 100 * compute_metrics(task, const, dev.labels)[main_metric(task)]


def write_report(sweep: SweepConfig, store: Store, path: Path, command: str = "", data_dir: str | None = None) -> Path:
    """Markdown report of the sweep's finished runs (+ heat maps beside it): tables, claims, components.

    With the GLUE data reachable (`data_dir`, see `sltlab.paths.data_dir`) the main table also shows the
    majority-class baseline on the same dev subsample.
    """
    from sltlab.runs.store import atomic_write_text

    tasks = list(sweep.tasks)
    cells = collect_cells(sweep, store)
    labels = [
        PeftConfig(
            task="rte",
            method=parse_method(m)[0],
            lr=1.0,
            fraction=parse_method(m)[1],
            mask_source=parse_method(m)[2],
        ).label
        for m in (*sweep.methods, *sweep.extra_methods)
    ]
    base = default_base(sweep.base)
    n_runs = sum(len(c.runs) for c in cells.values())
    select = "by the first seed" if sweep.lr_select == "first-seed" else "by the seed mean"
    n_all = sum(len(v) for c in cells.values() for v in c.grid.values())
    lines = [
        "# Parameter-efficient fine-tuning: LayerNorm, BitFit, random and Fisher-selected subsets",
        "",
        f"Model: `{base['model']}` ({model_label(base['model'])}). Main metric in points (x100) on the dev "
        f"set (fixed subsample of {base['dev_limit'] or 'all'} examples), mean ± sd over seeds at the "
        f"learning rate chosen on dev ({select}). Training: {base['subsample'] or 'all'} examples, "
        f"{base['epochs']} epoch(s), batch {base['batch_size']}, max_len {base['max_len']}, AdamW (decay "
        f"{base['weight_decay']}) with warm-up {base['warmup_frac']} and cosine decay; every method also "
        f"trains a fresh head. {n_all} runs finished, {n_runs} of them at the chosen lr.",
        "",
        f"Command: `{command or 'sltlab peft --config ...'}`",
        "",
        "## Main table",
        "",
        "Share = trainable pretrained scalars / all pretrained scalars (the paper's measure); every method "
        "also trains the task's head: "
        + ", ".join(
            f"{t} {c.runs[0].metrics['trainable'] - c.runs[0].metrics['trainable_body']:,}"
            for t in tasks
            for c in [next((c for (tt, _), c in cells.items() if tt == t), None)]
            if c is not None
        )
        + " scalars.",
        "",
        "| method | "
        + " | ".join(f"{t} ({main_metric(t)})" for t in tasks)
        + " | mean over tasks | trainable pretrained scalars (+ head) | share of pretrained |",
        "| --- |" + " ---: |" * (len(tasks) + 3),
    ]
    for lab in labels:
        row, means, share, trainable = [], [], "", ""
        for t in tasks:
            c = cells.get((t, lab))
            if c is None:
                row.append("not run")
                continue
            means.append(c.mean)
            row.append(f"{_fmt(c.mean)} ± {_fmt(c.sd)} (n={len(c.scores)})")
            m = c.runs[0].metrics
            trainable = f"{m['trainable_body']:,}"
            share = f"{100 * m['share']:.4f}%"
        avg = _fmt(float(np.mean(means))) if len(means) == len(tasks) else "–"
        lines.append(f"| {lab} | " + " | ".join(row) + f" | {avg} | {trainable} | {share} |")
    baselines: dict[str, float] = {}
    try:
        baselines = {t: majority_baseline(t, base, data_dir) for t in tasks}
        majority = [_fmt(baselines[t]) for t in tasks]
        lines.append("| *majority class / constant* | " + " | ".join(majority) + " | | 0 | 0% |")
    except SltlabError:
        pass  # no data here: the report still renders from the store alone
    lines += [
        "",
        "## Every cell at its chosen lr",
        "",
        "| task | method | lr | seeds: main | all metrics (mean) | trainable | share | wall s (mean) |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for t in tasks:
        for lab in labels:
            c = cells.get((t, lab))
            if c is None:
                continue
            names = [n for n in get_task(t).metrics if n in c.runs[0].metrics]
            allm = ", ".join(f"{n} {100 * np.mean([r.metrics[n] for r in c.runs]):.1f}" for n in names)
            seeds = ", ".join(f"s{s}: {v:.1f}" for s, v in c.scores.items())
            m = c.runs[0].metrics
            wall = np.mean([r.metrics["wall_s"] for r in c.runs])
            lines.append(
                f"| {t} | {lab} | {c.lr:g} | {seeds} | {allm} | {m['trainable']:,} | "
                f"{100 * m['share']:.4f}% | {wall:.0f} |"
            )
    lines += [
        "",
        "## Learning-rate grid (every run)",
        "",
        "| task | method | lr | main by seed |",
        "| --- | --- | ---: | --- |",
    ]
    for t in tasks:
        for lab in labels:
            c = cells.get((t, lab))
            for lr, by_seed in sorted((c.grid if c else {}).items()):
                mark = " (chosen)" if lr == c.lr else ""
                lines.append(
                    f"| {t} | {lab} | {lr:g}{mark} | "
                    + ", ".join(f"s{s}: {v:.1f}" for s, v in sorted(by_seed.items()))
                    + " |"
                )
    lines += [
        "",
        "## Does the paper's ordering hold? (full ≥ BitFit ≈ LN > random)",
        "",
        "Pairs are (task, seed) at each method's chosen lr; the CI is a percentile bootstrap of the mean "
        "paired difference (`sltlab.analysis.stats.bootstrap_ci`); the Mann-Whitney test compares the two "
        "methods' scores after subtracting each task's mean over methods (`mann_whitney`). "
        f"'~' means equivalent within ±{MARGIN:g} points.",
        "",
    ]
    lines += _claim_rows(cells, tasks, baselines)
    # component change after full fine-tuning
    full = [c for (t, lab), c in cells.items() if lab == "full"]
    if full:
        acc: dict[fisher_mod.ComponentKey, list[float]] = {}
        for c in full:
            for r in c.runs:
                for k, v in table_from_json(r.metrics.get("change_by_component", {})).items():
                    acc.setdefault(k, []).append(v)
        change = {k: float(np.mean(v)) for k, v in acc.items()}
        fig = fisher_mod.plot_component_heatmap(
            change,
            path.with_name(path.stem + "_change.png"),
            title="mean |w_fine - w_pre| after full fine-tuning",
            cbar_label="D",
        )
        ranked = fisher_mod.rank_components({k: v for k, v in change.items() if k[0] is not None})
        lines += [
            "",
            "## Which components change most under full fine-tuning",
            "",
            f"D = mean |w_fine − w_pre| per component and layer, averaged over {len(full)} task(s) and their "
            f"seeds at the chosen lr. Heat map: `{fig.name}`.",
            "",
            fisher_mod.component_markdown(change),
            "",
            "Ranking of the per-layer components (mean over layers): "
            + ", ".join(f"{i + 1}. {c} ({v:.3g})" for i, (c, v) in enumerate(ranked))
            + ".",
        ]
    tables, ftasks = _fisher_tables(sweep, store)
    if tables:
        comb = tables["combined"]
        fig = fisher_mod.plot_component_heatmap(
            comb,
            path.with_name(path.stem + "_fisher.png"),
            log=True,
            title="Fisher information (normalised per task, summed)",
            cbar_label="Fisher / scalar",
        )
        lines += [
            "",
            "## Fisher information by component",
            "",
            f"Empirical Fisher of the pretrained encoder with the seed-0 head, from "
            f"{base['fisher_samples']} training examples per task ({', '.join(ftasks)}), each task "
            "normalised to sum 1 over all scalars, summed over tasks, then averaged per scalar of each "
            f"component. Heat map: `{fig.name}`.",
            "",
            fisher_mod.component_markdown(comb),
            "",
            "| rank | " + " | ".join(["combined", *ftasks]) + " |",
            "| ---: |" + " --- |" * (1 + len(ftasks)),
        ]
        ranks = {
            k: fisher_mod.rank_components({kk: v for kk, v in tab.items() if kk[0] is not None})
            for k, tab in tables.items()
        }
        for i in range(max(len(v) for v in ranks.values())):
            cells_ = [ranks[k][i][0] if i < len(ranks[k]) else "" for k in ["combined", *ftasks]]
            lines.append(f"| {i + 1} | " + " | ".join(cells_) + " |")
    lines.append("")
    atomic_write_text(path, "\n".join(lines))
    return path
