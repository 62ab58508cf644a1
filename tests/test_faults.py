"""Faults, files sltlab did not write, untrusted stores and artifacts, concurrent sweeps: one row per scenario.

The bad inputs whose answer is one line and exit 2 are rows of tests/test_bad_inputs.py. The scenarios here have
other outcomes (a command that succeeds and leaves a file alone, a store read without being changed, a sweep that
waits for another, a ticket refused by the Python API), so each row is a small function, registered with `@fault`
under the issue's class of failure. The count of rows tried and survived is printed at the end of the test run
(tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import sltlab
from sltlab.cli import main
from sltlab.errors import ArtifactError, ConfigError, StoreError
from sltlab.runs.executor import ExecOptions, run_cells
from sltlab.runs.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from executor_cells import toy_cells  # noqa: E402
from test_bad_inputs import reseal  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SRC = str(Path(sltlab.__file__).resolve().parents[1])
LEGACY_SCHEMA = ("CREATE TABLE runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, seed INTEGER, "
                 "config TEXT NOT NULL, metrics TEXT, timings TEXT, error TEXT, code_version TEXT, host TEXT, "
                 "started REAL, finished REAL)")


@dataclass
class Lab:
    """What a row gets: a fresh folder and the usual fixtures, and helpers to run the CLI in-process."""

    path: Path
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture
    notes: list[str] = field(default_factory=list)

    def cli(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        threads = torch.get_num_threads()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
        finally:
            torch.set_num_threads(threads)
        got = self.capsys.readouterr()
        return int(code or 0), got.out, got.err

    def store(self, name: str = "s.db", rows: int = 3, kind: str = "approx") -> Path:
        """A store with `rows` finished runs."""
        p = self.path / name
        with Store(p) as s:
            for i in range(rows):
                rid = s.start(kind, {"case": i, "task": "sst2", "method": "dense", "norm": "none", "seed": i}, i)
                s.finish(rid, {"rel_error": 0.1 * (i + 1), "main": 0.5 + 0.01 * i, "main_metric": "accuracy"})
        return p

    def legacy_store(self, name: str = "old.db") -> Path:
        """A store as the first releases wrote it: no application id, no added columns, rollback journal."""
        p = self.path / name
        with contextlib.closing(sqlite3.connect(p)) as db:
            db.execute(LEGACY_SCHEMA)
            db.execute("INSERT INTO runs VALUES ('approx-00000000000a', 'approx', 'finished', 0, '{\"w\": 1}', "
                       "'{\"rel_error\": 0.5}', '{}', NULL, '0.0.1', 'h', 1.0, 2.0)")
            db.commit()
        return p

    def insert(self, store: Path, **row: Any) -> None:
        row = {"kind": "approx", "status": "finished", "config": "{}", "metrics": "{}", "started": 1.0, **row}
        with contextlib.closing(sqlite3.connect(store)) as db:
            db.execute(f"INSERT INTO runs({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
            db.commit()


FAULTS: list[tuple[str, str, Callable[[Lab], None]]] = []


def fault(cls: str, name: str) -> Callable[[Callable[[Lab], None]], Callable[[Lab], None]]:
    def register(fn: Callable[[Lab], None]) -> Callable[[Lab], None]:
        FAULTS.append((f"{cls}-{name}", cls, fn))
        return fn

    return register


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _tiny_ticket(seed: int = 1) -> tuple[torch.nn.Module, Any]:
    from sltlab.nn.init import InitSpec
    from sltlab.nn.transformer import ModelConfig
    from sltlab.tickets.spec import ModelSpec, build_model
    from sltlab.tickets.supermask import SupermaskConfig

    spec = ModelSpec("encoder-classifier", ModelConfig(d_model=8, n_heads=2, n_layers=1, vocab_size=20, max_len=8),
                     InitSpec(seed=seed), SupermaskConfig(keep=0.5))
    return build_model(spec), spec


# ================================================================ class 1: files sltlab did not write are never touched
def _report(lab: Lab, out: Path, store: Path | None = None) -> tuple[int, str, str]:
    store = store or (lab.path / "r.db")
    if not store.exists():
        Store(store).close()
    return lab.cli("report", "--store", store, "--out", out, "--quiet")


@fault("files", "report-keeps-the-users-own-figures")
def _(lab: Lab) -> None:
    out = lab.path / "rep"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "mine.png").write_bytes(b"my own figure")
    (out / "notes.md").write_text("my notes")
    assert _report(lab, out)[0] == 0
    assert (out / "figures" / "mine.png").read_bytes() == b"my own figure"
    assert (out / "notes.md").read_text() == "my notes" and (out / "report.md").is_file()


@fault("files", "rebuild-deletes-only-its-own-stale-figures")
def _(lab: Lab) -> None:
    from sltlab.runs.io import publish, staging_dir

    out = lab.path / "rep"
    first = staging_dir(out)
    (first / "figures").mkdir()
    for name in ("a.png", "b.png"):
        (first / "figures" / name).write_bytes(name.encode())
    publish(first, out)
    (out / "figures" / "user.png").write_bytes(b"user")
    second = staging_dir(out)
    (second / "figures").mkdir()
    (second / "figures" / "a.png").write_bytes(b"a2")
    publish(second, out)
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["a.png", "user.png"]
    assert (out / "figures" / "a.png").read_bytes() == b"a2" and not any(out.glob(".sltlab-build-*"))


@fault("files", "report-stopped-part-way-keeps-the-previous-report-whole")
def _(lab: Lab) -> None:
    import sltlab.report.build as build

    out = lab.path / "rep"
    (out / "figures").mkdir(parents=True)
    # the previous build: a page linking its figure, and the manifest a build writes
    (out / "report.md").write_text("![error vs width](figures/error_vs_width_0.png)\n")
    (out / "figures" / "error_vs_width_0.png").write_bytes(b"png of the previous build")
    (out / ".sltlab-manifest.json").write_text('{"files": ["figures/error_vs_width_0.png", "report.md"]}\n')
    before = files(out)

    def stop(*_a: Any, **_k: Any) -> Any:
        raise KeyboardInterrupt

    lab.monkeypatch.setattr(build, "section_overview", stop)
    code, _, err = _report(lab, out)
    assert code == 130 and "interrupted" in err
    assert files(out) == before and not any(out.glob(".sltlab-build-*"))


@fault("files", "publish-refuses-a-symlinked-target-and-leaves-the-link")
def _(lab: Lab) -> None:
    from sltlab.runs.io import publish, staging_dir

    out = lab.path / "rep"
    target = lab.path / "elsewhere.md"
    target.write_text("not sltlab's")
    out.mkdir()
    (out / "report.md").symlink_to(target)
    st = staging_dir(out)
    (st / "report.md").write_text("new")
    with pytest.raises(ConfigError, match="symbolic link"):
        publish(st, out)
    assert (out / "report.md").is_symlink() and target.read_text() == "not sltlab's"


@fault("files", "write-refuses-a-fifo-at-write-time")
def _(lab: Lab) -> None:
    from sltlab.runs.io import write_text

    fifo = lab.path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        write_text(fifo, "x")
    assert fifo.is_fifo() and [p.name for p in lab.path.iterdir()] == ["pipe"]  # no temporary file left


def _never_changed(lab: Lab, *argv: str, expect: int = 0) -> None:
    store = lab.legacy_store()
    before = (sha(store), sorted(p.name for p in lab.path.iterdir()))
    code, out, err = lab.cli(*[a.replace("STORE", str(store)) for a in argv])
    assert code == expect, (code, out, err)
    assert (sha(store), sorted(p.name for p in lab.path.iterdir() if p.name != "rep")) == before
    with contextlib.closing(sqlite3.connect(store)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # no WAL switch
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0  # not made ours by a read


@fault("files", "runs-list-reads-an-old-store-without-migrating-it")
def _(lab: Lab) -> None:
    _never_changed(lab, "runs", "list", "--store", "STORE")


@fault("files", "runs-show-reads-an-old-store-without-migrating-it")
def _(lab: Lab) -> None:
    _never_changed(lab, "runs", "show", "approx-00000000000a", "--store", "STORE")


@fault("files", "glue-table-reads-an-old-store-without-migrating-it")
def _(lab: Lab) -> None:
    _never_changed(lab, "glue-table", "--store", "STORE", expect=1)  # exit 1: it holds no glue runs


@fault("files", "dry-run-reads-an-old-store-without-migrating-it")
def _(lab: Lab) -> None:
    cfg = lab.path / "a.toml"
    cfg.write_text('heads = [1]\nwidths = [16]\nvariants = ["none"]\nseeds = [0]\nn_train = 8\nn_test = 8\n')
    _never_changed(lab, "approx", str(cfg), "--store", "STORE", "--dry-run")
    cfg.unlink()


@fault("files", "report-reads-an-old-store-without-migrating-it")
def _(lab: Lab) -> None:
    _never_changed(lab, "report", "--store", "STORE", "--out", str(lab.path / "rep"), "--quiet")


@fault("files", "a-sweep-migrates-an-old-store-and-keeps-its-rows")
def _(lab: Lab) -> None:
    store = lab.legacy_store()
    with Store(store) as s:
        assert not s.needs_migration and s.get("approx-00000000000a").metrics == {"rel_error": 0.5}
        run_cells(toy_cells(1), s, ExecOptions(executor="serial", progress=False))
        assert len(s.runs(None)) == 2


@fault("files", "runs-migrate-brings-an-old-store-up-to-date")
def _(lab: Lab) -> None:
    store = lab.legacy_store()
    code, out, _ = lab.cli("runs", "migrate", "--store", store)
    assert code == 0 and "migrated" in out
    with Store(store, readonly=True) as s:
        assert not s.needs_migration and [r.run_id for r in s.runs()] == ["approx-00000000000a"]
    assert "already up to date" in lab.cli("runs", "migrate", "--store", store)[1]


@fault("files", "csv-goes-to-standard-output-with-a-dash")
def _(lab: Lab) -> None:
    code, out, _ = lab.cli("runs", "export", "--store", lab.store(), "--csv", "-")
    assert code == 0 and out.startswith("run_id,") and len(out.splitlines()) == 4
    assert sorted(p.name for p in lab.path.iterdir()) == ["s.db"]


@fault("files", "export-writes-the-ticket-to-standard-output-with-a-dash")
def _(lab: Lab) -> None:
    from sltlab.tickets.artifact import decode_ticket
    from sltlab.tickets.checkpoint import save_checkpoint

    store = lab.store(rows=1)
    with Store(store) as s:
        rid = s.runs()[0].run_id
        model, spec = _tiny_ticket()
        save_checkpoint(s.artifact_dir(rid) / "ticket.safetensors", model, spec)
    lab.capsys.readouterr()
    with lab.capsys.disabled():
        r, w = os.pipe()
        saved = os.dup(1)
        os.dup2(w, 1)
        try:
            code = main(["export", rid, "--store", str(store), "-o", "-"])
            sys.stdout.flush()
        finally:
            os.dup2(saved, 1)
            os.close(w)
        data = b""
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
    assert code == 0 and decode_ticket(data).spec == spec


@fault("files", "an-interrupted-mlflow-export-is-completed-by-the-rerun")
def _(lab: Lab) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from sltlab.runs.tracking import COMPLETE, MlflowTracker, export_mlflow, tracking_uri

    store = lab.store(rows=2)
    uri = str(lab.path / "ml")
    tracker = MlflowTracker(uri)
    with Store(store, readonly=True) as s:
        first = s.runs()[0]
        # what an export stopped after create_run left behind: the run, tagged, with no params and not complete
        tracker.client.create_run(tracker.experiment_id, tags={"sltlab.run_id": first.run_id})
        assert export_mlflow(s, uri) == 2
    client = MlflowClient(tracking_uri=tracking_uri(uri))
    runs = client.search_runs([tracker.experiment_id])
    by_id = [r for r in runs if r.data.tags.get("sltlab.run_id") == first.run_id]
    assert len(by_id) == 1 and by_id[0].data.tags.get(COMPLETE) == "1" and by_id[0].data.params


# ======================================================================== class 2: a store's contents are input
def _corrupt_store(lab: Lab) -> Path:
    store = lab.store(rows=2)
    lab.insert(store, run_id="approx-0000000000c1", metrics="{oops")
    lab.insert(store, run_id="approx-0000000000c2", metrics="[1, 2]")
    lab.insert(store, run_id="approx-0000000000c3", started="last tuesday")
    lab.insert(store, run_id="approx-../../../../etc", config='{"x": 1}')
    return store


@fault("store", "runs-list-skips-corrupt-rows-and-says-so")
def _(lab: Lab) -> None:
    code, out, err = lab.cli("runs", "list", "--store", _corrupt_store(lab), "--status", "all")
    assert code == 0 and len([ln for ln in out.splitlines() if ln.startswith("approx-")]) == 2
    assert "skipped 4 corrupt row(s)" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@fault("store", "runs-export-csv-skips-corrupt-rows")
def _(lab: Lab) -> None:
    code, out, err = lab.cli("runs", "export", "--store", _corrupt_store(lab), "--csv", "-")
    assert code == 0 and len(out.splitlines()) == 3 and "corrupt" in err


@fault("store", "glue-table-skips-runs-without-a-score")
def _(lab: Lab) -> None:
    store = lab.store(rows=2, kind="glue")
    lab.insert(store, run_id="glue-0000000000c1", kind="glue", metrics="{}",
               config='{"task": "sst2", "method": "dense", "norm": "none", "seed": 5}')
    lab.insert(store, run_id="glue-0000000000c2", kind="glue", metrics='{"main": "high"}',
               config='{"task": "sst2", "method": "dense", "norm": "none", "seed": 6}')
    lab.insert(store, run_id="glue-0000000000c3", kind="glue", metrics='{"main": 0.5}', config='{"seed": 7}')
    code, out, err = lab.cli("glue-table", "--store", store)
    assert code == 0 and out.count("| sst2 |") == 2, out
    assert "skipped 3 glue run(s)" in err and "Traceback" not in err


@fault("store", "report-skips-corrupt-rows-and-records-them")
def _(lab: Lab) -> None:
    out = lab.path / "rep"
    code, _, err = _report(lab, out, _corrupt_store(lab))
    assert code == 0 and "Traceback" not in err
    assert "skipped 4 corrupt row(s)" in json.loads((out / "report.json").read_text())["skipped_rows"][0]


@fault("store", "mlflow-export-never-reads-outside-the-store")
def _(lab: Lab) -> None:
    pytest.importorskip("mlflow")
    from sltlab.runs.tracking import export_mlflow

    secret = lab.path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("do not upload")
    store = lab.path / "runs" / "s.db"
    store.parent.mkdir()
    Store(store).close()
    lab.insert(store, run_id="approx-../../secret", status="finished")
    with Store(store, readonly=True) as s:
        assert export_mlflow(s, str(lab.path / "ml")) == 0
    assert not [p for p in (lab.path / "ml").rglob("key.txt")]


@fault("store", "artifact-paths-refuse-ids-that-are-not-run-ids")
def _(lab: Lab) -> None:
    with Store(lab.store()) as s:
        for bad in ("../x", "approx-000000000000/../../x", "approx-000000000000\n", "/etc/passwd", ""):
            with pytest.raises(StoreError, match="not a run id"):
                s.artifact_path(bad)


@fault("store", "analyze-a-good-run-beside-corrupt-ones")
def _(lab: Lab) -> None:
    store = _corrupt_store(lab)
    with Store(store, readonly=True) as s:
        good = s.runs()[0].run_id
    code, out, err = lab.cli("analyze", good, "--store", store, "--n-inputs", "1")
    assert code == 0 and good in out and "Traceback" not in err


# ======================================================================== class 3: artifacts cost bounded memory
@fault("artifacts", "a-slt-whose-seed-was-edited-is-refused-by-load-ticket")
def _(lab: Lab) -> None:
    from sltlab.tickets.artifact import export_ticket

    model, spec = _tiny_ticket()
    blob = export_ticket(model, spec)
    edited = lab.path / "t.slt"
    edited.write_bytes(reseal(blob, lambda h: h["spec"]["init"].update(seed=2)))
    with pytest.raises(ArtifactError, match="SHA-256"):
        sltlab.load_ticket(edited)
    (lab.path / "ok.slt").write_bytes(blob)
    assert isinstance(sltlab.load_ticket(lab.path / "ok.slt"), torch.nn.Module)


@fault("artifacts", "tickets-exported-before-the-fingerprint-still-load")
def _(lab: Lab) -> None:
    from sltlab.tickets.artifact import read_ticket, verify_parts

    for name in ("plain", "variants"):
        parts = read_ticket(FIXTURES / "tickets" / f"{name}_4330494.slt")
        assert "weights_sha256" not in parts.header and verify_parts(parts)["bit_identical"]


@fault("artifacts", "mask-coding-is-byte-for-byte-what-4330494-wrote")
def _(lab: Lab) -> None:
    """The one mask-table reader changed nothing written: re-exporting the fixtures' models gives the same masks,
    mask table and payload bytes; only the header's new weights fingerprint is added."""
    from sltlab.tickets.artifact import build_from_parts, export_ticket, read_ticket

    for name in ("plain", "variants"):
        old = read_ticket(FIXTURES / "tickets" / f"{name}_4330494.slt")
        blob = export_ticket(build_from_parts(old), old.spec)
        new = read_ticket_bytes(blob)
        header = dict(new.header)
        assert len(header.pop("weights_sha256")) == 64
        assert header == old.header
        raw_old = (FIXTURES / "tickets" / f"{name}_4330494.slt").read_bytes()
        assert blob[-32 - old.header["payload_bytes"]:-32] == raw_old[-32 - old.header["payload_bytes"]:-32]


