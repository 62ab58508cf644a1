"""`build_report`: read the stores, run every section, write report.md, report.html and report.json.

The stores are opened read-only. The build writes into a staging folder inside the output folder and publishes it
(sltlab.runs.io.publish): figures first, pages last, then the previous build's own files that this one no longer
writes are deleted, by the folder's manifest. A build stopped part-way leaves the previous pages and every figure
they link; files the user put in the folder are never touched. Rows a store holds that are not what sltlab writes
are skipped and listed in report.json (`skipped_rows`)."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sltlab.report.blocks import Figures
from sltlab.report.context import ReportContext
from sltlab.report.render import jsonable, render
from sltlab.report.sections_approx import section_depth, section_error_vs_width
from sltlab.report.sections_attention import section_attention
from sltlab.report.sections_claims import KINDS, claim_figures, collect_plan_claims, section_answer
from sltlab.report.sections_consistency import section_consistency
from sltlab.report.sections_imp import section_imp
from sltlab.report.sections_overview import section_overview
from sltlab.report.sections_tasks import section_tasks
from sltlab.report.sections_theory import is_blocks_run, section_blocks, section_collapse
from sltlab.runs.io import publish, staging_dir
from sltlab.runs.store import RunRecord, Store, atomic_write_text

#: Written last when a build is published, so they never link a figure that is not there yet.
PAGES = ("report.json", "report.md", "report.html")


@dataclass
class ReportResult:
    html: Path
    markdown: Path
    json: Path
    figures: list[Path]
    summary: dict[str, Any]
    missing: list[str]


def _sections(ctx: ReportContext, runs: dict[str, list[RunRecord]], stores: list[Store],
              say: Callable[[str], None]) -> list:
    """Every section in reading order; the claims each adds are corrected together before the first screen is
    written. Runs of a grid are reduced to the chosen grid point first (as the sweep chose, on held-out data), so
    no table mixes learning rates."""
    from sltlab.report.sections_claims import selected_runs

    shown = dict(runs)
    for kind in KINDS:
        if shown.get(kind):
            shown[kind] = selected_runs(kind, shown[kind])[0]
    approx = shown.get("approx", [])
    t0 = time.perf_counter()
    plans = collect_plan_claims(ctx, runs, stores)  # selects itself, and lists every choice
    say(f"report: claims from plans ({time.perf_counter() - t0:.1f} s)")
    details = [section_overview(ctx, runs), plans]
    theory = [r for r in shown.get("theory", []) if not is_blocks_run(r)]  # blocks runs: their own section
    for name, fn in (
        ("error vs width", lambda: section_error_vs_width(ctx, approx + theory)),
        ("depth", lambda: section_depth(ctx, approx)),
        ("consistency", lambda: section_consistency(ctx, approx)),
        ("attention", lambda: section_attention(ctx, approx, shown.get("glue", []))),
        ("tasks", lambda: section_tasks(ctx, shown)),
        ("imp rounds", lambda: section_imp(ctx, shown.get("glue", []))),
        ("theory blocks", lambda: section_blocks(ctx, shown.get("theory", []))),
        ("rank collapse", lambda: section_collapse(ctx, shown.get("collapse", []), stores)),
    ):
        t0 = time.perf_counter()
        details.append(fn())
        say(f"report: {name} ({time.perf_counter() - t0:.1f} s)")
    ctx.claims.finalize()
    figures = claim_figures(ctx)
    return [section_answer(ctx), figures, *details]


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
    say = log or (lambda _m: None)
    with Store(store_path, readonly=True) as store, _staging(out) as staging:
        from contextlib import ExitStack

        runs: dict[str, list[RunRecord]] = defaultdict(list)
        owners: dict[str, Store] = {}
        stores = [store]
        seen: set[str] = set()
        with ExitStack() as extra_stack:
            for extra in extra_stores or []:
                if not Path(extra).is_file():
                    raise StoreError(f"no store at {extra} (given with --also); fix the path or drop it")
                stores.append(extra_stack.enter_context(Store(extra, readonly=True)))
            for st in stores:
                for r in st.runs(None):
                    if r.run_id in seen:  # the same run in two stores (or a store given twice) counts once
                        continue
                    seen.add(r.run_id)
                    runs[r.kind].append(r)
                    owners[r.run_id] = st
            notes = [note for st in stores if (note := st.corrupt_note())]
            for note in notes:
                say(f"report: {note}")
            ctx = ReportContext(store, out, Figures(staging), data_dir, n_inputs, max_attention_runs, progress,
                                owners=owners)
            sections = _sections(ctx, runs, stores, say)
            md, page = render(sections, ctx.figures, "sltlab report: LayerNorm and strong lottery tickets")
        atomic_write_text(staging / "report.md", md)
        atomic_write_text(staging / "report.html", page)
        summary = jsonable({**ctx.summary, "missing": ctx.missing, "store": str(store_path),
                            **({"skipped_rows": notes} if notes else {})})
        atomic_write_text(staging / "report.json", json.dumps(summary, indent=1, sort_keys=True))
        publish(staging, out, last=PAGES)
        return ReportResult(
            out / "report.html",
            out / "report.md",
            out / "report.json",
            [out / "figures" / n for n in ctx.figures.data],
            summary,
            ctx.missing,
        )


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """The build's own folder inside `out`, removed afterwards whether it was published or not."""
    staging = staging_dir(out)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
