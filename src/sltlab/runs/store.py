"""The results store: one SQLite file (WAL mode), one row per run, keyed by a hash of the run's config.

A run id is `<kind>-<sha256(config, seed)[:12]>`, so re-running a sweep finds its finished cells and skips them; a
crashed or interrupted run stays `running`/`failed` and is simply redone. Every write is one transaction, so a
finished result is never lost to a later crash. Large outputs (checkpoints, plots) go to files under
`<store dir>/artifacts/<run id>/`, written atomically by their owners.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sltlab.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    seed INTEGER,
    config TEXT NOT NULL,
    metrics TEXT,
    timings TEXT,
    error TEXT,
    code_version TEXT,
    host TEXT,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind, status);
"""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def make_run_id(kind: str, config: dict[str, Any], seed: int | None = None) -> str:
    digest = hashlib.sha256(_canonical({"kind": kind, "config": config, "seed": seed}).encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


def code_version() -> str:
    from sltlab import __version__

    return __version__


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    kind: str
    status: str
    seed: int | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    timings: dict[str, Any]
    error: str | None
    code_version: str
    host: str
    started: float | None
    finished: float | None

    def flat(self) -> dict[str, Any]:
        """One flat dict (config.*, metrics.* for scalars) for tables and CSV."""
        out: dict[str, Any] = {"run_id": self.run_id, "kind": self.kind, "status": self.status, "seed": self.seed}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(obj, list | tuple):
                if all(isinstance(v, int | float | str | bool) or v is None for v in obj):
                    out[prefix] = json.dumps(obj)
            else:
                out[prefix] = obj

        walk("config", self.config)
        walk("metrics", self.metrics)
        walk("timings", self.timings)
        return out


class Store:
    """SQLite-backed run store. `Store(path)` creates the file and its folder if needed."""

    def __init__(self, path: str | os.PathLike = "runs/sltlab.db"):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"store {self.path} is a directory, not a SQLite file; pass e.g. {self.path}/sltlab.db")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot open store {self.path}: {err} (is it an sltlab SQLite file?)") from None
        except OSError as err:  # its folder cannot be made (a file stands in the way, no permission)
            raise StoreError(f"cannot create store {self.path}: {err.strerror or err}") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def start(self, kind: str, config: dict[str, Any], seed: int | None = None) -> str:
        """Register (or re-open) a run and mark it running. Returns its id."""
        run_id = make_run_id(kind, config, seed)
        with self._tx() as c:
            c.execute(
                "INSERT INTO runs(run_id, kind, status, seed, config, code_version, host, started) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET status='running', "
                "error=NULL, started=excluded.started WHERE runs.status != 'finished'",
                (run_id, kind, seed, _canonical(config), code_version(), platform.node(), time.time()),
            )
        return run_id

    def finish(self, run_id: str, metrics: dict[str, Any], timings: dict[str, Any] | None = None) -> None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET status='finished', metrics=?, timings=?, finished=? WHERE run_id=?",
                (_canonical(metrics), _canonical(timings or {}), time.time(), run_id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"run {run_id} is not in {self.path}; call start() first")

    def update_metrics(self, run_id: str, metrics: dict[str, Any]) -> None:
        """Merge extra metrics into a finished run (e.g. an analysis computed later)."""
        rec = self.get(run_id)
        merged = {**rec.metrics, **metrics}
        with self._tx() as c:
            c.execute("UPDATE runs SET metrics=? WHERE run_id=?", (_canonical(merged), rec.run_id))

    def fail(self, run_id: str, error: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET status='failed', error=?, finished=? WHERE run_id=?",
                      (error[:4000], time.time(), run_id))

    def is_finished(self, run_id: str) -> bool:
        row = self._conn.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return bool(row) and row[0] == "finished"

    def _record(self, row: tuple) -> RunRecord:
        (run_id, kind, status, seed, config, metrics, timings, error, version, host, started, finished) = row
        return RunRecord(
            run_id, kind, status, seed, json.loads(config), json.loads(metrics or "{}"),
            json.loads(timings or "{}"), error, version or "", host or "", started, finished,
        )

    def get(self, run_id: str) -> RunRecord:
        """Look a run up by its id or a unique prefix of it."""
        # % and _ in a prefix are characters of an id, not LIKE wildcards.
        escaped = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._conn.execute(
            "SELECT * FROM runs WHERE run_id = ? OR run_id LIKE ? ESCAPE '\\' ORDER BY run_id",
            (run_id, escaped + "%"),
        ).fetchall()
        exact = [r for r in rows if r[0] == run_id]
        if exact:
            return self._record(exact[0])
        if not rows:
            raise StoreError(
                f"no run {run_id!r} in {self.path}; `sltlab runs list --store {self.path}` lists them"
            )
        if len(rows) > 1:
            some = ", ".join(r[0] for r in rows[:5])
            raise StoreError(f"run id prefix {run_id!r} is ambiguous in {self.path}: {some}")
        return self._record(rows[0])

    def runs(self, kind: str | None = None, status: str | None = "finished") -> list[RunRecord]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        if status:
            sql += " AND status = ?"
            args.append(status)
        return [self._record(r) for r in self._conn.execute(sql + " ORDER BY started", args).fetchall()]

    def artifact_dir(self, run_id: str) -> Path:
        d = self.path.parent / "artifacts" / run_id
        d.mkdir(parents=True, exist_ok=True)
        return d


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary sibling and rename, so a reader never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (target a folder, disk full, Ctrl-C) leaves nothing behind
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
