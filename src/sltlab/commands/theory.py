"""`sltlab theory`: the theory's own experiments (Otsuka et al. 2025) with constructed tickets.

Each experiment is a section of the TOML config; every cell is a kind="theory" run in the store, so a rerun
skips finished cells; CSV and PNG files go to --out-dir (default runs/theory).
- width:     target MHA (d=16, H=2 by default): constructed vs searched tickets' error against source width,
             both laws fitted past the threshold, and the bound's shape eps(w) = H d^1.5 exp(-w / d) beside;
- threshold: the width the construction needs, against d and against the source's init scale;
- angular:   the angular-velocity task: trained single-head target, untrained B-block stacks (per block);
- seqlen:    the same against the sequence length T (the theory says the error does not grow with T);
- warmstart: gradient search started from the constructed ticket, against search from scratch.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sltlab.analysis.fits import fit_laws
from sltlab.errors import ConfigError
from sltlab.runs.config import from_dict, load_toml
from sltlab.runs.store import Store, atomic_write_bytes, atomic_write_text
from sltlab.tickets.construct import ConstructConfig, NormAssumptionWarning

EXPERIMENTS = ("width", "threshold", "angular", "seqlen", "warmstart")
DEFAULT_CONFIG = "configs/theory_quick.toml"


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
class TheoryConfig:
    """All five experiments; a TOML file may set any subset of their fields."""

    width: WidthExp = field(default_factory=WidthExp)
    threshold: ThresholdExp = field(default_factory=ThresholdExp)
    angular: AngularExp = field(default_factory=AngularExp)
    seqlen: SeqlenExp = field(default_factory=SeqlenExp)
    warmstart: WarmstartExp = field(default_factory=WarmstartExp)
    construct: ConstructConfig = field(default_factory=ConstructConfig)


# ------------------------------------------------------------------------------------------------------------
# Plumbing: one stored cell, CSV, PNG.
# ------------------------------------------------------------------------------------------------------------


class Runner:
    """Runs a cell unless the store already has it finished; a failure is recorded, then re-raised."""

    def __init__(self, store: Store, progress: bool):
        self.store, self.progress = store, progress
        self.done = self.ran = self.norm_warned = 0
        self.norm_experiments: set[Any] = set()

    def __call__(self, config: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        run_id = self.store.start("theory", config, config.get("seed"))
        if self.store.is_finished(run_id):
            self.done += 1
            return self.store.get(run_id).metrics
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NormAssumptionWarning)
                metrics = fn()
        except BaseException as err:
            self.store.fail(run_id, f"{type(err).__name__}: {err}")
            raise
        norm = [w for w in caught if issubclass(w.category, NormAssumptionWarning)]
        for w in caught:
            if w not in norm:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        metrics["norm_assumption_warning"] = bool(norm)
        if norm:
            # Said once per experiment, then counted: every cell's flag is in the store.
            self.norm_warned += 1
            if config.get("experiment") not in self.norm_experiments:
                self.norm_experiments.add(config.get("experiment"))
                warnings.warn(
                    f"[{config.get('experiment')}] {norm[0].message} (later cells: counted, flag "
                    "metrics.norm_assumption_warning)",
                    NormAssumptionWarning,
                    stacklevel=2,
                )
        self.store.finish(run_id, metrics, {"total_s": time.perf_counter() - t0})
        self.ran += 1
        return metrics


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def save_png(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _figure(ncols: int = 1, width: float = 5.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.0), squeeze=False)
    return fig, axes[0]


def mean_by(
    rows: list[dict[str, Any]], keys: tuple[str, ...], value: str, geometric: bool = True
) -> dict[tuple, float]:
    """Mean of `value` per group: geometric by default (errors span decades), arithmetic for fractions."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(float(r[value]))
    if not geometric:
        return {k: float(np.mean(v)) for k, v in groups.items()}
    return {k: float(np.exp(np.mean(np.log(np.maximum(v, 1e-30))))) for k, v in groups.items()}


