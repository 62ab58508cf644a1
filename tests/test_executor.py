"""The one sweep loop: serial, local and Ray executors give the same results; faults never lose or duplicate a
finished cell; the store's guarantees hold under concurrent sweeps, SIGKILL, SIGINT and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sltlab.errors import ConfigError
from sltlab.runs.executor import ExecOptions, LocalExecutor, run_cells
from sltlab.runs.store import Store, make_run_id

sys.path.insert(0, str(Path(__file__).parent))
from executor_cells import toy_cells  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SLTLAB = [sys.executable, "-m", "sltlab.cli"]


def rows(db: Path) -> dict[str, tuple]:
    con = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in con.execute("SELECT run_id, status, metrics, attempts, error FROM runs")}
    finally:
        con.close()


def artifact_bytes(db: Path, run_id: str) -> bytes:
    return (db.parent / "artifacts" / run_id / "toy.bin").read_bytes()


def kill_when_started(pid_file: Path, limit_s: float = 60) -> threading.Thread:
    """A thread that SIGKILLs the process whose pid a toy cell writes to `pid_file` (its worker), once it has."""

    def killer() -> None:
        t0 = time.time()
        while time.time() - t0 < limit_s:
            if pid_file.exists() and pid_file.read_text():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                return
            time.sleep(0.1)

    t = threading.Thread(target=killer)
    t.start()
    return t


def test_serial_and_local_agree_bit_for_bit(tmp_path):
    cells = toy_cells(4)
    with Store(tmp_path / "s" / "a.db") as s1:
        r1 = run_cells(cells, s1, ExecOptions(executor="serial", progress=False))
    with Store(tmp_path / "l" / "a.db") as s2:
        r2 = run_cells(cells, s2, ExecOptions(executor="local", workers=2, progress=False))
    assert r1.run_ids == r2.run_ids and sorted(r1.ran) == sorted(r2.ran) == sorted(r1.run_ids)
    a, b = rows(tmp_path / "s" / "a.db"), rows(tmp_path / "l" / "a.db")
    assert {k: v[1] for k, v in a.items()} == {k: v[1] for k, v in b.items()}  # metrics JSON, byte for byte
    for rid in r1.run_ids:
        assert artifact_bytes(tmp_path / "s" / "a.db", rid) == artifact_bytes(tmp_path / "l" / "a.db", rid)
    with Store(tmp_path / "l" / "a.db") as s2:
        rec = s2.get(r1.run_ids[0])
        assert rec.curves["loss"][0][0] == 1 and len(rec.curves["loss"]) == 3
        assert rec.provenance["executor"] == "local" and rec.provenance["torch"]
        assert {"commit", "dirty", "host", "python", "torch_build", "device"} <= set(rec.provenance)
        again = run_cells(cells, s2, ExecOptions(executor="local", workers=2, progress=False))
    assert again.ran == [] and sorted(again.skipped) == sorted(r1.run_ids)


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    cells = toy_cells(4, per_seed={1: {"fail": True}, 2: {"diverge": True}})
    with Store(tmp_path / "a.db") as store:
        rep = run_cells(cells, store, ExecOptions(executor="local", workers=2, progress=False), log=lambda _: None)
        assert not rep.ok and list(rep.failed) == [cells[1].run_id]
        assert "told to fail" in rep.failed[cells[1].run_id]
        assert list(rep.diverged) == [cells[2].run_id]
        assert sorted(rep.ran) == sorted([cells[0].run_id, cells[3].run_id])
        assert store.status(cells[1].run_id) == "failed" and "ValueError" in store.get(cells[1].run_id).error
        div = store.get(cells[2].run_id)
        assert div.status == "diverged" and div.metrics["diverged_step"] == 40 and "1e3" in div.error
        assert "1 FAILED" in rep.summary() and "1 diverged" in rep.summary()
        # a rerun retries the failed cell only: a diverged run is a result
        fixed = toy_cells(4)
        rep2 = run_cells(fixed, store, ExecOptions(executor="serial", progress=False))
        assert rep2.ran == [cells[1].run_id] and store.status(cells[2].run_id) == "diverged"


@pytest.mark.parametrize("retries,expect", [(1, "finished"), (0, "failed")])
def test_local_worker_killed_mid_cell_is_retried(tmp_path, retries, expect):
    kill_dir = tmp_path / "kill"
    kill_dir.mkdir()
    cells = toy_cells(3, per_seed={1: {"kill_dir": str(kill_dir)}})

    t = kill_when_started(kill_dir / "pid-1")
    with Store(tmp_path / "a.db") as store:
        rep = run_cells(cells, store, ExecOptions(executor="local", workers=2, retries=retries, progress=False),
                        log=lambda _: None)
        t.join()
        assert store.status(cells[1].run_id) == expect
        if expect == "failed":
            assert "SIGKILL" in rep.failed[cells[1].run_id]
        assert store.status(cells[0].run_id) == store.status(cells[2].run_id) == "finished"


def test_store_never_downgrades_a_result(tmp_path):
    with Store(tmp_path / "a.db") as store:
        rid = store.start("toy", {"a": 1}, 0)
        store.finish(rid, {"x": 1.0})
        assert store.fail(rid, "interrupted by another sweep") is False
        assert store.start("toy", {"a": 1}, 0) == rid and store.status(rid) == "finished"
        assert store.claim("toy", {"a": 1}, 0)[1] == "done"
        store.finish(rid, {"x": 2.0})  # a second result does not replace the first
        assert store.get(rid).metrics == {"x": 1.0}
        # a claim by a live owner blocks another owner; a dead owner's claim is taken over
        rid2, got = store.claim("toy", {"a": 2}, 0, owner=f"{os.uname().nodename}:{os.getpid()}")
        assert got == "claimed"
        assert store.claim("toy", {"a": 2}, 0, owner="someone-else:1")[1] == "busy"
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        rid3, _ = store.claim("toy", {"a": 3}, 0, owner=f"{os.uname().nodename}:{dead}")
        assert store.claim("toy", {"a": 3}, 0)[1] == "claimed"


SWEEP = """
import json, sys
sys.path.insert(0, {tests!r})
from executor_cells import toy_cells
from sltlab.runs.executor import ExecOptions, run_cells
from sltlab.runs.store import Store
with Store({db!r}) as store:
    rep = run_cells(toy_cells(8, sleep=0.3), store, ExecOptions(executor="local", workers=1, progress=False))
