"""Theory cells through the executor, and the theory's norm-assumption flag.

Each experiment (`run_<name>(cfg, runner, out)`) asks `runner(conf, fn)` for every cell's metrics and then
summarises. The cells do not depend on one another, so the command runs each experiment twice: first with a
`Collector`, which only notes every (conf, fn) as a `Cell` and answers with stored metrics or placeholders; then,
once `run_cells` has run the missing cells (in parallel, anywhere), with a `Runner` that reads the store.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from sltlab.errors import SltlabError
from sltlab.runs.executor import Cell, CellContext, CellOutput
from sltlab.runs.store import Store, make_run_id
from sltlab.tickets.construct import NormAssumptionWarning

KIND = "theory"
Thunk = Callable[[], dict[str, Any]]


def theory_cell(fn: Thunk, ctx: CellContext) -> CellOutput:
    """Run one experiment cell; flag (in its metrics) whether it went past the theory's norm assumption."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NormAssumptionWarning)
        metrics = fn()
    norm = [w for w in caught if issubclass(w.category, NormAssumptionWarning)]
    for w in caught:
        if w not in norm:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    metrics["norm_assumption_warning"] = bool(norm)
    if norm:
        metrics["norm_assumption_message"] = str(norm[0].message)
    return CellOutput(metrics)


class _Pending(dict):
    """Metrics of a cell not run yet: every key reads as NaN, so an experiment's first pass runs to its end."""

    def __missing__(self, key: str) -> float:
        return math.nan


class Collector:
    """First pass: note each cell; answer with its stored metrics when finished, else placeholders."""

    def __init__(self, store: Store | None, progress: bool = False) -> None:
        self.store, self.progress = store, False
        self.cells: list[Cell] = []

    def __call__(self, config: dict[str, Any], fn: Thunk) -> dict[str, Any]:
        self.cells.append(Cell(KIND, config, config.get("seed"), theory_cell, fn,
                               label=str(config.get("experiment", ""))))
        rid = make_run_id(KIND, config, config.get("seed"))
        if self.store is not None and self.store.is_finished(rid):
            return self.store.get(rid).metrics
        return _Pending()


class Runner:
    """Second pass (and direct use): a finished cell's metrics from the store; an unfinished one is run here, in
    this process, and stored (a failure is recorded, then raised)."""

    def __init__(self, store: Store, progress: bool) -> None:
        self.store, self.progress = store, progress
        self.done = self.ran = self.norm_warned = 0
        self.norm_experiments: set[Any] = set()

    def __call__(self, config: dict[str, Any], fn: Thunk) -> dict[str, Any]:
        from sltlab.runs.executor import ExecOptions, run_cells

        cell = Cell(KIND, config, config.get("seed"), theory_cell, fn, label=str(config.get("experiment", "")))
        if self.store.is_finished(cell.run_id):
            self.done += 1
        else:
            report = run_cells([cell], self.store, ExecOptions(executor="serial", progress=False),
                               log=lambda _: None)
            if report.failed:
                raise SltlabError(f"theory cell {cell.run_id} failed: {report.failed[cell.run_id].splitlines()[0]}")
            self.ran += 1
        metrics = self.store.get(cell.run_id).metrics
        if metrics.get("norm_assumption_warning"):
            # Said once per experiment, then counted: every cell's flag is in the store.
            self.norm_warned += 1
            if config.get("experiment") not in self.norm_experiments:
                self.norm_experiments.add(config.get("experiment"))
                warnings.warn(
                    f"[{config.get('experiment')}] {metrics.get('norm_assumption_message', 'norm assumption')} "
                    "(later cells: counted, flag metrics.norm_assumption_warning)",
                    NormAssumptionWarning,
                    stacklevel=2,
                )
        return metrics
