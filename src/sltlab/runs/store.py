"""The results store: one SQLite file (WAL mode), one row per run, keyed by a hash of the run's config.

A run id is `<kind>-<sha256(config, seed)[:12]>`, so re-running a sweep finds its finished cells and skips them.
Statuses: `running` (claimed by an owner, host:pid, with a heartbeat), `finished`, `diverged` (a result: the loss
blew up, reason and step kept), `failed` (the cell raised or its worker died; redone by the next sweep) and
`interrupted` (stopped by Ctrl-C; redone). A finished or diverged run is never downgraded by a later write: `start`,
`claim` and `fail` leave it alone. Only the sweep's driver writes here (workers send results back), so SQLite's
one-host WAL rule holds even when the cells run on a cluster. Large outputs (checkpoints, plots) go to files under
`<store dir>/artifacts/<run id>/`, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
# Columns added after the first release: opened stores are migrated in place (ALTER TABLE ADD COLUMN keeps rows).
EXTRA_COLUMNS = {"owner": "TEXT", "heartbeat": "REAL", "provenance": "TEXT", "curves": "TEXT", "attempts": "INTEGER"}
STATUSES = ("running", "finished", "diverged", "failed", "interrupted")
BUSY_TIMEOUT_S = 60.0  # how long a write waits for another sweep's transaction
DONE = ("finished", "diverged")  # results: a sweep skips them and nothing overwrites them
RUN_ID_RE = re.compile(r"^[a-z][a-z0-9-]*-[0-9a-f]{12}$")
# An owner on another host is presumed dead when its heartbeat is older than this (same host: its pid is checked).
STALE_S = 600.0


def check_run_id(run_id: str) -> str:
    """A run id read from anywhere (a store, a command line) before it is joined into a path."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise StoreError(f"{run_id!r} is not a run id (expected <kind>-<12 hex digits>, e.g. approx-3f2a9c0d1e2b)")
    return run_id


def owner_id() -> str:
    return f"{platform.node()}:{os.getpid()}"


