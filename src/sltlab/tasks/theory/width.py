"""The headline experiment: constructed vs searched tickets' error against the source width (target MHA,
d=16, H=2 by default), both laws fitted past the threshold, and the bound's shape eps(w) = H d^1.5 exp(-w / d)
beside."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sltlab.tasks.theory.cells import construct_cell
from sltlab.tasks.theory.config import TheoryConfig
from sltlab.tasks.theory.curves import fit_means_past, fit_past, mean_by, merged_entries, threshold_of
from sltlab.tasks.theory.output import figure, save_png, write_csv
from sltlab.tasks.theory.runner import Runner


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
                    target="own",  # the construction copies the target's norm: same norm in target and source
                    methods=(method,),
                    seeds=(s,),
                    source_init=init,
                    source_gain=e.source_gain,
                    seq_len=e.seq_len,
                    n_train=e.n_train,
                    n_test=e.n_test,
                    search=SearchConfig(steps=e.search_steps, lr=e.search_lr),
                    device=cfg.device,
                    precision=cfg.precision,
                    deterministic=cfg.deterministic,
                )
                cells.append(study.cells()[0])
    for cell in tqdm(cells, desc="theory width", disable=not runner.progress):
        conf = {"experiment": "width", **cell.config_dict(), "construct": asdict(cfg.construct)}

        def fn(cell=cell) -> dict[str, Any]:
            if cell.method == "construct":
                return construct_cell(cell, cfg.construct)
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
    fig, axes = figure(1, width=8.5)
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