def read_ticket_bytes(blob: bytes) -> Any:
    from sltlab.tickets.artifact import decode_ticket

    return decode_ticket(blob)


@fault("artifacts", "a-multi-gigabyte-file-that-is-not-a-ticket-is-refused-unread")
def _(lab: Lab) -> None:
    big = lab.path / "big.slt"
    with open(big, "wb") as f:
        f.truncate(8 * 2**30)  # sparse: no disk used
    with pytest.raises(ArtifactError, match="not an sltlab ticket"):
        sltlab.load_ticket(big)


@fault("artifacts", "a-ticket-claiming-less-than-its-gigabytes-is-refused-before-its-payload-is-read")
def _(lab: Lab) -> None:
    from sltlab.tickets.artifact import export_ticket

    model, spec = _tiny_ticket()
    blob = export_ticket(model, spec)
    big = lab.path / "big.slt"
    big.write_bytes(blob)
    with open(big, "r+b") as f:
        f.truncate(6 * 2**30)  # sparse
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArtifactError, match="truncated or padded"):
        sltlab.load_ticket(big)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 512 * 1024  # KiB: the 6 GiB never read


def _hf_folder(lab: Lab, edit: Callable[[dict], None] | None = None) -> Path:
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    from sltlab.nn.init import InitSpec, init_model
    from sltlab.tickets.supermask import SupermaskConfig, apply_supermask

    model = GPT2LMHeadModel(GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=16, n_positions=8))
    init_model(model, InitSpec(seed=3))
    apply_supermask(model, SupermaskConfig(keep=0.5))
    folder = lab.path / "hf"
    sltlab.save_ticket(model, folder)  # no init=: init_model remembered it
    if edit is not None:
        from sltlab.tickets import hf

        cfg = json.loads((folder / hf.CONFIG).read_text())
        edit(cfg)
        raw = json.dumps(cfg).encode()
        (folder / hf.CONFIG).write_bytes(raw)
        manifest = json.loads((folder / hf.MANIFEST).read_text())
        manifest["files"][hf.CONFIG] = hashlib.sha256(raw).hexdigest()
        body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
        manifest["manifest_sha256"] = hashlib.sha256(hf._canonical(body)).hexdigest()
        (folder / hf.MANIFEST).write_text(json.dumps(manifest))
    return folder


