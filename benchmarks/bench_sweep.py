"""Sweep throughput by executor: the same study (default configs/approx_sweep_bench.toml, 192 cells) run serially, on a
local process pool of 1 and N workers, and on a private local Ray with N CPUs, each into a fresh store.

Reports wall time, cells per second and scaling efficiency (cells/s with N workers / (N x cells/s with one local
worker)), and checks that every executor produced the same run ids and bit-identical metrics. Writes JSON and a
Markdown table.

    python benchmarks/bench_sweep.py                                  # ~15 min on 2 idle cores
    python benchmarks/bench_sweep.py --config configs/approx_sweep_bench.toml --workers 2 --out runs/bench_sweep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def run(config: str, executor: str, workers: int | None, store: Path) -> float:
    from sltlab.runs.config import from_dict, load_toml
    from sltlab.runs.executor import ExecOptions, run_cells
    from sltlab.runs.store import Store
    from sltlab.tasks.approx import ApproxStudy, study_cells

    study = from_dict(ApproxStudy, load_toml(config), prefix="study")
    cells = study_cells(study)
    opts = ExecOptions(executor=executor, workers=workers, threads=1, progress=False)
    t0 = time.perf_counter()
    with Store(store) as s:
        rep = run_cells(cells, s, opts, log=lambda _: None)
    wall = time.perf_counter() - t0
    assert not rep.failed, rep.summary()
    return wall


def results(store: Path) -> dict[str, str]:
    con = sqlite3.connect(store)
    try:
        return dict(con.execute("SELECT run_id, metrics FROM runs WHERE status='finished'"))
    finally:
        con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "approx_sweep_bench.toml"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_sweep"))
    ap.add_argument("--skip", default="", help="comma list of runs to skip: serial, local1, localN, ray")
    args = ap.parse_args()
    n = args.workers
    plan = [("serial", "serial", None), ("local1", "local", 1), ("localN", "local", n), ("ray", "ray", n)]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rows = []
    ref: dict[str, str] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, executor, workers in plan:
            if name in skip:
                continue
            store = Path(tmp) / name / "s.db"
            wall = run(args.config, executor, workers, store)
            got = results(store)
            if ref is None:
                ref = got
            identical = got == ref
            label = {"serial": "serial", "local1": "local, 1 worker", "localN": f"local, {n} workers",
                     "ray": f"ray, {n} CPUs (local, 127.0.0.1)"}[name]
            rows.append({"executor": label, "workers": workers or 1, "cells": len(got), "wall_s": round(wall, 1),
                         "cells_per_s": round(len(got) / wall, 3), "identical_to_first": identical})
            print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["executor"] == "local, 1 worker"), None)
    for r in rows:
        r["efficiency"] = round(r["cells_per_s"] / (r["workers"] * base["cells_per_s"]), 3) if base else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            "python": platform.python_version(), "config": os.path.relpath(args.config, ROOT),
            "command": "python benchmarks/bench_sweep.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "bench_sweep.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| executor | cells | wall s | cells/s | efficiency per worker | identical results |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['executor']} | {r['cells']} | {r['wall_s']} | {r['cells_per_s']} | {r['efficiency']} | "
                     f"{'yes' if r['identical_to_first'] else 'NO'} |")
    md = "\n".join(lines) + "\n"
    (out / "bench_sweep.md").write_text(md)
    print(md)
    return 0 if all(r["identical_to_first"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
