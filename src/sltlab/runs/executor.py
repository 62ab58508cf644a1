"""Cells and the one loop that runs them: serially, on a local process pool, or on Ray.

A study turns its config into `Cell`s: a kind, the config dict that names the run (its hash is the run id), a seed,
and a picklable top-level function with its argument. `run_cells` owns skip / claim / start / fail / finish for
every study, written once:

- only this driver writes the store; workers return a `CellResult` (metrics, timings, curves, artifact bytes), so
  a cluster needs no shared disk and SQLite's one-host rule holds;
- a cell is *claimed* just before it is sent out, so two sweeps on one store share the work instead of doing it
  twice, and a run whose owner died is taken over; a sweep waits for the cells another live sweep is running
  (shown in its progress bar) and takes over any that sweep leaves unfinished, so both end with the whole study
  (`ExecOptions.wait`; off, they are left to the other sweep);
- a cell that raises is recorded `failed` and the sweep goes on; a `DivergedError` is a result (`diverged`);
  a worker that dies (kill -9, out of memory) has its cell retried `retries` times, then recorded failed;
- Ctrl-C stops the workers, keeps every finished cell and marks the running ones `interrupted`.

Results never depend on the executor: a cell seeds everything it draws, and every executor runs it with the same
number of torch threads, so on the CPU its metrics and masks are bit-identical under serial, local and ray.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import cloudpickle

from sltlab.errors import ConfigError, DivergedError, SltlabError
from sltlab.runs.store import Store, atomic_write_bytes, make_run_id, owner_id

EXECUTORS = ("serial", "local", "ray")
ExecutorName = Literal["serial", "local", "ray"]
WORKERS_PER_CORE = 4
THREADS_PER_CORE = 4
MAX_RAY_THREADS = 1024
MAX_RETRIES = 100


# ---------------------------------------------------------------------------------------------------------- cells
@dataclass
class CellContext:
    """What a running cell may use: a scratch folder whose files become the run's artifacts, and its run id."""

    run_id: str
    out_dir: Path
    progress: bool = False


@dataclass
class CellOutput:
    """What a cell function returns. curves: name -> [[step, value], ...] (loss every k steps, eval metric...)."""

    metrics: dict[str, Any]
    timings: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list] = field(default_factory=dict)


CellFn = Callable[[Any, CellContext], CellOutput]


@dataclass(frozen=True)
class Cell:
    """One unit of work. `fn(arg, ctx)` must be a module-level function (so it pickles by name) and seed all it
    draws. `config` and `seed` name the run; `device` says what it needs ('cuda...' asks Ray for a GPU)."""

    kind: str
    config: Mapping[str, Any]
    seed: int | None
    fn: CellFn
    arg: Any
    label: str = ""
    device: str = "cpu"
    num_cpus: float = 1.0

    @property
    def run_id(self) -> str:
        return make_run_id(self.kind, dict(self.config), self.seed)

    @property
    def num_gpus(self) -> float:
        return 1.0 if self.device.startswith("cuda") else 0.0


@dataclass
class CellResult:
    run_id: str
    status: Literal["finished", "diverged", "failed"]
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def execute(cell: Cell, threads: int = 1, progress: bool = False) -> CellResult:
    """Run one cell wherever this is called (driver, pool worker, Ray worker) and package its result."""
    import torch

    from sltlab.runs.provenance import machine_provenance

    run_id = cell.run_id
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    scratch = Path(tempfile.mkdtemp(prefix=f"sltlab-{run_id}-"))
    t0 = time.perf_counter()
    try:
        try:
            out = cell.fn(cell.arg, CellContext(run_id, scratch, progress))
            if not isinstance(out, CellOutput):
                raise TypeError(f"cell function {cell.fn.__name__} returned {type(out).__name__}, not CellOutput")
            artifacts = {
                p.relative_to(scratch).as_posix(): p.read_bytes()
                for p in sorted(scratch.rglob("*")) if p.is_file()
            }
            res = CellResult(run_id, "finished", out.metrics, {**out.timings, "cell_s": time.perf_counter() - t0},
                             out.curves, artifacts)
        except DivergedError as err:
            metrics = {"diverged_step": err.step, "diverged_loss": err.loss}
            res = CellResult(run_id, "diverged", {k: v for k, v in metrics.items() if v is not None},
                             {"cell_s": time.perf_counter() - t0}, error=str(err))
        except Exception as err:  # a cell's failure is a record, never the sweep's end
            tb = "" if isinstance(err, SltlabError) else "\n" + traceback.format_exc(limit=-3)
            res = CellResult(run_id, "failed", error=f"{type(err).__name__}: {err}{tb}")
        res.provenance = machine_provenance(cell.device)
        return res
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------ executors
class Executor(Protocol):
    name: str
    capacity: int

    def submit(self, cell: Cell) -> None: ...

    def wait(self, timeout: float) -> list[tuple[Cell, CellResult]]: ...

    def close(self, cancel: bool = False) -> None: ...


