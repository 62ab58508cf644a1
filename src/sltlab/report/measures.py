"""The measures a claim can name, each turning the runs of one weight seed (its score seeds) into one number.

A claims plan (sltlab.analysis.claims.ClaimsPlan) names measures by the keys of `MEASURES`; the claims section groups
a study's runs by arm (norm variant), width and weight seed and asks each measure for the unit's value. The score
seeds of a weight seed are averaged (means of per-ticket values) or compared pairwise (consistency), never counted as
units. A measure that cannot be computed for a unit (a checkpoint missing, one score seed only) gives NaN and the unit
drops out of that claim, which then says how many units it lost.

- metric measures read a stored metric (`rel_error`, `branch_rel_error`, GLUE's dev `main` ...);
- `jaccard_excess`: mask overlap across score seeds above chance (0 = independent masks, 1 = identical);
- `output_disagreement` / `prediction_disagreement` / `attention_disagreement`: functional consistency across score
  seeds on the same inputs (sltlab.analysis.agreement; 0 = the tickets compute the same);
- `head_jsd`: the ticket's head diversity (mean pairwise JSD between heads, bits), `attention_entropy` its mean
  normalised attention entropy (sltlab.analysis.attention).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch

from sltlab.report.context import ReportContext
from sltlab.runs.store import RunRecord


@dataclass(frozen=True)
class Measure:
    name: str
    label: str
    fn: Callable[[ReportContext, Sequence[RunRecord]], float]
    lower_is: str = ""  # what a lower value means, for the reader ("better", "more consistent", ...)


def _nanmean(xs: Sequence[float]) -> float:
    vals = [float(x) for x in xs if isinstance(x, int | float) and math.isfinite(x)]
    return sum(vals) / len(vals) if vals else math.nan


def metric_measure(key: str) -> Callable[[ReportContext, Sequence[RunRecord]], float]:
    def fn(ctx: ReportContext, recs: Sequence[RunRecord]) -> float:
        return _nanmean([r.metrics.get(key, math.nan) for r in recs])

    return fn


def _by_score_seed(recs: Sequence[RunRecord]) -> list[RunRecord]:
    return sorted(recs, key=lambda r: int(r.config.get("score_seed", 0)))


def jaccard_excess(ctx: ReportContext, recs: Sequence[RunRecord]) -> float:
    from sltlab.analysis.masks import consistency

    tickets = [t for t in (ctx.masks(r) for r in _by_score_seed(recs)) if t]
    if len(tickets) < 2:
        return math.nan
    return float(consistency(tickets)["excess"])


def _pairwise_models(ctx: ReportContext, recs: Sequence[RunRecord],
                     fn: Callable[[Any, Any, dict[str, torch.Tensor]], float]) -> float:
    loaded = [m for m in (ctx.ticket(r) for r in _by_score_seed(recs)) if m is not None]
    if len(loaded) < 2:
        return math.nan
    return _nanmean([fn(a[0], b[0], a[1]) for a, b in combinations(loaded, 2)])


def _outputs(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    from sltlab.tasks.approx import forward_out

    with torch.no_grad():
        model.eval()
        if "x" in inputs:
            return forward_out(model, inputs["x"])[0]
        return model(inputs["input_ids"], inputs.get("attention_mask"))


def output_disagreement(ctx: ReportContext, recs: Sequence[RunRecord]) -> float:
    from sltlab.analysis.agreement import output_disagreement as od

    return _pairwise_models(ctx, recs, lambda a, b, x: od(_outputs(a, x), _outputs(b, x)))


def prediction_disagreement(ctx: ReportContext, recs: Sequence[RunRecord]) -> float:
    from sltlab.analysis.agreement import prediction_disagreement as pd

    return _pairwise_models(ctx, recs, lambda a, b, x: pd(_outputs(a, x), _outputs(b, x)))


def attention_disagreement(ctx: ReportContext, recs: Sequence[RunRecord]) -> float:
    from sltlab.analysis.agreement import attention_disagreement as ad

    return _pairwise_models(ctx, recs, lambda a, b, x: ad(a, b, x))


def _ticket_stat(key: str) -> Callable[[ReportContext, Sequence[RunRecord]], float]:
    def fn(ctx: ReportContext, recs: Sequence[RunRecord]) -> float:
        from sltlab.analysis.attention import attention_stats

        vals = []
        for r in recs:
            m = ctx.ticket(r)
            if m is not None:
                vals.append(attention_stats(m[0], m[1])[key])
        return _nanmean(vals)

    return fn


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("rel_error", "relative output error (test inputs)", metric_measure("rel_error"), "better"),
        Measure("branch_rel_error", "error relative to the attention branches' contribution",
                metric_measure("branch_rel_error"), "better"),
        Measure("max_token_error", "largest per-token error", metric_measure("max_token_error"), "better"),
        Measure("dev_main", "dev score (the task's main metric)", metric_measure("main"), "worse"),
        Measure("jaccard_excess", "mask overlap across score seeds above chance", jaccard_excess, "less consistent"),
        Measure("output_disagreement", "output disagreement across score seeds", output_disagreement,
                "more consistent"),
        Measure("prediction_disagreement", "share of predictions that differ across score seeds",
                prediction_disagreement, "more consistent"),
        Measure("attention_disagreement", "attention-map JSD across score seeds (bits)", attention_disagreement,
                "more consistent"),
        Measure("head_jsd", "head diversity: mean pairwise JSD between heads (bits)", _ticket_stat("diversity"),
                "less diverse"),
        Measure("attention_entropy", "mean normalised attention entropy", _ticket_stat("entropy"), "sharper"),
    )
}


def measure(name: str) -> Measure:
    """A registered measure, or a stored metric of that name."""
    return MEASURES.get(name) or Measure(name, name, metric_measure(name))
