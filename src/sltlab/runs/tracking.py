"""MLflow bridge: every stored run as an MLflow run (params = flat config, metrics + curves as metric history,
tags = provenance, the run's files as artifacts). A local folder or a sqlite URI needs no server.

`export_mlflow(store, uri)` copies finished runs after the fact (`sltlab runs export --mlflow URI`); `make_tracker`
logs each run live from the sweep's driver (`--track mlflow:URI`). Both are idempotent: a run already in the
experiment (tag `sltlab.run_id`) and marked complete (tag `sltlab.complete`, set last) is not logged twice; one that
an interrupted export left half logged is deleted and logged again.

Every endpoint answers in bounded time or is one line naming the flag: `check_tracking_uri` probes an http(s)
tracker (TCP connect, then MLflow's /health) with a timeout before MLflow's client (which retries for minutes) is
made, and MLflow's own requests run without retries and with a timeout; a sqlite URI must name a file (not a folder,
not an sltlab store) in a folder that exists; MLflow's and alembic's log chatter is silenced.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sltlab.errors import ConfigError
from sltlab.runs.store import RunRecord, Store

TIMEOUT_S = 10.0  # one request to a tracking server ($SLTLAB_CONNECT_TIMEOUT overrides)
_QUIET = ("alembic", "mlflow", "sqlalchemy.engine", "urllib3.connectionpool")

EXPERIMENT = "sltlab"
COMPLETE = "sltlab.complete"  # set once every param, metric and artifact of a run is in
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def _import_mlflow(flag: str) -> Any:
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(flag, "MLflow is not installed", "pip install 'sltlab[mlflow]'") from None
    return MlflowClient


def check_tracking_uri(uri: str, flag: str) -> None:
    """Before MLflow is touched: an http(s) tracker answers within TIMEOUT_S; a sqlite URI names a file that can
    be an MLflow database; a folder can be made. One ConfigError line naming `flag` otherwise."""
    from sltlab.runs.executor import connect_timeout

    accepts = "a folder, sqlite:///path/mlflow.db, or an http(s) tracking server that answers"
    timeout = connect_timeout(TIMEOUT_S)
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise ConfigError(flag, f"{uri!r} names no host", accepts)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                pass
        except OSError as err:
            raise ConfigError(flag, f"no MLflow tracking server answers at {uri} ({err.strerror or err})",
                              accepts) from None
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
                reply.read(64)
        except urllib.error.HTTPError:
            pass  # it speaks HTTP; a server without /health is judged by MLflow itself
        except (urllib.error.URLError, OSError, ValueError) as err:
            why = getattr(err, "reason", err)
            raise ConfigError(flag, f"{uri} does not answer as an HTTP tracking server within {timeout:g} s "
                              f"({why})", accepts) from None
        return
    if uri.startswith("sqlite:"):
        path = uri.split("sqlite:///", 1)[-1] if uri.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(flag, f"{uri!r} names no file", "sqlite:///path/mlflow.db")
        p = Path(path)
        if p.is_dir():
            raise ConfigError(flag, f"{uri} names a folder, not a database file", "sqlite:///path/mlflow.db")
        if not p.parent.is_dir():
            raise ConfigError(flag, f"the folder of {uri} does not exist", "sqlite:///EXISTING_FOLDER/mlflow.db")
        if p.is_file():
            from sltlab.runs.store import APPLICATION_ID

            head = p.read_bytes()[:100] if p.stat().st_size else b""
            if head and not head.startswith(b"SQLite format 3\x00"):
                raise ConfigError(flag, f"{p} is not a SQLite database", "sqlite:///path/mlflow.db")
            if len(head) >= 72 and int.from_bytes(head[68:72], "big") == APPLICATION_ID:
                raise ConfigError(flag, f"{p} is an sltlab results store, not an MLflow database",
                                  "another file, e.g. sqlite:///runs/mlflow.db")
        return
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri):
        if not uri.startswith("file://"):
            raise ConfigError(flag, f"unsupported tracking URI {uri!r}", accepts)
        return
    from sltlab.runs.checks import check_output_dir

    check_output_dir(flag, uri)


def _quiet() -> None:
    """MLflow without retries for minutes and without migration chatter on a new database."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(TIMEOUT_S)))
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def tracking_uri(uri: str) -> str:
    """A folder becomes a file store (MLflow keeps it in maintenance mode, still fully readable); URIs pass."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri) or uri.startswith("sqlite:"):
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return Path(uri).resolve().as_uri()


def _key(k: str) -> str:
    return _KEY_BAD.sub("_", k)[:250]


def _flat(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj


class MlflowTracker:
    """Logs sltlab runs into one MLflow experiment."""

    def __init__(self, uri: str, experiment: str = EXPERIMENT, flag: str = "--mlflow"):
        client_cls = _import_mlflow(flag)
        check_tracking_uri(uri, flag)
        _quiet()
        self.uri = tracking_uri(uri)
        try:
            self.client = client_cls(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                artifacts = None
                if self.uri.startswith("sqlite:"):  # beside the database, not in the working directory
                    db = Path(self.uri.split("sqlite:///", 1)[-1])
                    artifacts = (db.parent / "mlartifacts").resolve().as_uri()
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
            else:
                self.experiment_id = exp.experiment_id
        except Exception as err:  # MLflow raises its own exception types by backend
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise ConfigError(flag, f"cannot open MLflow tracking store {uri!r}: {first}",
                              "a folder, sqlite:///path/mlflow.db, or an http(s) tracking server") from None

    def _existing(self, run_id: str) -> str | None:
        """The MLflow run that holds `run_id` completely; half-logged ones (an export stopped part-way) are
        deleted, so the run is logged again."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`sltlab.run_id` = '{run_id}'",
                                       max_results=100)
        done = None
        for r in runs:
            if r.data.tags.get(COMPLETE) == "1" and done is None:
                done = r.info.run_id
            elif r.data.tags.get(COMPLETE) != "1":
                self.client.delete_run(r.info.run_id)
        return done

    def log(self, rec: RunRecord, store: Store | None = None) -> str:
        """Log one run (once); returns the MLflow run id."""
        from mlflow.entities import Metric, Param, RunTag

        found = self._existing(rec.run_id)
        if found:
            return found
        tags = {"sltlab.run_id": rec.run_id, "sltlab.kind": rec.kind, "sltlab.status": rec.status,
                "sltlab.seed": str(rec.seed), "mlflow.runName": rec.run_id}
        for k, v in rec.provenance.items():
            tags[f"sltlab.{k}"] = str(v)
        if rec.error:
            tags["sltlab.error"] = rec.error[:4000]
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=rec.run_id,
                                     start_time=int(1000 * (rec.started or 0)) or None)
        mid = run.info.run_id
        params: dict[str, Any] = {}
        _flat("", rec.config, params)
        flat_metrics: dict[str, Any] = {}
        _flat("", rec.metrics, flat_metrics)
        _flat("timings", rec.timings, flat_metrics)
        ts = int(1000 * (rec.finished or rec.started or 0))
        metrics = [Metric(_key(k), float(v), ts, 0) for k, v in flat_metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))]
        for name, points in rec.curves.items():
            for point in points:
                step, value = int(point[0]), float(point[1])
                if math.isfinite(value):
                    metrics.append(Metric(_key(f"curve.{name}"), value, ts, step))
        plist = [Param(_key(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, max(len(plist), len(metrics), 1), 100):  # MLflow's batch limits
            self.client.log_batch(mid, metrics=metrics[i:i + 100], params=plist[i:i + 100], tags=[])
        self.client.log_batch(mid, tags=[RunTag("sltlab.n_params", str(len(plist)))])
        if store is not None:
            folder = store.artifact_path(rec.run_id)  # the id checked before it meets a path
            if folder.is_dir() and not folder.is_symlink() and any(folder.iterdir()):
                self.client.log_artifacts(mid, str(folder))
        status = "FINISHED" if rec.status in ("finished", "diverged") else "FAILED"
        self.client.set_terminated(mid, status=status, end_time=int(1000 * (rec.finished or 0)) or None)
        self.client.set_tag(mid, COMPLETE, "1")
        return mid


def check_track(spec: str) -> str:
    """The URI of `--track mlflow:URI` (MLflow importable), before any work starts."""
    kind, _, uri = spec.partition(":")
    if kind != "mlflow" or not uri:
        raise ConfigError("--track", f"unknown tracker {spec!r}", "mlflow:URI, e.g. mlflow:runs/mlflow or "
                          "mlflow:sqlite:///runs/mlflow.db")
    _import_mlflow("--track")
    return uri


def make_tracker(spec: str) -> MlflowTracker:
    """`--track mlflow:URI`."""
    return MlflowTracker(check_track(spec), flag="--track")


def open_tracker(uri: str, flag: str) -> None:
    """What a command checks at the door: MLflow importable and the tracker reachable (nothing is created)."""
    _import_mlflow(flag)
    check_tracking_uri(uri, flag)


def export_mlflow(store: Store, uri: str, kind: str | None = None, experiment: str = EXPERIMENT) -> int:
    """Every finished (and diverged) run of `kind` into MLflow; returns how many runs the experiment now has
    from this store."""
    tracker = MlflowTracker(uri, experiment)
    records = store.runs(kind, "finished") + store.runs(kind, "diverged")
    for rec in records:
        tracker.log(rec, store)
    return len(records)