class SerialExecutor:
    """In the driver's own process, one cell at a time (debuggers and profilers see the cell's code)."""

    name = "serial"
    capacity = 1

    def __init__(self, threads: int = 1, progress: bool = False):
        self.threads, self.progress = threads, progress
        self._queue: deque[Cell] = deque()

    def submit(self, cell: Cell) -> None:
        self._queue.append(cell)

    def wait(self, timeout: float) -> list[tuple[Cell, CellResult]]:
        if not self._queue:
            return []
        cell = self._queue.popleft()
        return [(cell, execute(cell, self.threads, self.progress))]

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _pool_worker(conn: Any, threads: int) -> None:
    """A local worker: run cells sent over `conn` until told to stop. Ctrl-C is the driver's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The driver stops a busy worker with SIGTERM (terminate()); leaving through SystemExit runs multiprocessing's
    # finalizers, so the semaphores a cell made (tqdm's lock) are released instead of reported leaked at exit.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(Exception):
        torch.set_num_interop_threads(1)
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):  # the driver is gone
            return
        if not payload:
            return
        cell = pickle.loads(payload)  # our own driver's bytes over a private pipe, never a file
        res = execute(cell, threads)
        try:
            conn.send(res)
        except (BrokenPipeError, OSError):
            return


@dataclass
class _Slot:
    proc: Any = None
    conn: Any = None
    cell: Cell | None = None


class LocalExecutor:
    """A pool of worker processes on this machine (spawned, so no state leaks from the driver). A worker that
    dies is replaced and its cell retried up to `retries` times. With CUDA cells each worker sees one GPU."""

    name = "local"

    def __init__(self, workers: int, threads: int = 1, retries: int = 1, gpus: int = 0):
        import multiprocessing as mp

        self._ctx = mp.get_context("spawn")
        self.capacity = workers
        self.threads, self.retries, self.gpus = threads, retries, gpus
        self._slots = [_Slot() for _ in range(workers)]
        self._queue: deque[Cell] = deque()
        self._attempts: dict[str, int] = {}

    def _spawn(self, i: int) -> None:
        parent, child = self._ctx.Pipe()
        env_before = os.environ.get("CUDA_VISIBLE_DEVICES")
        if self.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(i % self.gpus)
        try:
            proc = self._ctx.Process(target=_pool_worker, args=(child, self.threads), daemon=True,
                                     name=f"sltlab-worker-{i}")
            proc.start()
        finally:
            if self.gpus:
                if env_before is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = env_before
        child.close()
        self._slots[i] = _Slot(proc, parent, None)

    def submit(self, cell: Cell) -> None:
        self._queue.append(cell)

    def _dispatch(self) -> None:
        for i, slot in enumerate(self._slots):
            if not self._queue:
                return
            if slot.cell is not None:
                continue
            if slot.proc is None or not slot.proc.is_alive():
                self._spawn(i)
                slot = self._slots[i]
            cell = self._queue.popleft()
            self._attempts[cell.run_id] = self._attempts.get(cell.run_id, 0) + 1
            try:
                # cloudpickle: a cell's function may be a closure (the theory's experiments build them)
                slot.conn.send_bytes(cloudpickle.dumps(cell))
                slot.cell = cell
            except (BrokenPipeError, OSError):
                self._queue.appendleft(cell)
                self._attempts[cell.run_id] -= 1
                slot.proc = None

    def wait(self, timeout: float) -> list[tuple[Cell, CellResult]]:
        from multiprocessing.connection import wait

        self._dispatch()
        busy = [s for s in self._slots if s.cell is not None]
        if not busy:
            return []
        handles: dict[Any, _Slot] = {}
        for s in busy:
            handles[s.conn] = s
            handles[s.proc.sentinel] = s
        out: list[tuple[Cell, CellResult]] = []
        for h in wait(list(handles), timeout=timeout):
            s = handles[h]
            if s.cell is None:
                continue  # both its pipe and its sentinel fired
            cell = s.cell
            if h is s.conn:
                try:
                    res = s.conn.recv()
                except (EOFError, OSError):
                    res = None
                if res is not None:
                    s.cell = None
                    out.append((cell, res))
                    continue
            # the worker died while running `cell`
            s.proc.join(timeout=5)
            code = s.proc.exitcode
            s.cell, s.proc = None, None
            why = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            n = self._attempts.get(cell.run_id, 1)
            if n <= self.retries:
                self._queue.appendleft(cell)
            else:
                out.append((cell, CellResult(cell.run_id, "failed",
                                             error=f"worker process died ({why}) on each of {n} attempts")))
        self._dispatch()
        return out

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()
        for s in self._slots:
            if s.proc is None:
                continue
            if cancel or s.cell is not None:
                s.proc.terminate()
            else:
                with contextlib.suppress(Exception):
                    s.conn.send_bytes(b"")
        for s in self._slots:
            if s.proc is not None:
                s.proc.join(timeout=10)
                if s.proc.is_alive():
                    s.proc.kill()
                    s.proc.join(timeout=5)
            if s.conn is not None:
                s.conn.close()
        self._slots = [_Slot() for _ in self._slots]


def _ray_ready() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS


def connect_timeout(default: float = 5.0) -> float:
    """Seconds to wait for a remote endpoint (a Ray head, a tracking server): $SLTLAB_CONNECT_TIMEOUT, else
    `default`."""
    try:
        value = float(os.environ.get("SLTLAB_CONNECT_TIMEOUT", default))
    except ValueError:
        return default
    return value if 0 < value < 3600 else default


def _probe(address: str, timeout: float | None = None) -> None:
    """Fail in seconds, with the flag named, where Ray itself would retry an unreachable address for minutes.

    Beyond a TCP connect, the peer must speak gRPC (HTTP/2), as Ray's GCS (HOST:6379) and its client server
    (ray://HOST:10001) do: to the HTTP/2 preface it answers with a SETTINGS frame. A port that accepts connections
    but speaks something else (an HTTP/1 server, a database, a port nothing reads) made ray.init() hang for minutes."""
    import socket

    timeout = connect_timeout() if timeout is None else timeout
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--address", f"{address!r} is not HOST:PORT", "auto, HOST:6379 or ray://HOST:10001")
    accepts = ("the address of a running Ray head (`ray start --head` prints it), or no --address for a private "
               "local Ray")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_H2_PREFACE)
            reply = b""
            while len(reply) < 9:
                chunk = sock.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except TimeoutError:
        raise ConfigError("--address", f"{address} accepts connections but does not answer as Ray (gRPC) within "
                          f"{timeout:g} s", accepts) from None
    except OSError as err:
        raise ConfigError("--address", f"nothing answers at {address} ({err.strerror or err})", accepts) from None
    if len(reply) < 9 or reply[3] != 4:  # frame type 4 = SETTINGS
        raise ConfigError("--address", f"{address} answers, but not as Ray (gRPC/HTTP2): {reply[:16]!r}", accepts)


def _ray_execute(cell: Cell, threads: int) -> CellResult:
    return execute(cell, threads)


class RayExecutor:
    """Ray tasks: Ray schedules them (num_cpus / num_gpus per cell), retries those whose worker died
    (`max_retries`), and spans a cluster. Without an address a private local Ray is started on 127.0.0.1."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1, retries: int = 1,
                 gpus: bool = False):
        if address and address != "auto" and not _ray_ready():
            _probe(address)
        if not address:
            # Read by Ray when it is first imported (and by the processes it starts): a private instance then
            # registers on 127.0.0.1 instead of this machine's network address, so nothing outside can reach it.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor", "ray is not installed",
                              "pip install 'sltlab[ray]' (or --executor local)") from None
        self.ray = ray
        self.threads, self.retries = threads, retries
        self._started = False
        self._refs: dict[Any, Cell] = {}
        if not ray.is_initialized():
            # ray.init() replaces the SIGTERM handler with sys.exit(15); a handler the caller set (the CLI's, which
            # stops a sweep like Ctrl-C and exits 143) is put back, so the command stops the same whatever executor.
            sigterm = signal.getsignal(signal.SIGTERM)
            try:
                if address:
                    # Ship this checkout's code, so every node runs the driver's version (torch must be there).
                    package = str(Path(__file__).resolve().parents[1])
                    ray.init(address=address, runtime_env={"py_modules": [package]},
                             log_to_driver=False, logging_level="ERROR")
                else:
                    ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                             _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="ERROR",
                             configure_logging=False)
                self._started = True
            except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError... by cause
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ConfigError("--address", f"cannot start or reach Ray at {address or 'a local instance'}: "
                                  f"{first}", "auto (this machine joined a cluster with `ray start`), "
                                  "ray://HOST:10001, or no --address for a private local Ray") from None
            finally:
                if callable(sigterm) and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, sigterm)
        resources = ray.cluster_resources()
        if gpus and not resources.get("GPU"):
            self.close()
            raise ConfigError("--device", f"the cells ask for CUDA but the Ray cluster at {address or 'this machine'} "
                              "has no GPU", "cpu, or a cluster whose nodes have GPUs")
        cpus = int(resources.get("CPU", 1))
        self.capacity = max(1, workers or cpus) if workers else max(1, cpus)
        self._remote = ray.remote(_ray_execute)

    def submit(self, cell: Cell) -> None:
        ref = self._remote.options(num_cpus=cell.num_cpus, num_gpus=cell.num_gpus, max_retries=self.retries,
                                   retry_exceptions=False).remote(cell, self.threads)
        self._refs[ref] = cell

    def wait(self, timeout: float) -> list[tuple[Cell, CellResult]]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        out = []
        for ref in ready:
            cell = self._refs.pop(ref)
            try:
                res = self.ray.get(ref)
            except Exception as err:  # the task's worker died more often than max_retries allows
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                res = CellResult(cell.run_id, "failed", error=f"ray task lost after {self.retries + 1} attempts: "
                                 f"{type(err).__name__}: {first}")
            out.append((cell, res))
        return out

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in list(self._refs):
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started:
            self.ray.shutdown()


