"""The approximation study (Otsuka et al. 2025): does a wider random attention contain a ticket that imitates a target?

Target: a multi-head attention (arch "mha": a bare MHA under a norm spec, no residual) or a stack of residual blocks
(arch "stack"), weights drawn from a seed. Source: the same kind, same d_model and heads, the run's own norm variant,
but per-head query/key/value width n (swept); random and frozen.

Which target a run imitates is the study's `target` setting, and it decides what a comparison of variants means:
- "shared" (the default): every norm variant imitates the *same* target, the `target_variant` one (default "none")
  of the same seed. Variants are then compared on one problem: which architecture holds the better ticket for the
  same function. The no-norm cells are the same problem as under "own" and keep their run ids.
- "own": each variant imitates a target with its own norm (affine frozen). Pre-LN bare attention is then the no-norm
  problem on LN(x) inputs, so an error difference between variants mixes the ticket with the problem; use it for
  the per-variant question only. A run records `target_norm` whenever its target's norm is not its own.

The ticket is the mask on the source that minimises the mean squared output error to the target on random
Gaussian inputs (plus the norm affine for a LayerNorm-integrated ticket, variant "...+affine" or "ln-integrated").
Besides plain edge-popup and annealed masks the search can use the field's
edge-popup variants (sltlab.tickets.supermask): method "multicoated" (`coats` nested coats, `coat_keeps`) and method
"partially-frozen" (a `frozen_pruned` / `frozen_kept` fraction of the source fixed before the search, drawn from the
run seed, so every score seed searches the same partially frozen source). Method "construct" builds the ticket
(sltlab.tickets.construct): attention, and for stacks with an MLP (activation "relu", source_mlp "paired") the ReLU
MLP and the norms' affine (target_affine "random" gives the target's norms a gain and bias to copy or fold).
On held-out inputs we report the
relative error, the max per-token l2 error, the error relative to the attention branch's contribution, and
per-block errors for stacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from sltlab.analysis.claims import ClaimsPlan
from sltlab.errors import ConfigError
from sltlab.nn.init import INIT_SCHEMES, InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.runs.config import check_range
from sltlab.runs.device import Where, determinism, resolve_device
from sltlab.runs.executor import Cell, CellContext, CellOutput, ExecOptions, run_cells
from sltlab.tickets import methods
from sltlab.tickets.construct import ConstructConfig
from sltlab.tickets.search import SearchConfig, run_search
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, get_masks, mask_density, supermasks

VARIANT_ALIASES = {"ln-integrated": "pre-ln+affine", "no-ln": "none"}
# From the methods registry (sltlab.tickets.methods): every mask method the approximation study offers, and the
# ones that are edge-popup with a mask variant switched on.
SEARCH_METHODS = methods.names("approx", ("mask",))
MASK_VARIANT_METHODS = tuple(m for m in SEARCH_METHODS if methods.REGISTRY[m].variant)
METHODS = methods.names("approx")
MAX_GAIN = 1e3
MAX_INPUT_VALUES = 2**30  # float32 values of the random inputs, train or test


# The block construction's study fields at their defaults: there they stay out of a cell's run id.
BLOCK_DEFAULTS: dict[str, Any] = {"activation": "gelu", "source_mlp": "standard", "target_affine": "identity"}


def variant_norm(variant: str, field_name: str = "study.variants") -> NormSpec:
    return NormSpec.parse(VARIANT_ALIASES.get(variant, variant), field=field_name)


@dataclass(frozen=True)
class ApproxStudy(Where):
    """A sweep: widths x heads x variants x methods x seeds x score seeds. Every cell is one run in the store."""

    name: str = "approx"
    module: Literal["mha", "stack"] = "mha"
    d_model: int = 16
    heads: tuple[int, ...] = (2,)
    target_width: int | None = None
    n_blocks: int = 1
    mlp: bool = False
    # The block construction's settings (sltlab.tickets.construct; defaults: the study as before, same run ids).
    # activation: the MLP's (target and source); the construction realises a ReLU MLP. source_mlp "paired": the
    # source's MLP is the theory's PairedMLP (two random layers per target layer, 2 * width // d_model units per
    # input coordinate, so each of a pair's subset-sums sees about width // d_model candidates, as attention's).
    # target_affine "random": the target's norms get a seeded gain ~ U[0.5, 1.5] and bias ~ U[-0.5, 0.5].
    activation: Literal["gelu", "relu"] = "gelu"
    source_mlp: Literal["standard", "paired"] = "standard"
    target_affine: Literal["identity", "random"] = "identity"
    # How method construct solves its subset-sums ([construct] table; in the run id only away from the defaults).
    construct: ConstructConfig = field(default_factory=ConstructConfig)
    widths: tuple[int, ...] = (8, 16, 32, 64)
    variants: tuple[str, ...] = ("none", "pre-ln", "post-ln", "ln-integrated")
    methods: tuple[str, ...] = ("edge-popup",)
    # "shared": every variant imitates the target_variant target of the same seed (one problem for all variants);
    # "own": each variant imitates a target with its own norm (the per-variant question). See the module docstring.
    target: Literal["shared", "own"] = "shared"
    target_variant: str = "none"
    seeds: tuple[int, ...] = (0, 1)
    score_seeds: tuple[int, ...] = (0,)
    keep: float = 0.5
    scale: Literal["none", "layer", "head"] = "layer"
    target_init: str = "kaiming-uniform"
    source_init: str = "kaiming-uniform"
    source_gain: float = 1.0
    seq_len: int = 8
    n_train: int = 4096
    n_test: int = 1024
    batch_size: int = 128
    search: SearchConfig = field(default_factory=lambda: SearchConfig(steps=300, lr=0.05))
    # The search lr chosen per problem (variant x width x heads x method) from this grid, on the held-out error
    # (fresh inputs from the training distribution, never the test inputs) of the first `select_seeds` weight seeds
    # and the first score seed (sltlab.tasks.selection); [] = search.lr for every cell, nothing chosen.
    lr_grid: tuple[float, ...] = ()
    select_on: str = "train-holdout"
    select_seeds: int = 1
    # The claims the report tests on this study, declared before the run (sltlab.analysis.claims): measures,
    # predicted directions, equivalence margins. Recorded in the store when the sweep starts; not in any run id.
    claims: ClaimsPlan | None = None
    # Mask-variant settings, read only by the methods that name them (and hashed only into their cells' run ids):
    # "multicoated" uses coats / coat_keeps ([] = evenly spaced below keep), "partially-frozen" the two fractions.
    coats: int = 3
    coat_keeps: tuple[float, ...] = ()
    frozen_pruned: float = 0.2
    frozen_kept: float = 0.1
    # Folded sources (sltlab.nn.transformer): each entry of `folds` is a number of stages S over the source's
    # blocks, one random block per stage, a mask per block ("unshared") or per stage ("shared"); [] = unfolded
    # only. S = n_blocks is the unfolded source (same run id). Targets are never folded.
    folds: tuple[int, ...] = ()
    mask_sharing: Literal["unshared", "shared"] = "unshared"
    store: str = "runs/sltlab.db"
    out_dir: str = "runs/approx"
    # Matrices of width 16-512 are far too small for intra-op parallelism: extra threads only spin (measured 20x
    # slower with 2 threads on a busy 2-core machine). Does not enter the run id: results do not depend on it.
    threads: int = 1
    # device / precision / deterministic: sltlab.runs.device.Where; away from cpu/fp32 they enter the run id. The
    # held-out error is always measured in fp32: it is the study's figure of merit.

    def target_n_k(self, n_heads: int) -> int:
        return self.target_width if self.target_width is not None else max(1, self.d_model // n_heads)

    def validate(self) -> None:
        if self.module not in ("mha", "stack"):
            raise ConfigError("study.module", f"unknown module {self.module!r}", "mha | stack")
        check_range("study.keep", self.keep, 0.0, 1.0, lo_open=True)
        for i, v in enumerate(self.variants):
            variant_norm(v, f"study.variants[{i}]")
        if self.target not in ("shared", "own"):
            raise ConfigError("study.target", f"got {self.target!r}", "shared | own")
        variant_norm(self.target_variant, "study.target_variant")
        for i, m in enumerate(self.methods):
            if m not in METHODS:
                raise ConfigError(f"study.methods[{i}]", f"unknown method {m!r}", " | ".join(METHODS))
        for name in ("target_init", "source_init"):
            if getattr(self, name) not in INIT_SCHEMES:
                raise ConfigError(f"study.{name}", f"unknown scheme {getattr(self, name)!r}", " | ".join(INIT_SCHEMES))
        if not self.widths:
            raise ConfigError("study.widths", "is empty", "a list of source widths, e.g. [8, 16, 32]")
        for h in self.heads:
            if h < 1:
                raise ConfigError("study.heads", f"{h} heads", "integers >= 1")
            if self.target_width is None and self.d_model % h:
                # d_model // h per head would make the target narrower than the d_model asked for
                raise ConfigError("study.heads", f"d_model={self.d_model} is not divisible by {h} heads",
                                  "divisors of d_model, or set target_width")
            tw = self.target_n_k(h)
            for i, w in enumerate(self.widths):
                if w < tw:
                    raise ConfigError(
                        f"study.widths[{i}]",
                        f"source width {w} is smaller than the target's per-head width {tw} (heads={h})",
                        f"widths >= {tw}; a source must be at least as wide as its target",
                    )
        for name in ("d_model", "n_blocks", "seq_len", "n_train", "n_test", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"study.{name}", f"{getattr(self, name)} must be at least 1", "an integer >= 1")
        self.check_where("study.")
        # A gain this large only scales the output error with it, and past ~1e9 the loss overflows float32, which
        # would then be blamed on the learning rate.
        check_range("study.source_gain", self.source_gain, 0.0, MAX_GAIN, lo_open=True)
        for name in ("weight_decay", "warmup", "grad_clip", "momentum"):  # SearchConfig leaves these unchecked
            check_range(f"search.{name}", getattr(self.search, name), 0)
        inputs = max(self.n_train, self.n_test) * self.seq_len * self.d_model
        if inputs > MAX_INPUT_VALUES:
            raise ConfigError("study.seq_len", f"max(n_train, n_test) x seq_len x d_model = {inputs:,} input values "
                              f"is beyond the {MAX_INPUT_VALUES:,} (4 GiB) this study holds in memory",
                              "a smaller seq_len, n_train, n_test or d_model")
        if not self.seeds or not self.score_seeds:
            raise ConfigError("study.seeds", "needs at least one seed and one score seed")
        from sltlab.analysis.selection import check_select_on

        check_select_on(self.select_on, "study.select_on")
        for i, lr in enumerate(self.lr_grid):
            check_range(f"study.lr_grid[{i}]", lr, 0.0, lo_open=True)
        if len(set(self.lr_grid)) != len(self.lr_grid):
            raise ConfigError("study.lr_grid", "lists an lr twice", "distinct learning rates")
        check_range("study.select_seeds", self.select_seeds, 1, len(self.seeds))
        if "multicoated" in self.methods and self.coats < 2:
            raise ConfigError("study.coats", f"method 'multicoated' with {self.coats} coat(s) is plain edge-popup",
                              "coats >= 2, or method 'edge-popup'")
        if "partially-frozen" in self.methods and self.frozen_pruned == 0 and self.frozen_kept == 0:
            raise ConfigError("study.frozen_pruned",
                              "method 'partially-frozen' with nothing frozen is plain edge-popup",
                              "frozen_pruned and/or frozen_kept > 0, or method 'edge-popup'")
        if self.mask_sharing == "shared" and not any(f < self.source_layers for f in self.folds):
            raise ConfigError("study.mask_sharing", "'shared' shares a mask among the blocks of a fold stage, but "
                              "no source is folded", "folds = [1, 2] (stages < n_blocks), or 'unshared'")
        if self.mask_sharing == "shared" and "construct" in self.methods:
            # the construction builds each block's mask for its own target block; a shared mask would keep the last
            raise ConfigError("study.mask_sharing", "the construction builds one mask per target block, so it "
                              "cannot share a mask across a stage", "'unshared' with method construct")
        self._validate_blocks()
        for i, f in enumerate(self.folds):
            try:
                ModelConfig(d_model=self.d_model, n_heads=1, n_layers=self.source_layers, fold=f,
                            mask_sharing=self.mask_sharing)
            except ConfigError as err:
                raise ConfigError(f"study.folds[{i}]" if err.field == "model.fold" else "study.mask_sharing",
                                  err.problem, err.accepts) from None
        for method in MASK_VARIANT_METHODS:
            if method in self.methods:
                try:
                    SupermaskConfig(keep=self.keep, **self.mask_variant(method, 0))
                except ConfigError as err:  # the study's own field names, not the mask's
                    raise ConfigError(err.field.replace("mask.", "study.", 1), err.problem, err.accepts) from None

    def _validate_blocks(self) -> None:
        """What the block construction needs, said before any cell runs."""
        if self.activation not in ("gelu", "relu"):
            raise ConfigError("study.activation", f"unknown activation {self.activation!r}", "gelu | relu")
        if self.source_mlp not in ("standard", "paired"):
            raise ConfigError("study.source_mlp", f"unknown source MLP {self.source_mlp!r}", "standard | paired")
        if self.target_affine not in ("identity", "random"):
            raise ConfigError("study.target_affine", f"unknown target affine {self.target_affine!r}",
                              "identity | random")
        with_mlp = self.module == "stack" and self.mlp
        if self.source_mlp == "paired" and not with_mlp:
            raise ConfigError("study.source_mlp", "'paired' replaces the blocks' MLP, but the study has none",
                              "module = 'stack' with mlp = true, or source_mlp = 'standard'")
        if self.source_mlp == "paired" and self.folds:
            raise ConfigError("study.folds", "a paired source MLP is not defined for folded sources", "folds = []")
        if "construct" in self.methods and with_mlp:
            if self.activation != "relu":
                raise ConfigError("study.activation", "the MLP construction realises a ReLU MLP",
                                  "activation = 'relu' with method construct and mlp = true")
            if self.source_mlp != "paired":
                raise ConfigError("study.source_mlp", "a random MLP of one hidden layer holds no constructed "
                                  "ticket for a ReLU MLP", "source_mlp = 'paired' (the theory's source: two random "
                                  "layers per target layer)")
        if "construct" in self.methods and self.target_affine == "random":
            for i, v in enumerate(self.variants):
                norm = variant_norm(v)
                foldable = norm.placement == "pre" and norm.kind == "rmsnorm"
                if norm.kind != "none" and norm.affine != "trainable" and not foldable:
                    raise ConfigError(f"study.variants[{i}]", f"{v!r} cannot take a random target affine: a frozen,"
                                      " bias-free source has no closed form for it",
                                      f"'{v}+affine' (the LN-integrated ticket copies it) or pre-rms (its gain "
                                      "folds into the next maps)")

    @property
    def source_layers(self) -> int:
        return self.n_blocks if self.module == "stack" else 1

    def mask_variant(self, method: str, seed: int) -> dict[str, Any]:
        """The SupermaskConfig options that `method` switches on (none for plain methods). seed: the run seed,
        which draws the frozen pattern, so every score seed searches the same partially frozen source."""
        if method == "multicoated":
            return {"coats": self.coats, "coat_keeps": self.coat_keeps}
        if method == "partially-frozen":
            return {"frozen_pruned": self.frozen_pruned, "frozen_kept": self.frozen_kept, "frozen_seed": seed}
        return {}

    def __post_init__(self) -> None:
        for name in ("heads", "widths", "variants", "methods", "seeds", "score_seeds", "folds", "lr_grid"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def at_lr(self, lr: float) -> ApproxStudy:
        """The same study with every search at `lr` (one grid point)."""
        return replace(self, search=replace(self.search, lr=lr), lr_grid=())

    def cells(self) -> list[ApproxRun]:
        out = []
        for h in self.heads:
            for variant in self.variants:
                for method in self.methods:
                    for width in self.widths:
                        for fold in self.folds or (None,):
                            for seed in self.seeds:
                                for score_seed in self.score_seeds:
                                    out.append(ApproxRun(self, h, variant, method, width, seed, score_seed, fold))
        return out


@dataclass(frozen=True)
class ApproxRun:
    study: ApproxStudy
    n_heads: int
    variant: str
    method: str
    width: int
    seed: int
    score_seed: int
    fold: int | None = None

    @property
    def folded(self) -> bool:
        """The source is folded: fewer stages than blocks (fold = n_blocks is the unfolded source)."""
        return self.fold is not None and self.fold < self.study.source_layers

    @property
    def norm(self) -> NormSpec:
        return variant_norm(self.variant)

    @property
    def target_norm(self) -> NormSpec:
        """The target's norm: the shared target's, or the run's own; a target never learns an affine."""
        s = self.study
        base = variant_norm(s.target_variant, "study.target_variant") if s.target == "shared" else self.norm
        return replace(base, affine="frozen")

    def config_dict(self) -> dict[str, Any]:
        """What the store hashes: the run's own settings, not the sweep's other cells."""
        s = self.study
        return {
            "study": s.name, "module": s.module, "d_model": s.d_model, "n_heads": self.n_heads,
            "target_width": s.target_n_k(self.n_heads), "n_blocks": s.n_blocks if s.module == "stack" else 1,
            "mlp": s.mlp if s.module == "stack" else False, "variant": self.variant, "norm": self.norm.name,
            "width": self.width, "method": self.method, "seed": self.seed, "score_seed": self.score_seed,
            "keep": s.keep, "scale": s.scale, "target_init": s.target_init, "source_init": s.source_init,
            "source_gain": s.source_gain, "seq_len": s.seq_len, "n_train": s.n_train, "n_test": s.n_test,
            "batch_size": s.batch_size, "search": s.search.to_dict(),
            # only the variant methods' cells carry these, so plain cells keep the run ids they always had
            **{k: list(v) if isinstance(v, tuple) else v for k, v in s.mask_variant(self.method, self.seed).items()
               if k != "frozen_seed"},
            **s.where_id(),
            # only a run whose target is not its own-norm target carries this, so own-target runs (and every
            # no-norm run under the default shared target) keep the run ids they always had
            **({"target_norm": self.target_norm.name}
               if self.target_norm != replace(self.norm, affine="frozen") else {}),
            # only folded cells carry these, so unfolded cells keep their run ids
            **({"fold": self.fold} if self.folded else {}),
            # likewise the block construction's settings, away from their defaults only
            **{k: getattr(s, k) for k, default in BLOCK_DEFAULTS.items() if getattr(s, k) != default},
            **({"construct": asdict(s.construct)}
               if self.method == "construct" and s.construct != ConstructConfig() else {}),
            **({"mask_sharing": s.mask_sharing} if self.folded and s.mask_sharing != "unshared" else {}),
        }

    def target_spec(self) -> ModelSpec:
        s = self.study
        tw = s.target_n_k(self.n_heads)
        cfg = ModelConfig(
            d_model=s.d_model, n_heads=self.n_heads, n_layers=s.n_blocks, n_k=tw, n_v=tw,
            d_ff=4 * s.d_model, mlp=s.mlp, norm=self.target_norm, final_norm=False, activation=s.activation,
        )
        arch = "mha" if s.module == "mha" else "stack"
        random_affine = s.target_affine == "random" and self.target_norm.kind != "none"
        options = {"random_norm_affine": True} if random_affine else {}
        # The target's weights come from the run seed; the source's from a different stream of the same seed.
        return ModelSpec(arch, cfg, InitSpec(scheme=s.target_init, seed=self.seed),  # type: ignore[arg-type]
                         options=options)

    def source_spec(self) -> ModelSpec:
        s = self.study
        t = self.target_spec()
        tw = t.model.head_dim_qk
        paired = s.source_mlp == "paired"
        # A paired MLP keeps the target's d_ff between its two pairs (the target's hidden layer); its width is in
        # the pairs' units. A standard source MLP widens with the attention.
        cfg = replace(t.model, n_k=self.width, n_v=self.width,
                      d_ff=t.model.ff_width if paired else t.model.ff_width * self.width // tw,
                      norm=self.norm, fold=self.fold if self.folded else None,
                      mask_sharing=s.mask_sharing if self.folded else "unshared")
        mask = None
        if self.method in SEARCH_METHODS or self.method == "construct":
            mask = SupermaskConfig(
                method=methods.REGISTRY[self.method].mask.get("method", "edge-popup"), keep=s.keep,
                scale=s.scale, train_norm=self.norm.affine == "trainable", seed=self.score_seed,
                **s.mask_variant(self.method, self.seed),
            )
        init = InitSpec(scheme=s.source_init, seed=10_000 + self.seed, gain=s.source_gain)  # type: ignore[arg-type]
        options = {"mlp_pairs": 2 * max(1, self.width // s.d_model)} if paired else {}
        return ModelSpec(t.arch, cfg, init, mask, options)


def random_inputs(seed: int, n: int, seq_len: int, d: int, tag: str) -> torch.Tensor:
    from sltlab.nn.init import seeded_normal

    return seeded_normal(seed, f"approx-inputs-{tag}", (n, seq_len, d), "inputs", 1.0)


def forward_out(model: nn.Module, x: torch.Tensor, return_hidden: bool = False, skip: frozenset[int] = frozenset()):
    """Uniform call for NormedAttention and Stack: returns (output, per-block hidden list)."""
    if hasattr(model, "blocks"):
        y, _, hidden = model(x, return_hidden=return_hidden, skip_attn=skip)
        return y, hidden
    y, _ = model(x, skip_attn=bool(skip))
    return y, [y]


@torch.no_grad()
def evaluate_pair(source: nn.Module, target: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    source.eval()
    target.eval()
    ys, hs = forward_out(source, x, return_hidden=True)
    yt, ht = forward_out(target, x, return_hidden=True)
    n_blocks = len(ht)
    diff = ys - yt
    rel = float(diff.norm() / yt.norm().clamp_min(1e-30))
    max_tok = float(diff.norm(dim=-1).max())
    y_noattn, _ = forward_out(target, x, skip=frozenset(range(n_blocks)))
    branch = float(diff.norm() / (yt - y_noattn).norm().clamp_min(1e-30))
    per_block, per_block_branch = [], []
    for b in range(n_blocks):
        d_b = (hs[b] - ht[b]).norm()
        per_block.append(float(d_b / ht[b].norm().clamp_min(1e-30)))
        _, h_skip = forward_out(target, x, return_hidden=True, skip=frozenset({b}))
        per_block_branch.append(float(d_b / (ht[b] - h_skip[b]).norm().clamp_min(1e-30)))
    return {
        "rel_error": rel, "max_token_error": max_tok, "branch_rel_error": branch,
        "per_block_rel_error": per_block, "per_block_branch_rel_error": per_block_branch,
    }


TicketFinder = Callable[[ApproxRun, nn.Module, nn.Module, torch.Tensor, torch.Tensor, bool], dict[str, Any]]


def search_ticket(run: ApproxRun, source: nn.Module, target: nn.Module, x_train: torch.Tensor,
                  y_train: torch.Tensor, progress: bool) -> dict[str, Any]:
    """Gradient search (edge-popup, its variants, or annealed) of the source's mask on the normalised output MSE."""
    s = run.study
    gen = torch.Generator().manual_seed(run.seed * 7919 + run.score_seed)
    denom = y_train.pow(2).mean().clamp_min(1e-12)

    def batches():
        while True:
            # drawn on the CPU from the seeded stream (the same batches on every device), then used where x is
            idx = torch.randint(0, x_train.shape[0], (s.batch_size,), generator=gen, device="cpu")
            idx = idx.to(x_train.device, non_blocking=True)
            yield x_train[idx], y_train[idx]

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xb, yb = batch
        out, _ = forward_out(model, xb)
        return (out - yb).pow(2).mean() / denom

    # loss_scale 1: the normalised loss of predicting zero, the natural scale even when a warm start begins far below
    history = run_search(source, loss_fn, batches(), s.search, progress=progress,
                         desc=f"{run.variant} n={run.width} s={run.seed}", precision=s.precision, loss_scale=1.0)
    return {"final_loss": history[-1]["loss"] if history else float("nan"), "steps": s.search.steps,
            **history.movement(),
            "_curve": [[int(h["step"]), float(h["loss"])] for h in history]}


def approx_finder(
    run: ApproxRun,
    source: nn.Module,
    target: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    progress: bool,
    cfg: Any = None,
) -> dict[str, Any]:
    """The `construct` method of the approximation study: the ticket is built, not searched (x, y unused).
    Attention, a block's ReLU MLP (in a paired source) and the norms' affine: sltlab.tickets.construct."""
    if run.target_norm != replace(run.norm, affine="frozen"):
        raise ConfigError("study.target", f"the construction copies the target's norm, but variant {run.variant!r} "
                          f"imitates a {run.target_norm.name!r} target", 'target = "own" with method construct')
    from sltlab.tickets.construct import construct_ticket

    return construct_ticket(source, target, cfg if cfg is not None else run.study.construct, progress)


def finder_for(method: str) -> TicketFinder:
    if method in SEARCH_METHODS:
        return search_ticket
    if method == "construct":
        return approx_finder
    raise ConfigError("study.methods", f"unknown method {method!r}", " | ".join(METHODS))


def load_study(path: str) -> ApproxStudy:
    """Read a study from TOML: ApproxStudy's fields at the top level, the search settings in a [search] table."""
    from sltlab.runs.config import from_dict, load_toml

    return from_dict(ApproxStudy, load_toml(path), prefix="study")


def run_cell(run: ApproxRun, progress: bool = False, return_curve: bool = False
             ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Find and evaluate one ticket. Returns (source model, metrics, timings); with return_curve the metrics
    carry the search's loss curve under '_curve' (the executor moves it to the run's curves)."""
    s = run.study
    t0 = time.perf_counter()
    # The constructed ticket is a combinatorial solver on the host: it stays on the CPU.
    device = resolve_device(s.device, "study.device") if run.method != "construct" else torch.device("cpu")
    # Weights and inputs are drawn on the CPU in float32 (bit-exact anywhere), then moved once.
    target = build_model(run.target_spec()).to(device)
    source = build_model(run.source_spec()).to(device)
    x_train = random_inputs(run.seed, s.n_train, s.seq_len, s.d_model, "train").to(device)
    x_test = random_inputs(run.seed, s.n_test, s.seq_len, s.d_model, "test").to(device)
    with torch.no_grad():
        target.eval()
        y_train, _ = forward_out(target, x_train)
    t1 = time.perf_counter()
    with determinism(device, s.deterministic):
        extra = finder_for(run.method)(run, source, target, x_train, y_train, progress)
    t2 = time.perf_counter()
    metrics = evaluate_pair(source, target, x_test)
    # Fresh inputs from the training distribution, never the test inputs: what an lr grid chooses on.
    x_hold = random_inputs(run.seed, s.n_test, s.seq_len, s.d_model, "holdout").to(device)
    metrics["holdout_rel_error"] = evaluate_pair(source, target, x_hold)["rel_error"]
    metrics.update(extra)
    if "_curve" in metrics and not return_curve:
        metrics.pop("_curve")
    source = source.cpu()
    if supermasks(source):
        metrics["density"] = mask_density(source)
        metrics["per_layer_density"] = {k: float(m.float().mean()) for k, m in get_masks(source).items()}
    if device.type != "cpu":
        metrics["device"] = str(device)
    timings = {"setup_s": t1 - t0, "search_s": t2 - t1, "eval_s": time.perf_counter() - t2}
    return source, metrics, timings


KIND = "approx"


def approx_cell(run: ApproxRun, ctx: CellContext) -> CellOutput:
    """The executor's entry point: one ticket, its metrics, its search curve, the ticket file as an artifact."""
    from sltlab.tickets.checkpoint import save_checkpoint

    source, metrics, timings = run_cell(run, progress=ctx.progress, return_curve=True)
    curve = metrics.pop("_curve", [])
    if supermasks(source):
        save_checkpoint(ctx.out_dir / "ticket.safetensors", source, run.source_spec())
    return CellOutput(metrics, timings, {"loss": curve} if curve else {})


def study_cells(study: ApproxStudy) -> list[Cell]:
    """Every cell of the study; with an lr grid, every grid point's (run_study keeps the chosen ones)."""
    if study.lr_grid:
        return [c for lr in study.lr_grid for c in study_cells(study.at_lr(lr))]
    return [
        Cell(KIND, run.config_dict(), run.seed, approx_cell, run,
             label=f"h={run.n_heads} {run.variant} {run.method} n={run.width} lr={study.search.lr:g} "
                   f"s={run.seed}/{run.score_seed}",
             device="cpu" if run.method == "construct" else study.device)  # what Ray reserves a GPU for
        for run in study.cells()
    ]


def grid_cells(study: ApproxStudy) -> list[Cell]:
    """The lr grid: every grid point on the selection seeds (the first select_seeds weight seeds, first score
    seed)."""
    sel = replace(study, seeds=study.seeds[: study.select_seeds], score_seeds=study.score_seeds[:1])
    return study_cells(sel)


def grid_spec(study: ApproxStudy) -> Any:
    from sltlab.tasks.selection import GridSpec

    return GridSpec(("search.lr",), "holdout_rel_error", lower_is_better=True,
                    order={"search.lr": list(study.lr_grid)})


def run_sweep(study: ApproxStudy, store: Any, options: ExecOptions, log: Callable[[str], None] = print) -> Any:
    """Run the study into an open store: straight through, or with an lr grid the grid first, then every other
    cell at its problem's chosen lr. Returns the SweepReport of the study's final cells. A study with a claims plan
    records it in the store first (sltlab.tasks.plans): declared before any of its cells runs."""
    if study.claims is not None:
        from sltlab.tasks.plans import record_plan

        record_plan(store, study.name, KIND, study.claims, design={
            "module": study.module, "d_model": study.d_model, "heads": list(study.heads),
            "n_blocks": study.n_blocks, "mlp": study.mlp, "widths": list(study.widths),
            "variants": list(study.variants), "methods": list(study.methods), "seeds": list(study.seeds),
            "score_seeds": list(study.score_seeds), "target": study.target, "target_variant": study.target_variant,
            "lr_grid": list(study.lr_grid), "select_on": study.select_on,
            "run_ids": [c.run_id for c in study_cells(study)]})
    if not study.lr_grid:
        return run_cells(study_cells(study), store, options, log=log)
    from sltlab.tasks.selection import run_selected

    report, selection = run_selected(grid_cells(study), study_cells(study), grid_spec(study), store, options, log)
    chosen = [c for c in selection.choices if c.chosen is not None]
    if chosen:
        import json

        counts: dict[str, int] = {}
        for c in chosen:
            lr = json.loads(c.chosen)[0]  # type: ignore[arg-type]
            counts[f"{lr:g}"] = counts.get(f"{lr:g}", 0) + 1
        log("lr chosen on held-out inputs: " + ", ".join(f"{k} for {v} problem(s)" for k, v in sorted(counts.items())))
    return report


def run_study(study: ApproxStudy, store_path: str | None = None, progress: bool = True,
              log: Callable[[str], None] = print, options: ExecOptions | None = None) -> list[str]:
    """Run every cell of the study not yet finished in the store; return all the cells' run ids, in order.

    Each finished cell is committed at once by the driver (metrics in SQLite, the ticket as safetensors beside
    it), so an interrupted sweep resumes where it stopped. options: where and how (default: serial, quiet)."""
    from sltlab.runs.store import Store

    opts = options or ExecOptions(executor="serial", threads=study.threads, progress=progress)
    with Store(store_path or study.store) as store:
        report = run_sweep(study, store, opts, log=log)
    if report.skipped:
        log(f"approx: {len(report.skipped)} of {len(report.run_ids)} cells already finished; ran {len(report.ran)}")
    return report.run_ids
