"""The results store: one SQLite file (WAL mode), one row per run, keyed by a hash of the run's config.

A run id is `<kind>-<sha256(config, seed)[:12]>`, so re-running a sweep finds its finished cells and skips them.
Statuses: `running` (claimed by an owner, host:pid, with a heartbeat), `finished`, `diverged` (a result: the loss
blew up, reason and step kept), `failed` (the cell raised or its worker died; redone by the next sweep) and
`interrupted` (stopped by Ctrl-C; redone). A finished or diverged run is never downgraded by a later write: `start`,
`claim` and `fail` leave it alone. Only the sweep's driver writes here (workers send results back), so SQLite's
one-host WAL rule holds even when the cells run on a cluster. Large outputs (checkpoints, plots) go to files under
`<store dir>/artifacts/<run id>/`, written atomically.

What is a store, and what a store's contents may do:

- A file is used as a store only if it is one: SQLite with sltlab's `application_id` (stores made before it was
  set: a `runs` table with sltlab's columns). An empty file, a file that is not SQLite or another program's
  database is refused with one line, for reads and writes alike; a store from a newer sltlab (`user_version`
  above ours) too.
- Commands that only read open the store read-only (`Store(path, readonly=True)`): no WAL switch, no migration, no
  file created; a column an older store lacks reads as empty. Sweeps migrate on open (under one write lock), and
  `sltlab runs migrate` does it explicitly.
- Rows are untrusted input: a row whose run id is not `<kind>-<12 hex>` (it is joined into paths), whose JSON does
  not parse or is not an object, or whose numbers are text is reported and skipped (`Store.corrupt`), never a
  traceback; `get()` of such a row is one StoreError line.
- A store locked past the busy timeout, a full disk or a read-only file is one StoreError line naming the path.
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
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sltlab.errors import StoreError

# sqlite's header field for "which program's file is this": b"sltl". user_version: the schema's version.
APPLICATION_ID = 0x736C746C
SCHEMA_VERSION = 1
CORE_COLUMNS = ("run_id", "kind", "status", "seed", "config", "metrics", "timings", "error", "code_version", "host",
                "started", "finished")
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
RUN_ID_RE = re.compile(r"[a-z][a-z0-9-]{0,63}-[0-9a-f]{12}")  # used with fullmatch: no trailing newline
# An owner on another host is presumed dead when its heartbeat is older than this (same host: its pid is checked).
STALE_S = 600.0


def check_run_id(run_id: Any) -> str:
    """A run id read from anywhere (a store, a command line) before it is joined into a path."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
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
_SQLITE_MAGIC = b"SQLite format 3\x00"


class CorruptRow(StoreError):
    """A row of the store that is not what sltlab writes (edited, or written by something else)."""