print(json.dumps({{"ran": rep.ran, "skipped": rep.skipped, "busy": rep.busy}}))
"""


def test_two_concurrent_sweeps_share_the_work(tmp_path):
    db = tmp_path / "a.db"
    code = SWEEP.format(tests=str(Path(__file__).parent), db=str(db))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    ran = outs[0]["ran"] + outs[1]["ran"]
    all_ids = [c.run_id for c in toy_cells(8)]
    assert sorted(ran) == sorted(all_ids), "every cell ran exactly once across the two sweeps"
    assert all(r[0] == "finished" and r[2] == 1 for r in rows(db).values())  # one attempt each
    print(f"concurrent sweeps: {len(all_ids)} cells, split {len(outs[0]['ran'])}/{len(outs[1]['ran'])}, "
          f"duplicated 0")


TINY = """
name = "tiny"
heads = [1, 2]
widths = [16, 32]
variants = ["none", "pre-ln"]
seeds = [0]
n_train = 128
n_test = 32
store = "{db}"
out_dir = "{out}"
[search]
steps = {steps}
lr = 0.05
"""


def _tiny(tmp_path: Path, steps: int = 30) -> tuple[Path, Path]:
    db = tmp_path / "a.db"
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(db=db, out=tmp_path / "out", steps=steps))
    return cfg, db


def _wait_finished(db: Path, n: int, proc: subprocess.Popen, limit: float = 240) -> None:
    t0 = time.time()
    while time.time() - t0 < limit:
        if db.exists():
            try:
                done = sum(1 for r in rows(db).values() if r[0] == "finished")
            except sqlite3.OperationalError:
                done = 0
            if done >= n:
                return
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(0.2)
    raise AssertionError("cells did not finish in time")


def _default_signals() -> None:
    # A test run started in the background by a non-interactive shell (`make test &`) inherits SIGINT ignored, and
    # Python keeps it ignored: the sweep would never see the Ctrl-C this test sends.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_sweep_stopped_midway_resumes(tmp_path, sig):
    # cells long enough (~1 s each) that the other six cannot all finish while a loaded machine keeps this test
    # process off the CPU between seeing two finished and sending the signal
    cfg, db = _tiny(tmp_path, steps=400)
    argv = [*SLTLAB, "approx", str(cfg), "--executor", "local", "--workers", "2", "--quiet"]
    scratch = tmp_path / "tmp"  # where the cells' scratch folders go, so leftovers of other runs do not count
    scratch.mkdir()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals, env={**os.environ, "TMPDIR": str(scratch)})
    _wait_finished(db, 2, proc)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    stopped = sig in (signal.SIGINT, signal.SIGTERM)  # the two a sweep stops on cleanly
    if stopped:
        assert proc.returncode == (130 if sig == signal.SIGINT else 143) and "finished runs are kept" in err
        assert "Traceback" not in err
        # the stopped workers left through their finalizers: nothing reported leaked, no cell's scratch folder left
        assert "leaked" not in err, err
        assert not list(scratch.glob("sltlab-*")), list(scratch.iterdir())
    before = rows(db)
    finished = {k for k, v in before.items() if v[0] == "finished"}
    assert len(finished) >= 2
    if stopped:
        assert not [k for k, v in before.items() if v[0] == "running"], "running cells are marked interrupted"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    after = rows(db)
    assert len(after) == 8 and all(v[0] == "finished" for v in after.values())
    assert all(after[k][1] == before[k][1] for k in finished), "a finished cell is never redone or changed"
    assert f"{len(finished)} already done" in again.stdout


def test_ray_sweep_survives_a_killed_worker_and_matches_serial(tmp_path, monkeypatch):
    # before Ray is first imported: Ray reads it then (RayExecutor sets it too, for the command line)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    pytest.importorskip("ray")
    import ray

    from sltlab.runs.executor import RayExecutor

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH",
                                                                                                  "")]))
    kill_dir = tmp_path / "kill"
    kill_dir.mkdir()
    cells = toy_cells(6, per_seed={2: {"kill_dir": str(kill_dir)}})
    with Store(tmp_path / "serial" / "a.db") as s:
        run_cells(toy_cells(6), s, ExecOptions(executor="serial", progress=False))

    def the_callers_sigterm(signum, frame):  # the CLI's stands here in a command
        raise AssertionError("not called in this test")

    previous = signal.signal(signal.SIGTERM, the_callers_sigterm)
    try:
        ex = RayExecutor(workers=2, threads=1, retries=1)
        kept = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        assert kept is the_callers_sigterm, "ray.init() replaced the caller's SIGTERM handler"
        assert ray.is_initialized()
        addresses = {n["NodeManagerAddress"] for n in ray.nodes()}
        assert addresses == {"127.0.0.1"}, addresses
        t = kill_when_started(kill_dir / "pid-2", limit_s=180)
        with Store(tmp_path / "ray" / "a.db") as store:
            rep = run_cells(cells, store, ExecOptions(executor="ray", progress=False), executor=ex)
        t.join()
    finally:
        ex.close()
    assert not ray.is_initialized()
    assert (kill_dir / "pid-2").exists(), "the cell's first worker was killed"
    assert sorted(rep.ran) == sorted(c.run_id for c in cells) and not rep.failed
    got, want = rows(tmp_path / "ray" / "a.db"), rows(tmp_path / "serial" / "a.db")
    assert len(got) == 6 and all(v[0] == "finished" for v in got.values())
    assert all(v[2] == 1 for v in got.values()), "no cell recorded twice"
    assert {k: v[1] for k, v in got.items()} == {k: v[1] for k, v in want.items()}


def test_exec_options_are_checked():
    for kwargs, flag in (({"executor": "slurm"}, "--executor"), ({"workers": 0}, "--workers"),
                         ({"threads": 0}, "--threads"), ({"retries": -1}, "--retries"),
                         ({"executor": "local", "address": "auto"}, "--address")):
        with pytest.raises(ConfigError, match=flag):
            ExecOptions(**kwargs).validate()


def test_run_id_and_cell_identity():
    (c,) = toy_cells(1)
    assert c.run_id == make_run_id("toy", {"seed": 0, "size": 64}, 0)
    assert LocalExecutor(2).capacity == 2
