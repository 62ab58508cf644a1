"""The theory experiments' files: CSV tables and PNG figures, written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from sltlab.runs.store import atomic_write_bytes, atomic_write_text


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (closed afterwards): for files and for the report's embedded figures alike."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def save_png(fig: Any, path: Path) -> None:
    atomic_write_bytes(path, png_bytes(fig))


def figure(ncols: int = 1, width: float = 5.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.0), squeeze=False)
    return fig, axes[0]
