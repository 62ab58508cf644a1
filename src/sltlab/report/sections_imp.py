"""Section 6: IMP tickets across their pruning rounds: the kept fraction per round against the schedule, the
overlap of each round's mask with the previous and the final round, the dev metric per round, and how far two
norm variants pruned from the same initial weights agree."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from sltlab.analysis.masks import chance_jaccard, imp_round_table, jaccard, load_imp_rounds, overall_density
from sltlab.errors import SltlabError
from sltlab.report import plots
from sltlab.report.blocks import Section, Table, fmt
from sltlab.report.context import ReportContext
from sltlab.report.settings import variants_sorted
from sltlab.runs.store import RunRecord

TITLE = "IMP: the ticket across pruning rounds"
RUN_HINT = (
    "`sltlab glue --config configs/glue_quick.toml --task sst2 --method imp --norm none,pre-ln --seeds 2 "
    "--set imp_rounds=3`"
)


def _chain(values: Sequence[float], digits: int = 3) -> str:
    return " → ".join("–" if not math.isfinite(v) else fmt(float(v), digits) for v in values)


def _group_label(rec: RunRecord) -> str:
    c = rec.config
    return (
        f"{c.get('task')}, {c.get('imp_rounds')} rounds pruning {c.get('imp_fraction')} of the survivors "
        f"({c.get('imp_scope', 'layer')} scope)"
    )


def _metric_rows(rec: RunRecord) -> list[dict[str, Any]]:
    """Round rows from the run's metrics alone, for a run whose round masks were not saved."""
    nan = float("nan")
    return [
        {
            "round": int(m["round"]),
            "density": 1.0 - float(m["sparsity"]),
            "jaccard_prev": nan,
            "retention": nan,
            "jaccard_final": nan,
            "main": float(m.get("main", nan)),
        }
        for m in rec.metrics.get("rounds") or []
        if "round" in m and "sparsity" in m
    ]


def _norm_pairs(recs: Sequence[RunRecord]) -> dict[tuple, dict[str, RunRecord]]:
    """Runs equal in every config key but the norm: the same seeded weights pruned under each norm."""
    groups: dict[tuple, dict[str, RunRecord]] = defaultdict(dict)
    for r in recs:
        key = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in r.config.items() if k != "norm"))
        groups[key][str(r.config.get("norm"))] = r
    return {k: v for k, v in groups.items() if len(v) >= 2}