def bound_width(d: int, heads: int, eps: float) -> float:
    """The bound's shape with constant 1: d * ln(H d^1.5 / eps)."""
    return d * math.log(heads * d**1.5 / eps)


REACH_TOL = 0.01


def threshold_of(rows: list[dict[str, Any]], tol: float = REACH_TOL) -> float:
    """The construction's threshold: the smallest width from which (for it and every wider width) at most
    `tol` of the target's merged entries lie outside the source's reachable range, on average over seeds.

    Below it, entries that no subset of candidates can add up to set the error (a range problem, fixed by more
    width or a larger init scale); above it the subset-sum resolution does, which improves exponentially."""
    by_w: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        by_w[int(r["width"])].append(float(r["unreachable_frac"]))
    ok = [w for w in sorted(by_w) if all(np.mean(by_w[v]) <= tol for v in by_w if v >= w)]
    return float(ok[0]) if ok else float("nan")


def merged_entries(d: int, heads: int, blocks: int = 1) -> int:
    """How many subset-sum problems a construction solves: (QK, VO) x heads x d x d per block."""
    return 2 * heads * d * d * blocks


def fit_means_past(rows: list[dict[str, Any]], start: float, floor: float) -> dict[str, Any]:
    """Both laws fitted on the seed-averaged curve (geometric mean per width) for widths >= start.

    Why besides the pooled fit: one barely reachable entry out of 2 H d^2 sets a cell's error, so single cells
    scatter by decades around the trend; the mean over seeds is the curve the theory speaks about."""
    past = [r for r in rows if r["width"] >= start]
    means = mean_by(past, ("width",), "rel_error")
    ws = [w for (w,) in sorted(means) if means[(w,)] > floor]
    return fit_laws(ws, [means[(w,)] for w in ws])


def fit_past(rows: list[dict[str, Any]], start: float, floor: float) -> dict[str, Any]:
    """Both laws fitted on widths >= start, excluding errors under the numerical floor."""
    pts = [(r["width"], r["rel_error"]) for r in rows if r["width"] >= start and r["rel_error"] > floor]
    fit = fit_laws([p[0] for p in pts], [p[1] for p in pts])
    fit["below_floor"] = sum(1 for r in rows if r["width"] >= start and r["rel_error"] <= floor)
    return fit


# ------------------------------------------------------------------------------------------------------------
# Experiments.
# ------------------------------------------------------------------------------------------------------------


def _construct_cell(run: Any, construct: ConstructConfig) -> dict[str, Any]:
    """run_cell for method construct, with this command's solver settings (same models and test inputs)."""
    from sltlab.nn.spec import build_model
    from sltlab.tasks.approx import evaluate_pair, random_inputs
    from sltlab.tickets.construct import construct_ticket
    from sltlab.tickets.supermask import mask_density

    s = run.study
    target, source = build_model(run.target_spec()), build_model(run.source_spec())
    info = construct_ticket(source, target, construct)
    info.pop("per_layer_construct")
    m = evaluate_pair(source, target, random_inputs(run.seed, s.n_test, s.seq_len, s.d_model, "test"))
    return {**m, **info, "density": mask_density(source), "search_s": info["construct_s"]}


