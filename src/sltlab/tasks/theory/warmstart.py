"""Gradient search (edge-popup) started from the constructed ticket, against the same search from scratch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sltlab.tasks.theory.config import TheoryConfig, WarmstartExp
from sltlab.tasks.theory.curves import mean_by
from sltlab.tasks.theory.output import figure, save_png, write_csv
from sltlab.tasks.theory.runner import Runner
from sltlab.tickets.construct import ConstructConfig


def warm_start(
    run: Any,
    source: nn.Module,
    target: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    progress: bool = False,
    cfg: ConstructConfig | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
) -> dict[str, Any]:
    """Construct a ticket, then run the study's gradient search from it (does search keep, improve, lose it?).

    The source must carry edge-popup or annealed supermasks. With edge-popup the search keeps the constructed
    density (the scores' top-k). `evaluate(source) -> error` is called before and after the search when given.
    """
    from sltlab.tasks.approx import search_ticket
    from sltlab.tickets.construct import construct_ticket
    from sltlab.tickets.supermask import supermasks

    info = construct_ticket(source, target, cfg, progress)
    before = evaluate(source) if evaluate else float("nan")
    masks_before = {k: sm.hard_mask().bool().clone() for k, sm in supermasks(source).items()}
    t0 = time.perf_counter()
    res = search_ticket(run, source, target, x_train, y_train, progress)
    after = evaluate(source) if evaluate else float("nan")
    changed = sum(
        int((sm.hard_mask().bool() != masks_before[k]).sum()) for k, sm in supermasks(source).items()
    )
    total = sum(m.numel() for m in masks_before.values())
    return {
        **info,
        "warm_error_before": before,
        "warm_error_after": after,
        "warm_search_s": time.perf_counter() - t0,
        "warm_final_loss": res["final_loss"],
        "warm_mask_changed_fraction": changed / max(total, 1),
    }


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
    from sltlab.tasks.approx import ApproxStudy, evaluate_pair, forward_out, random_inputs, search_ticket
    from sltlab.tickets.search import SearchConfig
    from sltlab.tickets.spec import build_model

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
    fig, axes = figure(1)
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
