"""The report's first section: what the store holds, by kind and status."""

from __future__ import annotations

import time
from collections import defaultdict

from sltlab.report.blocks import Section, Table
from sltlab.report.context import ReportContext
from sltlab.runs.store import RunRecord


def section_overview(ctx: ReportContext, runs: dict[str, list[RunRecord]]) -> Section:
    s = Section("Store overview", collapsed=True)
    rows = []
    diverged = 0
    for kind in sorted(set(runs) | {"approx", "glue", "peft", "lm"}):
        recs = runs.get(kind, [])
        statuses: dict[str, int] = defaultdict(int)
        for r in ctx.store.runs(kind, status=None):
            statuses[r.status] += 1
        diverged += statuses.get("diverged", 0)
        rows.append([kind, len(recs), ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "none"])
    s.p(f"Store `{ctx.store.path}`; report built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    s.table(Table(["kind", "finished runs", "all runs by status"], rows))
    if diverged:
        s.p(f"{diverged} diverged run(s) (a non-finite loss, or one above 1e3 x its start) are results kept in the "
            "store but left out of every table, fit and figure below; `sltlab runs list --status diverged` lists "
            "them.")
    return s
