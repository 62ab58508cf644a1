"""`sltlab glue`: find a ticket (or train the dense / IMP reference) for GLUE tasks, one store run per
cell."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import torch

from sltlab.errors import ConfigError, DataError
from sltlab.runs.config import comma_list, load_toml
from sltlab.runs.store import Store
from sltlab.tasks.glue import get_task, glue_root, load_split
from sltlab.tasks.glue_run import METHODS, QUICK, GlueRunConfig, GlueSweepConfig, run_sweep
from sltlab.tasks.tokenize import load_pretrained

EPILOG = """\
examples:
  sltlab glue --task sst2 --method edge-popup --norm pre-ln --seeds 3 --quick
  sltlab glue --task rte,mrpc --method dense,imp --norm none,pre-ln --quick
  sltlab glue --config configs/glue_quick.toml      # the CPU-scale sweep behind docs/results/glue.md
  sltlab glue --config configs/glue_quick.toml --task cola --set steps=100
  sltlab glue-table                                  # mean ± std over seeds, Markdown + CSV

Runs already finished in the store are skipped, so an interrupted sweep resumes where it stopped.
Methods: dense (all weights trained), edge-popup (mask only), ln-integrated (mask + LayerNorm gain/bias),
annealed (annealed straight-through mask), imp (iterative magnitude pruning with rewinding).
Norms: none, pre-ln, post-ln, pre-rms, post-rms (append +affine to train the gain/bias in dense runs).
"""



def _parse_set(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is read as TOML (numbers, true/false, "strings"), else taken as a bare
    string."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set", f"{item!r} is not KEY=VALUE", "e.g. --set steps=200 --set keep=0.3")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def build_sweep(args: argparse.Namespace) -> GlueSweepConfig:
    """The sweep from --config (if any), then --quick, the lists given on the command line and --set."""
    data: dict[str, Any] = {}
    if args.config:
        raw = load_toml(args.config)
        data = dict(raw.get("sweep", raw))
    run = dict(data.get("run", {}))
    if args.quick:
        run = {**QUICK, **run}
    run.update(_parse_set(args.set or []))
    data["run"] = run
    if args.task:
        data["tasks"] = comma_list(args.task)
    if args.method:
        data["methods"] = comma_list(args.method)
    if args.norm:
        data["norms"] = comma_list(args.norm)
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError("--seeds", f"{args.seeds} must be at least 1", "a positive integer")
        data["seeds"] = list(range(args.seed_offset, args.seed_offset + args.seeds))
    if "tasks" not in data:
        raise ConfigError("--task", "no task given", "--task sst2 (comma-separated list) or --config FILE")
    return GlueSweepConfig.from_dict(data)


def check_data(cells: list[GlueRunConfig], data_dir: str | None) -> None:
    """Read every local split the sweep will use once, before the store is opened: a missing file, a bad byte or a
    malformed row is then one error naming the file and line, not a failure found hours into the sweep. (Reading is
    a few seconds even for MNLI; the cells' tokenisation and training are what cost.)"""
    for name in sorted({c.tokenizer for c in cells if Path(c.tokenizer).suffix == ".json"}):
        # a tokenizer.json given with --set tokenizer=...: parsed now, not per cell (and a missing one is not looked
        # up on the Hugging Face hub as a model name)
        if not Path(name).is_file():
            raise DataError(f"tokenizer file {name} does not exist (set by `tokenizer`)")
        load_pretrained(name)
    seen = set()
    for c in cells:
        if c.source != "local" or c.task in seen:
            continue
        seen.add(c.task)
        info = get_task(c.task)
        for split in ("train", *info.dev_splits):
            load_split(info.name, split, data_dir)


def handler(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads", f"{args.threads} must be at least 1", "an integer >= 1, or omit it")
        torch.set_num_threads(args.threads)
    sweep = build_sweep(args)
    cells = sweep.cells()
    if args.dry_run:
        for c in cells:
            print(f"{c.task} {c.method} {c.norm} seed {c.seed}")
        print(f"{len(cells)} cells")
        return 0
    if not any(c.source == "hf" for c in cells):
        glue_root(args.data_dir)  # a missing --data-dir / $SLTLAB_DATA is one error, not one per cell
    check_data(cells, args.data_dir)
    with Store(args.store) as store:
        out = run_sweep(sweep, store, args.data_dir, progress=not args.quiet)
    print(
        f"glue: {len(out['ran'])} ran, {len(out['skipped'])} already finished, {len(out['failed'])} failed "
        f"(store {args.store}; `sltlab glue-table --store {args.store}` makes the table)"
    )
    return 1 if out["failed"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "glue",
        help="GLUE tickets: dense, edge-popup, ln-integrated, annealed and IMP, per task x norm x seed",
        description="Find a strong lottery ticket for GLUE tasks inside a random transformer, with or\n"
        "without LayerNorm, or train the dense / IMP reference of the same shape; score each with the\n"
        "task's official metric on its dev set. Every (task, method, norm, seed) cell is one store run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--task", help="task(s), comma-separated: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli"
    )
    p.add_argument("--method", help=f"method(s), comma-separated: {', '.join(METHODS)}")
    p.add_argument("--norm", help="norm(s), comma-separated: none, pre-ln, post-ln, pre-rms, post-rms")
    p.add_argument("--seeds", type=int, help="number of seeds (0 .. N-1, shifted by --seed-offset)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed (default 0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU-scale settings: d=128, 2 layers, 4 heads, seq 64, 400 steps, SST-2 train subsample 20k",
    )
    p.add_argument("--config", help="a sweep TOML (configs/glue_quick.toml, configs/glue_full.toml)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a run setting, e.g. --set steps=200 --set keep=0.3 (repeatable)",
    )
    p.add_argument("--data-dir", help="folder holding glue/ (default: $SLTLAB_DATA, ./data, ../shared/data)")
    p.add_argument("--store", default="runs/sltlab.db", help="results store (default runs/sltlab.db)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)