def _json_object(text: Any, column: str, required: bool = False) -> dict[str, Any]:
    if text is None and not required:
        return {}
    if not isinstance(text, str):
        raise CorruptRow(f"{column} is {type(text).__name__}, not JSON text")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise CorruptRow(f"{column} is not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise CorruptRow(f"{column} is a JSON {type(obj).__name__}, not an object")
    return obj


def _number(v: Any, column: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise CorruptRow(f"{column} is {v!r}, not a number")
    return v


def _text(v: Any, column: str) -> str | None:
    if v is not None and not isinstance(v, str):
        raise CorruptRow(f"{column} is {v!r}, not text")
    return v


def parse_row(row: tuple) -> RunRecord:
    """A RunRecord from one row of COLUMNS, every field checked; CorruptRow names the first bad one."""
    (run_id, kind, status, seed, config, metrics, timings, error, version, host, started, finished,
     provenance, curves, owner, attempts) = row
    try:
        check_run_id(run_id)
    except StoreError:
        raise CorruptRow(f"run id {run_id!r} is not <kind>-<12 hex digits>") from None
    if not isinstance(kind, str) or not run_id.startswith(kind + "-"):
        raise CorruptRow(f"kind {kind!r} does not match its run id")
    if status not in STATUSES:
        raise CorruptRow(f"status {status!r} is not one of {', '.join(STATUSES)}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise CorruptRow(f"seed is {seed!r}, not an integer")
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)):
        raise CorruptRow(f"attempts is {attempts!r}, not an integer")
    curves_obj = _json_object(curves, "curves")
    if not all(isinstance(v, list) for v in curves_obj.values()):
        raise CorruptRow("curves holds something other than lists of points")
    return RunRecord(
        run_id, kind, status, seed, _json_object(config, "config", required=True), _json_object(metrics, "metrics"),
        _json_object(timings, "timings"), _text(error, "error"), _text(version, "code_version") or "",
        _text(host, "host") or "", _number(started, "started"), _number(finished, "finished"),
        _json_object(provenance, "provenance"), curves_obj, _text(owner, "owner"), attempts or 0,
    )


def _sqlite_header(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(len(_SQLITE_MAGIC))


class Store:
    """SQLite-backed run store. `Store(path)` creates the file and its folder if needed (sweeps);
    `Store(path, readonly=True)` opens an existing store for reading and changes nothing (read commands)."""

    def __init__(self, path: str | os.PathLike = "runs/sltlab.db", *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        #: rows skipped as corrupt by the reads so far: (run id as stored, what is wrong)
        self.corrupt: list[tuple[str, str]] = []
        self._columns: set[str] = set()
        self._conn: sqlite3.Connection | None = None
        self._check_file()
        try:
            if not readonly:
                if not self.path.exists():
                    self._create()
                self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:
                self._conn = self._connect_for_reading()
            self._identify()
            if not readonly:
                self._wal()
                self._migrate()
            self._columns = self._table_columns()
        except StoreError:
            self.close()
            raise
        except sqlite3.Error as err:
            self.close()
            raise self._error(err, "open") from None
        except OSError as err:  # its folder cannot be made (a file stands in the way, no permission)
            self.close()
            raise StoreError(f"cannot create store {self.path}: {err.strerror or err}") from None

    def _connect_for_reading(self) -> sqlite3.Connection:
        # mode=rw (never creates) with query_only: the last connection to close then tidies away the -wal/-shm files
        # a WAL store's readers need, as a writer's does; mode=ro would leave them behind. A file we may not write
        # is opened mode=ro.
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.OperationalError:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        return conn

    # -------------------------------------------------------------------------------------------- what a store is
    def _create(self) -> None:
        """Make a new store beside its path and link it into place: a store never exists half made (a 0-byte file is
        then never ours), and of sweeps creating one store together the first link wins, the others open it."""
        import secrets

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.new")
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
                for col, typ in EXTRA_COLUMNS.items():
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            finally:
                conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another sweep made it first: use theirs
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.replace(tmp, self.path)
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{tmp}{suffix}").unlink(missing_ok=True)

    def _check_file(self) -> None:
        p = self.path
        if p.is_dir():
            raise StoreError(f"store {p} is a directory, not a SQLite file; pass e.g. {p}/sltlab.db")
        if not p.exists():
            if self.readonly:
                raise StoreError(f"no store at {p}; run a study first or pass --store PATH")
            return
        if not p.is_file():
            raise StoreError(f"store {p} is not a regular file (a FIFO or device?); pass the path of a .db file")
        try:
            size = p.stat().st_size
            head = _sqlite_header(p) if size else b""
        except OSError as err:
            raise StoreError(f"cannot read store {p}: {err.strerror or err}") from None
        if size == 0:
            raise StoreError(f"{p} is an empty file, not an sltlab store; remove it or pass another --store")
        if head != _SQLITE_MAGIC:
            raise StoreError(f"{p} is not an sltlab store (not a SQLite file); pass the store a study wrote")

    def _identify(self) -> None:
        """Refuse a database that is not an sltlab store (module docstring)."""
        c = self._db
        app = c.execute("PRAGMA application_id").fetchone()[0]
        version = c.execute("PRAGMA user_version").fetchone()[0]
        tables = sorted(r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'"))
        if app not in (0, APPLICATION_ID):
            raise StoreError(f"{self.path} is another program's SQLite database (application id {app:#x}), not an "
                             "sltlab store; pass another --store")
        if app == APPLICATION_ID and version > SCHEMA_VERSION:
            raise StoreError(f"store {self.path} was written by a newer sltlab (schema {version}, this one reads "
                             f"<= {SCHEMA_VERSION}); upgrade sltlab to use it")
        if "runs" in tables:
            have = {r[1] for r in c.execute("PRAGMA table_info(runs)")}
            missing = [col for col in CORE_COLUMNS if col not in have]
            if missing:
                raise StoreError(f"{self.path} has a runs table without column {missing[0]!r}: not an sltlab store "
                                 "(or one edited by hand); pass another --store")
            return
        if app == APPLICATION_ID:
            raise StoreError(f"store {self.path} lacks its runs table; the file is damaged")
        if tables:
            listed = ", ".join(tables[:4]) + (", ..." if len(tables) > 4 else "")
            raise StoreError(f"{self.path} is a SQLite database of something else (tables: {listed}), not an sltlab "
                             "store; pass another --store")
        if self.readonly:
            raise StoreError(f"{self.path} holds no runs (an empty SQLite database, not an sltlab store)")

    def _table_columns(self) -> set[str]:
        return {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}

    @property
    def needs_migration(self) -> bool:
        """Whether this store lacks what this sltlab writes (columns, its application id)."""
        app = self._db.execute("PRAGMA application_id").fetchone()[0]
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        return app != APPLICATION_ID or version < SCHEMA_VERSION or not set(EXTRA_COLUMNS) <= self._columns

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.path} is closed")
        return self._conn

    def _error(self, err: sqlite3.Error, doing: str) -> StoreError:
        """One line for what SQLite says, naming the store."""
        text = str(err)
        if "locked" in text or "busy" in text:
            return StoreError(f"store {self.path} is locked by another process (waited {BUSY_TIMEOUT_S:.0f} s to "
                              f"{doing}); let it finish or stop it, then rerun")
        if "disk is full" in text or "database or disk is full" in text:
            return StoreError(f"no space left on the device for store {self.path}; free some space (finished runs "
                              "are kept) and rerun")
        if "readonly" in text or "read-only" in text:
            return StoreError(f"store {self.path} cannot be written ({text}); check its permissions")
        if "not a database" in text or "malformed" in text:
            return StoreError(f"{self.path} is not a usable sltlab store ({text})")
        return StoreError(f"store {self.path}: cannot {doing} ({type(err).__name__}: {text})")

    def _wal(self) -> None:
        # Switching a new file to WAL takes an exclusive lock and SQLite answers "locked" at once instead of calling
        # the busy handler, so sweeps that open one new store together retry here.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        # Under one write lock: two sweeps opening a new store at once would otherwise both see the columns
        # missing and the second ALTER would fail ("duplicate column name").
        self._columns = self._table_columns()
        if not self.needs_migration:
            return  # up to date: no write lock, so opening never waits on a sweep that holds it
        with self._tx() as c:
            self._identify()  # another process may have created something else meanwhile
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            have = {r[1] for r in c.execute("PRAGMA table_info(runs)")}
            for col, typ in EXTRA_COLUMNS.items():
                if col not in have:
                    c.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")
            c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def migrate(self) -> bool:
        """Bring an older store up to this sltlab's schema (`sltlab runs migrate`). Returns whether it changed."""
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only; open it for writing to migrate it")
        before = self.needs_migration
        self._migrate()
        self._columns = self._table_columns()
        return before

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- writing
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only")
        c = self._db
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise self._error(err, "write") from None
        try:
            yield c
        except BaseException as err:
            with suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise self._error(err, "write") from None
            raise
        try:
            c.execute("COMMIT")
        except sqlite3.Error as err:
            with suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise self._error(err, "commit") from None

    def _query(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise self._error(err, "read") from None

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
            beat = row[2] if row and isinstance(row[2], int | float) else None
            if row and row[0] == "running" and row[1] != owner and owner_alive(row[1], beat, now):
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

    def running_elsewhere(self, run_ids: list[str], owner: str | None = None) -> dict[str, str]:
        """Of `run_ids`, those running under another owner that is still alive: run id -> owner."""
        owner = owner or owner_id()
        now = time.time()
        out = {}
        for rid in run_ids:
            rows = self._query("SELECT status, owner, heartbeat FROM runs WHERE run_id=?", (rid,))
            if rows and rows[0][0] == "running" and rows[0][1] != owner:
                beat = rows[0][2] if isinstance(rows[0][2], int | float) else None
                if owner_alive(rows[0][1], beat, now):
                    out[rid] = rows[0][1]
        return out

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

    def rekey(self, run_id: str, config: dict[str, Any]) -> str | None:
        """Give a run the config `config` and the id it hashes to (`sltlab runs migrate --adopt-data`), its artifact
        folder renamed with it. Returns the new id, or None when a run with that id exists already (left alone)."""
        rec = self.get(run_id)
        new_id = make_run_id(rec.kind, config, rec.seed)
        if new_id == rec.run_id:
            return new_id
        if self.status(new_id) is not None:
            return None
        old_dir, new_dir = self.artifact_path(rec.run_id), self.artifact_path(new_id)
        moved = old_dir.is_dir()
        if moved:
            old_dir.rename(new_dir)
        try:
            with self._tx() as c:
                c.execute("UPDATE runs SET run_id=?, config=? WHERE run_id=?", (new_id, _canonical(config), rec.run_id))
        except BaseException:
            if moved:
                new_dir.rename(old_dir)
            raise
        return new_id

    def fail(self, run_id: str, error: str, status: str = "failed") -> bool:
        """Record that a run did not finish. Never touches a finished or diverged run. Returns whether it wrote."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE runs SET status=?, error=?, finished=? WHERE run_id=? AND status NOT IN ('finished', "
                "'diverged')", (status, error[:4000], time.time(), run_id))
        return cur.rowcount == 1

    # ------------------------------------------------------------------------------------------------- reading
    def status(self, run_id: str) -> str | None:
        rows = self._query("SELECT status FROM runs WHERE run_id=?", (run_id,))
        return rows[0][0] if rows else None

    def is_finished(self, run_id: str) -> bool:
        """Whether a result is stored (finished, or diverged: a diverged run is a result, not redone)."""
        return self.status(run_id) in DONE

    def _select(self) -> str:
        """COLUMNS, with NULL for the columns an older store lacks (a read never migrates)."""
        cols = [c.strip() for c in COLUMNS.split(",")]
        return ", ".join(c if c in self._columns else f"NULL AS {c}" for c in cols)

    def _record(self, row: tuple) -> RunRecord:
        return parse_row(row)

    def get(self, run_id: str) -> RunRecord:
        """Look a run up by its id or a unique prefix of it."""
        if not isinstance(run_id, str) or not run_id:
            raise StoreError(f"{run_id!r} is not a run id (expected <kind>-<12 hex digits>, e.g. approx-3f2a9c0d1e2b)")
        pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._query(
            f"SELECT {self._select()} FROM runs WHERE run_id = ? OR run_id LIKE ? ESCAPE '\\' ORDER BY run_id",
            (run_id, pattern),
        )
        exact = [r for r in rows if r[0] == run_id]
        if exact:
            rows = exact
        if not rows:
            raise StoreError(
                f"no run {run_id!r} in {self.path}; `sltlab runs list --store {self.path}` lists them"
            )
        if len(rows) > 1:
            some = ", ".join(str(r[0]) for r in rows[:5])
            raise StoreError(f"run id prefix {run_id!r} is ambiguous in {self.path}: {some}")
        try:
            return parse_row(rows[0])
        except CorruptRow as err:
            raise StoreError(f"run {str(rows[0][0])!r} in {self.path} is corrupt: {err}") from None

    def runs(self, kind: str | None = None, status: str | None = "finished") -> list[RunRecord]:
        """The runs of `kind` in `status` (None: any), oldest first. Corrupt rows are skipped and listed in
        `self.corrupt`."""
        sql, args = f"SELECT {self._select()} FROM runs WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        if status:
            sql += " AND status = ?"
            args.append(status)
        out = []
        for row in self._query(sql + " ORDER BY started", args):
            try:
                out.append(parse_row(row))
            except CorruptRow as err:
                entry = (str(row[0])[:80], str(err))
                if entry not in self.corrupt:
                    self.corrupt.append(entry)
        return out

    def corrupt_note(self) -> str | None:
        """One line about the corrupt rows reads have skipped (None when there were none)."""
        if not self.corrupt:
            return None
        first_id, why = self.corrupt[0]
        more = f" (and {len(self.corrupt) - 1} more)" if len(self.corrupt) > 1 else ""
        return f"skipped {len(self.corrupt)} corrupt row(s) of {self.path}: {first_id!r}: {why}{more}"

    def counts(self, run_ids: list[str]) -> dict[str, int]:
        """How many of these runs are in each status (absent ones as 'new')."""
        out: dict[str, int] = {}
        for rid in run_ids:
            st = self.status(rid) or "new"
            out[st] = out.get(st, 0) + 1
        return out

    def artifact_path(self, run_id: str) -> Path:
        """`<store dir>/artifacts/<run id>` (not created): the run id is checked before it meets the path."""
        return self.path.parent / "artifacts" / check_run_id(run_id)

    def artifact_dir(self, run_id: str) -> Path:
        d = self.artifact_path(run_id)
        d.mkdir(parents=True, exist_ok=True)
        return d


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary sibling and rename, so a reader never sees half a file (sltlab.runs.io.write_bytes:
    only a regular file is replaced)."""
    from sltlab.runs.io import write_bytes

    write_bytes(path, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
