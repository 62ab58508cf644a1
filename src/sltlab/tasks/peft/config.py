"""The PEFT study's settings: one run (PeftConfig), a sweep (SweepConfig), method names and their defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sltlab.errors import ConfigError
from sltlab.runs.config import check_range
from sltlab.runs.device import Where
from sltlab.tasks.glue import get_task
from sltlab.tasks.pretrained import model_key, resolve_model_path
from sltlab.tickets import methods

METHODS: tuple[str, ...] = methods.names("peft")  # the methods registry (sltlab.tickets.methods)


#: Methods that learn binary masks over the frozen pretrained weights; their `fraction` is the density target.
MASK_METHODS: tuple[str, ...] = methods.names("peft", ("mask",))


#: Kept fraction of the masked weights at the end of training when no fraction is given.
DEFAULT_MASK_DENSITY = 0.9


#: Which layers carry masks: every maskable layer of the encoder except its embeddings (fnmatch patterns).
MASK_TARGETS: tuple[str, ...] = ("encoder.*",)


MASK_EXCLUDE: tuple[str, ...] = ("*embeddings*",)


MASK_SOURCES: tuple[str, ...] = ("individual", "global", "cv")


#: The paper's small per-method grid, shifted for few-step CPU runs: whole-network updates want a small lr, a
#: few thousand scalars (plus the head) a large one.
DEFAULT_LR_GRID: dict[str, tuple[float, ...]] = {
    "full": (3e-5, 1e-4),
    "bitfit": (1e-3, 1e-2),
    "ln": (1e-3, 1e-2),
    "random": (1e-3, 1e-2),
    "ln-fisher": (1e-3, 1e-2),
    "mask": (1e-3, 1e-2),
    "mask+ln": (1e-3, 1e-2),
}


#: Tasks whose Fisher the global / cv mask sources combine (the report's tasks).
DEFAULT_FISHER_TASKS: tuple[str, ...] = ("rte", "mrpc", "stsb", "cola")


@dataclass(frozen=True)
class PeftConfig(Where):
    """One fine-tuning run. The defaults are the paper's sizes; configs/peft_quick.toml shrinks them for CPUs.

    subsample: training examples (a fixed subsample drawn with data_seed, the same for every method and seed;
    None = the whole training set). dev_limit: dev examples scored (a fixed subsample; None = all). fraction:
    for ln-fisher, the share of LayerNorm scalars trained; for mask / mask+ln, the share of masked weights kept at
    the end (the density target, default DEFAULT_MASK_DENSITY). mask_source: whose Fisher ranks them
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
    # rows of the training split held out from every run (and Fisher run) and scored by each: what an lr grid
    # chooses on (sltlab.tasks.peft.sweep); None = none (left out of the run id)
    holdout: int | None = None
    # what draws the data order, dropout and mask-score init; None = `seed`, which also draws the fresh head (the
    # weight seed: the random part of a fine-tuned model). Left out of the run id while None.
    score_seed: int | None = None
    fisher_samples: int = 1000
    fisher_tasks: tuple[str, ...] = DEFAULT_FISHER_TASKS
    # device / precision / deterministic (sltlab.runs.device.Where): in the record only away from their defaults

    def validate(self) -> None:
        self.check_where()
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
        elif self.method in MASK_METHODS:
            check_range("fraction", self.fraction, 0.0, 1.0, lo_open=True)
        elif self.fraction is not None:
            raise ConfigError("fraction", f"only ln-fisher, mask and mask+ln take a fraction, not {self.method}",
                              "omit it")
        check_range("lr", self.lr, 0.0, None, lo_open=True)
        for name in ("max_len", "epochs", "batch_size", "fisher_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{getattr(self, name)} must be at least 1", "a positive integer")
        for name in ("subsample", "dev_limit", "holdout"):
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
        if self.method in MASK_METHODS and self.fraction is None:
            object.__setattr__(self, "fraction", DEFAULT_MASK_DENSITY)
        self.validate()

    def record(self) -> dict[str, Any]:
        """The store config: every field (so the run id is a hash of all of them), the device settings only away
        from their defaults (so runs made before they existed keep their ids)."""
        out = dataclasses.asdict(self)
        out["fisher_tasks"] = list(self.fisher_tasks)
        for k in ("holdout", "score_seed"):  # absent at None: runs made before they existed keep their ids
            if out[k] is None:
                del out[k]
        for k in ("device", "precision", "deterministic"):
            del out[k]
        out.update(self.where_id())
        return out

    @property
    def order_seed(self) -> int:
        return self.seed if self.score_seed is None else self.score_seed

    @property
    def label(self) -> str:
        """The method's table name: full, bitfit, ln, random, ln-fisher@0.2 (+ /global, /cv), mask@0.9."""
        if self.method in MASK_METHODS:
            return f"{self.method}@{self.fraction:g}"
        if self.method != "ln-fisher":
            return self.method
        src = "" if self.mask_source == "individual" else f"/{self.mask_source}"
        return f"ln-fisher@{self.fraction:g}{src}"


