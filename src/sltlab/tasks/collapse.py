"""The rank-collapse study: do tickets collapse across depth like the random network they live in, and what does
LayerNorm change? (Dong, Cordonnier & Loukas 2021; Wu et al. 2024.)

Every cell is one (architecture, norm, attention mask, temperature, weight seed, source) and measures, after every
layer of a depth-L network, the collapse metrics of sltlab.analysis.collapse on held-out inputs, plus the same for
the target and the source's relative error against the target layer by layer. The networks:
- target: a narrow random network (per-head width d/H, kaiming-uniform from the weight seed);
- "random": the wide random source itself (per-head width n, `source_init`, every weight kept);
- "constructed": the subset-sum ticket for the target inside the source (sltlab.tickets.construct);
- "searched": an edge-popup ticket inside the source, searched on the output MSE to the target;
- "trained": the source's architecture, dense, every weight trained on the same MSE from the same init.
All four live in the same random weights (the seed's), so "do tickets collapse like their random source" is a
paired comparison by weight seed. Architectures: "attention" (AttentionChain: pure attention under the norm, no
residual, the setting of both papers' collapse results) and "block" (residual blocks, attention only, or with
the ReLU MLP when `mlp`; the MLP source is then the theory's PairedMLP, for every source alike). Attention masks:
full, causal, window (a band |i - j| <= `window`); temperature t divides every attention's logits (target and
source alike). The construction is exact for every mask and temperature (it realises the merged matrices);
search and training see the mask and temperature they are measured with.

Guarantees: every draw is seeded (weights by name, inputs and batches from the weight seed), so a cell gives the
same numbers under every executor on the CPU; cells do not depend on one another. Limits: depth L and width n
are CPU-sized (tens of layers, d = 8); searched and trained networks get a short schedule, so their collapse is
that of a short search, not of a converged one.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sltlab.analysis.claims import Claim, ClaimSpec, ClaimsPlan
from sltlab.errors import ConfigError
from sltlab.nn.init import INIT_SCHEMES, InitSpec, seeded_normal
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig, MultiHeadAttention
from sltlab.runs.config import check_range
from sltlab.runs.executor import Cell, CellContext, CellOutput, ExecOptions, SweepReport, run_cells
from sltlab.runs.store import RunRecord, Store
from sltlab.tickets.construct import ConstructConfig
from sltlab.tickets.search import SearchConfig
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig

KIND = "collapse"
# The study's questions (sltlab.analysis.claims names), in the order the report lists them.
CLAIMS: dict[str, str] = {
    "collapse-like-source": "Do tickets collapse like their random source?",
    "ln-keeps-tickets-off-rank-one": "Does LayerNorm keep tickets off rank one where the random source without it "
                                     "collapses?",
    "collapse-predicts-error": "Does a layer's collapse predict the ticket's error there?",
}


# Where a claim reads a metric across depth: "mean" averages log10 over the layers (how collapsed the network is
# on its way; two networks that reach float64's floor early and late differ), "last" takes the last layer.
WHERE = ("mean", "last")


def default_plan() -> ClaimsPlan:
    """The three questions on mu_rel: a ticket against its random source (two-sided, equivalent within half a
    decade of log10 mu_rel averaged over the layers), a ticket under a norm against the random source without
    one (greater), and the rank correlation across layers of a ticket's collapse with its error (two-sided,
    against 0)."""
    return ClaimsPlan(claim=(
        ClaimSpec("collapse-like-source", "mu_rel@mean", "two-sided", 0.5, CLAIMS["collapse-like-source"]),
        ClaimSpec("ln-keeps-tickets-off-rank-one", "mu_rel@mean", "greater", 0.0,
                  CLAIMS["ln-keeps-tickets-off-rank-one"]),
        ClaimSpec("collapse-predicts-error", "mu_rel", "two-sided", 0.0, CLAIMS["collapse-predicts-error"]),
    ), reference="random")
ARCHS = ("attention", "block")
MASKS = ("full", "causal", "window")
SOURCES = ("random", "constructed", "searched", "trained")


@dataclass(frozen=True)
class CollapseStudy:
    """A sweep: archs x norms x attention shapes x seeds x sources; one run per cell in the store.

    Attention shapes vary one factor at a time from the base (masks[0], temperatures[0]): every other mask at the
    base temperature, every other temperature with the base mask. The base shape runs every source of `sources`;
    the other shapes run `shape_sources` (by default the random network and the constructed ticket, which need
    no search: the search and the training are what costs, and they are measured at the base).
    claims: the plan of the study's claims (CLAIMS names them; `collapse_claims` tests them)."""

    name: str = "collapse"
    archs: tuple[str, ...] = ("attention",)
    mlp: bool = False
    depth: int = 32
    d_model: int = 8
    heads: int = 2
    width: int = 128
    norms: tuple[str, ...] = ("none", "pre-ln", "post-ln", "pre-rms")
    masks: tuple[str, ...] = ("full",)
    window: int = 2
    temperatures: tuple[float, ...] = (1.0,)
    sources: tuple[str, ...] = SOURCES
    shape_sources: tuple[str, ...] = ("random", "constructed")
    seeds: tuple[int, ...] = (0, 1, 2)
    seq_len: int = 16
    n_inputs: int = 64
    n_train: int = 1024
    batch_size: int = 64
    target_init: str = "kaiming-uniform"
    source_init: str = "theory"
    source_gain: float = 1.0
    keep: float = 0.5
    search: SearchConfig = field(default_factory=lambda: SearchConfig(steps=100, lr=0.05))
    train: SearchConfig = field(default_factory=lambda: SearchConfig(steps=100, lr=1e-3))
    construct: ConstructConfig = field(default_factory=ConstructConfig)
    # The study's three questions as a claims plan, declared before the run and recorded in the store when the
    # sweep starts (sltlab.tasks.plans): each claim's collapse metric, direction and equivalence margin (log10).
    claims: ClaimsPlan = field(default_factory=lambda: default_plan())
    store: str = "runs/sltlab.db"
    out_dir: str = "runs/collapse"
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("archs", "norms", "masks", "temperatures", "sources", "shape_sources", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        from sltlab.analysis.collapse import METRICS

        for name, allowed in (("archs", ARCHS), ("masks", MASKS), ("sources", SOURCES),
                              ("shape_sources", SOURCES)):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"study.{name}", "is empty", " | ".join(allowed))
            for i, v in enumerate(values):
                if v not in allowed:
                    raise ConfigError(f"study.{name}[{i}]", f"unknown {name[:-1]} {v!r}", " | ".join(allowed))
        if not self.norms:
            raise ConfigError("study.norms", "is empty", "none, pre-ln, post-ln, pre-rms, post-rms")
        for name in ("archs", "norms", "masks", "temperatures", "sources", "shape_sources", "seeds"):
            values = list(getattr(self, name))
            dup = next((v for v in values if values.count(v) > 1), None)
            if dup is not None:
                raise ConfigError(f"study.{name}", f"{dup!r} appears twice (the same cells twice)", "distinct values")
        for i, v in enumerate(self.norms):
            ns = NormSpec.parse(v, f"study.norms[{i}]")
            if ns.affine != "frozen":
                raise ConfigError(f"study.norms[{i}]", f"{v!r} learns an affine; the study compares fixed norms",
                                  "none, pre-ln, post-ln, pre-rms, post-rms")
        for name in ("depth", "d_model", "heads", "width", "window", "seq_len", "n_inputs", "n_train",
                     "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"study.{name}", f"{getattr(self, name)} must be at least 1", "an integer >= 1")
        if self.d_model % self.heads:
            raise ConfigError("study.heads", f"d_model={self.d_model} is not divisible by {self.heads} heads",
                              "a divisor of d_model")
        if self.width < self.d_model // self.heads:
            raise ConfigError("study.width", f"source width {self.width} is narrower than the target's "
                              f"{self.d_model // self.heads}", f"width >= {self.d_model // self.heads}")
        if self.n_inputs < 2 or self.seq_len < 2:
            raise ConfigError("study.seq_len", "collapse needs at least 2 tokens and 2 sequences",
                              "seq_len >= 2 and n_inputs >= 2")
        if not self.seeds:
            raise ConfigError("study.seeds", "is empty", "a list of weight seeds, e.g. [0, 1, 2]")
        for i, t in enumerate(self.temperatures):
            check_range(f"study.temperatures[{i}]", t, 0.0, 1e3, lo_open=True)
        for name in ("target_init", "source_init"):
            if getattr(self, name) not in INIT_SCHEMES:
                raise ConfigError(f"study.{name}", f"unknown scheme {getattr(self, name)!r}", " | ".join(INIT_SCHEMES))
        check_range("study.source_gain", self.source_gain, 0.0, 1e3, lo_open=True)
        check_range("study.keep", self.keep, 0.0, 1.0, lo_open=True)
        for i, c in enumerate(self.claims.claim):
            if c.name not in CLAIMS:
                raise ConfigError(f"claims.claim[{i}].name", f"unknown claim {c.name!r}", " | ".join(CLAIMS))
            metric, _, where = c.measure.partition("@")
            if metric not in METRICS or where not in ("", *WHERE):
                raise ConfigError(f"claims.claim[{i}].measure", f"unknown collapse measure {c.measure!r}",
                                  f"METRIC@WHERE with METRIC one of {', '.join(METRICS)} and WHERE one of "
                                  f"{', '.join(WHERE)} (no @: the last layer)")
        if self.mlp and "block" not in self.archs:
            raise ConfigError("study.mlp", "an MLP lives in residual blocks", "archs including 'block', or mlp = false")

    def shapes(self) -> list[tuple[str, float]]:
        """(mask, temperature) pairs: the base first, then one factor changed at a time."""
        m0, t0 = self.masks[0], self.temperatures[0]
        return [(m0, t0)] + [(m, t0) for m in self.masks[1:]] + [(m0, t) for t in self.temperatures[1:]]

    def cells(self) -> list[CollapseRun]:
        out = []
        for i, (m, t) in enumerate(self.shapes()):
            for a in self.archs:
                for n in self.norms:
                    for s in self.seeds:
                        for src in self.sources if i == 0 else self.shape_sources:
                            out.append(CollapseRun(self, a, n, m, t, s, src))
        return out


@dataclass(frozen=True)
class CollapseRun:
    study: CollapseStudy
    arch: str
    norm: str
    mask: str
    temperature: float
    seed: int
    source: str

    def config_dict(self) -> dict[str, Any]:
        """What the store hashes: this cell's settings only (a searched cell carries the search's, and so on)."""
        s = self.study
        return {
            "study": s.name, "arch": self.arch, "mlp": s.mlp and self.arch == "block", "depth": s.depth,
            "d_model": s.d_model, "n_heads": s.heads, "width": s.width, "norm": self.norm, "mask": self.mask,
            **({"window": s.window} if self.mask == "window" else {}), "temperature": self.temperature,
            "seed": self.seed, "source": self.source, "seq_len": s.seq_len, "n_inputs": s.n_inputs,
            "target_init": s.target_init, "source_init": s.source_init, "source_gain": s.source_gain,
            **({"keep": s.keep, "search": s.search.to_dict(), "n_train": s.n_train, "batch_size": s.batch_size}
               if self.source == "searched" else {}),
            **({"train": s.train.to_dict(), "n_train": s.n_train, "batch_size": s.batch_size}
               if self.source == "trained" else {}),
            **({"construct": asdict(s.construct)} if self.source == "constructed" else {}),
        }

    @property
    def label(self) -> str:
        return f"{self.arch} {self.norm} {self.mask} t={self.temperature} s={self.seed} {self.source}"

    def _model(self, n_k: int) -> ModelConfig:
        s = self.study
        ns = NormSpec.parse(self.norm)
        return ModelConfig(d_model=s.d_model, n_heads=s.heads, n_layers=s.depth, n_k=n_k, n_v=n_k,
                           d_ff=4 * s.d_model, mlp=self.mlp, activation="relu", norm=ns, final_norm=False)

    @property
    def mlp(self) -> bool:
        return self.study.mlp and self.arch == "block"

    @property
    def arch_name(self) -> str:
        return "attention-chain" if self.arch == "attention" else "stack"

    def target_spec(self) -> ModelSpec:
        s = self.study
        return ModelSpec(self.arch_name, self._model(s.d_model // s.heads),  # type: ignore[arg-type]
                         InitSpec(s.target_init, seed=self.seed))  # type: ignore[arg-type]

    def source_spec(self, masked: bool) -> ModelSpec:
        s = self.study
        mask = SupermaskConfig(keep=s.keep, scale="layer", seed=self.seed) if masked else None
        options = {"mlp_pairs": 2 * max(1, s.width // s.d_model)} if self.mlp else {}
        return ModelSpec(self.arch_name, self._model(s.width),  # type: ignore[arg-type]
                         InitSpec(s.source_init, seed=10_000 + self.seed, gain=s.source_gain),  # type: ignore[arg-type]
                         mask, options)


def set_attention_shape(model: nn.Module, window: int | None, temperature: float) -> nn.Module:
    """Give every attention of `model` the mask band and temperature (sltlab.nn.transformer.MultiHeadAttention)."""
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.window, m.temperature = window, float(temperature)
    return model


def inputs(seed: int, n: int, seq_len: int, d: int, tag: str) -> torch.Tensor:
    return seeded_normal(seed, f"collapse-inputs-{tag}", (n, seq_len, d), "inputs", 1.0)


def hidden_states(model: nn.Module, x: torch.Tensor, causal: bool) -> list[torch.Tensor]:
    """Every layer's output, computed in float64: a random wide source without a norm grows by a factor of
    tens per layer (its merged value matrices are sums of n products) and would overflow float32 in 30 layers,
    while the collapse metrics are scale-free and stay meaningful."""
    with torch.no_grad():
        m = copy.deepcopy(model).double().eval()
        _, _, hidden = m(x.double(), None, causal, return_hidden=True)
    return hidden


def fit_to_target(run: CollapseRun, model: nn.Module, target: nn.Module, cfg: SearchConfig, causal: bool,
                  progress: bool) -> dict[str, Any]:
    """Minimise the output MSE to the target (normalised by the target's power) over whatever in `model` is
    trainable: the mask scores of a masked source (search), or every weight of a dense one (training)."""
    from sltlab.tickets.search import run_search

    s = run.study
    x = inputs(run.seed, s.n_train, s.seq_len, s.d_model, "train")
    with torch.no_grad():
        y = target(x, None, causal)[0]
    denom = y.pow(2).mean().clamp_min(1e-12)
    gen = torch.Generator().manual_seed(run.seed * 7919 + 1)

    def batches():
        while True:
            idx = torch.randint(0, x.shape[0], (s.batch_size,), generator=gen)
            yield x[idx], y[idx]

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xb, yb = batch
        return (m(xb, None, causal)[0] - yb).pow(2).mean() / denom

    history = run_search(model, loss_fn, batches(), cfg, progress=progress, desc=run.label, loss_scale=1.0)
    return {"final_loss": history[-1]["loss"] if history else math.nan,
            "_curve": [[int(h["step"]), float(h["loss"])] for h in history]}


def measure(layers: list[torch.Tensor], prefix: str = "") -> dict[str, list[float]]:
    """Per layer, the batch summary of every collapse metric: name -> [layer 1, ..., layer L]."""
    from sltlab.analysis.collapse import METRICS, batch_summary

    per = [batch_summary(h) for h in layers]
    return {f"{prefix}{k}": [p[k] for p in per] for k in METRICS}


def run_cell(run: CollapseRun, progress: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
    """Build the target and the cell's source, find or build its ticket, measure both layer by layer."""
    from sltlab.tickets.construct import construct_ticket
    from sltlab.tickets.supermask import mask_density

    s = run.study
    t0 = time.perf_counter()
    window = s.window if run.mask == "window" else None
    causal = run.mask == "causal"
    target = set_attention_shape(build_model(run.target_spec()), window, run.temperature)
    masked = run.source in ("constructed", "searched")
    source = set_attention_shape(build_model(run.source_spec(masked)), window, run.temperature)
    x = inputs(run.seed, s.n_inputs, s.seq_len, s.d_model, "test")
    t1 = time.perf_counter()
    extra: dict[str, Any] = {}
    if run.source == "constructed":
        info = construct_ticket(source, target, s.construct, progress)
        extra = {k: info[k] for k in ("qk_max_abs_error", "vo_max_abs_error", "unreachable_entries", "construct_s")}
    elif run.source == "searched":
        extra = fit_to_target(run, source, target, s.search, causal, progress)
    elif run.source == "trained":
        extra = fit_to_target(run, source, target, s.train, causal, progress)
    t2 = time.perf_counter()
    ht, hs = hidden_states(target, x, causal), hidden_states(source, x, causal)
    metrics: dict[str, Any] = {**measure(hs), **measure(ht, "target_"), **measure([x], "input_"), **extra}
    metrics["layer_rel_error"] = [float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(hs, ht,
                                                                                                     strict=True)]
    if masked:
        metrics["density"] = mask_density(source)
    return metrics, {"setup_s": t1 - t0, "find_s": t2 - t1, "measure_s": time.perf_counter() - t2}


def collapse_cell(run: CollapseRun, ctx: CellContext) -> CellOutput:
    metrics, timings = run_cell(run, ctx.progress)
    curve = metrics.pop("_curve", [])
    return CellOutput(metrics, timings, {"loss": curve} if curve else {})


def study_cells(study: CollapseStudy) -> list[Cell]:
    return [Cell(KIND, r.config_dict(), r.seed, collapse_cell, r, label=r.label) for r in study.cells()]


def load_study(path: str) -> CollapseStudy:
    from sltlab.runs.config import from_dict, load_toml

    return from_dict(CollapseStudy, load_toml(path), prefix="study")


def run_study(study: CollapseStudy, store_path: str | None = None, progress: bool = True,
              log: Callable[[str], None] = print, options: ExecOptions | None = None) -> list[str]:
    """Run every cell not yet finished in the store; return all the cells' run ids, in order."""
    opts = options or ExecOptions(executor="serial", threads=study.threads, progress=progress)
    with Store(store_path or study.store) as store:
        report = run_sweep(study, store, opts, log)
    return report.run_ids


def run_sweep(study: CollapseStudy, store: Store, options: ExecOptions,
              log: Callable[[str], None] = print) -> SweepReport:
    """Record the study's claims plan (once, before any cell runs), then run every cell not yet finished."""
    from sltlab.tasks.plans import record_plan

    cells = study_cells(study)
    record_plan(store, study.name, KIND, study.claims, design={
        "archs": list(study.archs), "norms": list(study.norms), "shapes": [list(x) for x in study.shapes()],
        "sources": list(study.sources), "seeds": list(study.seeds), "depth": study.depth,
        "run_ids": [c.run_id for c in cells]})
    return run_cells(cells, store, options, log=log)



# ------------------------------------------------------------------------------------------------ summaries
# Below this relative size the token residual is float64 rounding: a layer there has collapsed completely.
FLOOR = 1e-15
BASE = ("full", 1.0)
RELATIVE = ("mu_rel", "res_l1linf")  # scale-free metrics, floored at FLOOR when shown


def record_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per finished cell: its settings and per-layer lists (metrics of the source and of the target,
    and the source's error against the target)."""
    rows = []
    for r in records:
        c, m = r.config, r.metrics
        if not isinstance(m.get("mu_rel"), list):
            continue
        rows.append({"arch": c["arch"], "norm": c["norm"], "mask": c["mask"], "temperature": float(c["temperature"]),
                     "seed": int(c["seed"]), "source": c["source"], "depth": int(c["depth"]), "metrics": m,
                     "window": c.get("window")})
    return rows


def _log10(v: float) -> float:
    return math.log10(max(float(v), FLOOR)) if math.isfinite(float(v)) else math.nan


def at_depth(row: dict[str, Any], measure: str, target: bool = False) -> float:
    """log10 of a metric across depth, floored at FLOOR (NaN for an overflowed network): "METRIC@mean" averages
    over the layers, "METRIC@last" (or a bare METRIC) reads the last layer."""
    metric, _, where = measure.partition("@")
    vals = [_log10(v) for v in row["metrics"][("target_" if target else "") + metric]]
    return float(np.mean(vals)) if where == "mean" else vals[-1]


def measure_label(measure: str) -> str:
    metric, _, where = measure.partition("@")
    return f"log10 {metric}, mean over layers" if where == "mean" else f"log10 {metric} at the last layer"


def collapse_claims(rows: list[dict[str, Any]], plan: ClaimsPlan | None = None) -> list[Claim]:
    """The plan's claims (sltlab.analysis.claims), paired by weight seed, at the base attention shape (the first
    mask and temperature), per architecture; a claim's measure is log10 of its metric (floored at 1e-15, where
    float64 cannot tell the tokens apart any more) averaged over the layers ("METRIC@mean") or at the last layer
    ("METRIC@last", or a bare METRIC), direction and margin as the plan declares:

    1. collapse-like-source (default two-sided, TOST within 0.5 decades): is each ticket (constructed, searched)
       as collapsed as its random source, per norm?
    2. ln-keeps-tickets-off-rank-one (default greater): is a ticket under LayerNorm / RMSNorm less collapsed
       than the random source without a norm?
    3. collapse-predicts-error (default two-sided): per weight seed, Spearman's rho across layers between the
       ticket's log10 metric and its log10 relative error against the target (averaged over the norms of that
       seed), against 0.
    """
    plan = plan or default_plan()
    return [c for spec in plan.claim for c in _claims_of(rows, spec)]


def _claims_of(rows: list[dict[str, Any]], spec: ClaimSpec) -> list[Claim]:
    from scipy import stats as sps

    from sltlab.analysis.claims import make_claim, shared_units

    shapes = sorted({(r["mask"], r["temperature"]) for r in rows}, key=lambda x: x != BASE)
    base = [r for r in rows if shapes and (r["mask"], r["temperature"]) == shapes[0]]
    metric, question = spec.measure.partition("@")[0], spec.question or CLAIMS[spec.name]
    measure = measure_label(spec.measure)
    claims = []

    def arm(arch: str, norm: str, source: str) -> dict[int, float]:
        return {r["seed"]: at_depth(r, spec.measure) for r in base
                if r["arch"] == arch and r["norm"] == norm and r["source"] == source}

    def dropped_note(n: int) -> str:
        return f"{n} seed(s) left out (an overflowed network or a diverged search/training)" if n else ""

    for arch in sorted({r["arch"] for r in base}):
        norms = sorted({r["norm"] for r in base if r["arch"] == arch}, key=lambda n: (n != "none", n))
        for src in (x for x in ("constructed", "searched") if any(r["source"] == x for r in base)):
            if spec.name == "collapse-like-source":
                for norm in norms:
                    a, b, dropped = shared_units(arm(arch, norm, src), arm(arch, norm, "random"))
                    if a:
                        claims.append(make_claim(spec.name, f"{arch}, {norm}", src, "random", measure, a, b,
                                                 spec.direction, spec.margin, question, dropped_note(dropped)))
            elif spec.name == "ln-keeps-tickets-off-rank-one" and "none" in norms:
                for norm in (n for n in norms if n != "none"):
                    a, b, dropped = shared_units(arm(arch, norm, src), arm(arch, "none", "random"))
                    if a:
                        claims.append(make_claim(spec.name, arch, f"{src} ({norm})", "random (none)", measure, a,
                                                 b, spec.direction, spec.margin, question, dropped_note(dropped)))
            elif spec.name == "collapse-predicts-error":
                rho: dict[int, list[float]] = defaultdict(list)
                for r in base:
                    if r["arch"] != arch or r["source"] != src:
                        continue
                    xy = [(_log10(u), _log10(v)) for u, v in zip(r["metrics"][metric], r["metrics"]["layer_rel_error"],
                                                                strict=True)]
                    ok = [p for p in xy if math.isfinite(p[0]) and math.isfinite(p[1])]
                    if len(ok) >= 3 and len({p[0] for p in ok}) > 1 and len({p[1] for p in ok}) > 1:
                        rho[r["seed"]].append(float(sps.spearmanr(*zip(*ok, strict=True)).statistic))
                a = {u: float(np.mean(v)) for u, v in rho.items()}
                if a:
                    claims.append(make_claim(spec.name, arch, f"{src}: rho({metric}, error) over layers", "0",
                                             "Spearman rho, mean over norms", a, {u: 0.0 for u in a},
                                             spec.direction, spec.margin, question))
    return claims


STYLES = {"random": "-", "constructed": "--", "searched": ":", "trained": "-."}


def mu_figure(rows: list[dict[str, Any]]) -> bytes:
    """mu (top) and mu_rel (bottom) against depth on log-log axes at the base attention shape: one column per
    architecture, one line per source (line style) and norm (colour), the geometric mean over weight seeds; the
    target as thin crosses. mu_rel is floored at 1e-15, where float64 cannot tell the tokens apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sltlab.tasks.theory.output import png_bytes

    base = [r for r in rows if (r["mask"], r["temperature"]) == BASE] or rows
    archs = sorted({r["arch"] for r in base})
    norms = sorted({r["norm"] for r in base}, key=lambda n: (n != "none", n))
    fig, axes = plt.subplots(2, max(1, len(archs)), figsize=(6.2 * max(1, len(archs)), 8.0), squeeze=False)
    for col, arch in enumerate(archs):
        for row, metric in enumerate(("mu", "mu_rel")):
            ax = axes[row][col]
            for i, norm in enumerate(norms):
                sub = [r for r in base if r["arch"] == arch and r["norm"] == norm]
                for src in (s for s in SOURCES if any(r["source"] == s for r in sub)):
                    curve = _geo_curve([r["metrics"][metric] for r in sub if r["source"] == src])
                    if metric == "mu_rel":
                        curve = [max(c, FLOOR) for c in curve]
                    ax.loglog(range(1, len(curve) + 1), curve, linestyle=STYLES[src], color=f"C{i}", lw=1.3,
                              label=f"{norm}, {src}")
                pick = [r for r in sub if r["source"] == sub[0]["source"]] if sub else []
                if pick:
                    curve = _geo_curve([r["metrics"][f"target_{metric}"] for r in pick])
                    if metric == "mu_rel":
                        curve = [max(c, FLOOR) for c in curve]
                    ax.loglog(range(1, len(curve) + 1), curve, "x", ms=3, color=f"C{i}", alpha=0.6,
                              label=f"{norm}, target")
            ax.set_xlabel("layer (depth)")
            ax.set_ylabel(f"{metric} (geometric mean over weight seeds)")
            ax.set_title(f"{arch}: {metric} across depth")
            ax.legend(fontsize=5, ncol=2)
    return png_bytes(fig)


def shapes_figure(rows: list[dict[str, Any]], metric: str = "mu_rel") -> bytes | None:
    """`metric` across depth for every attention shape (mask, temperature) of the random source and the
    constructed ticket: one panel per architecture x norm."""
    from sltlab.tasks.theory.output import figure, png_bytes

    shapes = sorted({(r["mask"], r["temperature"]) for r in rows})
    if len(shapes) < 2:
        return None
    panels = sorted({(r["arch"], r["norm"]) for r in rows}, key=lambda p: (p[0], p[1] != "none", p[1]))
    fig, axes = figure(len(panels), width=4.2)
    for ax, (arch, norm) in zip(axes, panels, strict=False):
        for i, shape in enumerate(shapes):
            for src in ("random", "constructed"):
                pick = [r for r in rows if (r["arch"], r["norm"], r["source"]) == (arch, norm, src)
                        and (r["mask"], r["temperature"]) == shape]
                if pick:
                    curve = _geo_curve([r["metrics"][metric] for r in pick])
                    ax.loglog(range(1, len(curve) + 1), [max(c, FLOOR) for c in curve], linestyle=STYLES[src],
                              color=f"C{i}", label=f"{shape[0]} t={shape[1]:g} {src}")
        ax.set_title(f"{arch}, {norm}")
        ax.set_xlabel("layer")
        ax.set_ylabel(metric)
        ax.legend(fontsize=5)
    return png_bytes(fig)


def _geo_curve(curves: list[list[float]]) -> list[float]:
    arr = np.asarray(curves, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.nanmean(np.log(np.maximum(arr, 1e-300)), axis=0)).tolist()


def summary_table(rows: list[dict[str, Any]], metric: str = "mu_rel") -> list[list[Any]]:
    """Per (arch, mask, temperature, norm, source): the metric at layers 1, L/4, L/2 and L (geometric mean over
    weight seeds; a relative metric floored at FLOOR), the target's at L, the effective rank at L, the seeds."""
    out = []
    keys = sorted({(r["arch"], r["mask"], r["temperature"], r["norm"], r["source"]) for r in rows},
                  key=lambda k: (k[0], k[1] != "full", k[1], k[2], k[3] != "none", k[3], SOURCES.index(k[4])))
    for key in keys:
        pick = [r for r in rows if (r["arch"], r["mask"], r["temperature"], r["norm"], r["source"]) == key]
        floor = FLOOR if metric in RELATIVE else 0.0
        curve = [max(c, floor) for c in _geo_curve([r["metrics"][metric] for r in pick])]
        tgt = [max(c, floor) for c in _geo_curve([r["metrics"][f"target_{metric}"] for r in pick])]
        L = len(curve)
        er = float(np.nanmean([r["metrics"]["erank"][-1] for r in pick]))
        layers = [0, max(L // 4 - 1, 0), max(L // 2 - 1, 0), L - 1]
        out.append([*key, len(pick), *[curve[i] for i in layers], tgt[-1], er])
    return out


def table_headers(rows: list[dict[str, Any]], metric: str = "mu_rel") -> list[str]:
    L = max((r["depth"] for r in rows), default=4)
    return ["arch", "mask", "temperature", "norm", "source", "n seeds",
            *[f"{metric} @ {i}" for i in (1, max(L // 4, 1), max(L // 2, 1), L)], f"target {metric} @ {L}",
            f"erank @ {L}"]
