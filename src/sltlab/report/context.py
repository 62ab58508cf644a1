"""What every section of one report build shares: the store, the output figures, the summary and the list of
what is missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    _mask_cache: dict[str, Any] = field(default_factory=dict)

    def masks(self, rec: RunRecord) -> dict | None:
        """The run's ticket masks from its checkpoint (cached); None when it has none."""
        if rec.run_id not in self._mask_cache:
            from sltlab.analysis.masks import load_ticket_masks
            from sltlab.errors import SltlabError

            path = self.store.path.parent / "artifacts" / rec.run_id / "ticket.safetensors"
            try:
                self._mask_cache[rec.run_id] = load_ticket_masks(path)[0] if path.is_file() else None
            except (SltlabError, RuntimeError, KeyError):
                self._mask_cache[rec.run_id] = None
        return self._mask_cache[rec.run_id]
