"""Where data lives. One setting: --data-dir, else $SLTLAB_DATA, else ../shared/data or ./data if present. And what
the data is: `fingerprint(files)` enters the run ids of the studies that read data files (glue, lm)."""

from __future__ import annotations

import hashlib
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


def read_utf8(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """A text file's contents; unreadable files and bytes that are not UTF-8 give one DataError naming the file and
    the line (a UnicodeDecodeError alone names neither)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise DataError(f"{p} is a directory, not a file") from None
    except OSError as err:
        raise DataError(f"cannot read {p}: {err.strerror or err}") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"{p}, line {line}, column {col}: byte 0x{data[err.start]:02x} is not valid UTF-8; "
            "save the file as UTF-8"
        ) from None


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def fingerprint(paths: list[Path] | tuple[Path, ...]) -> str:
    """The data's identity for a run id: SHA-256 over the bytes of `paths` (in the order given, each with its
    length, so no two file lists give one stream), 16 hex digits. A run's id changes when its data does, so a
    result computed from other data is never taken for this one's. Read in 1 MiB chunks; cached per file size and
    modification time within a process."""
    h = hashlib.sha256()
    for path in paths:
        p = Path(path)
        try:
            st = p.stat()
        except OSError as err:
            raise DataError(f"cannot read {p}: {err.strerror or err}") from None
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FINGERPRINTS:
            try:
                _FINGERPRINTS[key] = sha256_file(p)
            except OSError as err:
                raise DataError(f"cannot read {p}: {err.strerror or err}") from None
        h.update(f"{st.st_size}:{_FINGERPRINTS[key]};".encode())
    return h.hexdigest()[:16]


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file read in 1 MiB chunks (never whole in memory); OSError as the caller's to word."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
