"""What every section of one report build shares: the stores, the output figures, the claims, the summary and the
list of what is missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sltlab.analysis.claims import ClaimSet
from sltlab.report.blocks import Figures
from sltlab.runs.store import RunRecord, Store


@dataclass
class ReportContext:
    store: Store
    out: Path
    figures: Figures
    data_dir: str | None
    n_inputs: int
    max_attention_runs: int
    progress: bool
    summary: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    # every claim any section makes: Holm and the MDE are applied across all of them before the report is written
    claims: ClaimSet = field(default_factory=ClaimSet)
    # run id -> the store holding it (the main store, or one given with --also): artifacts live beside their store
    owners: dict[str, Store] = field(default_factory=dict)
    _mask_cache: dict[str, Any] = field(default_factory=dict)
    _ticket_cache: dict[str, Any] = field(default_factory=dict)

    def store_of(self, rec: RunRecord) -> Store:
        return self.owners.get(rec.run_id, self.store)

    def artifact_path(self, rec: RunRecord, name: str = "ticket.safetensors") -> Path:
        from sltlab.runs.store import check_run_id

        return self.store_of(rec).path.parent / "artifacts" / check_run_id(rec.run_id) / name

    def masks(self, rec: RunRecord) -> dict | None:
        """The run's ticket masks from its checkpoint (cached); None when it has none."""
        if rec.run_id not in self._mask_cache:
            from sltlab.analysis.masks import load_ticket_masks
            from sltlab.errors import SltlabError

            path = self.artifact_path(rec)
            try:
                self._mask_cache[rec.run_id] = load_ticket_masks(path)[0] if path.is_file() else None
            except (SltlabError, RuntimeError, KeyError):
                self._mask_cache[rec.run_id] = None
        return self._mask_cache[rec.run_id]

    def ticket(self, rec: RunRecord) -> tuple[Any, dict[str, Any]] | None:
        """(the run's ticket model, the inputs it is analysed on) rebuilt from its checkpoint (cached); None when it
        cannot be. The inputs depend on the weight seed only, so the score seeds of one source see the same."""
        if rec.run_id not in self._ticket_cache:
            from sltlab.errors import SltlabError
            from sltlab.tasks.replay import run_models

            try:
                rm = run_models(self.store_of(rec), rec, n_inputs=self.n_inputs, data_dir=self.data_dir)
                model = rm.models.get("ticket", rm.models.get("model"))
                self._ticket_cache[rec.run_id] = (model.eval(), rm.inputs) if model is not None else None
            except (SltlabError, RuntimeError, KeyError, ValueError):
                self._ticket_cache[rec.run_id] = None
        return self._ticket_cache[rec.run_id]
