"""Where data lives. One setting: --data-dir, else $SLTLAB_DATA, else ../shared/data or ./data if present."""

from __future__ import annotations

import os
from pathlib import Path

from sltlab.errors import DataError

ENV_VAR = "SLTLAB_DATA"


def candidate_data_dirs() -> list[Path]:
    here = Path.cwd()
    return [here / "data", here.parent / "shared" / "data"]


def data_dir(explicit: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """Resolve the data root: the explicit argument, then $SLTLAB_DATA, then ./data or ../shared/data."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise DataError(f"--data-dir {p} does not exist or is not a directory")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise DataError(f"${ENV_VAR}={env} does not exist or is not a directory; fix or unset it")
        return p
    for p in candidate_data_dirs():
        if p.is_dir():
            return p
    if required:
        raise DataError(
            f"no data directory found: pass --data-dir DIR or set {ENV_VAR}=DIR "
            "(DIR holds glue/, tinyshakespeare/, wikitext-2/)"
        )
    return None
