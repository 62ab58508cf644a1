"""Pre-registration: a study's claims plan recorded in the store before its first cell runs.

A study config with a `[claims]` table (sltlab.analysis.claims.ClaimsPlan) declares what the report will test and
the equivalence margins, before the data exist. `record_plan` writes it to the store as a run of kind "plan" (its
id a hash of the plan and the study's design, its `started` time the moment of declaration), once; the report reads
it back with `study_plans` and tests exactly those claims. A plan edited after runs finished gets a new record, and
the report says that the plan it uses was declared after results existed, so the margins cannot be quietly moved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sltlab.analysis.claims import ClaimsPlan
from sltlab.runs.config import from_dict
from sltlab.runs.store import Store

KIND = "plan"


def record_plan(store: Store, study: str, kind: str, plan: ClaimsPlan, design: dict[str, Any]) -> str:
    """Record (once) the plan of study `study` (runs of `kind`); `design`: what the claims are computed over
    (arms, widths, seeds). Returns the plan's run id."""
    config = {"study": study, "kind": kind, "claims": plan.as_dict(), "design": design}
    run_id = store.start(KIND, config)
    if not store.is_finished(run_id) or not store.get(run_id).metrics:
        store.finish(run_id, {"declared_at": time.time()})
    return run_id


@dataclass(frozen=True)
class StudyPlan:
    study: str
    kind: str
    plan: ClaimsPlan
    design: dict[str, Any]
    run_id: str
    declared_at: float


def study_plans(store: Store) -> dict[str, StudyPlan]:
    """The plan of every study in the store: the earliest declared when a study has several."""
    out: dict[str, StudyPlan] = {}
    for rec in sorted(store.runs(KIND), key=lambda r: float(r.metrics.get("declared_at", 0.0))):
        c = rec.config
        study = str(c.get("study", ""))
        if study in out:
            continue
        try:
            plan = from_dict(ClaimsPlan, c.get("claims", {}), prefix="claims")
        except Exception:  # noqa: BLE001 - a plan written by another version: skipped, the report says so
            continue
        out[study] = StudyPlan(study, str(c.get("kind", "")), plan, dict(c.get("design", {})), rec.run_id,
                               float(rec.metrics.get("declared_at", 0.0)))
    return out