@fault("artifacts", "save-ticket-remembers-the-init-spec-init-model-was-given")
def _(lab: Lab) -> None:
    folder = _hf_folder(lab)
    loaded = sltlab.load_ticket(folder)
    assert loaded._sltlab_init.seed == 3


@fault("artifacts", "a-hf-ticket-with-a-huge-width-is-refused-before-allocation")
def _(lab: Lab) -> None:
    import resource

    folder = _hf_folder(lab, lambda c: c.update(n_embd=2**22, n_head=2))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArtifactError, match="parameters"):
        sltlab.load_ticket(folder)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 512 * 1024  # KiB: far below 2^22 x vocab


@fault("artifacts", "a-hf-ticket-with-a-negative-size-is-one-error")
def _(lab: Lab) -> None:
    folder = _hf_folder(lab, lambda c: c.update(n_positions=-4))
    with pytest.raises(ArtifactError):
        sltlab.load_ticket(folder)


@fault("artifacts", "an-oversized-ticket-manifest-is-refused-unread")
def _(lab: Lab) -> None:
    from sltlab.tickets import hf

    folder = lab.path / "hf"
    folder.mkdir()
    with open(folder / hf.MANIFEST, "wb") as f:
        f.truncate(8 * 2**30)
    with pytest.raises(ArtifactError, match="more than"):
        sltlab.load_ticket(folder)


