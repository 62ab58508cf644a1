"""The width the construction needs, against d (at init scale 1) and against the source's init scale."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sltlab.tasks.theory.cells import construct_cell
from sltlab.tasks.theory.config import TheoryConfig, ThresholdExp
from sltlab.tasks.theory.curves import bound_width, fit_means_past, fit_past, mean_by, merged_entries, threshold_of
from sltlab.tasks.theory.output import figure, save_png, write_csv
from sltlab.tasks.theory.runner import Runner
from sltlab.tickets.construct import ConstructConfig


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
    return construct_cell(study.cells()[0], construct)


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
    fig, axes = figure(3)
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
