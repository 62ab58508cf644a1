"""Paths checked at the door, before any work starts: a sweep that runs for an hour must not then fail to write its
CSV because `--out` names a file (a failed write also left a temporary file behind), and a command that only reads a
store must not create an empty one where the user mistyped its path.

Each check names the option the user wrote (`field`); nothing is created here. A target that is a symlink, FIFO,
socket or device is refused (sltlab.runs.io: only regular files are replaced); `-` means standard output where the
option allows it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sltlab.errors import ConfigError, StoreError
from sltlab.runs.io import STDOUT, refuse_special


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


def check_output_dir(field: str, path: str | os.PathLike, files: tuple[str, ...] = ()) -> Path:
    """`path` is a writable folder or can be made one; none of the `files` the command will write there is a
    symlink, FIFO or device (sltlab replaces only regular files)."""
    p = Path(path).expanduser()
    for name in files:
        refuse_special(field, p / name)
        if (p / name).is_dir():
            raise ConfigError(field, f"{str(p / name)!r} is a folder where the command writes a file",
                              "an output folder without it")
    if p.is_symlink() and not p.is_dir():
        raise ConfigError(field, f"{str(p)!r} is a symbolic link to no folder", "a folder path (created if missing)")
    if p.exists():
        if not p.is_dir():
            raise ConfigError(field, f"{str(p)!r} is a file, not a folder", "a folder path (created if missing)")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(field, f"folder {str(p)!r} is not writable", "a folder you can write to")
        return p
    _check_creatable(field, p, "folder")
    return p


def check_output_file(field: str, path: str | os.PathLike, stdout_ok: bool = False) -> Path:
    """`path` can be written (atomically, through a sibling temporary file): a regular file or absent, not a folder,
    its folder writable. With stdout_ok, `-` (standard output) passes."""
    if stdout_ok and str(path) == STDOUT:
        return Path(STDOUT)
    p = Path(path).expanduser()
    refuse_special(field, p, stdout_ok)
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
    """An existing sltlab store, for commands that only read one (a missing path must not become a new empty store,
    and a file that is not a store is refused before any work): opened read-only and closed."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise StoreError(f"{field} {p} is a directory, not a store file; pass e.g. {p}/sltlab.db")
    if not p.is_file():
        if p.exists():
            raise StoreError(f"{field} {p} is not a regular file (a FIFO or device?); pass the path of a store")
        raise StoreError(f"no store at {p} ({field}); run a study first or pass {field} PATH")
    from sltlab.runs.store import Store

    Store(p, readonly=True).close()
    return p
