"""The empirical Fisher of the pretrained weights per task (its own store runs), and the LayerNorm ranking it gives."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from sltlab.analysis import fisher as fisher_mod
from sltlab.errors import SltlabError
from sltlab.runs.device import (
    resolve_device,
)
from sltlab.runs.executor import Cell, CellContext, CellOutput, ExecOptions, run_cells
from sltlab.runs.store import Store
from sltlab.tasks.glue import get_task, load_split
from sltlab.tasks.peft.config import PeftConfig, fisher_tasks
from sltlab.tasks.peft.data import Batches, fixed_subsample, split_holdout
from sltlab.tasks.peft.masks import body_names
from sltlab.tasks.peft.model import _run_id, _table_json, fresh_model, per_sample_loss, pristine


def fisher_config(cfg: PeftConfig, task: str) -> dict[str, Any]:
    """The store config of the Fisher run a PEFT run with `cfg` uses for `task`."""
    return {
        "task": get_task(task).name,
        "model": cfg.model,
        "max_len": cfg.max_len,
        "samples": cfg.fisher_samples,
        "pooling": cfg.pooling,
        "data_seed": cfg.data_seed,
        "head_seed": 0,
        # the rows the PEFT runs hold out for choosing their lr: the Fisher that ranks scalars never sees them
        **({"holdout": cfg.holdout} if cfg.holdout else {}),
    }


@dataclass(frozen=True)
class FisherArg:
    cfg: PeftConfig
    task: str
    data_dir: str | None = None


def fisher_cell(arg: FisherArg, ctx: CellContext) -> CellOutput:
    """The empirical Fisher of every body parameter for one task: fisher.safetensors and a per-component table."""
    cfg, task = arg.cfg, arg.task
    t0 = time.perf_counter()
    info = get_task(task)
    pre = pristine(cfg.model)
    # The Fisher is a measurement: fp32 on the run's device (its record does not name the device; on the CPU it
    # is bit-identical, on a GPU equal to float32 rounding).
    device = resolve_device(cfg.device, "device")
    model = fresh_model(pre, info.n_outputs, 0, cfg.pooling).to(device)
    model.eval()
    rest, _ = split_holdout(load_split(task, "train", data_dir=arg.data_dir), cfg.holdout, cfg.data_seed)
    train = fixed_subsample(rest, cfg.fisher_samples, cfg.data_seed + 1)
    batches = Batches(pre, train, cfg.max_len, 1, shuffle=False, device=device)
    fisher = fisher_mod.empirical_fisher(
        model, per_sample_loss, batches, params=body_names(model), progress=ctx.progress
    )
    fisher_mod.save_fisher(ctx.out_dir / FISHER_FILE, fisher, {"task": info.name, "model": cfg.model})
    table = fisher_mod.aggregate_by_component(fisher, "mean")
    return CellOutput({"fisher_by_component": _table_json(table)}, {"wall_s": time.perf_counter() - t0})


FISHER_FILE = "fisher.safetensors"


def fisher_cells(cfgs: list[PeftConfig], data_dir: str | None) -> list[Cell]:
    """The Fisher runs that the ln-fisher configs among `cfgs` need (each once)."""
    out: dict[str, Cell] = {}
    for cfg in cfgs:
        if cfg.method != "ln-fisher":
            continue
        for task in fisher_tasks(cfg):
            fcfg = fisher_config(cfg, task)
            cell = Cell("peft-fisher", fcfg, 0, fisher_cell, FisherArg(cfg, task, data_dir),
                        label=f"fisher {task}", device=cfg.device)
            out.setdefault(cell.run_id, cell)
    return list(out.values())


def ensure_fisher(
    store: Store, cfg: PeftConfig, task: str, data_dir: str | None = None, progress: bool = False
) -> dict[str, torch.Tensor]:
    """The empirical Fisher of every body parameter for `task` (computed once, in this process, then read from
    the store)."""
    fcfg = fisher_config(cfg, task)
    rid = _run_id("peft-fisher", fcfg)
    path = store.artifact_path(rid) / FISHER_FILE
    if not (store.is_finished(rid) and path.is_file()):
        cell = Cell("peft-fisher", fcfg, 0, fisher_cell, FisherArg(cfg, task, data_dir), label=f"fisher {task}")
        report = run_cells([cell], store, ExecOptions(executor="serial", threads=torch.get_num_threads(),
                                                      progress=False), log=lambda _: None)
        if report.failed:
            raise SltlabError(f"the Fisher run for {task} failed: {report.failed[rid].splitlines()[0]}")
    return fisher_mod.load_fisher(path)


def mask_scores(store: Store, cfg: PeftConfig, data_dir: str | None, progress: bool) -> dict[str, torch.Tensor]:
    """Fisher scores ranking the LayerNorm scalars for `cfg.mask_source` (normalised over the LayerNorms)."""
    fishers = {}
    for t in fisher_tasks(cfg):
        f = ensure_fisher(store, cfg, t, data_dir, progress)
        fishers[t] = {n: v for n, v in f.items() if fisher_mod.is_layernorm_param(n)}
    return fisher_mod.combine_fisher(fishers)
