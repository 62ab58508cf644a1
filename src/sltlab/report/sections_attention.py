"""Attention entropy and head diversity per layer of tickets, their random sources and their dense counterparts.
Descriptive (a few weight seeds per setting); the declared diversity claims are tested in the claims table."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from sltlab.analysis import stats
from sltlab.report import plots
from sltlab.report.blocks import Section, Table
from sltlab.report.context import ReportContext
from sltlab.report.settings import setting_label, setting_of
from sltlab.runs.store import RunRecord


def _pick_attention_runs(recs: Sequence[RunRecord], limit: int) -> list[RunRecord]:
    """Per (setting, variant): the largest width, the lowest score seed, up to `limit` seeds."""
    by: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in recs:
        by[(setting_of(r), str(r.config.get("variant", r.config.get("norm"))))].append(r)
    chosen = []
    for _, rs in sorted(by.items(), key=lambda kv: str(kv[0])):
        wmax = max(int(r.config.get("width", 0)) for r in rs)
        rs = [r for r in rs if int(r.config.get("width", 0)) == wmax]
        smin = min(int(r.config.get("score_seed", 0)) for r in rs)
        rs = sorted(
            [r for r in rs if int(r.config.get("score_seed", 0)) == smin],
            key=lambda r: r.config.get("seed", 0),
        )
        chosen += rs[:limit]
    return chosen


def section_attention(ctx: ReportContext, approx: list[RunRecord], glue: list[RunRecord]) -> Section:
    from sltlab.analysis.attention import compare_models
    from sltlab.errors import SltlabError
    from sltlab.tasks.replay import run_models

    s = Section("Attention entropy and head diversity", collapsed=True)
    s.p(
        "Per layer: mean normalised entropy of attention rows (1 = uniform, 0 = one-hot; padding excluded) "
        "and head diversity, the mean pairwise Jensen-Shannon divergence between heads in bits (0 = "
        "identical heads). Each ticket is compared with its random source (same weights, no mask) and its "
        "dense counterpart (the approximation target, or the dense GLUE run of the same task, norm and seed) "
        "on the same inputs."
    )
    jobs = [(r, "approx") for r in _pick_attention_runs(approx, ctx.max_attention_runs)]
    glue_t = [r for r in glue if r.config.get("method") not in ("dense", None)]
    jobs += [(r, "glue") for r in _pick_attention_runs(glue_t, ctx.max_attention_runs)]
    if not jobs:
        s.note("No runs with tickets to analyse.")
        ctx.missing.append("ticket checkpoints for attention analysis")
        return s
    data: dict[tuple, dict[str, dict[str, list[list[float]]]]] = defaultdict(
        lambda: {"entropy": defaultdict(list), "diversity": defaultdict(list)}
    )
    # vals[key][model][metric][variant] = one number per run (mean over layers)
    vals: dict[tuple, dict[str, dict[str, dict[str, list[float]]]]] = defaultdict(
        lambda: defaultdict(lambda: {"entropy": defaultdict(list), "diversity": defaultdict(list)})
    )
    sources, notes, errors = set(), set(), []
    from tqdm.auto import tqdm

    for rec, kind in tqdm(jobs, desc="attention", disable=not ctx.progress, leave=False):
        try:
            rm = run_models(ctx.store_of(rec), rec, n_inputs=ctx.n_inputs, data_dir=ctx.data_dir)
        except (SltlabError, RuntimeError, KeyError) as err:
            errors.append(f"{rec.run_id}: {err}")
            continue
        sources.add(rm.input_source.split(" (")[0])
        notes.update(rm.notes)
        res = compare_models(rm.models, rm.inputs)
        if kind == "approx":
            key = ("approx", setting_label(setting_of(rec)))
            v = str(rec.config.get("variant"))
        else:
            key = ("glue", f"{rec.config.get('task')} {rec.config.get('method')}")
            v = str(rec.config.get("norm"))
        for model, st in res.items():
            for metric in ("entropy", "diversity"):
                data[key][metric][f"{model}|{v}"].append([la[metric] for la in st["layers"]])
                vals[key][model][metric][v].append(st[metric])
    if errors:
        s.note(f"{len(errors)} run(s) could not be analysed: " + "; ".join(errors[:3]))
    for n in sorted(notes)[:5]:
        s.note(n)
    if not data:
        ctx.missing.append("readable ticket checkpoints for attention analysis")
        return s
    s.p("Inputs: " + "; ".join(sorted(sources)) + ".")
    rows, out = [], []
    for i, (key, d) in enumerate(sorted(data.items())):
        name = ctx.figures.add(
            f"attention_{i}.png",
            plots.attention_layers({m: dict(v) for m, v in d.items()}, f"{key[1]}: mean ± sd over runs"),
        )
        s.figure(name, f"Attention entropy and head diversity per layer, {key[1]}.")
        for metric in ("entropy", "diversity"):
            for mv, runs in sorted(d[metric].items()):
                model, v = mv.split("|")
                with warnings.catch_warnings():  # a one-head layer has no diversity: NaN, left out
                    warnings.simplefilter("ignore", RuntimeWarning)
                    flat = [float(np.nanmean(r)) for r in runs]
                if not any(np.isfinite(flat)):
                    continue  # one head per layer: no pair of heads, no diversity row
                rows.append([key[1], v, model, metric, len(runs), stats.mean_ci(flat).fmt()])
        tv = vals[key]["ticket"]
        out.append(
            {
                "what": key[0],
                "setting": key[1],
                "ticket_diversity": {v: stats.mean_ci(x).as_dict() for v, x in tv["diversity"].items()},
                "ticket_entropy": {v: stats.mean_ci(x).as_dict() for v, x in tv["entropy"].items()},
                "diversity_undefined": all(
                    not np.isfinite(x) for xs in tv["diversity"].values() for x in xs
                ) and any(tv["diversity"].values()),
            }
        )
    s.table(Table(["setting", "variant / norm", "model", "quantity", "n runs", "mean over layers [95% CI]"], rows,
                  merge=2))
    ctx.summary["attention"] = out
    return s