def run_width(cfg: TheoryConfig, runner: Runner, out: Path) -> dict[str, Any]:
    from sltlab.tasks.approx import ApproxStudy, run_cell
    from sltlab.tickets.search import SearchConfig

    e = cfg.width
    rows = []
    cells = []
    for variant in e.variants:
        for method in e.methods:
            if method != "construct" and variant not in e.search_variants:
                continue
            widths = e.widths if method == "construct" else e.search_widths
            inits = (e.source_init,) if method == "construct" else e.search_inits
            seeds = e.seeds if method == "construct" else e.search_seeds
            for w, init, s in ((w, i, s) for w in widths for i in inits for s in seeds):
                study = ApproxStudy(
                    name="theory-width",
                    d_model=e.d_model,
                    heads=(e.heads,),
                    widths=(w,),
                    variants=(variant,),
                    methods=(method,),
                    seeds=(s,),
                    source_init=init,
                    source_gain=e.source_gain,
                    seq_len=e.seq_len,
                    n_train=e.n_train,
                    n_test=e.n_test,
                    search=SearchConfig(steps=e.search_steps, lr=e.search_lr),
                )
                cells.append(study.cells()[0])
    for cell in tqdm(cells, desc="theory width", disable=not runner.progress):
        conf = {"experiment": "width", **cell.config_dict(), "construct": asdict(cfg.construct)}

        def fn(cell=cell) -> dict[str, Any]:
            if cell.method == "construct":
                return _construct_cell(cell, cfg.construct)
            _, m, t = run_cell(cell)
            m.pop("per_layer_density", None)
            return {**m, "search_s": t["search_s"]}

        m = runner(conf, fn)
        rows.append(
            {
                "variant": cell.variant,
                "method": cell.method if cell.method == "construct" else f"{cell.method}/{cell.study.source_init}",
                "width": cell.width,
                "seed": cell.seed,
                "rel_error": m["rel_error"],
                "unreachable_entries": m.get("unreachable_entries", -1),
                "unreachable_frac": m.get("unreachable_entries", -1) / merged_entries(e.d_model, e.heads),
                "density": m.get("density", float("nan")),
                "find_s": m.get("search_s", float("nan")),
            }
        )
    write_csv(out / "width.csv", rows)
    summary: dict[str, Any] = {}
    fig, axes = _figure(1, width=8.5)
    ax = axes[0]
    labels = sorted({r["method"] for r in rows})
    for variant in e.variants:
        for method in labels:
            sub = [r for r in rows if r["variant"] == variant and r["method"] == method]
            if not sub:
                continue
            start = threshold_of(sub) if method == "construct" else min(r["width"] for r in sub)
            fit = fit_past(sub, start if math.isfinite(start) else math.inf, e.floor)
            fit["threshold"] = start
            summary[f"{variant}/{method}"] = fit
            fitm = fit_means_past(sub, start if math.isfinite(start) else math.inf, e.floor)
            summary[f"{variant}/{method} seed-mean fit"] = fitm
            if method == "construct":
                # How much the fit depends on where the threshold is put: R^2 for every possible start.
                summary[f"{variant}/construct R2 by start width (pooled / seed means)"] = {
                    str(w): f"{fit_past(sub, w, e.floor)['exp_r2']:.3f} / "
                    f"{fit_means_past(sub, w, e.floor)['exp_r2']:.3f}"
                    for w in sorted({r["width"] for r in sub})[:-2]
                }
            g = mean_by(sub, ("width",), "rel_error")
            ws = sorted(k[0] for k in g)
            line = ax.semilogy(ws, [g[(w,)] for w in ws], "o-", label=f"{method} ({variant})")[0]
            ax.semilogy(
                [r["width"] for r in sub],
                [r["rel_error"] for r in sub],
                ".",
                color=line.get_color(),
                alpha=0.35,
            )
            if method == "construct" and math.isfinite(fitm["exp_slope"]):
                xs = np.array([w for w in ws if w >= start])
                ax.semilogy(
                    xs,
                    np.exp(fitm["exp_intercept"] + fitm["exp_slope"] * xs),
                    "--",
                    color=line.get_color(),
                    label=f"exp fit R²={fitm['exp_r2']:.3f} (seed means; pooled {fit['exp_r2']:.2f})",
                )
    ws = np.array(sorted({r["width"] for r in rows}), dtype=float)
    ax.semilogy(
        ws,
        e.heads * e.d_model**1.5 * np.exp(-ws / e.d_model),
        ":",
        color="gray",
        label="bound shape H d^1.5 e^(-w/d)",
    )
    ax.axhline(e.floor, color="k", lw=0.5, alpha=0.5)
    ax.set_ylim(max(1e-8, e.floor / 10), 5)
    ax.set_xlabel("source width n (per head)")
    ax.set_ylabel("relative output error (held out)")
    ax.set_title(f"MHA d={e.d_model}, H={e.heads}: constructed vs searched")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_png(fig, out / "width.png")
    return summary


