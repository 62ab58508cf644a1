"""Task performance of GLUE, PEFT and LM runs: the mean over weight seeds (score seeds averaged within each) with a
t interval. Descriptive: comparisons that a study declared are tested in the claims table, nowhere else."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from sltlab.analysis import stats
from sltlab.report import plots
from sltlab.report.blocks import Section, Table, finite, fmt
from sltlab.report.context import ReportContext
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
    s = Section("Task performance (GLUE, PEFT, LM)", collapsed=True)
    any_rows = False
    for kind in ("glue", "peft", "lm"):
        recs = runs.get(kind, [])
        if not recs:
            s.note(f"No finished `{kind}` runs.")
            ctx.missing.append(f"{kind} runs")
            continue
        per_seed: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
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
            per_seed[key][int(c.get("seed", r.seed or 0))].append(val)
            metric_names[key] = name
            for k, alias in (("params_trainable", "trainable"), ("density", "density")):
                val = r.metrics.get(k, r.metrics.get(alias))
                if finite(val):
                    extra[key][k].append(float(val))
        # one value per weight seed: its score seeds averaged
        cells = {k: [float(np.mean(v)) for _, v in sorted(by.items())] for k, by in per_seed.items()}
        rows = []
        for key in sorted(cells):
            e = extra[key]
            rows.append(
                [
                    *key,
                    metric_names[key],
                    stats.mean_ci(cells[key]).fmt(4),
                    fmt(float(np.mean(e["params_trainable"]))) if e.get("params_trainable") else "n/a",
                    fmt(float(np.mean(e["density"]))) if e.get("density") else "n/a",
                ]
            )
        s.p(f"**{kind}**: mean of the main metric over weight seeds (n), 95% t interval.")
        s.table(Table(["task", "method", "norm", "metric", "mean [95% CI] (n)", "trainable params", "density"], rows,
                      merge=2))
        if kind == "lm":
            _lm_bytes_figure(ctx, s, recs)
        ctx.summary[kind] = [{"task": k[0], "method": k[1], "norm": k[2], "values": v} for k, v in cells.items()]
        any_rows = any_rows or bool(rows)
    return s
