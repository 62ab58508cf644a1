"""`sltlab glue`: find a ticket (or train the dense / IMP reference) for GLUE tasks, one store run per
cell."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sltlab.errors import ConfigError, DataError
from sltlab.runs.config import load_toml, table
from sltlab.tasks.glue import glue_root
from sltlab.tasks.glue_run import METHODS, QUICK, GlueRunConfig, GlueSweepConfig, glue_cells
from sltlab.tasks.tokenize import load_pretrained

EPILOG = """\
examples:
  sltlab glue --task sst2 --method edge-popup --norm pre-ln --seeds 0,1,2 --quick
  sltlab glue --task rte,mrpc --method dense,imp --norm none,pre-ln --quick
  sltlab glue configs/glue_quick.toml               # the CPU-scale sweep behind docs/results/glue.md
  sltlab glue configs/glue_quick.toml --task cola --set steps=100 --dry-run
  sltlab glue configs/glue_full.toml --executor ray --address auto --device cuda
  sltlab glue-table                                  # mean ± std over seeds, Markdown + CSV

Runs already finished in the store are skipped, so an interrupted sweep resumes where it stopped.
--set KEY=VALUE sets a run setting (steps, keep, lr, ...); sweep-level keys (tasks, methods, norms, seeds,
score_seeds, lr_grid ...) and dotted per-task / per-method settings (--set method.dense.lr=1e-3) work too.
Seeds are weight seeds (the random network); score_seeds (mask scores, batch order) are nested in each. With
lr_grid (per norm), every masked cell's lr is chosen on held-out training rows (run.holdout), never on dev:
  sltlab glue configs/glue_sst2_norms.toml --dry-run     # SST-2 x none/pre-ln/post-ln, lr per norm, 4 x 2 seeds