def _threshold_cell(
    d: int, heads: int, width: int, seed: int, gain: float, e: ThresholdExp, construct: ConstructConfig
) -> dict[str, Any]:
    from sltlab.tasks.approx import ApproxStudy

    study = ApproxStudy(
        name="theory-threshold",
        d_model=d,
        heads=(heads,),
        widths=(width,),
        variants=("none",),
        methods=("construct",),
        seeds=(seed,),
        source_init=e.source_init,
        source_gain=gain,
        seq_len=e.seq_len,
        n_train=1,
        n_test=e.n_test,
    )
    return _construct_cell(study.cells()[0], construct)


def run_threshold(cfg: TheoryConfig, runner: Runner, out: Path) -> dict[str, Any]:
    e = cfg.threshold
    grid = [(d, 1.0) for d in e.d_models] + [
        (e.gain_d_model, g) for g in e.gains if not (g == 1.0 and e.gain_d_model in e.d_models)
    ]
    rows = []
    jobs = [(d, g, d * k, s) for d, g in grid for k in e.per_coordinate for s in e.seeds]
    for d, g, w, s in tqdm(jobs, desc="theory threshold", disable=not runner.progress):
        conf = {
            "experiment": "threshold",
            "d_model": d,
            "heads": e.heads,
            "width": w,
            "seed": s,
            "gain": g,
            "source_init": e.source_init,
            "seq_len": e.seq_len,
            "n_test": e.n_test,
            "construct": asdict(cfg.construct),
        }
        m = runner(conf, lambda d=d, w=w, s=s, g=g: _threshold_cell(d, e.heads, w, s, g, e, cfg.construct))
        rows.append(
            {
                "d_model": d,
                "gain": g,
                "width": w,
                "per_coordinate": w // d,
                "seed": s,
                "rel_error": m["rel_error"],
                "unreachable_entries": m["unreachable_entries"],
                "unreachable_frac": m["unreachable_entries"] / merged_entries(d, e.heads),
                "qk_norm_ratio": m["qk_norm_ratio"],
                "vo_norm_ratio": m["vo_norm_ratio"],
            }
        )
    write_csv(out / "threshold.csv", rows)
    summary = {}
    fig, axes = _figure(3)
    for d, g in grid:
        sub = [r for r in rows if r["d_model"] == d and r["gain"] == g]
        means = mean_by(sub, ("width",), "rel_error")
        ws = sorted(k[0] for k in means)
        reach = threshold_of(sub)
        eps_w = next((w for w in ws if means[(w,)] <= e.eps), float("nan"))
        fit = fit_past(sub, reach if math.isfinite(reach) else math.inf, 3e-6)
        fitm = fit_means_past(sub, reach if math.isfinite(reach) else math.inf, 3e-6)
        summary[f"d={d},gain={g}"] = {
            "d_model": d,
            "gain": g,
            "threshold_reach": reach,
            "width_at_eps": eps_w,
            "bound_shape": bound_width(d, e.heads, e.eps),
            "exp_r2": fit["exp_r2"],
            "power_r2": fit["power_r2"],
            "exp_r2_seed_means": fitm["exp_r2"],
            "power_r2_seed_means": fitm["power_r2"],
            "exp_decay_width": fit["exp_decay_width"],
            "n_fit": fit["n_points"],
        }
        if g == 1.0:
            axes[0].semilogy(ws, [means[(w,)] for w in ws], "o-", ms=3, label=f"d={d}")
        if d == e.gain_d_model:
            axes[1].semilogy(ws, [means[(w,)] for w in ws], "o-", ms=3, label=f"gain={g}")
    axes[0].set_title(f"H={e.heads}, gain 1: error vs width, by d")
    axes[1].set_title(f"d={e.gain_d_model}: error vs width, by init scale")
    for ax in axes[:2]:
        ax.axhline(e.eps, color="gray", lw=0.5)
        ax.set_xlabel("source width n")
        ax.set_ylabel("relative error")
        ax.legend(fontsize=7)
    ds = [v for v in summary.values() if v["gain"] == 1.0]
    axes[2].plot([v["d_model"] for v in ds], [v["width_at_eps"] for v in ds], "o-", label=f"width at error {e.eps}")
    axes[2].plot([v["d_model"] for v in ds], [v["threshold_reach"] for v in ds], "s-", label="reach threshold")
    axes[2].plot([v["d_model"] for v in ds], [v["bound_shape"] for v in ds], ":", label="d ln(H d^1.5/eps)")
    axes[2].set_xlabel("d_model")
    axes[2].set_ylabel("width")
    axes[2].set_title("threshold vs d")
    axes[2].legend(fontsize=7)
    save_png(fig, out / "threshold.png")
    return summary


