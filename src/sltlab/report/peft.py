"""The PEFT study's Markdown report: the metric table, the paired claims, Fisher and change-by-component tables."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sltlab.analysis import fisher as fisher_mod
from sltlab.errors import SltlabError
from sltlab.runs.store import Store
from sltlab.tasks.glue import get_task, load_split
from sltlab.tasks.metrics import compute_metrics, main_metric
from sltlab.tasks.peft.config import (
    PeftConfig,
    SweepConfig,
    base_settings,
    default_base,
    make_config,
    model_label,
    parse_method,
)
from sltlab.tasks.peft.data import fixed_subsample
from sltlab.tasks.peft.fisher import fisher_config
from sltlab.tasks.peft.model import _run_id, table_from_json

#: The paper's claims, as (a, b, relation): ">" a beats b, ">=" a is not worse (non-inferiority within MARGIN),
#: "~" the two are equivalent within MARGIN. Each is tested per task, paired by seed (sltlab.analysis.claims).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("full", "bitfit", ">="),
    ("bitfit", "ln", "~"),
    ("ln", "random", ">"),
    ("full", "ln", ">="),
    ("ln", "ln-fisher@0.5", "~"),
    ("ln", "ln-fisher@0.2", "~"),
    ("ln", "ln-fisher@0.1", "~"),
    # masks over the pretrained weights (issue 13): as good as LN-only? does learning LN with the mask help?
    # how far from full fine-tuning?
    ("mask@0.9", "ln", "~"),
    ("mask+ln@0.9", "mask@0.9", ">"),
    ("full", "mask@0.9", ">="),
)


#: Equivalence margin of "~", in points of the main metric.
MARGIN = 2.0

#: A method is "not better than the majority baseline" on a task when its seed mean is below the baseline or
#: within this many points above it (the table marks such cells with a dagger).
BASELINE_MARGIN = 1.0


@dataclass
class TableCell:
    """The runs of one (task, method label) at its chosen lr: scores in points, per seed."""

    task: str
    label: str
    lr: float
    scores: dict[int, float]
    runs: list[Any]
    grid: dict[float, dict[int, float]]
    #: held-out training rows' main metric (points) per lr and seed: what chose the lr
    held: dict[float, dict[int, float]] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.scores.values()))) if self.scores else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(list(self.scores.values()), ddof=1)) if len(self.scores) > 1 else float("nan")


def collect_cells(sweep: SweepConfig, store: Store) -> dict[tuple[str, str], TableCell]:
    """Finished runs of this sweep's settings grouped by (task, label), at the lr the sweep chose.

    The lr is chosen as the sweep ran it, on the held-out training rows (`holdout_main`), never on dev: by the
    first seed's held-out score (first-seed) or by the seed mean (all). Dev scores are what the table reports.
    """
    want = default_base(sweep.base)
    groups: dict[tuple[str, str], dict[float, list[Any]]] = {}
    order: dict[tuple[str, str], tuple[float, ...]] = {}
    for rec in store.runs("peft"):
        c = rec.config
        if base_settings(c) != want or c["task"] not in sweep.tasks:
            continue
        cfg = PeftConfig(**{**c, "fisher_tasks": tuple(c["fisher_tasks"])})
        lrs = sweep.grid(cfg.method)
        if cfg.lr not in lrs:
            continue  # a run at an lr this sweep's grid does not have (an earlier grid, a side check)
        order[(cfg.task, cfg.label)] = lrs
        groups.setdefault((cfg.task, cfg.label), {}).setdefault(cfg.lr, []).append(rec)
    cells = {}
    first = sweep.seeds[0]
    for key, by_lr in groups.items():
        grid = {lr: {r.seed: 100 * float(r.metrics["main"]) for r in recs} for lr in order[key]
                if (recs := by_lr.get(lr))}
        held = {lr: {r.seed: float(r.metrics.get("holdout_main", float("nan"))) for r in recs}
                for lr in order[key] if (recs := by_lr.get(lr))}

        def rank(lr: float, held: dict[float, dict[int, float]] = held) -> float:
            if len(held) == 1:
                return 0.0
            vals = [held[lr].get(first, float("-inf"))] if sweep.lr_select == "first-seed" else \
                list(held[lr].values())
            v = float(np.mean(vals))
            return v if math.isfinite(v) else float("-inf")

        # in the grid's order, so a tie goes to the lr listed first, as the sweep chose (tasks.peft.sweep.best_lr)
        lr = max(grid, key=rank)
        held_pts = {g: {seed: 100 * v for seed, v in by_seed.items()} for g, by_seed in held.items()}
        cells[key] = TableCell(key[0], key[1], lr, dict(sorted(grid[lr].items())), by_lr[lr], grid, held_pts)
    return cells


def _fmt(x: float, d: int = 1) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{d}f}"


def at_baseline(mean: float, baseline: float | None) -> bool:
    """Whether a seed mean is not better than the task's majority baseline (below it or within BASELINE_MARGIN)."""
    if baseline is None or not math.isfinite(baseline):
        return False
    return not math.isfinite(mean) or mean <= baseline + BASELINE_MARGIN


