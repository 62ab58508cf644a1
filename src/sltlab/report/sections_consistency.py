"""Do tickets found from different score seeds on the same weights agree (Jaccard over chance), per variant and per
width, and how much does the norm variant alone change a ticket. Descriptive (one value per weight seed, t
intervals); the declared consistency claims, mask-based and functional, are tested in the claims table."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from sltlab.analysis import stats
from sltlab.report import plots
from sltlab.report.blocks import Section, Table, fmt
from sltlab.report.context import ReportContext
from sltlab.report.settings import SEED_KEYS, setting_label, setting_of, variants_sorted
from sltlab.runs.store import RunRecord


def consistency_groups(records: Sequence[RunRecord]) -> dict[tuple, list[RunRecord]]:
    """Runs equal in every config key but the score seed: same weights, same problem, different search
    seeds."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:
        key = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in r.config.items() if k not in SEED_KEYS))
        groups[key].append(r)
    return {k: v for k, v in groups.items() if len(v) >= 2}


def section_consistency(ctx: ReportContext, approx: list[RunRecord]) -> Section:
    from sltlab.analysis.masks import consistency

    s = Section("Ticket consistency across score seeds", collapsed=True)
    groups = consistency_groups([r for r in approx if "score_seed" in r.config])
    if not groups:
        s.note(
            "No two approximation runs differ only in their score seed, so consistency cannot be measured. "
            "Set `score_seeds = [0, 1, 2]` in the approx config."
        )
        ctx.missing.append("runs that differ only in score_seed (consistency)")
        return s
    s.p(
        "For each source (same weights, width, variant and seed) the tickets found from different score "
        "seeds are compared pairwise: Jaccard |A∩B|/|A∪B| of the kept weights. `excess` rescales it so that "
        "0 is the chance overlap of two independent random masks of the same densities and 1 is identical "
        "tickets. One value per source (= per weight seed, width and variant)."
    )
    per_variant: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_width: dict[tuple, dict[tuple[str, int], list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    chance_all: list[float] = []
    skipped = 0
    for _, recs in groups.items():
        tickets = [ctx.masks(r) for r in sorted(recs, key=lambda r: r.config.get("score_seed", 0))]
        tickets = [t for t in tickets if t]
        if len(tickets) < 2:
            skipped += 1
            continue
        c = consistency(tickets)
        setting = setting_of(recs[0])
        v = str(recs[0].config.get("variant"))
        per_variant[setting][v].append(c["excess"])
        per_width[setting][(v, int(recs[0].config.get("width", 0)))].append((c["jaccard"], c["chance"]))
        chance_all.append(c["chance"])
    if skipped:
        s.note(f"{skipped} group(s) skipped: fewer than two of their runs have a readable ticket checkpoint.")
    if not per_variant:
        s.note("No checkpoints to compare (tickets are read from artifacts/<run id>/ticket.safetensors).")
        ctx.missing.append("ticket checkpoints for consistency")
        return s
    rows, out = [], []
    for i, (setting, by_v) in enumerate(sorted(per_variant.items(), key=lambda kv: str(kv[0]))):
        label = setting_label(setting)
        by_v = {v: by_v[v] for v in variants_sorted(by_v)}
        name = ctx.figures.add(
            f"consistency_{i}.png",
            plots.strip(by_v, "Jaccard excess over chance", f"Ticket consistency, {label} (one dot per source)",
                        chance=0.0),
        )
        s.figure(name, f"Consistency per variant, {label}: 0 = chance overlap, 1 = identical tickets.")
        for (v, w), vals in sorted(per_width[setting].items(), key=lambda kv: (variants_sorted([kv[0][0]]), kv[0])):
            j = [x[0] for x in vals]
            ex = [(a - c) / (1 - c) for a, c in vals]
            rows.append([label, v, w, len(vals), stats.mean_ci(j).fmt(), stats.mean_ci(ex).fmt(),
                         fmt(float(np.mean([x[1] for x in vals])))])
        out.append({"setting": label, "excess": {v: stats.mean_ci(x).as_dict() for v, x in by_v.items()}})
    s.table(Table(["setting", "variant", "width", "n sources", "Jaccard [95% CI]", "excess [95% CI]",
                   "chance Jaccard"], rows, merge=2))
    ctx.summary["consistency"] = out
    cross = cross_norm_overlap(ctx, approx)
    if cross:
        s.p(
            "For scale: overlap of tickets found on the same weights with the same score seed under two "
            "different norm variants (one value per source and score seed; the score seeds of a weight seed are "
            "not independent, so this interval is descriptive only):"
        )
        s.table(
            Table(
                ["setting", "variant A", "variant B", "n", "mean Jaccard [95% CI]"],
                [
                    [c["setting"], c["a"], c["b"], len(c["values"]), stats.mean_ci(c["values"]).fmt()]
                    for c in cross
                ],
                merge=1,
            )
        )
        ctx.summary["cross_norm_overlap"] = cross
    return s


def cross_norm_overlap(ctx: ReportContext, approx: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Jaccard between tickets that differ only in the norm variant (same weights, width and score seed).

    Source weights are drawn from (seed, parameter name), so the variants of one seed share every masked
    weight; this overlap says how much the norm changes *which* weights a ticket keeps.
    """
    from itertools import combinations

    from sltlab.analysis.masks import jaccard

    groups: dict[tuple, dict[str, RunRecord]] = defaultdict(dict)
    for r in approx:
        # the same weights and score seed; the variant, its target and its chosen lr may differ
        cfg = {k: v for k, v in r.config.items() if k not in ("variant", "norm", "target_norm")}
        if isinstance(cfg.get("search"), dict):
            cfg["search"] = {k: v for k, v in cfg["search"].items() if k != "lr"}
        key = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in cfg.items()))
        groups[key][str(r.config.get("variant"))] = r
    pairs: dict[tuple, list[float]] = defaultdict(list)
    for by_v in groups.values():
        for a, b in combinations(variants_sorted(by_v), 2):
            ma, mb = ctx.masks(by_v[a]), ctx.masks(by_v[b])
            if ma and mb and set(ma) == set(mb) and all(ma[k].shape == mb[k].shape for k in ma):
                pairs[(setting_label(setting_of(by_v[a])), a, b)].append(jaccard(ma, mb))
    return [{"setting": k[0], "a": k[1], "b": k[2], "values": v} for k, v in sorted(pairs.items())]
