"""Whole blocks: constructed tickets for attention + ReLU MLP + residuals, with every norm, across width and depth.

Target: a stack of `blocks` residual blocks (d_model d, H heads, ReLU MLP of width 4d), kaiming-uniform from the
seed; source: the same stack with per-head width n and the theory's PairedMLP (sltlab.nn.theory), theory init.
Per cell (variant, width, seed): the constructed ticket (sltlab.tickets.construct), its relative error after
every block on held-out inputs, and, on the first `bound_inputs` of them, the error bound of
sltlab.tickets.bound beside the measured error, the measured amplification per block and the norms' local gain.
Fits: log(error after the last block) against width past the threshold (at most 1% of the subset-sum entries out
of range), per weight seed, with the slope's t interval over seeds. Beside it, edge-popup tickets on the
`search_blocks`-block stack at `search_widths` in the settings of `search_settings`, and the search/construction
gap per width paired by weight seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sltlab.runs.store import atomic_write_bytes
from sltlab.tasks.theory.config import BlocksExp, TheoryConfig
from sltlab.tasks.theory.curves import exp_fit_past, mean_by, paired_ratio, threshold_of
from sltlab.tasks.theory.output import figure, png_bytes, write_csv
from sltlab.tasks.theory.runner import Runner
from sltlab.tickets.construct import ConstructConfig


def block_study(e: BlocksExp, variant: str, affine: str, width: int, seed: int, method: str, blocks: int,
                init: str, **search: Any) -> Any:
    """The approximation study of one cell (its models, inputs and evaluation are the approx study's)."""
    from sltlab.tasks.approx import ApproxStudy
    from sltlab.tickets.search import SearchConfig

    return ApproxStudy(
        name="theory-blocks", module="stack", n_blocks=blocks, mlp=True, activation="relu", source_mlp="paired",
        target="own", target_affine=affine, d_model=e.d_model, heads=(e.heads,), widths=(width,),
        variants=(variant,), methods=(method,), seeds=(seed,), source_init=init, source_gain=e.source_gain,
        seq_len=e.seq_len, n_train=e.n_train, n_test=e.n_test, keep=search.get("keep", 0.5),
        search=SearchConfig(steps=search.get("steps", e.search_steps), lr=search.get("lr", e.search_lr)),
    )


def _construct_cell(e: BlocksExp, variant: str, affine: str, width: int, seed: int,
                    construct: ConstructConfig) -> dict[str, Any]:
    from sltlab.tasks.approx import evaluate_pair, random_inputs
    from sltlab.tickets.bound import propagation, summarise
    from sltlab.tickets.construct import construct_ticket
    from sltlab.tickets.spec import build_model
    from sltlab.tickets.supermask import mask_density

    run = block_study(e, variant, affine, width, seed, "construct", e.blocks, e.source_init).cells()[0]
    target, source = build_model(run.target_spec()), build_model(run.source_spec())
    info = construct_ticket(source, target, construct)
    x = random_inputs(seed, e.n_test, e.seq_len, e.d_model, "test")
    m = evaluate_pair(source, target, x)
    # The bound compares sublayers on the same normalised input: not for a gain folded into a frozen source.
    folded = "folded" in info.get("norms", {}).values()
    bound = {} if folded else summarise(propagation(source, target, x[: e.bound_inputs]))
    n_entries = sum(info["solver_counts"].values())
    unreachable = info["unreachable_entries"] + info.get("mlp_unreachable_entries", 0)
    return {
        "rel_error": m["rel_error"], "per_block_rel_error": m["per_block_rel_error"],
        "unreachable_entries": unreachable, "n_entries": n_entries, "unreachable_frac": unreachable / n_entries,
        "qk_max_abs_error": info["qk_max_abs_error"], "vo_max_abs_error": info["vo_max_abs_error"],
        "mlp_max_abs_error": info.get("mlp_max_abs_error", math.nan), "solver_counts": info["solver_counts"],
        "density": mask_density(source), "construct_s": info["construct_s"], **bound,
    }


def _search_cell(e: BlocksExp, variant: str, width: int, seed: int, init: str, setting: str,
                 construct: ConstructConfig) -> dict[str, Any]:
    from sltlab.tasks.approx import evaluate_pair, forward_out, random_inputs, run_cell
    from sltlab.tickets.construct import construct_ticket
    from sltlab.tickets.spec import build_model
    from sltlab.tickets.supermask import mask_density

    affine = "identity"
    if setting in ("default", "long"):
        steps = e.search_steps * (e.long_factor if setting == "long" else 1)
        study = block_study(e, variant, affine, width, seed, "edge-popup", e.search_blocks, init, steps=steps)
        _, m, t = run_cell(study.cells()[0])
        return {"rel_error": m["rel_error"], "per_block_rel_error": m["per_block_rel_error"],
                "density": m["density"], "search_s": t["search_s"], "final_loss": m["final_loss"]}
    # density and warm start read the constructed ticket of this source first
    crun = block_study(e, variant, affine, width, seed, "construct", e.search_blocks, init).cells()[0]
    target, source = build_model(crun.target_spec()), build_model(crun.source_spec())
    construct_ticket(source, target, construct)
    built = mask_density(source)
    if setting == "density":
        study = block_study(e, variant, affine, width, seed, "edge-popup", e.search_blocks, init, keep=built)
        _, m, t = run_cell(study.cells()[0])
        return {"rel_error": m["rel_error"], "per_block_rel_error": m["per_block_rel_error"],
                "density": m["density"], "constructed_density": built, "search_s": t["search_s"]}
    import torch

    from sltlab.tasks.theory.warmstart import warm_start

    run = block_study(e, variant, affine, width, seed, "edge-popup", e.search_blocks, init, lr=e.warm_lr,
                      keep=built).cells()[0]
    target, source = build_model(run.target_spec()), build_model(run.source_spec())
    x = random_inputs(seed, e.n_train, e.seq_len, e.d_model, "train")
    xt = random_inputs(seed, e.n_test, e.seq_len, e.d_model, "test")
    with torch.no_grad():
        y, _ = forward_out(target, x)
    out = warm_start(run, source, target, x, y, False, construct,
                     lambda mdl: evaluate_pair(mdl, target, xt)["rel_error"])
    m = evaluate_pair(source, target, xt)
    return {"rel_error": m["rel_error"], "per_block_rel_error": m["per_block_rel_error"],
            "constructed_error": out["warm_error_before"], "density": mask_density(source),
            "mask_changed_fraction": out["warm_mask_changed_fraction"], "search_s": out["warm_search_s"]}


def _section(e: BlocksExp, **drop: Any) -> dict[str, Any]:
    conf = asdict(e)
    for k in ("widths", "variants", "affine_variants", "seeds", "search_widths", "search_variants", "search_inits",
              "search_settings", "search_seeds", *drop):
        conf.pop(k, None)
    return conf


def run_blocks(cfg: TheoryConfig, runner: Runner, out: Path) -> dict[str, Any]:
    e = cfg.blocks
    construct = asdict(cfg.construct)
    groups = [(v, "identity") for v in e.variants] + [(v, "random") for v in e.affine_variants]
    rows: list[dict[str, Any]] = []
    bound_rows: list[dict[str, Any]] = []
    search_rows: list[dict[str, Any]] = []
    jobs = [(v, a, w, s) for v, a in groups for w in e.widths for s in e.seeds]
    for v, a, w, s in tqdm(jobs, desc="theory blocks", disable=not runner.progress):
        conf = {"experiment": "blocks-construct", **_section(e), "variant": v, "target_affine": a, "width": w,
                "seed": s, "construct": construct}
        m = runner(conf, lambda v=v, a=a, w=w, s=s: _construct_cell(e, v, a, w, s, cfg.construct))
        add_rows(conf, m, rows, bound_rows, search_rows)
    sjobs = [(v, w, s, i, st) for v in e.search_variants for w in e.search_widths for s in e.search_seeds
             for i in e.search_inits for st in e.search_settings if st != "warm" or i == e.source_init]
    for v, w, s, i, st in tqdm(sjobs, desc="theory blocks search", disable=not runner.progress):
        conf = {"experiment": "blocks-search", **_section(e), "variant": v, "width": w, "seed": s, "init": i,
                "setting": st, **({"construct": construct} if st in ("density", "warm") else {})}
        m = runner(conf, lambda v=v, w=w, s=s, i=i, st=st: _search_cell(e, v, w, s, i, st, cfg.construct))
        add_rows(conf, m, rows, bound_rows, search_rows)
    write_csv(out / "blocks.csv", rows + search_rows)
    write_csv(out / "blocks_bound.csv", bound_rows)
    summary, pngs = summarise_blocks(e, rows, bound_rows, search_rows)
    for name, png in pngs.items():
        atomic_write_bytes(out / name, png)
    return summary


def add_rows(conf: dict[str, Any], m: dict[str, Any], rows: list[dict[str, Any]], bound_rows: list[dict[str, Any]],
             search_rows: list[dict[str, Any]]) -> None:
    """The table rows of one stored cell (its config and metrics): per block for a constructed ticket (error,
    and the bound's numbers), one for a searched one."""
    w, s = conf["width"], conf["seed"]
    if conf["experiment"] == "blocks-search":
        search_rows.append({"variant": conf["variant"], "method": f"search/{conf['setting']}/{conf['init']}",
                            "width": w, "seed": s, "block": conf["search_blocks"], "rel_error": m["rel_error"],
                            "density": m.get("density", math.nan)})
        return
    v = conf["variant"]
    label = v if conf.get("target_affine", "identity") == "identity" else f"{v} (random target affine)"
    per_block = m["per_block_rel_error"]
    if not isinstance(per_block, list):  # a placeholder in the command's first pass
        per_block = [math.nan] * int(conf["blocks"])
    for b, err in enumerate(per_block):
        rows.append({"variant": label, "method": "construct", "width": w, "seed": s, "block": b + 1,
                     "rel_error": err, "unreachable_frac": m["unreachable_frac"], "density": m.get("density")})
        bound_rows.append({"variant": label, "width": w, "seed": s, "block": b + 1,
                           **{k: _at(m.get(k), b) for k in ("error_median", "bound_median", "delta_median",
                                                            "amplification_median", "ln_factor_median",
                                                            "bound_holds")}})


def exp_of(config: dict[str, Any]) -> BlocksExp:
    """The experiment's scalar settings as a stored cell recorded them (its lists at their defaults)."""
    from dataclasses import fields

    return BlocksExp(**{f.name: config[f.name] for f in fields(BlocksExp) if f.name in config})


def _at(v: Any, b: int) -> float:
    return float(v[b]) if isinstance(v, list) and b < len(v) else math.nan


def summarise_blocks(e: BlocksExp, rows: list[dict[str, Any]], bound_rows: list[dict[str, Any]],
                     search_rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Fits past the threshold per variant (after block 1 and after the last block), the bound per block, the
    search/construction gap per width; and the figures blocks.png and blocks_search.png (PNG bytes)."""
    summary: dict[str, Any] = {}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    colors = {v: f"C{i}" for i, v in enumerate(variants)}
    fig, axes = figure(3, width=5.6)
    for v in variants:
        for b, style in ((1, "o--"), (e.blocks, "o-")):
            sub = [r for r in rows if r["variant"] == v and r["block"] == b and math.isfinite(r["rel_error"])]
            if not sub:
                continue
            start = threshold_of(sub)
            summary[f"{v} block {b}"] = {"threshold": start, **exp_fit_past(sub, start, e.floor)}
            means = mean_by(sub, ("width",), "rel_error")
            ws = sorted(k[0] for k in means)
            axes[0].semilogy(ws, [means[(w,)] for w in ws], style, ms=3, color=colors[v],
                             label=f"{v}" if b == e.blocks else None)
    axes[0].axhline(e.floor, color="k", lw=0.5, alpha=0.5)
    axes[0].set_xlabel("source width n (per head)")
    axes[0].set_ylabel("relative error (held out)")
    axes[0].set_title(f"d={e.d_model}, H={e.heads}: after block 1 (dashed) and block {e.blocks} (solid)")
    axes[0].legend(fontsize=6)
    # error against depth at the widest width, and the bound beside the measure
    wmax = max(r["width"] for r in rows)
    for v in variants:
        sub = [r for r in rows if r["variant"] == v and r["width"] == wmax and math.isfinite(r["rel_error"])]
        means = mean_by(sub, ("block",), "rel_error")
        bs = sorted(k[0] for k in means)
        if bs:
            axes[1].semilogy(bs, [means[(b,)] for b in bs], "o-", ms=3, label=v, color=colors[v])
        summary[f"{v} depth (width {wmax})"] = {f"block {b}": means[(b,)] for b in bs}
        bsub = [r for r in bound_rows if r["variant"] == v and r["width"] == wmax
                and math.isfinite(r["error_median"]) and r["error_median"] > 0]
        if not bsub:
            continue
        em, bm = mean_by(bsub, ("block",), "error_median"), mean_by(bsub, ("block",), "bound_median")
        am = mean_by(bsub, ("block",), "amplification_median", geometric=False)
        lm = mean_by(bsub, ("block",), "ln_factor_median", geometric=False)
        hold = min(r["bound_holds"] for r in bsub)
        axes[2].semilogy(sorted(k[0] for k in em), [em[k] for k in sorted(em)], "o-", ms=3, label=f"{v}",
                         color=colors[v])
        axes[2].semilogy(sorted(k[0] for k in bm), [bm[k] for k in sorted(bm)], "^:", ms=3, color=colors[v])
        summary[f"{v} bound (width {wmax})"] = {
            "bound_holds_min": hold,
            **{f"block {b} error/bound/amp/ln": f"{em[(b,)]:.3g} / {bm[(b,)]:.3g} / {am[(b,)]:.3g} / {lm[(b,)]:.3g}"
               for (b,) in sorted(em)}}
    for ax in axes[1:]:
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].set_xlabel("block")
    axes[1].set_ylabel("relative error after the block")
    axes[1].set_title(f"error across depth, width {wmax}")
    axes[1].legend(fontsize=6)
    axes[2].set_xlabel("block")
    axes[2].set_ylabel("max-token error (median over sequences)")
    axes[2].set_title(f"measured (o) and the stated bound (^), width {wmax}")
    axes[2].legend(fontsize=6)
    pngs = {"blocks.png": png_bytes(fig)}
    if search_rows:
        more, pngs["blocks_search.png"] = _search_summary(e, rows, search_rows)
        summary.update(more)
    return summary, pngs


def _search_summary(e: BlocksExp, rows: list[dict[str, Any]], search_rows: list[dict[str, Any]]
                    ) -> tuple[dict[str, Any], bytes]:
    summary: dict[str, Any] = {}
    fig, axes = figure(1, width=7.5)
    ax = axes[0]
    for v in dict.fromkeys(r["variant"] for r in search_rows):
        searched = {r["width"] for r in search_rows if r["variant"] == v}
        built = [r for r in rows if r["variant"] == v and r["block"] == e.search_blocks and r["width"] in searched]
        means = mean_by(built, ("width",), "rel_error")
        ws = sorted(k[0] for k in means)
        ax.semilogy(ws, [means[(w,)] for w in ws], "k^-", label=f"construct ({v})")
        for method in dict.fromkeys(r["method"] for r in search_rows if r["variant"] == v):
            sub = [r for r in search_rows if r["variant"] == v and r["method"] == method]
            means = mean_by(sub, ("width",), "rel_error")
            ws = sorted(k[0] for k in means)
            ax.semilogy(ws, [means[(w,)] for w in ws], "o-", ms=3, label=f"{method} ({v})")
            for w in ws:
                summary[f"gap {v} {method} width {w}"] = paired_ratio(
                    [r for r in sub if r["width"] == w], [r for r in built if r["width"] == w])
    ax.set_xlabel("source width n (per head)")
    ax.set_ylabel("relative error (held out)")
    ax.set_title(f"{e.search_blocks}-block stack: searched vs constructed")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return summary, png_bytes(fig)