def _claim_by_task(cells: Mapping[tuple[str, str], TableCell], tasks: list[str]) -> list[str]:
    """The claims' mean paired difference a − b per task (seeds paired), so a pooled verdict can be traced to
    the tasks that carry it."""
    rows = [
        "| claim | " + " | ".join(tasks) + " |",
        "| --- |" + " ---: |" * len(tasks),
    ]
    for a, b, rel in CLAIMS:
        vals = []
        for t in tasks:
            ca, cb = cells.get((t, a)), cells.get((t, b))
            seeds = sorted(set(ca.scores) & set(cb.scores)) if ca and cb else []
            d = [ca.scores[s] - cb.scores[s] for s in seeds] if ca and cb else []
            vals.append(f"{np.mean(d):+.1f} (n={len(d)})" if d else "–")
        if any(v != "–" for v in vals):
            rows.append(f"| {a} {rel} {b} | " + " | ".join(vals) + " |")
    return rows


def plot_scores(
    cells: Mapping[tuple[str, str], TableCell],
    tasks: list[str],
    labels: list[str],
    baselines: Mapping[str, float],
    path: Path,
) -> Path:
    """One panel per task: every seed's dev score per method (dots), the seed mean (bar), the best constant prediction
    (dashed). A picture shows at once which methods leave the baseline on which task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(2.6 * len(tasks) + 1, 3.4), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        for i, lab in enumerate(labels):
            c = cells.get((t, lab))
            if c is None:
                continue
            ys = list(c.scores.values())
            ax.scatter([i] * len(ys), ys, s=14, color="C0", zorder=3)
            ax.hlines(c.mean, i - 0.3, i + 0.3, color="C1", lw=2, zorder=2)
        if t in baselines and math.isfinite(baselines[t]):
            ax.axhline(baselines[t], color="grey", ls="--", lw=1, label="best constant")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{t} ({main_metric(t)})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("dev score (points)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: The design target for masks on a pretrained model (docs/DESIGN.md §5): within this many points of full
#: fine-tuning on every task where full fine-tuning beats the best constant prediction.
MASK_TARGET = 2.0


def _mask_target_rows(
    cells: Mapping[tuple[str, str], TableCell], tasks: list[str], labels: list[str], baselines: Mapping[str, float]
) -> list[str]:
    """The design target, checked per mask method: mask − full (seed means) on the tasks where full fine-tuning
    is better than the best constant prediction."""
    live = [t for t in tasks if (t, "full") in cells and not at_baseline(cells[(t, "full")].mean, baselines.get(t))]
    out: list[str] = []
    for lab in (lab for lab in labels if lab.startswith("mask")):
        diffs = {t: cells[(t, lab)].mean - cells[(t, "full")].mean for t in live if (t, lab) in cells}
        if not diffs:
            continue
        met = all(d >= -MASK_TARGET for d in diffs.values())
        out.append(
            f"- Target: {lab} within {MASK_TARGET:g} points of full fine-tuning where full beats the best constant "
            f"({', '.join(diffs) or 'no task'}): "
            + ", ".join(f"{t} {d:+.1f}" for t, d in diffs.items())
            + (" — **met**." if met else " — **not met**.")
        )
    return ["", *out] if out else []


def claim_set(cells: Mapping[tuple[str, str], TableCell], tasks: list[str],
              baselines: Mapping[str, float] | None = None) -> tuple[Any, list[str]]:
    """The paper's claims, tested per task and paired by seed (the seed draws the head, the only random part of a
    fine-tuned pretrained model), Holm-corrected across all of them (sltlab.analysis.claims). Tasks on which both
    methods sit at the best constant prediction are left out of a claim (their agreement is trivial) and listed.
    Tasks are never pooled: their metrics differ."""
    from sltlab.analysis.claims import ClaimSet, make_claim

    cs = ClaimSet()
    skipped: list[str] = []
    direction = {">": "greater", ">=": "greater", "~": "two-sided"}
    for a, b, rel in CLAIMS:
        for t in tasks:
            ca, cb = cells.get((t, a)), cells.get((t, b))
            if ca is None or cb is None:
                continue
            base = (baselines or {}).get(t)
            if at_baseline(ca.mean, base) and at_baseline(cb.mean, base):
                skipped.append(f"{a} {rel} {b} on {t} (both at the best constant prediction)")
                continue
            seeds = sorted(set(ca.scores) & set(cb.scores))
            x = {sd: ca.scores[sd] for sd in seeds}
            y = {sd: cb.scores[sd] for sd in seeds}
            cs.add(make_claim(f"{a} {rel} {b}", t, a, b, "dev_main (points)", x, y, direction[rel],  # type: ignore
                              MARGIN if rel in (">=", "~") else 0.0, f"{a} {rel} {b}"))
    return cs.finalize(), skipped


def _holds(rel: str, verdict: str) -> str:
    """What a verdict says about a claim of the paper's form."""
    if rel == ">=":
        return {"supported": "holds (a > b)", "equivalent within margin": "holds (a within the margin of b)",
                "contradicted": "fails (a < b)"}.get(verdict, "not shown")
    if rel == "~":
        return {"equivalent within margin": "holds (equivalent)", "supported": "fails (they differ)"}.get(
            verdict, "not shown")
    return {"supported": "holds", "contradicted": "reversed"}.get(verdict, "not shown")