def fisher_tasks(cfg: PeftConfig) -> list[str]:
    """The tasks whose Fisher ranks the LayerNorm scalars for `cfg.mask_source`."""
    if cfg.mask_source == "individual":
        return [cfg.task]
    if cfg.mask_source == "global":
        return sorted(set(cfg.fisher_tasks) | {cfg.task})
    return [t for t in cfg.fisher_tasks if t != cfg.task]


@dataclass(frozen=True)
class SweepConfig(Where):
    """A grid of PEFT runs (configs/peft_quick.toml). methods: "full", "ln-fisher@0.2", "ln-fisher@0.2/cv" ...

    lr_select: "all" runs every lr of the grid for every seed; "first-seed" runs the grid for the first seed
    and only the best lr for the other seeds, which halves the cost at 2 seeds. The best lr is the one with the
    highest main metric on `holdout` training rows that no run trains on (select_on "train-holdout", the only
    choice: choosing on the dev scores that are reported would make them optimistic); dev is scored once per run.
    A grid of one lr chooses nothing and needs no held-out rows. base: every other PeftConfig field (max_len,
    epochs, subsample, ...).
    """

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1)
    extra_methods: tuple[str, ...] = ()
    lr_select: str = "first-seed"
    lr_grid: dict[str, Any] = dataclasses.field(default_factory=dict)
    select_on: str = "train-holdout"
    holdout: int = 500
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    # device / precision / deterministic (sltlab.runs.device.Where): those away from cpu/fp32 override the same keys
    # in `base`

    def __post_init__(self) -> None:
        self.check_where()
        object.__setattr__(self, "base", {**self.base, **self.where_fields()})
        if self.lr_select not in ("all", "first-seed"):
            raise ConfigError("lr_select", f"got {self.lr_select!r}", "all | first-seed")
        from sltlab.analysis.selection import check_select_on

        check_select_on(self.select_on, "select_on")
        check_range("holdout", self.holdout, 1)
        if "holdout" in self.base:
            raise ConfigError("base.holdout", "is set by the sweep's `holdout`", "holdout = N at the top level")
        if self.chooses:
            object.__setattr__(self, "base", {**self.base, "holdout": self.holdout})
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

    @property
    def chooses(self) -> bool:
        """Whether any method has more than one lr to choose from (then runs hold out training rows)."""
        return any(len(self.grid(parse_method(m)[0])) > 1 for m in (*self.methods, *self.extra_methods))

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
        raise ConfigError("methods", f"unknown method {text!r}",
                          "full | bitfit | ln | random | ln-fisher@F[/SRC] | mask[@D] | mask+ln[@D]")
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


def base_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run config shared by all cells of a sweep (what a report filters on)."""
    return {k: v for k, v in record.items()
            if k not in ("task", "method", "fraction", "mask_source", "lr", "seed", "score_seed")}


def default_base(base: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep's base settings completed with PeftConfig's defaults (for matching store records)."""
    cfg = make_config("rte", "full", 1.0, 0, base)
    return base_settings(cfg.record())


def model_label(model: str) -> str:
    return model_key(resolve_model_path(None if model in ("", "default") else model))
