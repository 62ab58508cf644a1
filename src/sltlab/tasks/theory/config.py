"""What `sltlab theory` reads from its TOML file: one frozen dataclass per experiment section, plus the
construction's solver settings. asdict() of these goes into every cell's store config, so renaming a field
changes run ids."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from sltlab.errors import ConfigError
from sltlab.runs.config import apply_sets, check_range, from_dict, load_toml
from sltlab.runs.device import Where
from sltlab.tickets.construct import ConstructConfig

DEFAULT_CONFIG = "configs/theory_quick.toml"

# Lists of the blocks experiment that may be empty (no variants against a random target affine, no searched
# tickets): the schema (sltlab.runs.config) refuses any other empty list whose default has items.
MaybeStrs = Annotated[tuple[str, ...], Field(min_length=0)]
MaybeInts = Annotated[tuple[int, ...], Field(min_length=0)]


@dataclass(frozen=True)
class WidthExp:
    d_model: int = 16
    heads: int = 2
    widths: tuple[int, ...] = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384)
    search_widths: tuple[int, ...] = (32, 64, 128, 256, 384)
    methods: tuple[str, ...] = ("construct", "edge-popup")
    variants: tuple[str, ...] = ("none",)
    seeds: tuple[int, ...] = (0, 1, 2)
    source_init: str = "theory"
    source_gain: float = 1.0
    search_inits: tuple[str, ...] = ("theory", "kaiming-uniform")
    search_variants: tuple[str, ...] = ("none",)
    search_seeds: tuple[int, ...] = (0, 1, 2)
    search_steps: int = 300
    search_lr: float = 0.05
    seq_len: int = 8
    n_train: int = 2048
    n_test: int = 512
    floor: float = 3e-6


@dataclass(frozen=True)
class ThresholdExp:
    d_models: tuple[int, ...] = (4, 8, 16)
    heads: int = 2
    per_coordinate: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24)
    gains: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)
    gain_d_model: int = 8
    seeds: tuple[int, ...] = (0, 1)
    source_init: str = "theory"
    eps: float = 0.01
    seq_len: int = 8
    n_test: int = 512


@dataclass(frozen=True)
class AngularExp:
    seq_len: int = 16
    target_width: int = 4
    widths: tuple[int, ...] = (4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48)
    gains: tuple[float, ...] = (1.0, 2.0)
    blocks: tuple[int, ...] = (1, 2, 3, 4)
    stack_widths: tuple[int, ...] = (8, 16, 24, 32, 40, 48)
    seeds: tuple[int, ...] = (0, 1, 2)
    train_steps: int = 400
    n_test: int = 1024


@dataclass(frozen=True)
class SeqlenExp:
    seq_lens: tuple[int, ...] = (4, 8, 16, 32, 64)
    widths: tuple[int, ...] = (32, 48)
    blocks: int = 2
    gain: float = 2.0
    seeds: tuple[int, ...] = (0, 1, 2)
    train_steps: int = 400
    n_test: int = 1024


@dataclass(frozen=True)
class WarmstartExp:
    d_model: int = 16
    heads: int = 2
    widths: tuple[int, ...] = (192, 256, 320)
    seeds: tuple[int, ...] = (0, 1)
    search_steps: int = 300
    search_lrs: tuple[float, ...] = (0.001, 0.05)
    source_init: str = "theory"
    seq_len: int = 8
    n_train: int = 2048
    n_test: int = 512


@dataclass(frozen=True)
class BlocksExp:
    """Constructed tickets for whole blocks (attention + ReLU MLP + residuals) in stacks of `blocks` blocks.

    One cell per (variant, width, seed) builds the deepest stack: the first b blocks of it are the b-block
    stack (weights are drawn by name, each block's ticket is built for its own target block), so the error
    after every block is the error of every depth 1..blocks. Variants in `affine_variants` run against a target
    whose norms have a random gain and bias (copied by an LN-integrated ticket, folded for pre-RMS).
    Searched tickets (edge-popup, `search_blocks` blocks, the same paired source) sit beside the construction:
    `search_settings` default | density (keep = the constructed ticket's density) | warm (scores start from the
    constructed mask, lr `warm_lr`) | long (`long_factor` x the steps); `search_inits` their sources.
    """

    d_model: int = 8
    heads: int = 2
    blocks: int = 8
    widths: tuple[int, ...] = (48, 64, 80, 96, 112, 128, 144, 160)
    variants: tuple[str, ...] = ("none", "pre-ln", "post-ln", "pre-rms", "post-rms")
    affine_variants: MaybeStrs = ("pre-ln+affine", "pre-rms")
    seeds: tuple[int, ...] = (0, 1, 2)
    source_init: str = "theory"
    source_gain: float = 1.0
    seq_len: int = 8
    n_test: int = 256
    bound_inputs: int = 64
    floor: float = 3e-6
    search_blocks: int = 1
    search_widths: MaybeInts = (64, 128)
    search_variants: MaybeStrs = ("pre-ln",)
    search_inits: MaybeStrs = ("theory", "kaiming-uniform")
    search_settings: MaybeStrs = ("default", "density", "warm", "long")
    search_seeds: MaybeInts = (0, 1, 2)
    search_steps: int = 200
    search_lr: float = 0.05
    warm_lr: float = 0.005
    long_factor: int = 4
    n_train: int = 1024


SEARCH_SETTINGS = ("default", "density", "warm", "long")
OPTIONAL_LISTS = ("affine_variants", "search_widths", "search_variants", "search_inits", "search_settings",
                  "search_seeds")  # the fields annotated MaybeStrs / MaybeInts


@dataclass(frozen=True)
class TheoryConfig(Where):
    """All six experiments; a TOML file may set any subset of their fields."""

    width: WidthExp = field(default_factory=WidthExp)
    threshold: ThresholdExp = field(default_factory=ThresholdExp)
    angular: AngularExp = field(default_factory=AngularExp)
    seqlen: SeqlenExp = field(default_factory=SeqlenExp)
    warmstart: WarmstartExp = field(default_factory=WarmstartExp)
    blocks: BlocksExp = field(default_factory=BlocksExp)
    construct: ConstructConfig = field(default_factory=ConstructConfig)
    # device / precision / deterministic (sltlab.runs.device.Where): where the searched cells of the width
    # experiment run (in their run ids only away from cpu / fp32). Constructed tickets are a combinatorial solver on
    # the host, and the other experiments build on them, so they run on the CPU whatever this says.

    def __post_init__(self) -> None:
        self.check_where("theory.")
        for name in ("width", "threshold", "angular", "seqlen", "warmstart", "blocks"):
            _check_section(f"theory.{name}", getattr(self, name))
        for i, v in enumerate(self.blocks.search_settings):
            if v not in SEARCH_SETTINGS:
                raise ConfigError(f"theory.blocks.search_settings[{i}]", f"unknown setting {v!r}",
                                  " | ".join(SEARCH_SETTINGS))
        if self.blocks.bound_inputs > self.blocks.n_test:
            raise ConfigError("theory.blocks.bound_inputs", f"{self.blocks.bound_inputs} is more than n_test = "
                              f"{self.blocks.n_test}", "at most n_test (the bound reads the first test inputs)")


def _check_section(prefix: str, exp: Any) -> None:
    """Every field of one experiment, by what its name says it is, so that no cell starts (and no progress bar
    appears) before a bad value is named: counts and sizes >= 1 (lists non-empty), seeds >= 0, gains in (0, 1000],
    learning rates and eps > 0, floor >= 0, heads dividing the model width, known methods, variants and inits."""
    from sltlab.nn.init import INIT_SCHEMES
    from sltlab.tasks.approx import METHODS, variant_norm

    for f in fields(exp):
        value, where = getattr(exp, f.name), f"{prefix}.{f.name}"
        items = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple) and not value:
            if f.name in OPTIONAL_LISTS:
                continue
            raise ConfigError(where, "is empty", "a non-empty list")
        for i, v in enumerate(items):
            at = f"{where}[{i}]" if isinstance(value, tuple) else where
            if f.name in ("methods",):
                if v not in METHODS:
                    raise ConfigError(at, f"unknown method {v!r}", " | ".join(METHODS))
            elif "variants" in f.name:
                variant_norm(v, at)
            elif "init" in f.name:
                if v not in INIT_SCHEMES:
                    raise ConfigError(at, f"unknown scheme {v!r}", " | ".join(INIT_SCHEMES))
            elif "seed" in f.name:
                check_range(at, v, 0)
            elif "gain" in f.name and f.name != "gain_d_model":
                check_range(at, v, 0.0, 1e3, lo_open=True)
            elif f.name == "search_settings":
                continue  # checked by name in TheoryConfig
            elif "lr" in f.name or f.name == "eps":
                check_range(at, v, 0.0, lo_open=True)
            elif f.name == "floor":
                check_range(at, v, 0.0)
            elif isinstance(v, int):
                check_range(at, v, 1)
    heads = getattr(exp, "heads", None)
    for name in ("d_model", "d_models", "gain_d_model"):
        widths = getattr(exp, name, ())
        for d in widths if isinstance(widths, tuple) else (widths,):
            if heads and d % heads:
                raise ConfigError(f"{prefix}.heads", f"{name}={d} is not divisible by {heads} heads",
                                  f"a divisor of {name}")


def load_config(path: str | None, sets: list[str] | None = None, seeds: list[int] | None = None) -> TheoryConfig:
    """The config at `path` (its [theory] table, or the whole file), else DEFAULT_CONFIG when present, else
    the defaults; then `sets` (--set SECTION.FIELD=VALUE) and `seeds` (every experiment's seeds)."""
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    data: dict = {}
    if path is not None:
        raw = load_toml(path)
        data = dict(raw.get("theory", raw))
    apply_sets(data, sets or [])
    if seeds is not None:
        for section in ("width", "threshold", "angular", "seqlen", "warmstart", "blocks"):
            data.setdefault(section, {})["seeds"] = list(seeds)
    return from_dict(TheoryConfig, data, prefix="theory")

