"""Sections 1 and 2: approximation error against source width (with fitted laws), and error per block in
depth with the kept fraction per layer."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from sltlab.analysis import stats
from sltlab.analysis.fits import fit_laws
from sltlab.report import plots
from sltlab.report.blocks import Section, Table, finite, fmt
from sltlab.report.context import ReportContext
from sltlab.report.settings import setting_label, setting_of, variants_sorted
from sltlab.report.stat_tables import KW_EMPTY, KW_HEADERS, STAT_EMPTY, STAT_HEADERS, kw_row, ln_test, stat_row
from sltlab.runs.store import RunRecord


def section_error_vs_width(ctx: ReportContext, approx: list[RunRecord]) -> Section:
    s = Section("1. Approximation error vs source width")
    usable = [r for r in approx if finite(r.metrics.get("rel_error")) and "width" in r.config]
    if not usable:
        s.note("No finished approximation runs with a `rel_error`. Run `sltlab approx configs/approx_quick.toml`.")
        ctx.missing.append("approximation runs (kind=approx)")
        return s
    s.p(
        "Relative output error of the ticket on held-out inputs against the source's per-head width, per "
        "norm variant. Dots are single runs (seeds and score seeds), the band their range, the dashed line "
        "the fitted exponential law log(err) = a + b·width (`sltlab.analysis.fits.fit_laws`, fitted on every "
        "run)."
    )
    by_setting: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in usable:
        by_setting[setting_of(r)].append(r)
    fit_rows, out_summary = [], []
    kw_rows, mw_rows = [], []
    for i, (setting, recs) in enumerate(sorted(by_setting.items(), key=lambda kv: str(kv[0]))):
        label = setting_label(setting)
        series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in recs:
            series[str(r.config.get("variant"))][int(r.config["width"])].append(float(r.metrics["rel_error"]))
        series = {v: dict(sorted(series[v].items())) for v in variants_sorted(series)}
        fits = {}
        for v, bw in series.items():
            fits[v] = fit_laws([w for w, es in bw.items() for _ in es], [e for es in bw.values() for e in es])
            wmin, wmax = min(bw), max(bw)
            fit_rows.append(
                [
                    label,
                    v,
                    fits[v]["n_points"],
                    fmt(float(np.mean(bw[wmin]))),
                    fmt(float(np.mean(bw[wmax]))),
                    fmt(fits[v]["exp_slope"]),
                    fmt(fits[v]["exp_r2"]),
                    fmt(fits[v]["exp_decay_width"]),
                    fmt(fits[v]["power_slope"]),
                    fmt(fits[v]["power_r2"]),
                    fits[v]["better"],
                ]
            )
        name = ctx.figures.add(f"error_vs_width_{i}.png", plots.error_vs_width(series, fits, label))
        s.figure(name, f"Error vs width, {label}.")
        # At the largest width every variant has: one value per run, to compare variants.
        wmax_all = max(w for bw in series.values() for w in bw)
        at_max = {v: bw.get(wmax_all, []) for v, bw in series.items() if bw.get(wmax_all)}
        kw = stats.kruskal_wallis(at_max)
        kw_rows.append(kw_row(f"error at width {wmax_all}, {label}", kw))
        mw = ln_test(at_max, "two-sided")
        mw_rows.append(stat_row(f"error at width {wmax_all}, {label}", mw))
        out_summary.append(
            {
                "setting": label,
                "fits": fits,
                "width": wmax_all,
                "error_at_max_width": {v: stats.bootstrap_ci(x).as_dict() for v, x in at_max.items()},
                "kruskal": kw,
                "ln_vs_none": mw,
            }
        )
    s.table(
        Table(
            [
                "setting",
                "variant",
                "n runs",
                "err @ min width",
                "err @ max width",
                "exp slope / unit width",
                "exp R²",
                "e-fold width",
                "power exponent",
                "power R²",
                "better law",
            ],
            fit_rows,
        )
    )
    s.p("Do the variants differ at the largest width? (one value per run)")
    s.table(Table(KW_HEADERS, kw_rows, KW_EMPTY))
    s.table(Table(STAT_HEADERS, mw_rows, STAT_EMPTY))
    ctx.summary["error_vs_width"] = out_summary
    return s


def section_depth(ctx: ReportContext, approx: list[RunRecord]) -> Section:
    s = Section("2. Where in depth tickets are hardest to find")
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
        "of each setting; mean ± sd over runs. The error compounds with depth when a later block's error is "
        "larger."
    )
    by_setting: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in stacks:
        by_setting[setting_of(r)].append(r)
    rows, dens_rows, out = [], [], []
    for i, (setting, recs) in enumerate(sorted(by_setting.items(), key=lambda kv: str(kv[0]))):
        label = setting_label(setting)
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
    s.table(Table(["setting", "variant", "n runs", "mean error per block", "hardest"], rows))
    if dens_rows:
        s.p("Kept fraction per layer (mean over masked modules and runs):")
        s.table(Table(["setting", "variant", "density per layer"], dens_rows))
    ctx.summary["depth"] = out
    return s