# ---------------------------------------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class ExecOptions:
    """How a sweep runs. Nothing here enters a run id: results do not depend on it."""

    executor: ExecutorName = "local"
    workers: int | None = None  # local: processes (default: cores); ray: concurrent tasks (default: cluster CPUs)
    threads: int = 1  # torch threads per cell
    retries: int = 1  # re-runs of a cell whose worker died
    address: str | None = None  # ray: None = private local Ray on 127.0.0.1; 'auto' or 'ray://HOST:PORT'
    progress: bool = True
    track: str | None = None  # 'mlflow:URI': log every finished run live
    heartbeat_s: float = 20.0
    wait: bool = True  # wait for cells another live sweep is running (then summarise everything), or leave them
    poll_s: float = 1.0  # how often a waiting sweep looks at the other sweep's cells

    def validate(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError("--executor", f"unknown executor {self.executor!r}", " | ".join(EXECUTORS))
        # A cell's threads and a pool's processes run on this machine (on a Ray cluster, on its nodes): far past
        # the cores they only contend, and torch.set_num_threads(100000) crashes the process outright. (The CLI's
        # --threads is held to the cores themselves: commands.common.exec_options.)
        cores = os.cpu_count() or 1
        most_threads = MAX_RAY_THREADS if self.executor == "ray" else THREADS_PER_CORE * cores
        if self.workers is not None and not 1 <= self.workers <= WORKERS_PER_CORE * cores:
            raise ConfigError("--workers", f"{self.workers} workers on a machine with {cores} cores",
                              f"an integer in [1, {WORKERS_PER_CORE * cores}] (default: the cores)")
        if not 1 <= self.threads <= most_threads:
            where = "per Ray task" if self.executor == "ray" else f"on a machine with {cores} cores"
            raise ConfigError("--threads", f"{self.threads} threads {where}",
                              f"an integer in [1, {most_threads}] (default 1)")
        if not 0 <= self.retries <= MAX_RETRIES:
            raise ConfigError("--retries", f"{self.retries} retries", f"an integer in [0, {MAX_RETRIES}] (default 1)")
        if self.address and self.executor != "ray":
            raise ConfigError("--address", f"given with --executor {self.executor}", "--executor ray --address ...")


def make_executor(opts: ExecOptions, cells: list[Cell]) -> Executor:
    opts.validate()
    if opts.executor == "serial":
        return SerialExecutor(opts.threads)
    if opts.executor == "ray":
        return RayExecutor(opts.address, opts.workers, opts.threads, opts.retries,
                           gpus=any(c.num_gpus for c in cells))
    gpus = 0
    if any(c.device.startswith("cuda") for c in cells):
        import torch

        gpus = torch.cuda.device_count()
    workers = opts.workers or (gpus if gpus else (os.cpu_count() or 1))
    return LocalExecutor(max(1, min(workers, len(cells) or 1)), opts.threads, opts.retries, gpus)


@dataclass
class SweepReport:
    """What a sweep did. run_ids: every cell's id in the study's order."""

    run_ids: list[str]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    diverged: dict[str, str] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)  # left to another sweep (wait off)
    elsewhere: list[str] = field(default_factory=list)  # finished by another sweep while this one waited
    wall_s: float = 0.0
    executor: str = ""

    @property
    def ok(self) -> bool:
        """No cell failed. Cells left to another live sweep (wait off) are not failures: that sweep runs them."""
        return not self.failed

    def summary(self) -> str:
        parts = [f"{len(self.ran)} ran", f"{len(self.skipped)} already done"]
        if self.elsewhere:
            parts.append(f"{len(self.elsewhere)} finished by another sweep")
        if self.diverged:
            parts.append(f"{len(self.diverged)} diverged")
        if self.failed:
            parts.append(f"{len(self.failed)} FAILED")
        if self.busy:
            parts.append(f"{len(self.busy)} left to another sweep still running them (--no-wait)")
        text = f"{len(self.run_ids)} cells: " + ", ".join(parts) + f" ({self.executor}, {self.wall_s:.0f} s)"
        for rid, err in list(self.failed.items())[:10]:
            text += f"\n  failed {rid}: {err.splitlines()[0]}"
        if len(self.failed) > 10:
            text += f"\n  ... and {len(self.failed) - 10} more (sltlab runs list --status failed)"
        return text