# ================================================================================ class 4 and 5: identity of data
def _glue_ids(data: Path) -> list[str]:
    from sltlab.tasks.glue_run import GlueRunConfig, glue_cells

    return [c.run_id for c in glue_cells([GlueRunConfig(task="stsb", method="dense", norm="none")], data)]


@fault("door", "fixed-data-is-new-data-for-glue-run-ids")
def _(lab: Lab) -> None:
    import shutil

    a, b = lab.path / "a", lab.path / "b"
    shutil.copytree(FIXTURES / "glue", a / "glue")
    shutil.copytree(FIXTURES / "glue", b / "glue")
    assert _glue_ids(a) == _glue_ids(b)  # the same bytes elsewhere: the same runs
    train = b / "glue" / "STS-B" / "train.tsv"
    train.write_text(train.read_text().replace("\t5.000\n", "\t4.000\n", 1))
    assert _glue_ids(a) != _glue_ids(b)


@fault("door", "runs-made-before-the-fingerprint-adopt-it-and-are-found-again")
def _(lab: Lab) -> None:
    from sltlab.tasks.glue_run import GlueRunConfig, glue_cells

    cfg = GlueRunConfig(task="sst2", method="dense", norm="none")
    store = lab.path / "s.db"
    with Store(store) as s:  # a run as 4330494 recorded it: its config without the data's fingerprint
        old = s.start("glue", cfg.resolved().to_dict(), cfg.seed)
        s.finish(old, {"main": 0.8})
        (s.artifact_dir(old) / "ticket.safetensors").write_bytes(b"its files")
    (new,) = [c.run_id for c in glue_cells([cfg], FIXTURES)]
    assert new != old
    code, out, _ = lab.cli("runs", "migrate", "--store", store, "--adopt-data", "--data-dir", FIXTURES)
    assert code == 0 and "1 glue/lm run(s)" in out
    with Store(store, readonly=True) as s:
        assert s.is_finished(new) and s.status(old) is None and s.get(new).metrics == {"main": 0.8}
        assert (s.artifact_path(new) / "ticket.safetensors").read_bytes() == b"its files"


