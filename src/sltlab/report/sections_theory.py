"""The theory with LayerNorm: whole-block constructed tickets (sltlab theory blocks) and rank collapse across depth
(sltlab collapse), each with its figures, tables and claims.

Claims go to ctx.claims, so the report's Holm family and first screen include them:
- blocks: "ln-slows-error-growth" (for each norm against none, paired by weight seed at the widest width: does
  the constructed ticket's error grow less from the first to the last block, log10 ratio, direction less) and
  "construction-beats-search" (each searched setting against the construction at the largest search width,
  log10 error, direction greater), both without a margin (they ask for a difference, not an equivalence);
- collapse: the claims plan the study recorded in the store before its sweep (sltlab.tasks.collapse; the default
  plan when a store predates plans, which the section says).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from sltlab.report.blocks import Section, Table, fmt
from sltlab.report.context import ReportContext
from sltlab.runs.store import RunRecord

# Plan kinds whose claims a section of this module tests (the plans section leaves them to it).
PLAN_KINDS = ("collapse",)


def is_blocks_run(rec: RunRecord) -> bool:
    """A cell of `sltlab theory blocks` (its constructed or searched tickets)."""
    return str(rec.config.get("experiment", "")).startswith("blocks-")


# ----------------------------------------------------------------------------------------------------- blocks
def section_blocks(ctx: ReportContext, theory: list[RunRecord]) -> Section:
    from sltlab.tasks.theory.blocks import exp_of

    s = Section("Theory: constructed tickets for whole blocks, with and without LayerNorm")
    recs = [r for r in theory if is_blocks_run(r) and r.status == "finished"]
    if not recs:
        s.note("No `sltlab theory blocks` runs in the store. Run `sltlab theory blocks configs/theory_blocks.toml`.")
        ctx.missing.append("whole-block construction runs (sltlab theory blocks)")
        return s
    groups: dict[Any, list[RunRecord]] = defaultdict(list)
    for r in recs:  # one study per setting of the experiment (d, heads, depth, source, ...): never mixed
        groups[exp_of(r.config)].append(r)
    s.p("Target: a stack of residual blocks (attention + ReLU MLP); source: the same with per-head width n and the "
        "theory's PairedMLP (two random layers per target layer), theory init. The constructed ticket (subset-sum, "
        "`sltlab.tickets.construct`) is built block by block; the first b blocks of the stack are the b-block "
        "stack, so every depth is read from one stack. Fits of log(error) against width past the threshold (at "
        "most 1% of the subset-sum entries out of range) use the weight seed as the unit (slope: t interval over "
        "seeds; lack-of-fit F test per law); an e-fold width's interval is ∞ where the slope's includes 0.")
    out = {}
    for i, (e, grecs) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0].d_model, kv[0].source_gain))):
        label = f"d={e.d_model}, H={e.heads}, {e.blocks} blocks, source gain {e.source_gain:g}"
        out[label] = _blocks_group(ctx, s, e, grecs, label, i)
    ctx.summary["theory_blocks"] = out
    return s


def _efold(f: dict[str, Any]) -> str:
    def one(x: Any) -> str:
        return "∞" if x == math.inf else fmt(x)

    return f"{one(f.get('e_fold_width', math.nan))} [{one(f.get('e_fold_ci_low', math.nan))}, " \
           f"{one(f.get('e_fold_ci_high', math.nan))}]"


def _blocks_group(ctx: ReportContext, s: Section, e: Any, recs: list[RunRecord], label: str, i: int
                  ) -> dict[str, Any]:
    from sltlab.tasks.theory.blocks import add_rows, summarise_blocks

    rows: list[dict[str, Any]] = []
    bound_rows: list[dict[str, Any]] = []
    search_rows: list[dict[str, Any]] = []
    for r in recs:
        add_rows(r.config, r.metrics, rows, bound_rows, search_rows)
    summary, pngs = summarise_blocks(e, rows, bound_rows, search_rows)
    names = {n: ctx.figures.add(f"theory_{i}_{n}", png) for n, png in pngs.items()}
    s.p(f"**{label}.**")
    s.figure(names["blocks.png"], f"{label}. Left: error against width after block 1 (dashed) and the last block "
             "(solid), geometric mean over weight seeds. Middle: error after every block at the widest width. "
             "Right: the measured error (o) and the stated bound (^) per block (median max-token error over "
             "sequences).")
    fit_rows = []
    for key, f in summary.items():
        if " block " not in key or not isinstance(f, dict) or "threshold" not in f:
            continue
        variant, _, block = key.rpartition(" block ")
        fit_rows.append([variant, block, fmt(f["threshold"]), f.get("n_seeds"), f.get("n_widths"), _efold(f),
                         fmt(f.get("exp_r2", math.nan)), fmt(f.get("power_r2", math.nan)),
                         fmt(f.get("exp_lack_of_fit_p", math.nan)), fmt(f.get("power_lack_of_fit_p", math.nan)),
                         f.get("better", "n/a")])
    s.table(Table(["variant", "after block", "threshold width", "seeds", "widths", "e-fold width [95% CI]",
                   "exp R²", "power R²", "exp lack-of-fit p", "power lack-of-fit p", "law that fits"],
                  fit_rows, merge=1))
    depth_rows = [[k.rpartition(" depth ")[0], k.rpartition("(width ")[2].rstrip(")"),
                   " → ".join(fmt(v) for v in d.values())] for k, d in summary.items() if " depth (width " in k]
    s.p("Relative error after every block at the widest width (geometric mean over weight seeds):")
    s.table(Table(["variant", "width", "error after block 1 → last"], depth_rows))
    bound = [[k.rpartition(" bound ")[0], fmt(d["bound_holds_min"]),
              "; ".join(f"{b.split()[1]}: {v}" for b, v in d.items() if b.startswith("block"))]
             for k, d in summary.items() if " bound (width " in k]
    s.p("The stated bound (sltlab.tickets.bound) beside the measure, per block: measured max-token error / bound / "
        "realised amplification of the incoming error / the norms' largest local gain max|g|/sigma (medians over "
        "sequences, means over seeds). 'holds' is the smallest share of sequences within the bound (1 = always).")
    s.table(Table(["variant", "holds", "block: error / bound / amplification / norm gain"], bound))
    if "blocks_search.png" in names:
        s.figure(names["blocks_search.png"], f"{label}: searched tickets (edge-popup, the same paired source, "
                 "several settings) beside the constructed ones at the same widths.")
        gaps = [[k.removeprefix("gap "), d["n_seeds"], f"{fmt(d['ratio'])} [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]",
                 fmt(d["p"])] for k, d in summary.items() if k.startswith("gap ")]
        s.p("Search / construction error ratio per width, paired by weight seed (geometric mean, 95% t interval "
            "on the log scale):")
        s.table(Table(["setting and width", "seeds", "ratio [95% CI]", "paired t p"], gaps))
    _blocks_claims(ctx, rows, search_rows, e, label)
    return summary


def _blocks_claims(ctx: ReportContext, rows: list[dict[str, Any]], search_rows: list[dict[str, Any]], e: Any,
                   label: str) -> None:
    from sltlab.analysis.claims import make_claim, shared_units

    wmax = max(r["width"] for r in rows)
    growth: dict[str, dict[int, float]] = defaultdict(dict)
    by: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["width"] == wmax and math.isfinite(r["rel_error"]) and r["rel_error"] > 0:
            by[(r["variant"], r["seed"])][r["block"]] = math.log10(r["rel_error"])
    for (v, seed), per in by.items():
        if 1 in per and len(per) > 1:
            growth[v][seed] = per[max(per)] - per[1]
    for v in sorted(growth):
        if v == "none" or "(random target affine)" in v or "none" not in growth:
            continue
        a, b, dropped = shared_units(growth[v], growth["none"])
        if a:
            ctx.claims.add(make_claim(
                "ln-slows-error-growth", f"theory blocks {label}, width {wmax}", v, "none",
                "log10(error after the last block / after block 1)", a, b, "less", 0.0,
                "Does LayerNorm slow the growth of a constructed ticket's error across depth?",
                f"{dropped} seed(s) without both arms" if dropped else ""))
    if not search_rows:
        return
    wsearch = max(r["width"] for r in search_rows)
    built = {r["seed"]: math.log10(max(r["rel_error"], 1e-30)) for r in rows
             if r["width"] == wsearch and r["block"] == e.search_blocks and r["variant"] in
             {x["variant"] for x in search_rows} and math.isfinite(r["rel_error"])}
    for method in sorted({r["method"] for r in search_rows}):
        arm = {r["seed"]: math.log10(max(r["rel_error"], 1e-30)) for r in search_rows
               if r["method"] == method and r["width"] == wsearch and math.isfinite(r["rel_error"])}
        a, b, _ = shared_units(arm, built)
        if a:
            ctx.claims.add(make_claim(
                "construction-beats-search", f"theory blocks {label}, {e.search_blocks} block(s), width {wsearch}",
                method,
                "construct", "log10 relative error", a, b, "greater", 0.0,
                "Is the constructed ticket more accurate than a searched one at the same width?"))


# --------------------------------------------------------------------------------------------------- collapse
def section_collapse(ctx: ReportContext, collapse: list[RunRecord], stores: list[Any]) -> Section:
    from sltlab.tasks.collapse import (
        collapse_claims,
        default_plan,
        mu_figure,
        record_rows,
        shapes_figure,
        summary_table,
        table_headers,
    )
    from sltlab.tasks.plans import study_plans

    s = Section("Rank collapse across depth: random networks, their tickets, trained networks")
    recs = [r for r in collapse if r.status == "finished"]
    if not recs:
        s.note("No `sltlab collapse` runs in the store. Run `sltlab collapse configs/collapse_quick.toml`.")
        ctx.missing.append("rank-collapse runs (sltlab collapse)")
        return s
    s.p("After every layer of a depth-L network, how close its tokens are to one shared vector "
        "(sltlab.analysis.collapse): Wu et al.'s mu(X) = ||X − 1γᵀ||_F and its relative form mu_rel = mu/||X||_F "
        "(also Dong et al.'s residual ratio in the Frobenius norm), the effective rank. Sources, all in the same "
        "random weights of one weight seed: the random network, the constructed ticket and an edge-popup ticket "
        "for a narrow random target, and the same architecture trained dense on the target; the target itself for "
        "reference. 'attention' is pure attention under the norm (no residual), 'block' residual blocks.")
    plans = {sp.study: sp for st in stores for sp in study_plans(st).values() if sp.kind == "collapse"}
    by_study: dict[str, list[RunRecord]] = defaultdict(list)
    for r in recs:
        by_study[str(r.config.get("study", "collapse"))].append(r)
    for study, srecs in sorted(by_study.items()):
        rows = record_rows(srecs)
        if not rows:
            continue
        tag = study.replace("/", "_")
        s.figure(ctx.figures.add(f"collapse_{tag}_mu.png", mu_figure(rows)),
                 f"{study}: mu (top) and mu_rel (bottom) against depth, log-log, one line per source (style) and norm "
                 "(colour), geometric mean over weight seeds; crosses: the target. mu_rel is floored at 1e-15 "
                 "(float64 cannot tell the tokens apart below it).")
        shapes = shapes_figure(rows)
        if shapes is not None:
            s.figure(ctx.figures.add(f"collapse_{tag}_shapes.png", shapes),
                     f"{study}: mu_rel across depth under every attention mask and temperature, for the random "
                     "network and the constructed ticket.")
        s.table(Table(table_headers(rows), summary_table(rows), merge=4))
        sp = plans.get(study)
        if sp is None:
            s.note(f"{study}: no claims plan recorded in the store (a sweep from before plans); the default plan "
                   "(sltlab.tasks.collapse.default_plan) is tested.")
        for c in collapse_claims(rows, sp.plan if sp else default_plan()):
            c.scope = f"{study}: {c.scope}"
            ctx.claims.add(c)
    ctx.summary["collapse_studies"] = sorted(by_study)
    return s
