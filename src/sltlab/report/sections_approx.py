"""Approximation error against source width (both laws fitted with the weight seed as the unit), and error per
block in depth with the kept fraction per layer. Descriptive: declared comparisons are tested in the claims table."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from sltlab.analysis import stats
from sltlab.analysis.fits import fit_laws_by_seed
from sltlab.report import plots
from sltlab.report.blocks import Section, Table, finite, fmt
from sltlab.report.context import ReportContext
from sltlab.report.settings import setting_label, setting_of, target_groups, variants_sorted
from sltlab.runs.store import RunRecord


def section_error_vs_width(ctx: ReportContext, approx: list[RunRecord]) -> Section:
    s = Section("Approximation error vs source width", collapsed=True)
    usable = [r for r in approx if finite(r.metrics.get("rel_error")) and "width" in r.config]
    if not usable:
        s.note("No finished approximation runs with a `rel_error`. Run `sltlab approx configs/approx_quick.toml`.")
        ctx.missing.append("approximation runs (kind=approx)")
        return s
    s.p(
        "Relative output error of the ticket on held-out inputs against the source's per-head width, per norm "
        "variant and target. Points are weight seeds (their score seeds averaged); both laws are fitted per weight "
        "seed (slope: mean over seeds with its t interval) and tested against the seeds' spread (lack of fit: the "
        "law plus a seed offset against a free mean per width; needs 3+ widths). Local slopes (d log err / d log "
        "width between neighbouring widths) show where the curve bends. Nothing is extrapolated beyond the "
        "measured widths. `branch` is the error relative to what the attention branches add (stacks)."
    )
    by_setting: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in usable:
        by_setting[setting_of(r)].append(r)
    fit_rows, local_rows, width_rows, out_summary = [], [], [], []
    i = 0
    for setting, recs0 in sorted(by_setting.items(), key=lambda kv: str(kv[0])):
        for target, recs in target_groups(recs0):
            label = f"{setting_label(setting)}, {target}"
            points: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
            branch: dict[str, dict[int, dict[int, list[float]]]] = defaultdict(
                lambda: defaultdict(lambda: defaultdict(list)))
            for r in recs:
                v = str(r.config.get("variant"))
                seed, w = int(r.config.get("seed", 0)), int(r.config["width"])
                points[v].append((seed, w, float(r.metrics["rel_error"])))
                if finite(r.metrics.get("branch_rel_error")):
                    branch[v][w][seed].append(float(r.metrics["branch_rel_error"]))
            series, fits = {}, {}
            for v in variants_sorted(points):
                fit = fit_laws_by_seed(points[v])
                fits[v] = fit
                per_w: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
                for seed, w, e in points[v]:
                    per_w[w][seed].append(e)
                series[v] = {w: [float(np.mean(x)) for x in by_seed.values()] for w, by_seed in sorted(per_w.items())}
                for w, vals in series[v].items():
                    b = [float(np.mean(x)) for x in branch[v][w].values()]
                    width_rows.append([label, v, w, stats.mean_ci(vals).fmt(), stats.mean_ci(b).fmt() if b else "n/a"])
                for law in ("exp", "power"):
                    f = fit.get(law)
                    if not f:
                        continue
                    lof = f["lack_of_fit"]
                    fit_rows.append([label, v, law, f["n_seeds"], len(fit["widths"]),
                                     f"{fmt(f['slope'])} [{fmt(f['slope_lo'])}, {fmt(f['slope_hi'])}]", fmt(f["r2"]),
                                     f"F={fmt(lof['F'])}, p={stats.fmt_p(lof['p'])}" if math.isfinite(lof["p"])
                                     else "n/a (< 3 widths)"])
                for lo in fit.get("local", []):
                    local_rows.append([label, v, f"{lo['from']:g} → {lo['to']:g}",
                                       f"{fmt(lo['power_slope'])} [{fmt(lo['lo'])}, {fmt(lo['hi'])}] (n={lo['n']})"])
            name = ctx.figures.add(f"error_vs_width_{i}.png", plots.error_vs_width(series, fits, label))
            i += 1
            s.figure(name, f"Error vs width, {label}: weight seeds as dots, both laws over the measured widths.")
            out_summary.append({"setting": label, "fits": fits, "series": series})
    s.table(Table(["setting", "variant", "width", "rel. error [95% CI] (n seeds)", "branch error [95% CI]"],
                  width_rows, merge=2))
    s.table(Table(["setting", "variant", "law", "n seeds", "n widths", "slope [95% CI]", "R² (seed means)",
                   "lack of fit"], fit_rows, "no fits: fewer than 2 widths", merge=2))
    if local_rows:
        s.p("Local power-law slopes between neighbouring widths (a steepening curve is neither law):")
        s.table(Table(["setting", "variant", "widths", "local slope [95% CI]"], local_rows, merge=2))
    ctx.summary["error_vs_width"] = out_summary
    return s


def section_depth(ctx: ReportContext, approx: list[RunRecord]) -> Section:
    s = Section("Where in depth tickets are hardest to find", collapsed=True)
    stacks = [
        r
        for r in approx
        if isinstance(r.metrics.get("per_block_rel_error"), list) and len(r.metrics["per_block_rel_error"]) > 1
    ]
    if not stacks:
        s.note(
            "No stack runs (module = stack with 2+ blocks) in the store, so no per-block error. Run an "
            "approx "
            'study with `module = "stack"` and `n_blocks = 2` or more.'
        )
        ctx.missing.append("approximation runs on stacks (per-block error)")
        return s
    s.p(
        "Relative error of each block's output (ticket vs target, on held-out inputs) at the largest width "
        "of each setting; mean ± sd over runs (weight and score seeds). The error compounds with depth when a "
        "later block's error is larger."
    )
    by_setting: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in stacks:
        by_setting[setting_of(r)].append(r)
    rows, dens_rows, out = [], [], []
    groups = [(f"{setting_label(st)}, {t}", rs) for st, recs0 in sorted(by_setting.items(), key=lambda kv: str(kv[0]))
              for t, rs in target_groups(recs0)]
    for i, (label, recs) in enumerate(groups):
        wmax = max(int(r.config["width"]) for r in recs)
        curves: dict[str, list[list[float]]] = defaultdict(list)
        dens: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in recs:
            if int(r.config["width"]) != wmax:
                continue
            v = str(r.config.get("variant"))
            curves[v].append([float(x) for x in r.metrics["per_block_rel_error"]])
            for mod, d in (r.metrics.get("per_layer_density") or {}).items():
                from sltlab.analysis.masks import layer_label

                dens[v][layer_label(mod)].append(float(d))
        curves = {v: curves[v] for v in variants_sorted(curves) if len({len(c) for c in curves[v]}) == 1}
        if not curves:
            continue
        name = ctx.figures.add(f"per_block_{i}.png", plots.per_block(curves, f"{label}, width {wmax}"))
        s.figure(name, f"Per-block error, {label}, width {wmax}.")
        for v, cs in curves.items():
            arr = np.asarray(cs)
            means = arr.mean(0)
            rows.append(
                [
                    label,
                    v,
                    len(cs),
                    " → ".join(fmt(float(x)) for x in means),
                    f"block {int(np.argmax(means)) + 1}",
                ]
            )
            if dens.get(v):
                dens_rows.append([label, v] + [", ".join(f"{k} {np.mean(x):.3f}" for k, x in sorted(dens[v].items()))])
            out.append(
                {
                    "setting": label,
                    "variant": v,
                    "width": wmax,
                    "per_block_mean": means.tolist(),
                    "n": len(cs),
                }
            )
    s.table(Table(["setting", "variant", "n runs", "mean error per block", "hardest"], rows, merge=1))
    if dens_rows:
        s.p("Kept fraction per layer (mean over masked modules and runs):")
        s.table(Table(["setting", "variant", "density per layer"], dens_rows, merge=1))
    ctx.summary["depth"] = out
    return s