Methods: dense (all weights trained), edge-popup (mask only), ln-integrated (mask + LayerNorm gain/bias),
annealed (annealed straight-through mask), imp (iterative magnitude pruning with rewinding).
Norms: none, pre-ln, post-ln, pre-rms, post-rms (append +affine to train the gain/bias in dense runs).
"""

SWEEP_KEYS = {"tasks", "methods", "norms", "seeds", "score_seeds", "run", "method", "task", "lr_grid",
              "affine_lr_grid", "select_on", "select_seeds", "study", "claims"}


def build_sweep(args: argparse.Namespace) -> GlueSweepConfig:
    """The sweep from CONFIG (if any), then --quick, the lists given on the command line and --set."""
    from sltlab.commands.common import apply_sets, config_path, parse_names, parse_seeds

    data: dict[str, Any] = {}
    path = config_path(args)
    if path:
        raw = load_toml(path)
        data = dict(table(raw, "sweep", "sweep")) if "sweep" in raw else raw
    for key in ("method", "task"):  # per-method / per-task tables of settings
        for name in table(data, key, f"sweep.{key}"):
            table(data[key], name, f"sweep.{key}.{name}")
    run = dict(table(data, "run", "sweep.run"))
    if args.quick:
        run = {**QUICK, **run}
    data["run"] = run
    sweep_sets = [s for s in args.sets if s.partition("=")[0].split(".")[0] in SWEEP_KEYS]
    run_sets = [s for s in args.sets if s not in sweep_sets]
    apply_sets(data, sweep_sets)
    apply_sets(data["run"], run_sets)
    for key, value in (("device", args.device), ("precision", args.precision)):
        if value is not None:
            data["run"][key] = value
    for flag, key, value in (("--task", "tasks", args.task), ("--method", "methods", args.method),
                             ("--norm", "norms", args.norm)):
        names = parse_names(value, flag)
        if names is not None:
            data[key] = names
    seeds = parse_seeds(args.seeds)
    if seeds is not None:
        data["seeds"] = seeds
    if "tasks" not in data:
        raise ConfigError("--task", "no task given", "--task sst2 (comma-separated list) or a CONFIG file")
    return GlueSweepConfig.from_dict(data)


def check_data(cells: list[GlueRunConfig], data_dir: str | None) -> None:
    """Read every local split the sweep will use once, before the store is opened: a missing file, a bad byte, a
    header-only file or a malformed row or label is then one error naming the file and line, not a failure found
    hours into the sweep. (Reading is a few seconds even for MNLI; the cells' tokenisation and training are what
    cost.) A tokenizer the cells name is loaded now too, from local files only: sltlab downloads nothing."""
    from sltlab.commands.common import check_glue_splits

    for name in sorted({c.tokenizer for c in cells if c.tokenizer}):
        check_tokenizer(name)
    check_glue_splits(sorted({c.task for c in cells if c.source == "local"}), data_dir)


def check_model_sizes(cfgs: list[GlueRunConfig]) -> None:
    """Every distinct model shape within the parameter budget (sltlab.tickets.spec.check_size), before any cell."""
    from sltlab.tasks.glue import get_task
    from sltlab.tasks.glue_run import model_spec
    from sltlab.tickets.spec import check_size

    seen = set()
    for cfg in cfgs:
        key = (cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.d_ff, cfg.max_len, cfg.vocab_size, cfg.task, cfg.fold)
        if key not in seen:
            seen.add(key)
            check_size(model_spec(cfg, cfg.vocab_size, get_task(cfg.task).n_outputs), "run.d_model")


def check_tokenizer(name: str) -> None:
    """A tokenizer.json file, a local tokenizer folder, or a Hugging Face name already in the local cache."""
    p = Path(name).expanduser()
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise DataError(f"tokenizer file {name} does not exist (set by `tokenizer`)")
        load_pretrained(str(p))
        return
    if p.is_dir():
        load_pretrained(str(p))
        return
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, no such name, a broken cache: all mean "not here"
        raise DataError(f"tokenizer {name!r} is neither a tokenizer.json file nor a local folder, and no cached "
                        "Hugging Face tokenizer has that name; sltlab downloads nothing: save it locally (e.g. "
                        "AutoTokenizer.from_pretrained(NAME).save_pretrained(DIR)) and set tokenizer = DIR") from None


def handler(args: argparse.Namespace) -> int:
    from sltlab.commands.common import check_devices, dry_run, exec_options
    from sltlab.runs.store import Store
    from sltlab.tasks.glue_run import run_study

    sweep = build_sweep(args)
    store = args.store or "runs/sltlab.db"
    cells = glue_cells(sweep.cells(), args.data_dir)
    if args.dry_run:
        if not sweep.has_grid:
            return dry_run(cells, store)
        return _dry_run_grid(sweep, cells, store, args.data_dir)
    if not any(c.arg.cfg.source == "hf" for c in cells):
        glue_root(args.data_dir)  # a missing --data-dir / $SLTLAB_DATA is one error, not one per cell
    check_data([c.arg.cfg for c in cells], args.data_dir)
    check_devices([c.arg.cfg.device for c in cells], "run.device", args)
    check_model_sizes([c.arg.cfg for c in cells])
    opts = exec_options(args)
    with Store(store) as st:
        report = run_study(sweep, st, opts, args.data_dir)
    print(report.summary())
    print(f"(store {store}; `sltlab glue-table --store {store}` makes the table)")
    return 0 if report.ok else 1


def _dry_run_grid(sweep: GlueSweepConfig, cells: list[Any], store: str, data_dir: str | None) -> int:
    """--dry-run of a sweep with an lr grid: its grid cells, and the rest once their grid has finished."""
    from sltlab.runs.store import Store
    from sltlab.tasks.selection import dry_plan

    grid = glue_cells(sweep.grid_cells(), data_dir)
    if Path(store).exists():  # read-only: a dry run creates, migrates and switches nothing
        with Store(store, readonly=True) as st:
            rows, waiting = dry_plan(grid, cells, sweep.grid_spec(), st)
    else:
        rows, waiting = dry_plan(grid, cells, sweep.grid_spec(), None)
    counts: dict[str, int] = {}
    for cell, status in rows:
        counts[status] = counts.get(status, 0) + 1
        print(f"{cell.run_id}  {status:11s}  {cell.label}")
    print(f"{len(rows)} cells in {store}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
          + (f"; about {waiting} more once their lr grid has finished (chosen on held-out training rows)"
             if waiting else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from sltlab.commands.common import COMMON_HELP, add_common

    p = sub.add_parser(
        "glue",
        help="GLUE tickets: dense, edge-popup, ln-integrated, annealed and IMP, per task x norm x seed",
        description="Find a strong lottery ticket for GLUE tasks inside a random transformer, with or\n"
        "without LayerNorm, or train the dense / IMP reference of the same shape; score each with the\n"
        "task's official metric on its dev set. Every (task, method, norm, seed) cell is one store run.",
        epilog=COMMON_HELP + "\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p, "a sweep TOML (configs/glue_quick.toml, configs/glue_full.toml); optional with --task")
    p.add_argument(
        "--task", help="task(s), comma-separated: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli"
    )
    p.add_argument("--method", help=f"method(s), comma-separated: {', '.join(METHODS)}")
    p.add_argument("--norm", help="norm(s), comma-separated: none, pre-ln, post-ln, pre-rms, post-rms")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU-scale settings: d=128, 2 layers, 4 heads, seq 64, 400 steps, SST-2 train subsample 20k",
    )
    p.add_argument("--data-dir", help="folder holding glue/ (default: $SLTLAB_DATA, ./data, ../shared/data)")
    p.set_defaults(func=handler)