def section_imp(ctx: ReportContext, glue: list[RunRecord]) -> Section:
    s = Section(TITLE, collapsed=True)
    imp = [r for r in glue if r.config.get("method") == "imp"]
    if not imp:
        s.note(f"No finished GLUE IMP runs, so no pruning rounds to compare. Run e.g. {RUN_HINT}.")
        ctx.missing.append("GLUE IMP runs with 2+ pruning rounds")
        return s
    multi = [r for r in imp if int(r.config.get("imp_rounds", 0)) >= 2]
    if not multi:
        counts = sorted({int(r.config.get("imp_rounds", 0)) for r in imp})
        s.note(
            f"{len(imp)} IMP run(s), all with fewer than 2 pruning rounds (imp_rounds = "
            f"{', '.join(map(str, counts))}): one round has only the dense start to compare with. Run e.g. "
            f"{RUN_HINT}."
        )
        ctx.missing.append("GLUE IMP runs with 2+ pruning rounds")
        return s
    s.p(
        "Iterative magnitude pruning trains the dense network (round 0), then in each round removes "
        "`imp_fraction` of the surviving weights by magnitude, rewinds the survivors and trains again, so the "
        "kept fraction after round r should be (1 − fraction)^r. A pruned weight never returns, so each round's "
        "mask lies inside the previous one: the Jaccard with the previous round equals the share of it that "
        "survives (1 − fraction) and the Jaccard with the final round equals the final over the current kept "
        "fraction. Those columns check the schedule and the nesting; what the rounds change is the dev metric, "
        "and what the norm changes is which weights survive (the last table, for runs that differ only in the "
        "norm). Per run, round 0 → final round; '–' where a value does not exist."
    )
    rows, summary, no_masks, bad = [], [], [], []
    per_group: dict[str, dict[str, list[list[dict[str, Any]]]]] = defaultdict(lambda: defaultdict(list))
    masks_of: dict[str, list[dict]] = {}
    group_info: dict[str, tuple[float, str]] = {}  # group label -> (fraction, metric name) for its figure
    for rec in sorted(multi, key=lambda r: (_group_label(r), r.config.get("norm") != "none", r.config.get("seed"))):
        c = rec.config
        try:
            rounds = load_imp_rounds(ctx.store.artifact_path(rec.run_id))
        except SltlabError as err:
            bad.append(f"{rec.run_id}: {err}")
            rounds = None
        if rounds is None:
            no_masks.append(rec.run_id)
            table = _metric_rows(rec)
        else:
            masks_of[rec.run_id] = rounds
            table = imp_round_table(rounds, rec.metrics.get("rounds"))
        if not table:
            continue
        frac = float(c.get("imp_fraction", float("nan")))
        schedule_gap = max(abs(row["density"] - (1 - frac) ** row["round"]) for row in table)
        metric = str(rec.metrics.get("main_metric", "main"))
        rows.append(
            [
                c.get("task"),
                c.get("norm"),
                c.get("seed"),
                rec.run_id,
                _chain([row["density"] for row in table]),
                fmt(schedule_gap, 2),
                _chain([row["jaccard_prev"] for row in table]),
                _chain([row["jaccard_final"] for row in table]),
                f"{metric}: " + _chain([row["main"] for row in table]),
            ]
        )
        if rounds is not None:
            per_group[_group_label(rec)][str(c.get("norm"))].append(table)
            group_info[_group_label(rec)] = (frac, metric)
        summary.append(
            {
                "run_id": rec.run_id,
                "task": c.get("task"),
                "norm": c.get("norm"),
                "seed": c.get("seed"),
                "fraction": frac,
                "masks": rounds is not None,
                "rounds": table,
            }
        )
    if no_masks:
        s.note(
            f"{len(no_masks)} IMP run(s) with 2+ rounds have no saved round masks (imp_rounds.safetensors; runs "
            "made before round masks were saved, or whose file is unreadable): their kept fraction and dev metric "
            "per round come from the run's metrics, their overlaps are missing. Re-run them into a new store to "
            "fill them: " + ", ".join(no_masks[:5]) + (" ..." if len(no_masks) > 5 else "") + "."
        )
        if len(no_masks) == len(multi):
            ctx.missing.append("IMP round masks (runs made before round masks were saved)")
    for b in bad[:3]:
        s.note(f"unreadable round masks, {b}")
    s.table(
        Table(
            [
                "task",
                "norm",
                "seed",
                "run",
                "kept fraction per round",
                "largest gap to (1−p)^r",
                "Jaccard with previous",
                "Jaccard with final",
                "dev metric per round",
            ],
            rows,
            "no IMP run has round data (neither round masks nor per-round metrics)",
        )
    )
    cross_rows, cross_summary, cross_plot = _cross_norm([r for r in multi if r.run_id in masks_of], masks_of)
    for i, (group, by_norm) in enumerate(sorted(per_group.items())):
        frac, metric = group_info[group]
        name = ctx.figures.add(
            f"imp_rounds_{i}.png",
            plots.imp_rounds(
                {n: by_norm[n] for n in variants_sorted(by_norm)},
                dict(cross_plot.get(group, {})),
                frac,
                metric,
                f"IMP rounds, {group}",
            ),
        )
        s.figure(name, f"IMP masks across rounds, {group}: lines are means over seeds, dots single runs.")
    if cross_rows:
        s.p(
            "Which weights survive under each norm: the same seed draws the same initial weights for every norm, "
            "so two runs that differ only in the norm can be compared mask to mask. Jaccard per round, the chance "
            "level of two independent masks of the same kept fractions, and the excess over chance (0 = chance, "
            "1 = the same mask):"
        )
        s.table(Table(["task", "norms", "seed", "Jaccard per round", "chance", "excess over chance"], cross_rows))
    ctx.summary["imp_rounds"] = summary
    if cross_summary:
        ctx.summary["imp_cross_norm"] = cross_summary
    return s


def _cross_norm(
    recs: Sequence[RunRecord], masks_of: dict[str, list[dict]]
) -> tuple[list[list[Any]], list[dict[str, Any]], dict[str, dict[str, list[list[tuple[float, float]]]]]]:
    """Per pair of norms on the same weights: (table rows, summary entries, {group: {pair: [per-round (Jaccard,
    chance)] per seed}} for the figure)."""
    rows, summary = [], []
    plot: dict[str, dict[str, list[list[tuple[float, float]]]]] = defaultdict(lambda: defaultdict(list))
    for by_norm in _norm_pairs(recs).values():
        for na, nb in combinations(variants_sorted(by_norm), 2):
            a = by_norm[na]
            ma, mb = masks_of[a.run_id], masks_of[by_norm[nb].run_id]
            if len(ma) != len(mb) or any(set(x) != set(y) for x, y in zip(ma, mb, strict=True)):
                continue
            pairs = [
                (jaccard(x, y), chance_jaccard(overall_density(x), overall_density(y)))
                for x, y in zip(ma, mb, strict=True)
            ]
            label = f"{na} vs {nb}"
            plot[_group_label(a)][label].append(pairs)
            excess = [(j - ch) / (1 - ch) if ch < 1 else float("nan") for j, ch in pairs]
            rows.append(
                [
                    a.config.get("task"),
                    label,
                    a.config.get("seed"),
                    _chain([j for j, _ in pairs]),
                    _chain([ch for _, ch in pairs]),
                    _chain(excess),
                ]
            )
            summary.append(
                {
                    "task": a.config.get("task"),
                    "a": na,
                    "b": nb,
                    "seed": a.config.get("seed"),
                    "jaccard": [j for j, _ in pairs],
                    "chance": [ch for _, ch in pairs],
                }
            )
    return rows, summary, plot
