"""`sltlab runs list|show|export|migrate`: look into the results store (read-only), or bring an older one up to
date."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

EPILOG = """\
examples:
  sltlab runs list                         # finished runs of every kind
  sltlab runs list --kind approx --status all
  sltlab runs show approx-3f2a             # one run: config, metrics, timings (id prefixes are fine)
  sltlab runs export --kind glue --csv glue.csv
  sltlab runs export --kind approx --csv - | head      # CSV on standard output
  sltlab runs migrate --store runs/old.db  # add what this sltlab records to a store an older one made
  sltlab runs migrate --store runs/glue.db --adopt-data   # glue/lm runs made before run ids named their data
  sltlab runs export --mlflow runs/mlflow                # every finished run into an MLflow file store
  sltlab runs export --kind approx --mlflow sqlite:///runs/mlflow.db
                                           # then: mlflow ui --backend-store-uri sqlite:///runs/mlflow.db
"""


# What `--status` and `--kind` accept; anything else would silently list nothing.
STATUSES = ("finished", "running", "failed", "diverged", "interrupted", "all")
KINDS = ("approx", "glue", "lm", "peft", "peft-fisher", "theory")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list, show or export the runs in the store",
                       description="Look into the SQLite results store (one row per run, keyed by config hash).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["list", "show", "export", "migrate"])
    p.add_argument("run_id", nargs="?", help="for show: a run id or a unique prefix")
    p.add_argument("--store", default="runs/sltlab.db", help="SQLite store (default runs/sltlab.db)")
    p.add_argument("--kind", help=f"only runs of this kind: {' | '.join(KINDS)}")
    p.add_argument("--status", default="finished", help=f"{' | '.join(STATUSES)} (default finished)")
    p.add_argument("--csv", help="for export: write this CSV file (default or -: standard output)")
    p.add_argument("--adopt-data", action="store_true",
                   help="for migrate: give glue and lm runs made before run ids carried the data's fingerprint the "
                        "fingerprint of the data as it is now (so a sweep finds them instead of running them again)")
    p.add_argument("--data-dir", help="for migrate --adopt-data: the data folder (default: $SLTLAB_DATA, ./data, "
                   "../shared/data)")
    p.add_argument("--mlflow", metavar="URI", help="for export: an MLflow tracking store (a folder or "
                   "sqlite:///file.db; no server needed): params = config, metrics + curves, tags = provenance, "
                   "the run's files as artifacts")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sltlab.errors import ConfigError
    from sltlab.runs.checks import check_output_file, check_store_file
    from sltlab.runs.store import Store

    if args.status not in STATUSES:
        raise ConfigError("--status", f"unknown status {args.status!r}", " | ".join(STATUSES))
    if args.kind is not None and args.kind not in KINDS:
        raise ConfigError("--kind", f"unknown kind {args.kind!r}", " | ".join(KINDS))
    if args.csv is not None:
        if args.action != "export":
            raise ConfigError("--csv", f"given with `runs {args.action}`", "sltlab runs export --csv FILE")
        check_output_file("--csv", args.csv, stdout_ok=True)
    if args.mlflow is not None:
        if args.action != "export":
            raise ConfigError("--mlflow", f"given with `runs {args.action}`", "sltlab runs export --mlflow URI")
        from sltlab.runs.tracking import open_tracker

        open_tracker(args.mlflow, "--mlflow")
    if args.adopt_data and args.action != "migrate":
        raise ConfigError("--adopt-data", f"given with `runs {args.action}`", "sltlab runs migrate --adopt-data")
    check_store_file("--store", args.store)
    if args.action == "migrate":
        with Store(args.store, readonly=True) as store:
            needed = store.needs_migration
        if needed:
            Store(args.store).close()  # opening for writing migrates, under one write lock
        print(f"{args.store}: " + ("migrated to this sltlab's schema" if needed else "already up to date"))
        if args.adopt_data:
            with Store(args.store) as store:
                moved, kept = adopt_data(store, args.data_dir)
            print(f"{moved} glue/lm run(s) now carry the fingerprint of the data as it is now"
                  + (f"; {kept} left as they were (a run with the new id exists)" if kept else ""))
        return 0
    status = None if args.status == "all" else args.status
    with Store(args.store, readonly=True) as store:
        try:
            return _act(args, store, status)
        finally:
            note = store.corrupt_note()
            if note:
                print(f"sltlab: warning: {note}", file=sys.stderr)


def adopt_data(store: Any, data_dir: str | None) -> tuple[int, int]:
    """Runs of glue and lm made before run ids carried the data's fingerprint get it, computed from the data as it
    is now (the user vouches it is the data they were made from), and the id it hashes to; their files move with
    them. Returns (runs moved, runs left because their new id is taken)."""
    from sltlab.paths import fingerprint
    from sltlab.tasks.glue import split_files
    from sltlab.tasks.text import corpus_files

    prints: dict[tuple[str, str], str] = {}
    moved = kept = 0
    for rec in store.runs("glue", None) + store.runs("lm", None):
        c = rec.config
        if "data" in c or (rec.kind == "glue" and c.get("source", "local") != "local"):
            continue
        key = (rec.kind, str(c.get("task") if rec.kind == "glue" else c.get("dataset")))
        if key not in prints:
            files = split_files(key[1], data_dir) if rec.kind == "glue" else corpus_files(key[1], data_dir)
            prints[key] = fingerprint(files)
        if store.rekey(rec.run_id, {**c, "data": prints[key]}) is None:
            kept += 1
        else:
            moved += 1
    return moved, kept


def _act(args: argparse.Namespace, store: Any, status: str | None) -> int:
    from sltlab.analysis.approx_summary import records_csv
    from sltlab.errors import ConfigError
    from sltlab.runs.io import STDOUT, emit

    if args.action == "show":
        if not args.run_id:
            raise ConfigError("run_id", "missing", "a run id or prefix: sltlab runs show RUN_ID")
        rec = store.get(args.run_id)
        print(json.dumps({"run_id": rec.run_id, "kind": rec.kind, "status": rec.status, "seed": rec.seed,
                          "config": rec.config, "metrics": rec.metrics, "timings": rec.timings,
                          "error": rec.error, "code_version": rec.code_version,
                          "provenance": rec.provenance, "attempts": rec.attempts, "owner": rec.owner,
                          "curves": {k: f"{len(v)} points" for k, v in rec.curves.items()}}, indent=2))
        return 0
    if args.action == "export" and args.mlflow:
        from sltlab.runs.tracking import export_mlflow

        n = export_mlflow(store, args.mlflow, args.kind)
        print(f"exported {n} runs to MLflow at {args.mlflow} (experiment 'sltlab')")
        return 0
    records = store.runs(args.kind, status)
    if args.action == "export":
        text = records_csv(records) if records else ""
        if args.csv and args.csv != STDOUT:
            emit(args.csv, text)
            print(f"wrote {len(records)} runs to {args.csv}")
        else:
            sys.stdout.write(text)
        return 0
    if not records:
        print(f"no {args.status} runs" + (f" of kind {args.kind}" if args.kind else "") + f" in {args.store}")
        return 0
    print(f"{'run id':<24} {'status':<9} {'started (UTC)':<17} summary")
    for r in records:
        when = datetime.fromtimestamp(r.started, UTC).strftime("%Y-%m-%d %H:%M") if r.started else "-"
        keys = [k for k in ("task", "variant", "method", "norm", "width", "seed") if k in r.config]
        summary = " ".join(f"{k}={r.config[k]}" for k in keys)
        main_metric = next((f"{k}={r.metrics[k]:.4g}" for k in ("rel_error", "main", "val_bpb")
                            if isinstance(r.metrics.get(k), int | float)), "")
        print(f"{r.run_id:<24} {r.status:<9} {when:<17} {summary} {main_metric}")
    return 0
