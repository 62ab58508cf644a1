"""One stored theory cell: run it unless the store has it finished, and flag the theory's norm assumption."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

from sltlab.runs.store import Store
from sltlab.tickets.construct import NormAssumptionWarning


class Runner:
    """Runs a cell unless the store already has it finished; a failure is recorded, then re-raised."""

    def __init__(self, store: Store, progress: bool) -> None:
        self.store, self.progress = store, progress
        self.done = self.ran = self.norm_warned = 0
        self.norm_experiments: set[Any] = set()

    def __call__(self, config: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        run_id = self.store.start("theory", config, config.get("seed"))
        if self.store.is_finished(run_id):
            self.done += 1
            return self.store.get(run_id).metrics
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NormAssumptionWarning)
                metrics = fn()
        except BaseException as err:
            self.store.fail(run_id, f"{type(err).__name__}: {err}")
            raise
        norm = [w for w in caught if issubclass(w.category, NormAssumptionWarning)]
        for w in caught:
            if w not in norm:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        metrics["norm_assumption_warning"] = bool(norm)
        if norm:
            # Said once per experiment, then counted: every cell's flag is in the store.
            self.norm_warned += 1
            if config.get("experiment") not in self.norm_experiments:
                self.norm_experiments.add(config.get("experiment"))
                warnings.warn(
                    f"[{config.get('experiment')}] {norm[0].message} (later cells: counted, flag "
                    "metrics.norm_assumption_warning)",
                    NormAssumptionWarning,
                    stacklevel=2,
                )
        self.store.finish(run_id, metrics, {"total_s": time.perf_counter() - t0})
        self.ran += 1
        return metrics
