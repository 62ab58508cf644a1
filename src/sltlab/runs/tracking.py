"""MLflow bridge: every stored run as an MLflow run (params = flat config, metrics + curves as metric history,
tags = provenance, the run's files as artifacts). A local folder or a sqlite URI needs no server.

`export_mlflow(store, uri)` copies finished runs after the fact (`sltlab runs export --mlflow URI`); `make_tracker`
logs each run live from the sweep's driver (`--track mlflow:URI`). Both are idempotent: a run already in the
experiment (tag `sltlab.run_id`) is not logged twice.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from sltlab.errors import ConfigError
from sltlab.runs.store import RunRecord, Store

EXPERIMENT = "sltlab"
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def _import_mlflow(flag: str) -> Any:
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(flag, "MLflow is not installed", "pip install 'sltlab[mlflow]'") from None
    return MlflowClient


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
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`sltlab.run_id` = '{run_id}'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

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
            folder = store.path.parent / "artifacts" / rec.run_id
            if folder.is_dir() and any(folder.iterdir()):
                self.client.log_artifacts(mid, str(folder))
        status = "FINISHED" if rec.status in ("finished", "diverged") else "FAILED"
        self.client.set_terminated(mid, status=status, end_time=int(1000 * (rec.finished or 0)) or None)
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


def export_mlflow(store: Store, uri: str, kind: str | None = None, experiment: str = EXPERIMENT) -> int:
    """Every finished (and diverged) run of `kind` into MLflow; returns how many runs the experiment now has
    from this store."""
    tracker = MlflowTracker(uri, experiment)
    records = store.runs(kind, "finished") + store.runs(kind, "diverged")
    for rec in records:
        tracker.log(rec, store)
    return len(records)
