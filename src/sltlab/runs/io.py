"""How sltlab writes files: the output rules, in one place.

Guarantees:

- **Atomic.** A file is written to a temporary sibling in the target's own folder (opened O_EXCL | O_NOFOLLOW, so a
  planted link is never followed), flushed to disk, then renamed over the target: a reader sees the old file or the
  new one, never half of one, and a failed write (disk full, Ctrl-C) removes its temporary file.
- **Only regular files are replaced.** A target that is a symlink, a FIFO, a socket or a device is refused with one
  line naming the option (`--csv /dev/stdout` as root would otherwise replace /dev/stdout with a regular file, and
  `--csv link.csv` the user's link). Standard output is asked for by `-`, where a command allows it.
- **Only files sltlab recorded as its own are deleted.** A folder sltlab rebuilds (the report's) carries a manifest of
  the files the last build wrote; a new build deletes only those it no longer writes, and only while they are still
  regular files. Anything else in the folder (the user's own figures) is never touched.
- **A folder's new contents are built apart and swapped in.** `publish` moves the files of a finished staging folder
  into place one rename each, the pages last, then drops the stale files of the previous build: a build stopped
  part-way leaves the previous pages with every figure they link.
- **Disk full** (ENOSPC, EDQUOT) is one `SltlabError` line naming the path, not an OSError traceback.

Limits: the rename is atomic per file, not across a folder (a reader who lists the folder mid-publish can see new
figures beside the previous pages, each file whole). Symlinks in the *parent* path are followed as usual (a
`runs/` folder linked to a bigger disk is fine); only the final component is checked.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from sltlab.errors import ConfigError, SltlabError

STDOUT = "-"
MANIFEST = ".sltlab-manifest.json"
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is, in words (None for a regular file or a folder)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def special_kind(path: str | os.PathLike) -> str | None:
    """'a symbolic link', 'a FIFO', 'a device', 'a socket' when `path` is one of those; None otherwise (absent,
    a regular file or a folder)."""
    try:
        return _kind(os.lstat(path).st_mode)
    except OSError:
        return None


def refuse_special(field: str, path: str | os.PathLike, stdout_ok: bool = False) -> None:
    """ConfigError when `path` is a symlink, FIFO, socket or device: sltlab replaces only regular files."""
    what = special_kind(path)
    if what:
        hint = "; write to standard output with -" if stdout_ok else ""
        raise ConfigError(field, f"{str(path)!r} is {what}, which sltlab does not replace{hint}",
                          "a regular file path" + (" or -" if stdout_ok else ""))


def disk_full(err: OSError, path: str | os.PathLike) -> SltlabError | None:
    """The one-line error for a write that ran out of space (None for other OS errors)."""
    if err.errno in _FULL:
        return SltlabError(f"no space left on the device while writing {path}; free some space (finished runs "
                           "are kept) and rerun")
    return None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (module docstring); refuses a target that is not a regular file."""
    p = Path(path)
    refuse_special("output", p)
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        refuse_special("output", p)  # became a link while we wrote: still not ours to replace
        os.replace(tmp, p)
    except BaseException as err:
        tmp.unlink(missing_ok=True)  # a failed write (target a folder, disk full, Ctrl-C) leaves nothing behind
        if isinstance(err, OSError) and (full := disk_full(err, p)) is not None:
            raise full from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def emit(target: str | os.PathLike, data: bytes | str) -> None:
    """Write to the file `target`, or to standard output when it is `-`."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if str(target) == STDOUT:
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    write_bytes(target, raw)


def read_limited(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """A file's bytes when it is a regular file of at most `limit` bytes, read in bounded chunks (a FIFO or a
    growing file cannot make this read without end). OSError for an unreadable file; ValueError past the limit."""
    p = Path(path)
    with open(p, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{p} is not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{what} {p} is {st.st_size:,} bytes, more than the {limit:,} this reader accepts")
        chunks, total = [], 0
        while True:
            chunk = f.read(min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise ValueError(f"{what} {p} grew past the {limit:,} bytes this reader accepts while it was read")
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------ owned folders (report)
def read_manifest(folder: Path) -> list[str]:
    """The relative paths the last build recorded in `folder` (none when there is no readable manifest)."""
    try:
        data = json.loads(read_limited(folder / MANIFEST, 1 << 20, "manifest"))
    except (OSError, ValueError):
        return []
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        return []
    return [f for f in files if isinstance(f, str) and _safe_relative(f)]


def _safe_relative(name: str) -> bool:
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and name != MANIFEST


def staging_dir(folder: Path) -> Path:
    """A new, empty hidden folder inside `folder` (same file system, so publishing is a rename per file)."""
    folder.mkdir(parents=True, exist_ok=True)
    d = folder / f".sltlab-build-{os.getpid()}-{secrets.token_hex(4)}"
    d.mkdir()
    return d


def publish(staging: Path, folder: Path, last: Iterable[str] = ()) -> list[str]:
    """Move every file of `staging` into `folder` (subfolders kept), the names in `last` after the others; then
    delete the files the previous manifest lists that this build did not write, and record the new manifest.
    Returns the relative paths published. `staging` is removed."""
    names = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    tail = [n for n in names if n in set(last)]
    order = [n for n in names if n not in set(tail)] + tail
    previous = read_manifest(folder)
    try:
        for name in order:
            target = folder / name
            refuse_special("--out", target)
            if target.is_dir():
                raise ConfigError("--out", f"{str(target)!r} is a folder where the report writes a file",
                                  "an output folder without it")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(staging / name, target)
            except OSError as err:
                if (full := disk_full(err, target)) is not None:
                    raise full from None
                raise
        write_text(folder / MANIFEST, json.dumps({"files": names}, indent=1) + "\n")
        for name in previous:
            if name in names:
                continue
            stale = folder / name
            try:
                if stat.S_ISREG(os.lstat(stale).st_mode):
                    stale.unlink()
            except FileNotFoundError:
                pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names
