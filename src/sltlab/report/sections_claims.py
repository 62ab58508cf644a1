"""The report's first screen: the question, the claims table and the answer it adds up to.

Claims come from the studies' pre-declared plans (sltlab.tasks.plans: the `[claims]` table of a study config,
recorded in the store when its sweep started) and from any section that adds to `ctx.claims`. For a plan:

1. its runs are the study's cells (the run ids the plan lists), reduced to the chosen grid point of every problem
   (sltlab.analysis.selection, on the held-out metric, as the sweep chose);
2. they are grouped by stratum (the setting: heads, module, task ...), arm (the norm variant), width and weight seed;
   each measure turns the score seeds of one weight seed into one value (sltlab.report.measures);
3. every arm the plan compares is paired with the reference arm by weight seed, per width, only where both imitate
   the same target (an approx study with `target = "own"` gives no claims between variants: its variants solve
   different problems).
`finalize_claims` then applies Holm and the MDE across every claim of the report (sltlab.analysis.claims).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sltlab.analysis.claims import CLAIM_HEADERS, ClaimSpec, fmt_claim_row, make_claim, shared_units
from sltlab.report import plots
from sltlab.report.blocks import Section, Table
from sltlab.report.context import ReportContext
from sltlab.report.measures import measure
from sltlab.runs.store import RunRecord

QUESTION = ("How does LayerNorm change the existence, quality and distribution of strong lottery tickets in "
            "attention? The hypothesis under test: LayerNorm gives more consistent but less diverse tickets.")


# What the claims layer needs to know about each kind of study: which config key is the arm, which the width,
# which keys make a stratum, what an lr grid varies and the held-out metric it is chosen on.
KINDS: dict[str, dict[str, Any]] = {
    "approx": {"arm": "variant", "width": "width", "strata": ("module", "d_model", "n_heads", "n_blocks", "mlp",
                                                               "method", "keep", "seq_len"),
               "grid": ("search.lr",), "holdout": ("holdout_rel_error", True)},
    "glue": {"arm": "norm", "width": None, "strata": ("task", "method", "d_model", "n_layers", "n_heads", "keep"),
             "grid": ("lr", "affine_lr"), "holdout": ("holdout_main", False)},
}
HALVES = {
    "consistency": ("jaccard_excess", "output_disagreement", "prediction_disagreement", "attention_disagreement"),
    "diversity": ("head_jsd", "attention_entropy"),
    "quality": ("rel_error", "branch_rel_error", "max_token_error", "dev_main"),
}


def _target_of(rec: RunRecord) -> str:
    """The norm of the target an approx run imitates (recorded when it is not the run's own)."""
    from sltlab.nn.norm import NormSpec

    c = rec.config
    if "target_norm" in c:
        return str(c["target_norm"])
    own = NormSpec.parse(str(c.get("norm", c.get("variant", "none"))).replace("+affine", ""))
    return own.name


def selected_runs(kind: str, recs: Sequence[RunRecord]) -> tuple[list[RunRecord], list[dict[str, Any]]]:
    from sltlab.analysis.selection import select

    info = KINDS[kind]
    metric, lower = info["holdout"]
    sel = select(recs, info["grid"], metric, lower)
    return sel.kept, [c.as_dict() for c in sel.choices if c.reason != "single candidate"]


def plan_claims(ctx: ReportContext, plan: Any, records: Sequence[RunRecord], s: Section) -> list[dict[str, Any]]:
    """Add the claims of one study plan to ctx.claims; returns the selection audit rows."""
    kind = plan.kind
    if kind not in KINDS:
        from sltlab.report.sections_theory import PLAN_KINDS

        if kind not in PLAN_KINDS:  # those plans' claims are tested by their own section
            s.note(f"Plan of study {plan.study!r}: kind {kind!r} has no claims rules yet; skipped.")
        return []
    info = KINDS[kind]
    ids = set(plan.design.get("run_ids", []))
    recs = [r for r in records if r.kind == kind and (r.run_id in ids if ids else
                                                      r.config.get("study") == plan.study)]
    if not recs:
        ctx.missing.append(f"runs of study {plan.study!r} (its plan is in the store)")
        return []
    recs, audit = selected_runs(kind, recs)
    groups: dict[tuple, dict[str, dict[Any, dict[int, list[RunRecord]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for r in recs:
        c = r.config
        stratum = tuple((k, json.dumps(c.get(k))) for k in info["strata"] if k in c)
        width = c.get(info["width"]) if info["width"] else None
        groups[stratum][str(c.get(info["arm"]))][width][int(c.get("seed", r.seed or 0))].append(r)
    ref = plan.plan.reference
    for stratum, arms in sorted(groups.items(), key=lambda kv: str(kv[0])):
        label = _stratum_label(plan.study, stratum)
        if ref not in arms:
            s.note(f"{label}: no runs of the reference arm {ref!r}; no claims.")
            continue
        compare = [a for a in (plan.plan.compare or sorted(arms)) if a != ref and a in arms]
        for spec in plan.plan.claim:
            for arm in compare:
                widths = sorted(set(arms[arm]) & set(arms[ref]), key=lambda w: (w is None, w))
                if not plan.plan.per_width and widths:
                    widths = widths[-1:]
                for w in widths:
                    _one_claim(ctx, s, spec, plan, label, arm, ref, w, arms[arm][w], arms[ref][w], kind)
    return audit


def _one_claim(ctx: ReportContext, s: Section, spec: ClaimSpec, plan: Any, label: str, arm: str, ref: str,
               width: Any, a_runs: dict[int, list[RunRecord]], b_runs: dict[int, list[RunRecord]], kind: str) -> None:
    if kind == "approx":
        ta = {_target_of(r) for rs in a_runs.values() for r in rs}
        tb = {_target_of(r) for rs in b_runs.values() for r in rs}
        if ta != tb or len(ta) != 1:
            s.note(f"{label}: {arm} and {ref} imitate different targets ({', '.join(sorted(ta | tb))}); the "
                   f"{spec.name} claim is not tested (use target = \"shared\").")
            return
    m = measure(spec.measure)
    a = {seed: m.fn(ctx, rs) for seed, rs in a_runs.items()}
    b = {seed: m.fn(ctx, rs) for seed, rs in b_runs.items()}
    a, b, dropped = shared_units(a, b)
    scope = label + (f", width {width}" if width is not None else "")
    note = f"{dropped} weight seed(s) without a value in both arms left out" if dropped else ""
    ctx.claims.add(make_claim(spec.name, scope, arm, ref, spec.measure, a, b, spec.direction, spec.margin,
                              spec.question or m.label, note))


def _stratum_label(study: str, stratum: tuple) -> str:
    d = {k: json.loads(v) for k, v in stratum}
    parts = [study]
    if d.get("module") == "stack":
        parts.append(f"{d.get('n_blocks')}-block stack" + (" + MLP" if d.get("mlp") else ""))
    elif d.get("module"):
        parts.append(str(d["module"]))
    if "task" in d:
        parts.append(str(d["task"]))
    for k, lab in (("d_model", "d"), ("n_heads", "H")):
        if k in d:
            parts.append(f"{lab}={d[k]}")
    return " ".join(parts)


def collect_plan_claims(ctx: ReportContext, runs: dict[str, list[RunRecord]], stores: Sequence[Any]) -> Section:
    """Detail section: which plans were found, and how each grid point was chosen (the audit of selection)."""
    from sltlab.tasks.plans import study_plans

    s = Section("Plans and selection", collapsed=True)
    all_runs = [r for rs in runs.values() for r in rs]
    rows, audit_rows = [], []
    for st in stores:
        for name, sp in sorted(study_plans(st).items()):
            first = min((r.started or math.inf for r in all_runs if r.run_id in set(sp.design.get("run_ids", []))),
                        default=math.inf)
            when = "before its first run" if sp.declared_at <= first else "AFTER runs had started"
            rows.append([name, sp.kind, len(sp.plan.claim), sp.plan.reference,
                         ", ".join(c.name for c in sp.plan.claim), when])
            for a in plan_claims(ctx, sp, all_runs, s):
                cands = ", ".join(f"{json.loads(k)}: {v:.4g}" for k, v in a["candidates"].items()
                                  if isinstance(v, float) and math.isfinite(v))
                p = a["problem"]
                where = ", ".join(f"{k}={p[k]}" for k in ("variant", "norm", "width", "task", "n_heads") if k in p)
                audit_rows.append([name, where, a["metric"], a["n_units"], cands, a["chosen"]])
    if not rows:
        s.note("No study in the store declared a claims plan (a `[claims]` table in its config); the claims table "
               "lists only what sections derived.")
    else:
        s.p("Plans recorded in the store (each study's claims, declared before its runs):")
        s.table(Table(["study", "kind", "claims", "reference", "names", "declared"], rows, merge=1))
    if audit_rows:
        s.p("Grid points chosen on held-out training data (never on the dev/test scores reported): mean held-out "
            "metric over the grid's seeds per candidate.")
        s.table(Table(["study", "problem", "held-out metric", "units", "candidates", "chosen"], audit_rows, merge=1))
    return s


def section_answer(ctx: ReportContext) -> Section:
    """The first screen. Call after every section has added its claims and after `ctx.claims.finalize()`."""
    s = Section("The question and the claims")
    s.p(f"**The question.** {QUESTION}")
    claims = ctx.claims.claims
    if not claims:
        s.note("No claims: the store has no study with a claims plan (e.g. `sltlab approx configs/hypothesis.toml`) "
               "and no section derived one.")
        ctx.summary["claims"] = []
        return s
    m = ctx.claims.m
    s.p(f"**The answer, from {len(claims)} claims.** " + _answer(ctx))
    rows = [fmt_claim_row(c.as_dict()) for c in claims]
    s.table(Table(CLAIM_HEADERS, rows, merge=2, html_id="claims"))
    s.p(f"n counts weight seeds (the random networks); score seeds are averaged within each. Effect = compare − "
        f"reference, paired by weight seed, with its paired t interval; p: paired t (exact Wilcoxon in report.json); "
        f"Holm across all {m} p-values of this report (difference tests and TOSTs); MDE: the difference a paired t "
        f"test detects with power {ctx.claims.power:g} at this n and α/m = {ctx.claims.alpha / max(1, m):.2g}. "
        "'equivalent within margin' only from TOST inside the margin declared before the run; 'inconclusive' is "
        "not 'the same'.")
    name = ctx.figures.add("claims_forest.png", plots.forest([c.as_dict() for c in claims]))
    s.figure(name, "Every claim's standardised effect d_z (mean paired difference / its sd) with its 95% interval, "
                   "coloured by verdict.")
    ctx.summary["claims"] = ctx.claims.as_list()
    ctx.summary["claims_meta"] = {"m": m, "alpha": ctx.claims.alpha, "power": ctx.claims.power,
                                  "counts": ctx.claims.counts()}
    return s


def claim_figures(ctx: ReportContext) -> Section:
    """One figure per claim: the paired values of both arms, a line per weight seed."""
    s = Section("Figures, one per claim", collapsed=True)
    for i, c in enumerate(ctx.claims.claims):
        d = c.as_dict()
        name = ctx.figures.add(f"claim_{i:03d}.png", plots.paired_claim(d))
        c.figure = name
        s.figure(name, f"{c.question or c.name} — {c.scope}: {c.compare} vs {c.reference} ({c.verdict}).")
    return s


def _answer(ctx: ReportContext) -> str:
    parts = []
    for half, measures in HALVES.items():
        cs = [c for c in ctx.claims.claims if c.measure in measures]
        if not cs:
            continue
        counts: dict[str, int] = defaultdict(int)
        for c in cs:
            counts[c.verdict] += 1
        text = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        parts.append(f"{half.capitalize()}: {_word(counts, len(cs))} ({text}).")
    return " ".join(parts)


def _word(counts: dict[str, int], n: int) -> str:
    if counts.get("supported", 0) == n:
        return "supported in every test"
    if counts.get("contradicted", 0) and not counts.get("supported", 0):
        return "contradicted where a difference was found"
    if counts.get("equivalent within margin", 0) == n:
        return "no difference beyond the declared margins (equivalent)"
    if counts.get("supported", 0):
        return "supported in some tests only"
    if counts.get("equivalent within margin", 0):
        return "equivalent in some tests, inconclusive in the rest"
    return "inconclusive"
