"""Constructed tickets against the sequence length T: the theory says their error does not grow with T."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sltlab.tasks.theory.config import TheoryConfig
from sltlab.tasks.theory.curves import mean_by
from sltlab.tasks.theory.output import figure, save_png, write_csv
from sltlab.tasks.theory.runner import Runner


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
    fig, axes = figure(1)
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