def run_angular(cfg: TheoryConfig, runner: Runner, out: Path) -> dict[str, Any]:
    from sltlab.tasks import angular as ang

    e = cfg.angular
    rows, stack_rows = [], []
    targets: dict[int, Any] = {}
    jobs = [(g, w, s) for g in e.gains for w in e.widths for s in e.seeds]
    for g, w, s in tqdm(jobs, desc="theory angular", disable=not runner.progress):
        acfg = ang.AngularConfig(
            seq_len=e.seq_len,
            target_width=e.target_width,
            train_steps=e.train_steps,
            n_test=e.n_test,
            seed=s,
            source_gain=g,
        )
        conf = {"experiment": "angular-mha", **asdict(acfg), "width": w, "construct": asdict(cfg.construct)}

        def fn(acfg=acfg, w=w, s=s) -> dict[str, Any]:
            if s not in targets:
                targets[s] = ang.train_target(acfg)
            target, tm = targets[s]
            src, info = ang.mha_ticket(target, w, acfg, cfg.construct)
            x, y = ang.angular_data(acfg.n_test, acfg.seq_len, s, "test")
            info.pop("solver_counts", None)
            return {**tm, **info, **ang.evaluate_mha_ticket(target, src, x, y)}

        m = runner(conf, fn)
        rows.append(
            {
                "gain": g,
                "width": w,
                "seed": s,
                "rel_error": m["rel_error"],
                "target_test_mse": m["target_test_mse"],
                "ticket_mse": m["ticket_mse"],
                "label_var": m["label_var"],
                "unreachable_entries": m["unreachable_entries"],
                "unreachable_frac": m["unreachable_entries"] / merged_entries(2, 1),
                "vo_norm_ratio": m["vo_norm_ratio"],
            }
        )
    jobs2 = [(b, w, s) for b in e.blocks for w in e.stack_widths for s in e.seeds]
    for b, w, s in tqdm(jobs2, desc="theory angular stacks", disable=not runner.progress):
        acfg = ang.AngularConfig(seq_len=e.seq_len, target_width=e.target_width, n_test=e.n_test, seed=s)
        conf = {
            "experiment": "angular-stack",
            **asdict(acfg),
            "blocks": b,
            "width": w,
            "construct": asdict(cfg.construct),
        }
        m = runner(conf, lambda acfg=acfg, b=b, w=w: ang.stack_ticket_errors(b, w, acfg, construct=cfg.construct))
        for i, err in enumerate(m["per_block_rel_error"]):
            stack_rows.append({"blocks": b, "block": i + 1, "width": w, "seed": s, "rel_error": err})
    write_csv(out / "angular_mha.csv", rows)
    write_csv(out / "angular_stack.csv", stack_rows)
    fig, axes = _figure(2)
    summary: dict[str, Any] = {}
    for g in e.gains:
        sub = [r for r in rows if r["gain"] == g]
        means = mean_by(sub, ("width",), "rel_error")
        ws = sorted(k[0] for k in means)
        axes[0].semilogy(ws, [means[(w,)] for w in ws], "o-", label=f"source gain {g}")
        reach = threshold_of(sub)
        summary[f"mha gain={g}"] = {
            "threshold_reach": reach,
            **fit_past(sub, reach, 3e-6),
            "ticket_mse_at_max_width": float(np.mean([r["ticket_mse"] for r in sub if r["width"] == max(ws)])),
            "target_test_mse": float(np.mean([r["target_test_mse"] for r in sub])),
            "label_var": sub[0]["label_var"],
        }
    axes[0].set_title(f"trained 1-head MHA (d=2, T={e.seq_len})")
    bmax = max(e.blocks)
    for blk in range(1, bmax + 1):
        sub = [r for r in stack_rows if r["blocks"] == bmax and r["block"] == blk]
        means = mean_by(sub, ("width",), "rel_error")
        ws = sorted(k[0] for k in means)
        axes[1].semilogy(ws, [means[(w,)] for w in ws], "o-", label=f"block {blk} of {bmax}")
    for b in e.blocks:
        sub = [r for r in stack_rows if r["blocks"] == b and r["block"] == b]
        summary[f"stack B={b} final block"] = mean_by(sub, ("width",), "rel_error")
    axes[1].set_title("untrained stack, no norm: per-block error")
    for ax in axes:
        ax.set_xlabel("source width n")
        ax.set_ylabel("relative error")
        ax.legend(fontsize=7)
    save_png(fig, out / "angular.png")
    return summary


