"""The angular-velocity task: constructed tickets of a trained single-head target (d=2) in wider sources, and of
untrained B-block stacks, with the error after every block."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sltlab.tasks.theory.config import TheoryConfig
from sltlab.tasks.theory.curves import fit_past, mean_by, merged_entries, threshold_of
from sltlab.tasks.theory.output import figure, save_png, write_csv
from sltlab.tasks.theory.runner import Runner


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
    fig, axes = figure(2)
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