def owner_alive(owner: str | None, heartbeat: float | None, now: float | None = None) -> bool:
    """Whether the process that claimed a run may still be running it."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host == platform.node() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return heartbeat is not None and (now or time.time()) - heartbeat < STALE_S


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def make_run_id(kind: str, config: dict[str, Any], seed: int | None = None) -> str:
    digest = hashlib.sha256(_canonical({"kind": kind, "config": config, "seed": seed}).encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


def code_version() -> str:
    from sltlab.version import __version__

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
    provenance: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list] = field(default_factory=dict)
    owner: str | None = None
    attempts: int = 0

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


COLUMNS = ("run_id, kind, status, seed, config, metrics, timings, error, code_version, host, started, finished, "
           "provenance, curves, owner, attempts")


class Store:
    """SQLite-backed run store. `Store(path)` creates the file and its folder if needed."""

    def __init__(self, path: str | os.PathLike = "runs/sltlab.db"):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"store {self.path} is a directory, not a SQLite file; pass e.g. {self.path}/sltlab.db")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._wal()
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot open store {self.path}: {err} (is it an sltlab SQLite file?)") from None
        except OSError as err:  # its folder cannot be made (a file stands in the way, no permission)
            raise StoreError(f"cannot create store {self.path}: {err.strerror or err}") from None

    def _wal(self) -> None:
        # Switching a new file to WAL takes an exclusive lock and SQLite answers "locked" at once instead of calling
        # the busy handler, so sweeps that open one new store together retry here.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        # Under one write lock: two sweeps opening a new store at once would otherwise both see the columns
        # missing and the second ALTER would fail ("duplicate column name").
        if set(EXTRA_COLUMNS) <= {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}:
            return  # up to date: no write lock, so opening never waits on a sweep that holds it
        with self._tx() as c:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            have = {r[1] for r in c.execute("PRAGMA table_info(runs)")}
            for col, typ in EXTRA_COLUMNS.items():
                if col not in have:
                    c.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")

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
        """Register (or re-open) a run and mark it running, owned by this process. Returns its id. A finished or
        diverged run is left as it is."""
        run_id = make_run_id(kind, config, seed)
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO runs(run_id, kind, status, seed, config, code_version, host, started, owner, heartbeat,"
                " attempts) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT(run_id) DO UPDATE SET "
                "status='running', error=NULL, started=excluded.started, owner=excluded.owner, "
                "heartbeat=excluded.heartbeat, attempts=COALESCE(runs.attempts, 0) + 1 "
                "WHERE runs.status NOT IN ('finished', 'diverged')",
                (run_id, kind, seed, _canonical(config), code_version(), platform.node(), now, owner_id(), now),
            )
        return run_id

    def claim(self, kind: str, config: dict[str, Any], seed: int | None = None, owner: str | None = None,
              provenance: dict[str, Any] | None = None) -> tuple[str, str]:
        """Claim a run for `owner` before running it. Returns (run_id, outcome): 'claimed'; 'done' (finished or
        diverged already); 'busy' (running under another owner that is still alive). A run whose owner is gone
        (killed sweep) is taken over."""
        run_id = make_run_id(kind, config, seed)
        owner = owner or owner_id()
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT status, owner, heartbeat FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row and row[0] in DONE:
                return run_id, "done"
            if row and row[0] == "running" and row[1] != owner and owner_alive(row[1], row[2], now):
                return run_id, "busy"
            c.execute(
                "INSERT INTO runs(run_id, kind, status, seed, config, code_version, host, started, owner, heartbeat,"
                " provenance, attempts) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT(run_id) DO "
                "UPDATE SET status='running', error=NULL, started=excluded.started, owner=excluded.owner, "
                "heartbeat=excluded.heartbeat, provenance=excluded.provenance, "
                "attempts=COALESCE(runs.attempts, 0) + 1",
                (run_id, kind, seed, _canonical(config), code_version(), platform.node(), now, owner, now,
                 _canonical(provenance or {})),
            )
        return run_id, "claimed"

    def heartbeat(self, owner: str | None = None) -> None:
        """Tell other sweeps that this owner's running cells are alive."""
        with self._tx() as c:
            c.execute("UPDATE runs SET heartbeat=? WHERE owner=? AND status='running'", (time.time(),
                                                                                         owner or owner_id()))

    def release(self, owner: str | None = None, status: str = "interrupted", error: str = "interrupted") -> int:
        """Mark every run still running under `owner` as not finished (Ctrl-C). Returns how many."""
        with self._tx() as c:
            cur = c.execute("UPDATE runs SET status=?, error=?, finished=? WHERE owner=? AND status='running'",
                            (status, error, time.time(), owner or owner_id()))
        return cur.rowcount

    def finish(self, run_id: str, metrics: dict[str, Any], timings: dict[str, Any] | None = None, *,
               status: str = "finished", error: str | None = None, curves: dict[str, list] | None = None,
               provenance: dict[str, Any] | None = None) -> None:
        """Record a result (status 'finished', or 'diverged' with its reason in `error`)."""
        if status not in DONE:
            raise StoreError(f"finish() records results ({', '.join(DONE)}), not {status!r}")
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET status=?, metrics=?, timings=?, finished=?, error=?, curves=COALESCE(?, curves), "
                "provenance=COALESCE(?, provenance) WHERE run_id=? AND status NOT IN ('finished', 'diverged')",
                (status, _canonical(metrics), _canonical(timings or {}), time.time(), error,
                 None if curves is None else _canonical(curves),
                 None if provenance is None else _canonical(provenance), run_id),
            )
            if cur.rowcount != 1:
                row = c.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
                if row is None:
                    raise StoreError(f"run {run_id} is not in {self.path}; call start() first")
                # already a result (another sweep recorded it first): the first result stands

    def update_metrics(self, run_id: str, metrics: dict[str, Any]) -> None:
        """Merge extra metrics into a finished run (e.g. an analysis computed later)."""
        rec = self.get(run_id)
        merged = {**rec.metrics, **metrics}
        with self._tx() as c:
            c.execute("UPDATE runs SET metrics=? WHERE run_id=?", (_canonical(merged), rec.run_id))

    def fail(self, run_id: str, error: str, status: str = "failed") -> bool:
        """Record that a run did not finish. Never touches a finished or diverged run. Returns whether it wrote."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET status=?, error=?, finished=? WHERE run_id=? AND status NOT IN ('finished', "
                "'diverged')", (status, error[:4000], time.time(), run_id))
        return cur.rowcount == 1

    def status(self, run_id: str) -> str | None:
        row = self._conn.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row[0] if row else None

    def is_finished(self, run_id: str) -> bool:
        """Whether a result is stored (finished, or diverged: a diverged run is a result, not redone)."""
        return self.status(run_id) in DONE

    def _record(self, row: tuple) -> RunRecord:
        (run_id, kind, status, seed, config, metrics, timings, error, version, host, started, finished,
         provenance, curves, owner, attempts) = row
        return RunRecord(
            run_id, kind, status, seed, json.loads(config), json.loads(metrics or "{}"),
            json.loads(timings or "{}"), error, version or "", host or "", started, finished,
            json.loads(provenance or "{}"), json.loads(curves or "{}"), owner, attempts or 0,
        )

    def get(self, run_id: str) -> RunRecord:
        """Look a run up by its id or a unique prefix of it."""
        pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._conn.execute(
            f"SELECT {COLUMNS} FROM runs WHERE run_id = ? OR run_id LIKE ? ESCAPE '\\' ORDER BY run_id",
            (run_id, pattern),
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
        sql, args = f"SELECT {COLUMNS} FROM runs WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        if status:
            sql += " AND status = ?"
            args.append(status)
        return [self._record(r) for r in self._conn.execute(sql + " ORDER BY started", args).fetchall()]

    def counts(self, run_ids: list[str]) -> dict[str, int]:
        """How many of these runs are in each status (absent ones as 'new')."""
        out: dict[str, int] = {}
        for rid in run_ids:
            st = self.status(rid) or "new"
            out[st] = out.get(st, 0) + 1
        return out

    def artifact_dir(self, run_id: str) -> Path:
        d = self.path.parent / "artifacts" / check_run_id(run_id)
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