def run_seqlen(cfg: TheoryConfig, runner: Runner, out: Path) -> dict[str, Any]:
    from sltlab.tasks import angular as ang

    e = cfg.seqlen
    rows = []
    jobs = [(t, s) for t in e.seq_lens for s in e.seeds]
    for t, s in tqdm(jobs, desc="theory seqlen", disable=not runner.progress):
        acfg = ang.AngularConfig(seq_len=t, train_steps=e.train_steps, n_test=e.n_test, seed=s, source_gain=e.gain)
        target = None
        for w in e.widths:
            conf = {
                "experiment": "seqlen-mha",
                **asdict(acfg),
                "width": w,
                "construct": asdict(cfg.construct),
            }

            def fn(acfg=acfg, w=w, s=s, t=t) -> dict[str, Any]:
                nonlocal target
                if target is None:
                    target = ang.train_target(acfg)
                src, info = ang.mha_ticket(target[0], w, acfg, cfg.construct)
                x, y = ang.angular_data(acfg.n_test, t, s, "test")
                info.pop("solver_counts", None)
                return {**target[1], **info, **ang.evaluate_mha_ticket(target[0], src, x, y)}

            m = runner(conf, fn)
            rows.append({"model": "trained MHA", "seq_len": t, "width": w, "seed": s, "rel_error": m["rel_error"]})
            conf2 = {
                "experiment": "seqlen-stack",
                **asdict(acfg),
                "blocks": e.blocks,
                "width": w,
                "construct": asdict(cfg.construct),
            }
            m2 = runner(
                conf2,
                lambda acfg=acfg, w=w, t=t: ang.stack_ticket_errors(
                    e.blocks, w, acfg, seq_len=t, construct=cfg.construct
                ),
            )
            rows.append(
                {
                    "model": f"untrained stack B={e.blocks}",
                    "seq_len": t,
                    "width": w,
                    "seed": s,
                    "rel_error": m2["rel_error"],
                }
            )
    write_csv(out / "seqlen.csv", rows)
    fig, axes = _figure(1)
    summary: dict[str, Any] = {}
    for model in sorted({r["model"] for r in rows}):
        for w in e.widths:
            sub = [r for r in rows if r["model"] == model and r["width"] == w]
            means = mean_by(sub, ("seq_len",), "rel_error")
            ts = sorted(k[0] for k in means)
            axes[0].loglog(ts, [means[(t,)] for t in ts], "o-", label=f"{model}, n={w}")
            slope = float(np.polyfit(np.log(ts), np.log([means[(t,)] for t in ts]), 1)[0]) if len(ts) > 1 else 0.0
            summary[f"{model}, n={w}"] = {"by_seq_len": {t: means[(t,)] for t in ts}, "loglog_slope": slope}
    axes[0].set_xlabel("sequence length T")
    axes[0].set_ylabel("relative error")
    axes[0].set_title("constructed tickets vs sequence length")
    axes[0].legend(fontsize=7)
    save_png(fig, out / "seqlen.png")
    return summary


