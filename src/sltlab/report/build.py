"""`build_report`: read the stores, run every section, write report.md, report.html and report.json."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sltlab.report.blocks import Figures
from sltlab.report.context import ReportContext
from sltlab.report.render import jsonable, render
from sltlab.report.sections_approx import section_depth, section_error_vs_width
from sltlab.report.sections_attention import section_attention
from sltlab.report.sections_conclusion import section_conclusion
from sltlab.report.sections_consistency import section_consistency
from sltlab.report.sections_imp import section_imp
from sltlab.report.sections_overview import section_overview
from sltlab.report.sections_tasks import section_tasks
from sltlab.runs.store import RunRecord, Store, atomic_write_text


@dataclass
class ReportResult:
    html: Path
    markdown: Path
    json: Path
    figures: list[Path]
    summary: dict[str, Any]
    missing: list[str]


def build_report(
    store_path: str | Path,
    out_dir: str | Path,
    data_dir: str | None = None,
    n_inputs: int = 128,
    max_attention_runs: int = 3,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    extra_stores: list[str | Path] | None = None,
) -> ReportResult:
    """Build the report from the store at `store_path` (plus the runs of `extra_stores`, e.g. a GLUE sweep kept
    in its own file) into `out_dir`. Never fails on a partial store."""
    from sltlab.errors import StoreError

    store_path = Path(store_path)
    if not store_path.is_file():
        raise StoreError(
            f"no store at {store_path}; run an experiment first (e.g. `sltlab approx "
            "configs/approx_quick.toml`) or pass --store PATH"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _m: None)
    with Store(store_path) as store:
        runs: dict[str, list[RunRecord]] = defaultdict(list)
        for r in store.runs(None):
            runs[r.kind].append(r)
        for extra in extra_stores or []:
            if not Path(extra).is_file():
                raise StoreError(f"no store at {extra} (given with --also); fix the path or drop it")
            with Store(extra) as other:
                for r in other.runs(None):
                    runs[r.kind].append(r)
        ctx = ReportContext(store, out, Figures(out), data_dir, n_inputs, max_attention_runs, progress)
        approx = runs.get("approx", [])
        sections = [section_overview(ctx, runs)]
        for name, fn in (
            ("error vs width", lambda: section_error_vs_width(ctx, approx + runs.get("theory", []))),
            ("depth", lambda: section_depth(ctx, approx)),
            ("consistency", lambda: section_consistency(ctx, approx)),
            ("attention", lambda: section_attention(ctx, approx, runs.get("glue", []))),
            ("tasks", lambda: section_tasks(ctx, runs)),
            ("imp rounds", lambda: section_imp(ctx, runs.get("glue", []))),
            ("conclusion", lambda: section_conclusion(ctx)),
        ):
            t0 = time.perf_counter()
            sections.append(fn())
            say(f"report: {name} ({time.perf_counter() - t0:.1f} s)")
        md, page = render(sections, ctx.figures, "sltlab report: LayerNorm and strong lottery tickets")
        atomic_write_text(out / "report.md", md)
        atomic_write_text(out / "report.html", page)
        summary = jsonable({**ctx.summary, "missing": ctx.missing, "store": str(store_path)})
        atomic_write_text(out / "report.json", json.dumps(summary, indent=1, sort_keys=True))
        return ReportResult(
            out / "report.html",
            out / "report.md",
            out / "report.json",
            [ctx.figures.dir / n for n in ctx.figures.data],
            summary,
            ctx.missing,
        )