@fault("door", "another-corpus-is-another-lm-run")
def _(lab: Lab) -> None:
    from sltlab.runs.config import from_dict
    from sltlab.tasks.lm_run import LMStudy, study_cells

    text = lab.path / "t.txt"
    text.write_text("to be or not to be\n" * 20)
    study = from_dict(LMStudy, {"dataset": str(text), "methods": ["dense"], "d_model": 16, "n_heads": 2,
                                "n_layers": 1, "seq_len": 8}, prefix="lm")
    before = [c.run_id for c in study_cells(study)]
    text.write_text("to be or not to be!\n" * 20)
    assert before != [c.run_id for c in study_cells(study)]


# =========================================================================== class 6: no hang, no traceback
@fault("hang", "a-locked-store-is-one-line-naming-it")
def _(lab: Lab) -> None:
    import sltlab.runs.store as store_mod

    store = lab.legacy_store()  # rollback journal: an exclusive lock keeps readers out too
    lab.monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, _, err = lab.cli("runs", "migrate", "--store", store)
        with pytest.raises(StoreError, match="locked"), Store(store) as s:
            s.start("approx", {"new": 1}, 0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 2 and "locked" in err and str(store) in err and len(err.strip().splitlines()) == 1


@fault("hang", "a-full-disk-is-one-line-naming-the-file")
def _(lab: Lab) -> None:
    import sltlab.runs.io as io

    real = io.os.fdopen

    def full(fd: int, *a: Any, **k: Any) -> Any:
        f = real(fd, *a, **k)

        class Full:
            def __enter__(self) -> Full:
                return self

            def __exit__(self, *exc: Any) -> None:
                f.close()

            def write(self, data: bytes) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

            def flush(self) -> None: ...

            def fileno(self) -> int:
                return f.fileno()

        return Full()

    lab.monkeypatch.setattr(io.os, "fdopen", full)
    code, _, err = lab.cli("runs", "export", "--store", lab.store(), "--csv", lab.path / "x.csv")
    assert code == 2 and "no space left" in err and "x.csv" in err and len(err.strip().splitlines()) == 1
    assert not [p for p in lab.path.iterdir() if p.name.startswith(".x.csv")]  # no temporary file left


@fault("hang", "sqlite-errors-are-one-line-naming-the-store")
def _(lab: Lab) -> None:
    with Store(lab.store()) as s:
        for text, words in (("database or disk is full", "no space left"), ("database is locked", "locked"),
                            ("attempt to write a readonly database", "cannot be written")):
            err = s._error(sqlite3.OperationalError(text), "write")
            assert words in str(err) and str(s.path) in str(err) and "\n" not in str(err)


@fault("hang", "a-port-that-never-answers-is-refused-in-bounded-time")
def _(lab: Lab) -> None:
    import socket

    from sltlab.runs.executor import _probe
    from sltlab.runs.tracking import check_tracking_uri

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    t0 = time.monotonic()
    try:
        with pytest.raises(ConfigError, match="--address"):
            _probe(f"127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(ConfigError, match="--mlflow"):
            lab.monkeypatch.setenv("SLTLAB_CONNECT_TIMEOUT", "0.5")
            check_tracking_uri(f"http://127.0.0.1:{port}", "--mlflow")
    finally:
        silent.close()
    assert time.monotonic() - t0 < 30  # a bound on a hang, not a speed figure: Ray/MLflow alone took minutes


@fault("hang", "threads-are-bounded-by-the-machine")
def _(lab: Lab) -> None:
    cores = os.cpu_count() or 1
    ExecOptions(executor="local", threads=cores).validate()
    for bad in (4 * cores + 1, 100_000):
        with pytest.raises(ConfigError, match="--threads"):
            ExecOptions(executor="local", threads=bad).validate()
    cfg = lab.path / "a.toml"  # the command line's --threads: at most the cores
    cfg.write_text('heads = [1]\nwidths = [16]\nvariants = ["none"]\nseeds = [0]\nn_train = 8\nn_test = 8\n')
    code, _, err = lab.cli("approx", cfg, "--threads", cores + 1, "--store", lab.path / "x.db")
    assert code == 2 and "--threads" in err and not (lab.path / "x.db").exists()
    with pytest.raises(ConfigError, match="--workers"):
        ExecOptions(executor="local", workers=100_000).validate()


# ============================================================= class 7: concurrent sweeps wait and summarise it all
def _foreign_claims(store: Store, cells: list, owner: str) -> None:
    for c in cells:
        assert store.claim(c.kind, dict(c.config), c.seed, owner)[1] == "claimed"


def _finish_later(path: Path, cells: list, delay: float) -> threading.Thread:
    def work() -> None:
        time.sleep(delay)
        with Store(path) as s:
            for c in cells:
                s.finish(c.run_id, {"value": 1.0, "by": "other"})

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def _other_owner() -> str:
    return f"{platform.node()}:{os.getppid()}"  # a live process that is not this one


@fault("concurrency", "a-sweep-waits-for-cells-a-live-sweep-runs-then-counts-them")
def _(lab: Lab) -> None:
    cells = toy_cells(4)
    with Store(lab.path / "s.db") as s:
        _foreign_claims(s, cells[:2], _other_owner())
        t = _finish_later(lab.path / "s.db", cells[:2], 0.6)
        rep = run_cells(cells, s, ExecOptions(executor="serial", progress=False, poll_s=0.1))
        t.join()
        assert rep.ok and sorted(rep.elsewhere) == sorted(c.run_id for c in cells[:2])
        assert sorted(rep.ran) == sorted(c.run_id for c in cells[2:]) and not rep.busy
        assert all(s.status(c.run_id) == "finished" for c in cells) and "finished by another sweep" in rep.summary()
        assert s.get(cells[0].run_id).metrics["by"] == "other"  # waited for, not run twice


@fault("concurrency", "no-wait-leaves-them-to-the-other-sweep")
def _(lab: Lab) -> None:
    cells = toy_cells(3)
    with Store(lab.path / "s.db") as s:
        _foreign_claims(s, cells[:1], _other_owner())
        rep = run_cells(cells, s, ExecOptions(executor="serial", progress=False, wait=False))
        assert rep.ok and rep.busy == [cells[0].run_id] and s.status(cells[0].run_id) == "running"
        assert "left to another sweep" in rep.summary()


@fault("concurrency", "a-waited-for-cell-whose-sweep-dies-is-run-here")
def _(lab: Lab) -> None:
    cells = toy_cells(2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    path = lab.path / "s.db"
    with Store(path) as s:
        _foreign_claims(s, cells[:1], _other_owner())

        def die() -> None:  # the other sweep is killed: its claim now names a process that is gone
            time.sleep(0.5)
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("UPDATE runs SET owner=? WHERE run_id=?", (f"{platform.node()}:{dead}", cells[0].run_id))
                db.commit()

        threading.Thread(target=die, daemon=True).start()
        rep = run_cells(cells, s, ExecOptions(executor="serial", progress=False, poll_s=0.1))
        assert rep.ok and sorted(rep.ran) == sorted(c.run_id for c in cells) and not rep.elsewhere


@fault("concurrency", "the-progress-bar-shows-the-cells-it-waits-for")
def _(lab: Lab) -> None:
    cells = toy_cells(2)
    with Store(lab.path / "s.db") as s:
        _foreign_claims(s, cells, _other_owner())
        t = _finish_later(lab.path / "s.db", cells, 0.5)
        lab.capsys.readouterr()
        run_cells(cells, s, ExecOptions(executor="serial", progress=True, poll_s=0.1))
        t.join()
    assert "waiting for 2 in another sweep" in lab.capsys.readouterr().err


TWO = """
name = "two"
heads = [1]
widths = [8, 16]
variants = ["none", "pre-ln"]
seeds = [0]
n_train = 32
n_test = 16
batch_size = 16
seq_len = 4
d_model = 8
store = "{db}"
out_dir = "{out}"
[search]
steps = 60
"""


@fault("concurrency", "two-cli-sweeps-on-one-store-both-exit-0-with-the-whole-study")
def _(lab: Lab) -> None:
    procs = []
    for i in range(2):
        cfg = lab.path / f"two{i}.toml"
        cfg.write_text(TWO.format(db=lab.path / "s.db", out=lab.path / f"out{i}"))
        procs.append(subprocess.Popen([sys.executable, "-m", "sltlab.cli", "approx", str(cfg), "--executor", "serial",
                                       "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONPATH": SRC}))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, (out, err)
        assert "4 cells:" in out and "FAILED" not in out
        # the fits cover the whole study (both variants, both widths), not only the cells this sweep ran
        assert "| none |" in out and "| pre-ln |" in out, out
    ran = sum(int(out.split("4 cells: ")[1].split(" ran")[0]) for out, _ in outs)
    assert ran == 4  # every cell ran once, in one of the two
    csvs = [(lab.path / f"out{i}" / "approx.csv").read_text().splitlines() for i in range(2)]
    assert len(csvs[0]) == len(csvs[1]) == 5


# ================================================================================== class 8: one schema for configs
@fault("schema", "a-field-added-to-a-config-is-checked-with-no-extra-code")
def _(lab: Lab) -> None:
    from dataclasses import dataclass as dc

    from sltlab.runs.config import from_dict

    @dc(frozen=True)
    class Later:
        widths: tuple[int, ...] = (8,)
        budget: int = 3
        rate: float = 0.5
        note: str = ""
        tags: tuple[str, ...] = ()

    assert from_dict(Later, {"widths": [4, 8], "budget": 0, "tags": []}).widths == (4, 8)
    for data, named in (({"widths": []}, "x.widths"), ({"widths": [0]}, "x.widths[0]"),
                        ({"widths": [2**20]}, "x.widths[0]"), ({"budget": -1}, "x.budget"),
                        ({"budget": 2**40}, "x.budget"), ({"budget": 2.5}, "x.budget"), ({"budget": "3"}, "x.budget"),
                        ({"budget": True}, "x.budget"), ({"rate": float("nan")}, "x.rate"), ({"rate": "0.1"}, "x.rate"),
                        ({"note": 3}, "x.note"), ({"tags": "ab"}, "x.tags")):
        with pytest.raises(ConfigError) as info:
            from_dict(Later, data, prefix="x")
        assert info.value.field == named, (data, str(info.value))


@fault("schema", "one-name-one-range-in-every-study")
def _(lab: Lab) -> None:
    from sltlab.runs.config import from_dict
    from sltlab.tasks.approx import ApproxStudy
    from sltlab.tasks.lm_run import LMStudy
    from sltlab.tasks.theory.config import WidthExp

    for cls, prefix in ((ApproxStudy, "study"), (LMStudy, "lm"), (WidthExp, "w")):
        with pytest.raises(ConfigError) as info:
            from_dict(cls, {"d_model": 2**17}, prefix=prefix)
        assert info.value.field == f"{prefix}.d_model" and "65536" in str(info.value)


@fault("schema", "run-ids-are-unchanged-by-the-schema")
def _(lab: Lab) -> None:
    from sltlab.runs.config import from_dict, load_toml
    from sltlab.tasks.approx import ApproxStudy, study_cells

    study = from_dict(ApproxStudy, load_toml(ROOT / "configs" / "approx_quick.toml"), prefix="study")
    ids = [c.run_id for c in study_cells(study)]
    # the quick study's cells (its lr grid's included) as the code before this change (main at 9ffb3ba) named them
    assert (len(ids), ids[0], ids[-1]) == QUICK_IDS, (len(ids), ids[0], ids[-1])


QUICK_IDS = (320, "approx-0fc2644ff475", "approx-b7a127ef2029")


# ============================================================================== class 9: wall clock is a timing
@fault("timings", "two-identical-lm-runs-have-identical-metrics")
def _(lab: Lab) -> None:
    from sltlab.runs.config import from_dict
    from sltlab.tasks.lm_run import LMStudy, run_cell

    text = lab.path / "t.txt"
    text.write_text("the king and the queen of masks " * 40)
    study = from_dict(LMStudy, {"dataset": str(text), "methods": ["edge-popup"], "d_model": 16, "n_heads": 2,
                                "n_layers": 1, "seq_len": 8, "batch_size": 4, "steps": 3, "warmup": 0,
                                "eval_bytes": 256, "eval_batch": 4}, prefix="lm")
    runs = [run_cell(study.cells()[0]) for _ in range(2)]
    assert runs[0][1] == runs[1][1] and "tokens_per_s" in runs[0][2] and "tokens_per_s" not in runs[0][1]


# ------------------------------------------------------------------------------------- the table, run row by row
@pytest.mark.parametrize("row", FAULTS, ids=[r[0] for r in FAULTS])
def test_fault(row, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    row[2](Lab(tmp_path, monkeypatch, capsys))
