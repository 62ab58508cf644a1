"""Section 5: task performance of GLUE, PEFT and LM runs, mean over seeds with bootstrap intervals and tests
across methods and norms."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from sltlab.analysis import stats
from sltlab.report import plots
from sltlab.report.blocks import Section, Table, finite, fmt
from sltlab.report.context import ReportContext
from sltlab.report.settings import is_ln
from sltlab.report.stat_tables import KW_EMPTY, KW_HEADERS, STAT_EMPTY, STAT_HEADERS, kw_row, ln_test, stat_row
from sltlab.runs.store import RunRecord


def _main_metric(rec: RunRecord) -> tuple[str, float | None]:
    m = rec.metrics
    name = str(m.get("main_metric", "main"))
    for key in ("main", name, "accuracy", "bpb", "loss"):
        if finite(m.get(key)):
            return (name if key == "main" else key), float(m[key])
    return name, None


def _lm_bytes_figure(ctx: ReportContext, s: Section, recs: list[RunRecord]) -> None:
    """Bits per byte against the bytes a model ships in: tickets (.slt) and, for dense runs, their int8 artifact."""
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in recs:
        m, c = r.metrics, r.config
        label = str(c.get("method", "?")) + ("+scales" if c.get("scales") else "")
        if finite(m.get("artifact_bytes")) and finite(m.get("val_bpb")):
            points[label].append((float(m["artifact_bytes"]), float(m["val_bpb"])))
        if finite(m.get("int8_artifact_bytes")) and finite(m.get("int8_val_bpb")):
            points[f"{label} int8"].append((float(m["int8_artifact_bytes"]), float(m["int8_val_bpb"])))
    if not points:
        return
    name = ctx.figures.add("lm_bpb_vs_bytes.png", plots.bpb_vs_bytes(points, "LM: validation bpb vs artifact bytes"))
    s.figure(name, "Language models: validation bits per byte against the bytes of the shipped artifact (tickets as "
             ".slt; dense models float32 and, where recorded, int8 + zlib).")


def section_tasks(ctx: ReportContext, runs: dict[str, list[RunRecord]]) -> Section:
    s = Section("5. Task performance (GLUE, PEFT, LM)")
    any_rows = False
    for kind in ("glue", "peft", "lm"):
        recs = runs.get(kind, [])
        if not recs:
            s.note(f"No finished `{kind}` runs.")
            ctx.missing.append(f"{kind} runs")
            continue
        cells: dict[tuple, list[float]] = defaultdict(list)
        metric_names: dict[tuple, str] = {}
        extra: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in recs:
            c = r.config
            key = (
                str(c.get("task", c.get("dataset", "?"))),
                str(c.get("method", "?")),
                str(c.get("norm", "-")),
            )
            name, val = _main_metric(r)
            if val is None:
                continue
            cells[key].append(val)
            metric_names[key] = name
            for k, alias in (("params_trainable", "trainable"), ("density", "density")):
                val = r.metrics.get(k, r.metrics.get(alias))
                if finite(val):
                    extra[key][k].append(float(val))
        rows = []
        for key in sorted(cells):
            e = extra[key]
            rows.append(
                [
                    *key,
                    metric_names[key],
                    stats.bootstrap_ci(cells[key]).fmt(4),
                    fmt(float(np.mean(e["params_trainable"]))) if e.get("params_trainable") else "n/a",
                    fmt(float(np.mean(e["density"]))) if e.get("density") else "n/a",
                ]
            )
        s.p(f"**{kind}**: mean of the main metric over seeds, 95% bootstrap interval, n seeds.")
        s.table(Table(["task", "method", "norm", "metric", "mean [95% CI] (n)", "trainable params", "density"], rows))
        kw_rows, mw_rows = [], []
        tasks = sorted({k[0] for k in cells})
        for task in tasks:
            by_method: dict[str, list[float]] = defaultdict(list)
            for (t, m, _), vals in cells.items():
                if t == task:
                    by_method[m] += vals
            if len(by_method) > 1:
                kw_rows.append(kw_row(f"{kind} {task}: across methods", stats.kruskal_wallis(by_method)))
            for method in sorted({k[1] for k in cells if k[0] == task}):
                by_norm = {k[2]: v for k, v in cells.items() if k[0] == task and k[1] == method}
                if any(is_ln(n) for n in by_norm) and any(not is_ln(n) for n in by_norm):
                    mw_rows.append(stat_row(f"{kind} {task} {method}", ln_test(by_norm, "two-sided")))
        if kw_rows:
            s.table(Table(KW_HEADERS, kw_rows, KW_EMPTY))
        if mw_rows:
            s.table(Table(STAT_HEADERS, mw_rows, STAT_EMPTY))
        if kind == "lm":
            _lm_bytes_figure(ctx, s, recs)
        ctx.summary[kind] = [{"task": k[0], "method": k[1], "norm": k[2], "values": v} for k, v in cells.items()]
        any_rows = any_rows or bool(rows)
    return s
