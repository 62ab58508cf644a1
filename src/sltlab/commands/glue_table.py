"""`sltlab glue-table`: the task x method x norm table of GLUE runs, mean ± std over seeds, as Markdown and
CSV."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from sltlab.runs.checks import check_output_dir, check_store_file
from sltlab.runs.store import RunRecord, Store, atomic_write_text

METHOD_ORDER = ("dense", "edge-popup", "ln-integrated", "annealed", "imp")
TASK_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
CELL_KEYS = ("task", "method", "norm", "seed", "score_seed")
# left out of a row's setting: the method's lr (a grid's runs are reduced to the chosen point first)
GRID_KEYS = ("lr",)


def _setting(config: dict[str, Any]) -> str:
    """A short hash of everything but the cell's coordinates and the method-specific lr: runs that differ in
    it
    (e.g. a quick and a full sweep in one store) are never averaged together."""
    rest = {k: v for k, v in config.items() if k not in (*CELL_KEYS, *GRID_KEYS)}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:6]


def _setting_labels(records: list[RunRecord]) -> dict[tuple[str, str], str]:
    """(task, setting hash) -> the fields that set it apart from the task's other settings, e.g.
    "affine_lr=0.01"; "default" for the one that only lacks them. A hash alone tells a reader nothing."""
    by_task: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        rest = {k: v for k, v in r.config.items() if k not in (*CELL_KEYS, *GRID_KEYS)}
        by_task[r.config["task"]][_setting(r.config)] = rest
    labels: dict[tuple[str, str], str] = {}
    for task, settings in by_task.items():
        keys = sorted({k for rest in settings.values() for k in rest})
        varying = [k for k in keys if len({json.dumps(rest.get(k), sort_keys=True) for rest in settings.values()}) > 1]
        for h, rest in settings.items():
            parts = [f"{k}={rest[k]}" for k in varying if rest.get(k) is not None]
            labels[(task, h)] = ", ".join(parts) or "default"
    return labels


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def usable(records: list[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """The records a table can use (task, method, norm and seed set; a finite `main` score), and what is wrong with
    the others ("run id: reason"): a store's rows are input, not a promise."""
    good, bad = [], []
    for r in records:
        c, m = r.config, r.metrics
        missing = [k for k in ("task", "method", "norm") if not isinstance(c.get(k), str)]
        if isinstance(c.get("seed"), bool) or not isinstance(c.get("seed"), int):
            missing.append("seed")
        main = m.get("main")
        if missing:
            bad.append(f"{r.run_id}: config lacks {missing[0]}")
        elif isinstance(main, bool) or not isinstance(main, int | float) or not math.isfinite(main):
            bad.append(f"{r.run_id}: metrics.main is {main!r}")
        else:
            good.append(r)
    return good, bad


