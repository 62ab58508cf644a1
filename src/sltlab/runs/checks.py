"""Paths checked at the door, before any work starts: a sweep that runs for an hour must not then fail to write its
CSV because `--out` names a file (a failed write also left a temporary file behind), and a command that only reads a
store must not create an empty one where the user mistyped its path.

Each check names the option the user wrote (`field`); nothing is created here.
"""

from __future__ import annotations

import os
from pathlib import Path

from sltlab.errors import ConfigError, StoreError


def _existing_ancestor(p: Path) -> Path:
    for parent in p.parents:
        if parent.exists():
            return parent
    return Path(".")


def _check_creatable(field: str, p: Path, what: str) -> None:
    """The nearest existing folder above `p` must be a folder we may write in (the rest is created later)."""
    base = _existing_ancestor(p)
    if not base.is_dir():
        raise ConfigError(field, f"cannot create {what} {str(p)!r}: {str(base)!r} is a file, not a folder",
                          "a path whose parent is a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(field, f"cannot create {what} {str(p)!r}: folder {str(base)!r} is not writable",
                          "a path in a folder you can write to")


def check_output_dir(field: str, path: str | os.PathLike) -> Path:
    """`path` is a writable folder or can be made one."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(field, f"{str(p)!r} is a file, not a folder", "a folder path (created if missing)")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(field, f"folder {str(p)!r} is not writable", "a folder you can write to")
        return p
    _check_creatable(field, p, "folder")
    return p


def check_output_file(field: str, path: str | os.PathLike) -> Path:
    """`path` can be written (atomically, through a sibling temporary file): not a folder, its folder writable."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(field, f"{str(p)!r} is a folder, not a file", "a file path, e.g. out/ticket.slt")
    if p.parent.exists():
        if not p.parent.is_dir():
            raise ConfigError(field, f"cannot write {str(p)!r}: {str(p.parent)!r} is a file, not a folder",
                              "a path whose parent is a folder")
        if not os.access(p.parent, os.W_OK | os.X_OK):
            raise ConfigError(field, f"cannot write {str(p)!r}: folder {str(p.parent)!r} is not writable",
                              "a path in a folder you can write to")
        return p
    _check_creatable(field, p, "file")
    return p


def check_store_file(field: str, path: str | os.PathLike) -> Path:
    """An existing store file, for commands that only read one (a missing path must not become a new empty store)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise StoreError(f"{field} {p} is a directory, not a store file; pass e.g. {p}/sltlab.db")
    if not p.is_file():
        raise StoreError(f"no store at {p} ({field}); run a study first or pass {field} PATH")
    return p
