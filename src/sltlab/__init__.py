"""sltlab: strong lottery tickets in transformers, with LayerNorm as a first-class knob."""

from __future__ import annotations

from pathlib import Path

from torch import nn  # noqa: E402

from sltlab.tickets.hf import save_ticket  # noqa: E402,F401  (sltlab.save_ticket(model, folder): a HF model's ticket)
from sltlab.version import __version__


def load_ticket(path: str | Path) -> nn.Module:
    """Rebuild a ticket: a folder is a Hugging Face model's ticket (`sltlab.save_ticket`), a file an sltlab `.slt`
    artifact (`sltlab export`). Weights regenerate from the seed; any defect raises ArtifactError."""
    if Path(path).is_dir():
        from sltlab.tickets import hf

        return hf.load_ticket(path)
    from sltlab.tickets import artifact

    return artifact.load_ticket(path)


__all__ = ["__version__", "load_ticket", "save_ticket"]