def plan(cells: Iterable[Cell], store: Store) -> list[tuple[Cell, str]]:
    """Each cell with its status in the store ('new' when absent): what --dry-run shows."""
    return [(c, store.status(c.run_id) or "new") for c in cells]


def _unique(cells: Iterable[Cell]) -> list[Cell]:
    seen: set[str] = set()
    out = []
    for c in cells:
        rid = c.run_id
        if rid not in seen:
            seen.add(rid)
            out.append(c)
    return out


def run_cells(
    cells: Iterable[Cell],
    store: Store,
    options: ExecOptions | None = None,
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
) -> SweepReport:
    """Run every cell whose result the store lacks; the one sweep loop of sltlab. Returns what happened."""
    from tqdm import tqdm

    from sltlab.runs.provenance import code_provenance

    opts = options or ExecOptions()
    opts.validate()
    cells = _unique(cells)
    report = SweepReport([c.run_id for c in cells])
    todo = []
    for c in cells:
        if store.is_finished(c.run_id):
            report.skipped.append(c.run_id)
        else:
            todo.append(c)
    if not todo:
        report.executor = opts.executor
        return report
    tracker = None
    if opts.track:
        from sltlab.runs.tracking import make_tracker

        tracker = make_tracker(opts.track)
    ex = executor or make_executor(opts, todo)
    report.executor = f"{ex.name} x{ex.capacity}"
    owner = owner_id()
    code = {**code_provenance(), "executor": ex.name}
    queue = deque(todo)
    running: dict[str, Cell] = {}
    waiting: dict[str, Cell] = {}  # running in another live sweep: looked at every poll_s until done there
    was_waiting: set[str] = set()
    t0 = time.perf_counter()
    last_beat = last_poll = time.monotonic()
    bar = tqdm(total=len(todo), desc=f"{todo[0].kind} cells", disable=not opts.progress, dynamic_ncols=True,
               unit="cell")

    def say(text: str) -> None:
        if opts.progress:
            tqdm.write(text)
        else:
            log(text)

    def postfix() -> None:
        other = f", waiting for {len(waiting)} in another sweep" if waiting else ""
        bar.set_postfix_str(f"running {len(running)}{other}, failed {len(report.failed)}", refresh=bool(waiting))

    try:
        while queue or running or waiting:
            while queue and len(running) < ex.capacity:
                cell = queue.popleft()
                rid, outcome = store.claim(cell.kind, dict(cell.config), cell.seed, owner, code)
                if outcome == "done":
                    (report.elsewhere if rid in was_waiting else report.skipped).append(rid)
                    bar.update(1)
                    continue
                if outcome == "busy":
                    if opts.wait:
                        waiting[rid] = cell
                        was_waiting.add(rid)
                    else:
                        report.busy.append(rid)
                        bar.update(1)
                    continue
                running[rid] = cell
                ex.submit(cell)
            postfix()
            if running:
                results = ex.wait(timeout=min(opts.heartbeat_s, opts.poll_s if waiting else 5.0))
            else:
                results = []
                time.sleep(opts.poll_s)  # only other sweeps' cells are left: look again shortly
            for cell, res in results:
                running.pop(cell.run_id, None)
                _record(store, cell, res, code, report)
                if res.status == "failed":
                    say(f"{cell.run_id} {cell.label} FAILED: {(res.error or '').splitlines()[0]}")
                elif res.status == "diverged":
                    say(f"{cell.run_id} {cell.label} diverged: {res.error}")
                if tracker is not None and res.status != "failed":
                    tracker.log(store.get(cell.run_id), store)
                bar.update(1)
                postfix()
            if waiting and time.monotonic() - last_poll >= opts.poll_s:
                last_poll = time.monotonic()
                alive = store.running_elsewhere(list(waiting), owner)
                for rid in [r for r in waiting if r not in alive]:
                    # finished there (counted when the claim says 'done'), or its sweep died or failed it: ours now
                    queue.appendleft(waiting.pop(rid))
            if time.monotonic() - last_beat > opts.heartbeat_s:
                store.heartbeat(owner)
                last_beat = time.monotonic()
    except BaseException:
        ex.close(cancel=True)
        store.release(owner, "interrupted", "interrupted: the sweep was stopped before this cell finished")
        bar.close()
        raise
    ex.close()
    bar.close()
    report.wall_s = time.perf_counter() - t0
    return report


def _record(store: Store, cell: Cell, res: CellResult, code: dict[str, Any], report: SweepReport) -> None:
    rid = cell.run_id
    prov = {**code, **res.provenance}
    if res.status == "failed":
        store.fail(rid, res.error or "failed")
        report.failed[rid] = res.error or "failed"
        return
    if res.artifacts:
        folder = store.artifact_dir(rid)
        for name, data in res.artifacts.items():
            target = (folder / name).resolve()
            if folder.resolve() not in target.parents:
                raise SltlabError(f"cell {rid} returned an artifact outside its folder: {name!r}")
            atomic_write_bytes(target, data)
    store.finish(rid, res.metrics, res.timings, status=res.status, error=res.error, curves=res.curves,
                 provenance=prov)
    if res.status == "diverged":
        report.diverged[rid] = res.error or "diverged"
    else:
        report.ran.append(rid)