def _warm_cell(
    d: int,
    heads: int,
    width: int,
    seed: int,
    lr: float,
    e: WarmstartExp,
    mode: str,
    construct: ConstructConfig,
    progress: bool,
) -> dict[str, Any]:
    from sltlab.nn.spec import build_model
    from sltlab.tasks.approx import ApproxStudy, evaluate_pair, forward_out, random_inputs, search_ticket
    from sltlab.tickets.construct import warm_start
    from sltlab.tickets.search import SearchConfig

    study = ApproxStudy(
        name="theory-warmstart",
        d_model=d,
        heads=(heads,),
        widths=(width,),
        variants=("none",),
        methods=("edge-popup",),
        seeds=(seed,),
        source_init=e.source_init,
        seq_len=e.seq_len,
        n_train=e.n_train,
        n_test=e.n_test,
        search=SearchConfig(steps=e.search_steps, lr=lr),
    )
    run = study.cells()[0]
    target, source = build_model(run.target_spec()), build_model(run.source_spec())
    x = random_inputs(seed, e.n_train, e.seq_len, d, "train")
    xt = random_inputs(seed, e.n_test, e.seq_len, d, "test")
    with torch.no_grad():
        y, _ = forward_out(target, x)

    def evaluate(m: torch.nn.Module) -> float:
        return evaluate_pair(m, target, xt)["rel_error"]

    if mode == "warm":
        out = warm_start(run, source, target, x, y, progress, construct, evaluate)
        out.pop("per_layer_construct", None)
        return out
    res = search_ticket(run, source, target, x, y, progress)
    return {"cold_error": evaluate(source), "cold_final_loss": res["final_loss"]}


def run_warmstart(cfg: TheoryConfig, runner: Runner, out: Path) -> dict[str, Any]:
    e = cfg.warmstart
    rows = []
    jobs = [(w, s, lr, mode) for w in e.widths for s in e.seeds for lr in e.search_lrs for mode in ("warm", "cold")]
    for w, s, lr, mode in tqdm(jobs, desc="theory warmstart", disable=not runner.progress):
        conf = {
            "experiment": f"warmstart-{mode}",
            **asdict(e),
            "width": w,
            "seed": s,
            "lr": lr,
            "construct": asdict(cfg.construct),
        }
        conf.pop("widths")
        conf.pop("seeds")
        conf.pop("search_lrs")
        m = runner(
            conf,
            lambda w=w, s=s, lr=lr, mode=mode: _warm_cell(e.d_model, e.heads, w, s, lr, e, mode, cfg.construct, False),
        )
        if mode == "warm":
            rows.append(
                {
                    "width": w,
                    "seed": s,
                    "lr": lr,
                    "constructed": m["warm_error_before"],
                    "warm_after_search": m["warm_error_after"],
                    "mask_changed_fraction": m["warm_mask_changed_fraction"],
                }
            )
        else:
            rows[-1]["cold_search"] = m["cold_error"]
    write_csv(out / "warmstart.csv", rows)
    fig, axes = _figure(1)
    summary: dict[str, Any] = {}
    for lr in e.search_lrs:
        sub = [r for r in rows if r["lr"] == lr]
        for key, style in (("warm_after_search", "o-"), ("cold_search", "s--")):
            means = mean_by(sub, ("width",), key)
            ws = sorted(k[0] for k in means)
            axes[0].semilogy(ws, [means[(w,)] for w in ws], style, label=f"{key} (lr={lr})")
            summary[f"{key} lr={lr}"] = means
    means = mean_by(rows, ("width",), "constructed")
    ws = sorted(k[0] for k in means)
    axes[0].semilogy(ws, [means[(w,)] for w in ws], "k^-", label="constructed (start)")
    summary["constructed"] = means
    summary["mask_changed_fraction"] = mean_by(rows, ("width", "lr"), "mask_changed_fraction", False)
    axes[0].set_xlabel("source width n")
    axes[0].set_ylabel("relative error")
    axes[0].set_title(f"warm start from the constructed ticket (d={e.d_model}, H={e.heads})")
    axes[0].legend(fontsize=7)
    save_png(fig, out / "warmstart.png")
    return summary


