"""A PEFT sweep through the executor: Fisher runs, the lr grid on the first seed, the other seeds at the best lr."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from sltlab.errors import ConfigError, SltlabError
from sltlab.runs.executor import Cell, ExecOptions, run_cells
from sltlab.runs.store import Store
from sltlab.tasks.peft.config import PeftConfig, SweepConfig, make_config, parse_method
from sltlab.tasks.peft.fisher import fisher_cells
from sltlab.tasks.peft.model import _run_id
from sltlab.tasks.peft.train import PeftArg, peft_cell, peft_cells

SELECT_METRIC = "holdout_main"


def best_lr(store: Store, cfgs: list[PeftConfig]) -> PeftConfig | None:
    """The config of the grid with the highest main metric on the held-out training rows (never dev); None while
    any grid point is unfinished. A grid of one needs no choice; a tie goes to the lr listed first."""
    if len(cfgs) == 1:
        return cfgs[0]
    best: tuple[float, PeftConfig] | None = None
    for c in cfgs:
        rid = _run_id("peft", c.record(), c.seed)
        if not store.is_finished(rid):
            return None
        metrics = store.get(rid).metrics
        if SELECT_METRIC not in metrics:
            raise ConfigError("select_on", f"run {rid} has no held-out score to choose its lr on (made before "
                              "held-out selection, or without holdout rows)", "rerun the sweep in a new store")
        main = float(metrics[SELECT_METRIC])
        if best is None or main > best[0]:
            best = (main, c)
    return best[1] if best else None


def run_sweep(
    sweep: SweepConfig,
    store: Store,
    data_dir: str | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
    options: ExecOptions | None = None,
) -> list[str]:
    """Run the grid through the executor, in the phases its dependencies need: the Fisher runs that ln-fisher
    methods rank LayerNorm scalars by; the methods' lr grids on the first seed (every seed with lr_select
    'all'); then the other seeds at the best lr; then the same for `extra_methods`. This shard takes every n-th
    task (parallel processes on one store also share cells through the store's claims).

    Finished runs are skipped, so an interrupted sweep resumes. Returns the run ids of this shard's cells; a phase
    with failed cells stops the sweep before the phases that need it (SltlabError)."""
    index, n_shards = shard
    tasks = [t for i, t in enumerate(sweep.tasks) if i % n_shards == index]
    opts = options or ExecOptions(executor="serial", threads=torch.get_num_threads(), progress=progress)
    done: list[str] = []
    first, others = sweep.seeds[0], sweep.seeds[1:]

    def phase(cells: list[Cell], what: str) -> None:
        if not cells:
            return
        report = run_cells(cells, store, opts, log=log)
        for rid in report.ran:
            if rid.startswith("peft-") and not rid.startswith("peft-fisher"):
                log(_summary(store, rid))
        if report.failed:
            first_err = next(iter(report.failed.values())).splitlines()[0]
            raise SltlabError(f"peft: {len(report.failed)} {what} cell(s) failed (first: {first_err}); "
                              "rerun the command to retry them")
        done.extend(c.run_id for c in cells if c.kind == "peft")

    for methods in (sweep.methods, sweep.extra_methods):
        grid_seeds = sweep.seeds if sweep.lr_select == "all" else (first,)
        grid = [make_config(task, m, lr, seed, sweep.base) for task in tasks for m in methods for seed in grid_seeds
                for lr in sweep.grid(parse_method(m)[0])]
        phase(fisher_cells(grid, data_dir), "Fisher")
        phase(peft_cells(grid, store, data_dir), "lr-grid")
        if sweep.lr_select != "first-seed" or not others:
            continue
        rest = []
        for task in tasks:
            for m in methods:
                cands = [make_config(task, m, lr, first, sweep.base) for lr in sweep.grid(parse_method(m)[0])]
                chosen = best_lr(store, cands)
                if chosen is None:
                    raise ConfigError("lr_select", f"the lr grid of {task} {m} did not finish", "rerun the sweep")
                rest += [dataclasses.replace(chosen, seed=seed) for seed in others]
        phase(peft_cells(rest, store, data_dir), "seed")
    return done


def sweep_cells(sweep: SweepConfig, store: Store | None, data_dir: str | None,
                shard: tuple[int, int] = (0, 1)) -> list[Cell]:
    """The cells a sweep would run now (for --dry-run): Fisher runs and lr grids; the other seeds' cells once
    their grid has finished (their lr is not known before)."""
    index, n_shards = shard
    tasks = [t for i, t in enumerate(sweep.tasks) if i % n_shards == index]
    out: list[Cell] = []
    first, others = sweep.seeds[0], sweep.seeds[1:]
    for methods in (sweep.methods, sweep.extra_methods):
        grid_seeds = sweep.seeds if sweep.lr_select == "all" else (first,)
        grid = [make_config(task, m, lr, seed, sweep.base) for task in tasks for m in methods for seed in grid_seeds
                for lr in sweep.grid(parse_method(m)[0])]
        out += fisher_cells(grid, data_dir)
        out += [Cell("peft", c.record(), c.seed, peft_cell, PeftArg(c, data_dir),
                     label=f"{c.task} {c.label} lr={c.lr:g} s{c.seed}") for c in grid]
        if sweep.lr_select == "first-seed" and others and store is not None:
            for task in tasks:
                for m in methods:
                    cands = [make_config(task, m, lr, first, sweep.base) for lr in sweep.grid(parse_method(m)[0])]
                    chosen = best_lr(store, cands)
                    if chosen is not None:
                        out += [Cell("peft", dataclasses.replace(chosen, seed=s).record(), s, peft_cell,
                                     PeftArg(dataclasses.replace(chosen, seed=s), data_dir),
                                     label=f"{task} {chosen.label} lr={chosen.lr:g} s{s}") for s in others]
    return out


def _summary(store: Store, run_id: str) -> str:
    rec = store.get(run_id)
    c, m = rec.config, rec.metrics
    lab = c["method"] + (f"@{c['fraction']:g}" if c.get("fraction") is not None else "")
    masked = f"  masked={100 * m['masked_share']:.1f}% of pretrained" if "masked_share" in m else ""
    stored = f"  stored={m['stored_bytes']:,} B" if "stored_bytes" in m else ""
    return (
        f"{run_id}  {c['task']:5s} {lab:16s} lr={c['lr']:<7g} seed={c['seed']}  "
        f"{m['main_metric']}={m['main']:.2f}  trainable={m['trainable']}{masked}{stored}  "
        f"({rec.timings.get('wall_s', m.get('wall_s', 0)):.0f}s)"
    )