def summarise(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per (task, method, norm, setting): mean and std of `main` (and of density, wall time) over
    weight seeds, each weight seed's score seeds averaged first (they are not extra samples); with an lr grid,
    only the runs of the point chosen on held-out training rows."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:
        c = r.config
        groups[(c["task"], c["method"], c["norm"], _setting(c))].append(r)
    labels = _setting_labels(records)
    rows = []
    for (task, method, norm, setting), recs in groups.items():
        recs = sorted(recs, key=lambda r: (r.config["seed"], r.config.get("score_seed") or 0))
        by_seed: dict[int, list[float]] = defaultdict(list)
        for r in recs:
            by_seed[int(r.config["seed"])].append(float(r.metrics["main"]))
        main = [statistics.fmean(v) for _, v in sorted(by_seed.items())]
        mean, std = _mean_std(main)
        dens = [float(r.metrics["density"]) for r in recs if _finite(r.metrics.get("density"))]
        wall = [float(r.timings["total_s"]) for r in recs if _finite(r.timings.get("total_s"))] or [0.0]
        c = recs[0].config
        rows.append(
            {
                "task": task,
                "method": method,
                "norm": norm,
                "setting": setting,
                "setting_label": labels[(task, setting)],
                "metric": recs[0].metrics.get("main_metric", "main"),
                "mean": mean,
                "std": std,
                "n": len(main),
                "runs": len(recs),
                "lr": " ".join(sorted({f"{r.config.get('lr')}" for r in recs})),
                "seeds": " ".join(str(s) for s in sorted(by_seed)),
                "values": " ".join(f"{v:.4f}" for v in main),
                "density": statistics.fmean(dens) if dens else 1.0,
                "params_total": recs[0].metrics.get("params_total"),
                "params_trainable": recs[0].metrics.get("params_trainable"),
                "wall_s_mean": statistics.fmean(wall),
                "d_model": c.get("d_model"),
                "n_layers": c.get("n_layers"),
                "steps": c.get("steps"),
            }
        )

    def order(row: dict[str, Any]) -> tuple:
        t = TASK_ORDER.index(row["task"]) if row["task"] in TASK_ORDER else 99
        m = METHOD_ORDER.index(row["method"]) if row["method"] in METHOD_ORDER else 99
        label = row["setting_label"]
        return (t, row["task"], m, row["method"], label != "default", label, row["norm"])

    return sorted(rows, key=order)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """Rows task x method (x setting when a task was run under several), columns the norms; cells mean ± std
    (n), in GLUE points (x100)."""
    norms = sorted({r["norm"] for r in rows}, key=lambda n: (n != "none", n))
    per_task: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        per_task[r["task"]].add(r["setting"])
    # a task run under two settings (quick and full, say) gets a setting column
    several = any(len(v) > 1 for v in per_task.values())
    table: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        table[(r["task"], r["method"], r["setting_label"], r["metric"])][r["norm"]] = r
    head = ["task", "metric", "method", *(["setting"] if several else []), *norms, "density"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (task, method, label, metric), by_norm in table.items():
        cells = []
        for n in norms:
            r = by_norm.get(n)
            cells.append("—" if r is None else f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} ({r['n']})")
        dens = sorted({f"{r['density']:.2f}" for r in by_norm.values()})
        lines.append(
            "| "
            + " | ".join([task, metric, method, *([label] if several else []), *cells, "/".join(dens)])
            + " |"
        )
    return "\n".join(lines) + "\n"


def handler(args: argparse.Namespace) -> int:
    if args.out:
        check_output_dir("--out", args.out, ("glue_table.md", "glue_table.csv"))
    check_store_file("--store", args.store)
    with Store(args.store, readonly=True) as store:
        records = store.runs("glue", status="finished")
        n_diverged = len(store.runs("glue", status="diverged"))
        note = store.corrupt_note()
    records, unusable = usable(records)
    if note:
        print(f"sltlab: warning: {note}", file=sys.stderr)
    if unusable:
        print(f"sltlab: warning: skipped {len(unusable)} glue run(s) without the settings or score a table needs: "
              f"{unusable[0]}", file=sys.stderr)
    if n_diverged:
        print(f"note: {n_diverged} diverged glue run(s) left out (sltlab runs list --kind glue --status diverged)")
    if args.task:
        keep = {t.strip().lower() for t in args.task.split(",")}
        records = [r for r in records if r.config.get("task") in keep]
    if not records:
        print(
            f"no finished glue runs in {args.store}; run `sltlab glue configs/glue_quick.toml` first"
        )
        return 1
    from sltlab.report.sections_claims import selected_runs

    records = selected_runs("glue", records)[0]
    rows = summarise(records)
    md = to_markdown(rows)
    print(md, end="")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "glue_table.md", md)
        atomic_write_text(out / "glue_table.csv", to_csv(rows))
        print(f"wrote {out / 'glue_table.md'} and {out / 'glue_table.csv'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "glue-table",
        help="the GLUE task x method x norm table (mean ± std over seeds), Markdown + CSV",
        description="Summarise the finished `sltlab glue` runs of a store: each task's main official metric,\n"
        "mean ± std over weight seeds (n in brackets; score seeds averaged within each), in GLUE points (x100),\n"
        "per method and norm, at the lr chosen on held-out training rows where a sweep had a grid. Runs with\n"
        "different settings (a quick and a full sweep, or --set affine_lr=0.01) are never averaged together:\n"
        "they get their own rows, labelled by the fields that differ.",
        epilog="examples:\n  sltlab glue-table\n"
        "  sltlab glue-table --store runs/glue_quick.db --out docs/results\n"
        "  sltlab glue-table --task sst2,rte",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", default="runs/sltlab.db", help="results store (default runs/sltlab.db)")
    p.add_argument("--out", help="folder to write glue_table.md and glue_table.csv into")
    p.add_argument("--task", help="only these tasks (comma-separated)")
    p.set_defaults(func=handler)