RUNNERS = {
    "width": run_width,
    "threshold": run_threshold,
    "angular": run_angular,
    "seqlen": run_seqlen,
    "warmstart": run_warmstart,
}


# ------------------------------------------------------------------------------------------------------------
# CLI.
# ------------------------------------------------------------------------------------------------------------


def load_config(path: str | None) -> TheoryConfig:
    if path is None:
        return TheoryConfig() if not Path(DEFAULT_CONFIG).is_file() else load_config(DEFAULT_CONFIG)
    data = load_toml(path)
    return from_dict(TheoryConfig, data.get("theory", data), prefix="theory")


def _print_summary(name: str, summary: dict[str, Any]) -> None:
    print(f"== {name}")
    for key, val in summary.items():
        if isinstance(val, dict):
            parts = []
            for k, v in val.items():
                if isinstance(v, float):
                    parts.append(f"{k}={v:.4g}")
                elif isinstance(v, int | str | bool):
                    parts.append(f"{k}={v}")
            print(f"  {key}: " + ", ".join(parts) if parts else f"  {key}: {val}")
        else:
            print(f"  {key}: {val}")


def handle(args: argparse.Namespace) -> int:
    if args.experiment not in (*EXPERIMENTS, "all"):
        raise ConfigError("experiment", f"unknown experiment {args.experiment!r}", " | ".join((*EXPERIMENTS, "all")))
    cfg = load_config(args.config)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = EXPERIMENTS if args.experiment == "all" else (args.experiment,)
    with Store(args.store) as store:
        runner = Runner(store, progress=not args.quiet)
        for name in names:
            summary = RUNNERS[name](cfg, runner, out)
            _print_summary(name, summary)
            atomic_write_text(out / f"{name}_summary.txt", repr(summary) + "\n")
        print(
            f"{runner.ran} cells run ({runner.norm_warned} past the theory's norm assumption), {runner.done} "
            f"already in {args.store}; CSV and PNG in {out}/"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "theory",
        help="the SLT theory's experiments with constructed (subset-sum) tickets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  sltlab theory width --config configs/theory_quick.toml\n"
            "  sltlab theory threshold\n"
            "  sltlab theory angular --out-dir runs/theory\n"
            "  sltlab theory all --store runs/sltlab.db --quiet\n"
        ),
    )
    p.add_argument("experiment", choices=(*EXPERIMENTS, "all"), help="which experiment to run")
    p.add_argument("--config", default=None, help=f"TOML config (default {DEFAULT_CONFIG} when present)")
    p.add_argument("--store", default="runs/sltlab.db", help="results store (SQLite)")
    p.add_argument("--out-dir", default="runs/theory", help="where CSV and PNG files go")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handle)
