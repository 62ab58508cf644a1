"""One PEFT run: fine-tune what the method trains, score on dev, keep what was trained (cells for the executor)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sltlab.analysis import fisher as fisher_mod
from sltlab.errors import SltlabError
from sltlab.runs.device import (
    determinism,
    resolve_device,
)
from sltlab.runs.executor import Cell, CellContext, CellOutput, ExecOptions, run_cells
from sltlab.runs.store import Store
from sltlab.tasks.glue import get_task, load_split
from sltlab.tasks.metrics import main_metric
from sltlab.tasks.peft.artifacts import save_run_artifact
from sltlab.tasks.peft.config import DEFAULT_MASK_DENSITY, MASK_METHODS, PeftConfig
from sltlab.tasks.peft.data import Batches, fixed_subsample, split_holdout
from sltlab.tasks.peft.fisher import mask_scores
from sltlab.tasks.peft.masks import (
    GradientMasks,
    attach_masks,
    body_names,
    count,
    density_at,
    score_names,
    trainable_masks,
)
from sltlab.tasks.peft.model import _run_id, _table_json, evaluate, fresh_model, mean_loss, pristine
from sltlab.tickets.supermask import set_keep, supermasks


@dataclass(frozen=True)
class PeftArg:
    """A PEFT cell's config, where its data is, and (ln-fisher) the LayerNorm scores the driver read from the
    store's Fisher runs: a few thousand floats, so a worker needs no access to the store."""

    cfg: PeftConfig
    data_dir: str | None = None
    scores: dict[str, torch.Tensor] | None = None


def peft_cell(arg: PeftArg, ctx: CellContext) -> CellOutput:
    """Fine-tune, score on dev; what the run trained goes to ctx.out_dir (the run's artifacts)."""
    cfg, data_dir, scores, progress = arg.cfg, arg.data_dir, arg.scores, ctx.progress
    t0 = time.perf_counter()
    info = get_task(cfg.task)
    pre = pristine(cfg.model)
    rest, held = split_holdout(load_split(cfg.task, "train", data_dir=data_dir), cfg.holdout, cfg.data_seed)
    train = fixed_subsample(rest, cfg.subsample, cfg.data_seed)
    dev = fixed_subsample(load_split(cfg.task, info.dev_splits[0], data_dir=data_dir), cfg.dev_limit, cfg.data_seed)
    device = resolve_device(cfg.device, "device")
    model = fresh_model(pre, info.n_outputs, cfg.seed, cfg.pooling)
    coverage = attach_masks(model) if cfg.method in MASK_METHODS else None
    model = model.to(device)
    masks = trainable_masks(model, cfg.method, fraction=cfg.fraction, scores=scores, seed=cfg.order_seed)
    before = (
        {n: p.detach().clone() for n, p in model.named_parameters() if n in body_names(model)}
        if cfg.method == "full"
        else {}
    )
    with determinism(device, cfg.deterministic):
        history = train_masked(
            model,
            masks,
            Batches(pre, train, cfg.max_len, cfg.batch_size, shuffle=True, seed=cfg.order_seed, device=device),
            cfg,
            progress=progress,
            desc=f"{cfg.task} {cfg.label} lr={cfg.lr:g} s{cfg.seed}",
        )
    t_train = time.perf_counter() - t0
    scores_dev = evaluate(model, Batches(pre, dev, cfg.max_len, 64, shuffle=False, device=device))
    if held is not None:  # what an lr grid chooses on; dev is reported, never chosen on
        scores_held = evaluate(model, Batches(pre, held, cfg.max_len, 64, shuffle=False, device=device))
        scores_dev = {**scores_dev, **{f"holdout_{k}": v for k, v in scores_held.items()},
                      "holdout_main": scores_held[main_metric(cfg.task)]}
    scored = set(score_names(model))  # mask scores are not parameters of the model a run yields
    body = [n for n in body_names(model) if n not in scored]
    n_body = sum(p.numel() for n, p in model.named_parameters() if n in body)
    n_total = sum(p.numel() for n, p in model.named_parameters() if n not in scored)
    trainable = count(masks) - count(masks, list(scored))
    trainable_body = count(masks, body)
    metrics: dict[str, Any] = {
        "main_metric": main_metric(cfg.task),
        "main": scores_dev[main_metric(cfg.task)],
        **scores_dev,
        "trainable": trainable,
        "trainable_body": trainable_body,
        "total": n_total,
        "total_body": n_body,
        "share": trainable_body / n_body,
        "share_with_head": trainable / n_total,
        "final_loss": history[-1]["loss"] if history else float("nan"),
        **history.movement(),
        "train_n": len(train),
        "dev_n": len(dev),
        "holdout_n": len(held) if held is not None else 0,
    }
    if coverage is not None:
        metrics["masked_share"] = coverage.masked / n_body  # of the pretrained scalars
    metrics.update(save_run_artifact(model, masks, cfg, ctx.out_dir))
    if cfg.method == "full":
        after = {n: p.detach() for n, p in model.named_parameters() if n in before}
        metrics["change_by_component"] = _table_json(fisher_mod.parameter_change(before, after))
    curve = [[int(h["step"]), float(h["loss"])] for h in history]
    # wall clock is a timing, never a metric: two identical runs have identical metrics
    timings = {"train_s": t_train, "wall_s": time.perf_counter() - t0}
    return CellOutput(metrics, timings, {"loss": curve} if curve else {})


