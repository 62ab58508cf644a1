"""Run a study whose hyperparameters are chosen on held-out training data: the grid first, then the rest.

`run_selected` is the one driver for it (approx, GLUE): it runs the grid cells (every grid point on the selection
seeds), chooses per problem with `sltlab.analysis.selection.select` from the stored held-out metric, then runs the
study's remaining cells at the chosen point only. Cells of the grid that are also final cells (the chosen point on a
selection seed) are the same runs (same config, same run id): they are not run twice, and their dev/test score is
reported like any other seed's, since nothing chose on it. The choice is re-derived from the store by the report with
the same function, so what a report shows is what the sweep ran.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sltlab.analysis.selection import Selection, _candidate, problem_of, select
from sltlab.runs.executor import Cell, ExecOptions, SweepReport, plan, run_cells
from sltlab.runs.store import Store


@dataclass(frozen=True)
class GridSpec:
    """What is chosen and on what: the config keys of the grid (dotted), the held-out metric, its direction, and
    the grid's order (ties go to the earlier value)."""

    keys: tuple[str, ...]
    metric: str
    lower_is_better: bool
    order: dict[str, list[Any]] = field(default_factory=dict)

    def select(self, records: Sequence[Any]) -> Selection:
        return select(records, self.keys, self.metric, self.lower_is_better, self.order)


def final_cells(cells: Sequence[Cell], grid: GridSpec, selection: Selection) -> list[Cell]:
    """The cells whose grid point is the one chosen for their problem (problems not yet chosen: none)."""
    chosen = selection.chosen
    out = []
    for c in cells:
        cand = chosen.get(problem_of(c.config, grid.keys))
        if cand is not None and cand == _candidate(c.config, grid.keys):
            out.append(c)
    return out


def _records(store: Store, cells: Sequence[Cell]) -> list[Any]:
    out = []
    for c in cells:
        if store.is_finished(c.run_id):
            out.append(store.get(c.run_id))
    return out


def run_selected(grid_cells: Sequence[Cell], all_cells: Sequence[Cell], grid: GridSpec, store: Store,
                 options: ExecOptions, log: Callable[[str], None] = print) -> tuple[SweepReport, Selection]:
    """Grid, choice, the rest. Returns the final cells' report (run_ids: the final cells in study order, ran /
    skipped / failed over both phases) and the selection."""
    first = run_cells(grid_cells, store, options, log=log)
    selection = grid.select(_records(store, grid_cells))
    for ch in selection.choices:
        if ch.chosen is None and ch.reason not in ("single candidate", "no held-out scores: every candidate kept"):
            log(f"selection: no choice for {_short(ch.problem)}: {ch.reason}")
    rest = final_cells(all_cells, grid, selection)
    second = run_cells(rest, store, options, log=log)
    merged = SweepReport(
        run_ids=second.run_ids,
        ran=first.ran + [r for r in second.ran if r not in first.ran],
        skipped=[r for r in second.skipped if r not in first.ran],
        failed={**first.failed, **second.failed},
        diverged={**first.diverged, **second.diverged},
        busy=sorted(set(first.busy) | set(second.busy)),
        wall_s=first.wall_s + second.wall_s,
        executor=second.executor or first.executor,
    )
    return merged, selection


def dry_plan(grid_cells: Sequence[Cell], all_cells: Sequence[Cell], grid: GridSpec,
             store: Store | None) -> tuple[list[tuple[Cell, str]], int]:
    """What --dry-run shows: the grid cells, then the final cells of the problems whose choice is known from the
    store. Returns (rows, number of final cells still waiting for their grid)."""
    rows = plan(grid_cells, store) if store is not None else [(c, "new") for c in grid_cells]
    selection = Selection() if store is None else grid.select(_records(store, grid_cells))
    rest = final_cells(all_cells, grid, selection)
    ids = {c.run_id for c in grid_cells}
    extra = [c for c in rest if c.run_id not in ids]
    rows += plan(extra, store) if store is not None else [(c, "new") for c in extra]
    known = {problem_of(c.config, grid.keys) for c in rest}
    waiting: dict[str, dict[str, int]] = {}
    for c in all_cells:
        prob = problem_of(c.config, grid.keys)
        if prob not in known:
            cands = waiting.setdefault(prob, {})
            cand = _candidate(c.config, grid.keys)
            cands[cand] = cands.get(cand, 0) + 1
    # a problem's final cells are one candidate's cells, less the one already run in its grid
    return rows, sum(max(n.values()) - 1 for n in waiting.values())


def _short(problem: str) -> str:
    d = json.loads(problem)
    keep = ("variant", "norm", "width", "n_heads", "task", "method", "module")
    return ", ".join(f"{k}={d[k]}" for k in keep if k in d) or problem[:80]