def _claim_rows(
    cells: Mapping[tuple[str, str], TableCell], tasks: list[str], baselines: Mapping[str, float] | None = None
) -> list[str]:
    """One row per claim and task: n seeds, mean paired difference [t CI], p, Holm p, TOST Holm p, MDE."""
    from sltlab.analysis.stats import fmt_p

    cs, skipped = claim_set(cells, tasks, baselines)
    rows = [
        "| claim | task | n (seeds) | mean diff a−b [95% CI] | p | Holm p | TOST Holm p (±margin) | MDE | verdict |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    rel_of = {f"{a} {rel} {b}": rel for a, b, rel in CLAIMS}
    prev = ""
    for c in cs.claims:
        r = c.result
        ci = f"{r.effect:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]" if math.isfinite(r.lo) else f"{r.effect:+.2f} [–]"
        tost = f"{fmt_p(c.p_tost_holm)} (±{c.margin:g})" if c.margin else "–"
        name = c.name if c.name != prev else ""
        prev = c.name
        rows.append(f"| {name} | {c.scope} | {r.n} | {ci} | {fmt_p(r.p)} | {fmt_p(c.p_holm)} | {tost} | "
                    f"{c.mde:.2f} | {c.verdict}: {_holds(rel_of[c.name], c.verdict)} |")
    if skipped:
        rows += ["", "Left out (both methods at the best constant prediction): " + "; ".join(skipped) + "."]
    return rows


def _fisher_tables(sweep: SweepConfig, store: Store) -> tuple[dict[str, Any], list[str]]:
    """Per-task and combined Fisher component tables from the sweep's Fisher runs."""
    cfg = make_config(sweep.tasks[0], "full", 1.0, 0, sweep.base)
    per_task: dict[str, dict[str, torch.Tensor]] = {}
    for t in sorted(set(sweep.tasks) | set(cfg.fisher_tasks)):
        fcfg = fisher_config(cfg, t)
        rid = _run_id("peft-fisher", fcfg)
        path = store.artifact_path(rid) / "fisher.safetensors"
        if store.is_finished(rid) and path.is_file():
            per_task[t] = fisher_mod.load_fisher(path)
    if not per_task:
        return {}, []
    norm = fisher_mod.normalise_per_task(per_task)
    tables = {t: fisher_mod.aggregate_by_component(f, "mean") for t, f in norm.items()}
    combined = fisher_mod.aggregate_by_component(fisher_mod.combine_fisher(per_task), "mean")
    return {"combined": combined, **tables}, sorted(per_task)


def majority_baseline(task: str, base: Mapping[str, Any], data_dir: str | None) -> float:
    """Dev main metric (points) of the best constant prediction: every dev example given one class, the best
    class on the dev set (STS-B: a constant score, correlation 0).

    Why: at CPU scale a fine-tuned model may not leave this baseline, and the table must say so. The best class
    on dev, not the training majority: on a balanced task (RTE) the training majority is a coin flip and the
    other class is what a collapsed model that predicts one class scores.
    """
    info = get_task(task)
    train = fixed_subsample(load_split(task, "train", data_dir=data_dir), base["subsample"], base["data_seed"])
    dev = fixed_subsample(load_split(task, info.dev_splits[0], data_dir=data_dir), base["dev_limit"], base["data_seed"])
    assert train.labels is not None and dev.labels is not None
    if info.is_regression:
        const = np.full(len(dev), float(np.mean(train.labels)))
        return 100 * compute_metrics(task, const, dev.labels)[main_metric(task)]
    classes = np.union1d(train.labels.astype(np.int64), dev.labels.astype(np.int64))
    return max(100 * compute_metrics(task, np.full(len(dev), int(c)), dev.labels)[main_metric(task)] for c in classes)


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
    baselines: dict[str, float] = {}
    with contextlib.suppress(SltlabError):  # no data here: the report still renders from the store alone
        baselines = {t: majority_baseline(t, base, data_dir) for t in tasks}
    masks = any(lab.startswith("mask") for lab in labels)
    dev_set = "every example" if base["dev_limit"] is None else f"a fixed subsample of {base['dev_limit']} examples"
    lines = [
        "# Parameter-efficient fine-tuning: LayerNorm, BitFit, random and Fisher-selected subsets"
        + (", and masks over the pretrained weights" if masks else ""),
        "",
        f"Model: `{base['model']}` ({model_label(base['model'])}). Main metric in points (x100) on the dev "
        f"set ({dev_set}), mean ± sd over seeds at the "
        f"learning rate chosen on held-out training rows ({select}; dev never chooses). Training: "
        f"{base['subsample'] or 'all'} examples, "
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
        + " | mean over tasks | trainable pretrained scalars (+ head) | share of pretrained | stored: floats, "
        "mask bits (bytes) |",
        "| --- |" + " ---: |" * (len(tasks) + 4),
    ]
    for lab in labels:
        row, means, share, trainable, stored = [], [], "", "", "–"
        for t in tasks:
            c = cells.get((t, lab))
            if c is None:
                row.append("not run")
                continue
            means.append(c.mean)
            mark = " †" if at_baseline(c.mean, baselines.get(t)) else ""
            row.append(f"{_fmt(c.mean)} ± {_fmt(c.sd)} (n={len(c.scores)}){mark}")
            m = c.runs[0].metrics
            trainable = f"{m['trainable_body']:,}"
            share = f"{100 * m['share']:.4f}%"
            if "stored_bytes" in m:  # runs from before issue 13 did not record it
                bits = f", {m['mask_bits']:,} bits over {m['mask_weights']:,} weights" if m["mask_bits"] else ""
                stored = f"{m['stored_floats']:,}{bits} ({m['stored_bytes']:,})"
        avg = _fmt(float(np.mean(means))) if len(means) == len(tasks) else "–"
        lines.append(f"| {lab} | " + " | ".join(row) + f" | {avg} | {trainable} | {share} | {stored} |")
    if baselines:
        majority = [_fmt(baselines[t]) for t in tasks]
        lines.append("| *best constant prediction* | " + " | ".join(majority) + " | | 0 | 0% | 0 |")
        flagged = sum(at_baseline(c.mean, baselines.get(t)) for (t, _), c in cells.items())
        fig = plot_scores(cells, tasks, labels, baselines, path.with_name(path.stem + "_scores.png"))
        lines += [
            "",
            f"† not better than the best constant prediction on dev (one class for every example; STS-B: a constant "
            f"score): the seed mean is below it or "
            f"within {BASELINE_MARGIN:g} point above it ({flagged} of {len(cells)} cells). Every seed's score "
            f"per task and method: `{fig.name}`.",
        ]
        lines += _mask_target_rows(cells, tasks, labels, baselines)
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
            wall = np.mean([r.timings.get("wall_s", r.metrics.get("wall_s", 0.0)) for r in c.runs])
            lines.append(
                f"| {t} | {lab} | {c.lr:g} | {seeds} | {allm} | {m['trainable']:,} | "
                f"{100 * m['share']:.4f}% | {wall:.0f} |"
            )
    lines += [
        "",
        "## Learning-rate grid (every run)",
        "",
        "The lr is chosen on the held-out training rows (`holdout_main`, never seen in training or by the Fisher "
        "selection); dev, beside it, chose nothing.",
        "",
        "| task | method | lr | held-out main by seed (chooses) | dev main by seed (reported) |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for t in tasks:
        for lab in labels:
            c = cells.get((t, lab))
            for lr, by_seed in sorted((c.grid if c else {}).items()):
                mark = " (chosen)" if lr == c.lr else ""
                held = c.held.get(lr, {})
                lines.append(
                    f"| {t} | {lab} | {lr:g}{mark} | "
                    + (", ".join(f"s{s}: {_fmt(v)}" for s, v in sorted(held.items())) or "–") + " | "
                    + ", ".join(f"s{s}: {v:.1f}" for s, v in sorted(by_seed.items()))
                    + " |"
                )
    lines += [
        "",
        "## Does the paper's ordering hold? (full ≥ BitFit ≈ LN > random)",
        "",
        "Each claim is tested per task (tasks are never pooled: their metrics differ), paired by seed at each "
        "method's chosen lr: mean paired difference with its t interval, paired t p, Holm across every row, and "
        f"TOST within ±{MARGIN:g} points for '≥' (non-inferiority) and '~' (equivalence); MDE = the difference the "
        "paired t test detects with power 0.8 at that n and the strictest Holm alpha. With 3 seeds little can be "
        "shown: 'not shown' is not 'false' (`sltlab.analysis.claims`).",
        "",
    ]
    lines += _claim_rows(cells, tasks, baselines)
    lines += ["", "Mean paired difference a − b (points) by task:", "", *_claim_by_task(cells, tasks)]
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