def peft_cells(cfgs: list[PeftConfig], store: Store, data_dir: str | None) -> list[Cell]:
    """Cells for `cfgs`; ln-fisher cells carry their scores, read from the store's finished Fisher runs."""
    out = []
    for cfg in cfgs:
        scores = mask_scores(store, cfg, data_dir, False) if cfg.method == "ln-fisher" else None
        out.append(Cell("peft", cfg.record(), cfg.seed, peft_cell, PeftArg(cfg, data_dir, scores),
                        label=f"{cfg.task} {cfg.label} lr={cfg.lr:g} s{cfg.seed}", device=cfg.device))
    return out


def run_peft(cfg: PeftConfig, store: Store, data_dir: str | None = None, progress: bool = True) -> str:
    """Fine-tune, score on dev and record one run, in this process; skipped (same id returned) when the store
    has it finished. A failure is recorded, then raised."""
    rid = _run_id("peft", cfg.record(), cfg.seed)
    if store.is_finished(rid):
        return rid
    (cell,) = peft_cells([cfg], store, data_dir)
    report = run_cells([cell], store, ExecOptions(executor="serial", threads=torch.get_num_threads(),
                                                  progress=False), log=lambda _: None)
    if report.failed:
        raise SltlabError(report.failed[rid].splitlines()[0])
    return rid


def train_masked(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    batches: Sized,
    cfg: PeftConfig,
    *,
    progress: bool = True,
    desc: str = "peft",
) -> list[dict[str, float]]:
    """AdamW (decay through the masks) with warm-up and cosine decay, via the one loop `run_search`.

    `batches` is any re-iterable sized collection of batch dicts (a `Batches`, or a list in tests); one epoch
    is one pass over it.
    """
    from sltlab.tickets.search import SearchConfig, run_search

    torch.manual_seed(cfg.order_seed)  # dropout
    steps = len(batches) * cfg.epochs
    gm = GradientMasks(model, masks)
    masked = cfg.method in MASK_METHODS and bool(supermasks(model))
    if masked:
        set_keep(model, density_at(0, steps, float(cfg.fraction or DEFAULT_MASK_DENSITY)))
    scfg = SearchConfig(
        steps=steps,
        lr=cfg.lr,
        optimizer="adamw",
        weight_decay=0.0,
        schedule="cosine",
        warmup=int(cfg.warmup_frac * steps),
        grad_clip=cfg.grad_clip,
    )

    def decay(step: int, rec: dict[str, float], m: nn.Module) -> None:
        gm.decay(rec["lr"], cfg.weight_decay)
        if masked and step < steps:  # the kept fraction of the next step
            set_keep(m, density_at(step, steps, float(cfg.fraction or DEFAULT_MASK_DENSITY)))

    try:
        return run_search(model, mean_loss, batches, scfg, callbacks=[decay], progress=progress, desc=desc,
                          precision=cfg.precision)
    finally:
        gm.remove()
