"""The grammar every study command shares (approx, theory, glue, peft, lm):

    sltlab STUDY [CONFIG] [--set KEY=VALUE ...] [--seeds 0,1,2] [--executor serial|local|ray] [--workers N]
                 [--address ADDR] [--store PATH] [--dry-run] [--quiet] [--device D] [--precision P]

plus each study's own flags. Parsing here; running is `sltlab.runs.executor.run_cells`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sltlab.errors import ConfigError
from sltlab.runs.config import MAX_SEED, apply_sets, load_toml

COMMON_HELP = """\
common options (every study command):
  CONFIG                    a TOML file of the study's settings (optional where the study has defaults)
  --set KEY=VALUE           override one setting (dotted for tables: --set search.lr=0.1); repeatable;
                            VALUE is read as TOML (0.1, true, [8, 16], "text"), else as a string
  --seeds 0,1,2             the seeds to run (a comma list)
  --executor E              serial | local (default: a process pool on this machine) | ray
  --workers N               local: worker processes (default: the cores); ray: concurrent cells
  --threads N               torch threads per cell (default 1; results do not depend on it per executor)
  --retries N               re-runs of a cell whose worker died (default 1)
  --address ADDR            ray: no address = a private local Ray on 127.0.0.1; 'auto' = the cluster this machine
                            joined with `ray start`; ray://HOST:10001 = a remote cluster
  --store PATH              the SQLite results store (only the driver writes it; results come back from workers)
  --device D / --precision P  auto | cpu | cuda | cuda:N, and fp32 | bf16 | fp16
  --track mlflow:URI        log every finished run to MLflow while the sweep runs
  --dry-run                 list the cells and which are already finished; run nothing, write nothing
  --no-wait                 leave cells another sweep on the same store is running to it (default: wait for
                            them, shown in the progress bar, then summarise the whole study)
  --quiet                   no progress bar
Everything checkable is checked before anything is written: a bad value, a missing or malformed data file or a
device this machine lacks is one line (exit 2), and no store or output folder is created.
"""


def add_common(p: argparse.ArgumentParser, config_help: str | None = "TOML file of the study's settings",
               config_required: bool = False) -> None:
    """The shared flags. Defaults are None so that 'not given' never overrides a config value. config_help None:
    the command reads CONFIG from positionals of its own (and sets args.config)."""
    if config_help is not None:
        p.add_argument("config", nargs=None if config_required else "?", help=config_help)
    p.add_argument("--config", dest="config_opt", metavar="CONFIG", help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (dotted keys for tables); repeatable")
    p.add_argument("--seeds", help="comma list of seeds, e.g. 0,1,2")
    p.add_argument("--executor", default="local", help="serial | local (default) | ray")
    p.add_argument("--workers", type=int, help="local: processes (default: cores); ray: concurrent cells")
    p.add_argument("--threads", type=int, help="torch threads per cell (default 1)")
    p.add_argument("--retries", type=int, default=1, help="re-runs of a cell whose worker died (default 1)")
    p.add_argument("--address", help="ray: 'auto', ray://HOST:10001; none = a private local Ray on 127.0.0.1")
    p.add_argument("--store", help="SQLite results store (default: the config's, else runs/sltlab.db)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's, else cpu)")
    p.add_argument("--precision", help="fp32 | bf16 | fp16 (default: the config's, else fp32)")
    p.add_argument("--track", help="mlflow:URI: log finished runs to MLflow live")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their status; run nothing")
    p.add_argument("--no-wait", action="store_true",
                   help="leave cells running in another sweep on this store to it instead of waiting for them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_path(args: argparse.Namespace) -> str | None:
    if args.config and args.config_opt and args.config != args.config_opt:
        raise ConfigError("CONFIG", f"given twice ({args.config} and --config {args.config_opt})", "one of them")
    return args.config or args.config_opt


def parse_seeds(text: str | None, flag: str = "--seeds", lo: int = 0, hi: int = MAX_SEED) -> list[int] | None:
    """A comma list of integers in [lo, hi] (seeds by default; --widths and --heads use their own bounds)."""
    if text is None:
        return None
    out = []
    for tok in text.replace(" ", ",").split(","):
        if not tok:
            continue
        # int() would also read "1_0", "١" (Arabic-Indic one) and "+3"; a seed is written in ASCII digits
        if not tok.lstrip("-").isascii() or not tok.lstrip("-").isdigit():
            raise ConfigError(flag, f"{tok!r} is not an integer", "a comma list such as 0,1,2")
        value = int(tok)
        if not lo <= value <= hi:
            raise ConfigError(flag, f"{value} is out of range", f"integers in [{lo}, {hi}]")
        out.append(value)
    if not out:
        raise ConfigError(flag, "is empty", "a comma list such as 0,1,2")
    return out


def parse_names(text: str | None, flag: str) -> list[str] | None:
    """A comma list of names; `--variants ,` (nothing in it) is an error, not an empty sweep."""
    from sltlab.runs.config import comma_list

    names = comma_list(text)
    if names is not None and not names:
        raise ConfigError(flag, f"{text!r} names nothing", "a comma list of names, e.g. none,pre-ln")
    return names


def load_config(args: argparse.Namespace, allowed_top: set[str] | None = None) -> dict[str, Any]:
    """CONFIG (if any) with --set applied."""
    path = config_path(args)
    data = load_toml(path) if path else {}
    return apply_sets(data, args.sets, allowed_top)


def exec_options(args: argparse.Namespace, default_threads: int = 1) -> Any:
    import os

    from sltlab.runs.executor import ExecOptions

    cores = os.cpu_count() or 1
    if args.threads is not None and args.executor != "ray" and not 1 <= args.threads <= cores:
        raise ConfigError("--threads", f"{args.threads} threads per cell on a machine with {cores} cores",
                          f"an integer in [1, {cores}] (default 1)")
    opts = ExecOptions(
        executor=args.executor, workers=args.workers,
        threads=default_threads if args.threads is None else args.threads,
        retries=args.retries, address=args.address, progress=not args.quiet,
        track=args.track, wait=not getattr(args, "no_wait", False),
    )
    opts.validate()
    if opts.executor == "ray" and opts.address and opts.address != "auto":
        from sltlab.runs.executor import _probe

        _probe(opts.address)  # before any store or folder is made
    if args.track:
        from sltlab.runs.tracking import check_track, open_tracker

        open_tracker(check_track(args.track), "--track")  # reachable now, not after the first cell finished
    return opts


def check_devices(names: Any, field: str, args: argparse.Namespace) -> None:
    """Every device the cells ask for exists here (CUDA on a CPU-only torch is one line, exit 2, nothing written).
    Cells sent to a Ray cluster are checked against the cluster's GPUs when it is joined, not against this
    machine."""
    from sltlab.runs.device import resolve_device

    if args.executor == "ray" and args.address:
        return
    for name in sorted({str(n) for n in ([names] if isinstance(names, str) else names)}):
        resolve_device(name, "--device" if args.device else field)


def dry_run(cells: list[Any], store_path: str | Path) -> int:
    """Print each cell's run id, status and label; create nothing."""
    from sltlab.runs.executor import plan
    from sltlab.runs.store import Store

    p = Path(store_path)
    if p.exists():  # read-only: a dry run creates, migrates and switches nothing
        with Store(p, readonly=True) as store:
            rows = plan(cells, store)
    else:
        rows = [(c, "new") for c in cells]
    counts: dict[str, int] = {}
    for cell, status in rows:
        counts[status] = counts.get(status, 0) + 1
        print(f"{cell.run_id}  {status:11s}  {cell.label}")
    print(f"{len(rows)} cells in {p}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


def run_and_report(cells: list[Any], store_path: str | Path, args: argparse.Namespace,
                   default_threads: int = 1) -> Any:
    """Run the cells with the command line's executor options; print the summary. Returns the SweepReport."""
    from sltlab.runs.executor import make_executor, run_cells
    from sltlab.runs.store import Store

    opts = exec_options(args, default_threads)
    check_devices([c.device for c in cells], "device", args)
    # The executor first: joining a Ray cluster (and checking it has the GPUs the cells ask for) can fail, and
    # then no store has been created.
    ex = make_executor(opts, cells)
    try:
        with Store(store_path) as store:
            report = run_cells(cells, store, opts, executor=ex)
    finally:
        ex.close()
    print(report.summary())
    return report


def check_glue_splits(tasks: Any, data_dir: str | None) -> list[str]:
    """Read every local split the GLUE tasks' cells use (train and the dev splits) once, before the store is opened:
    a missing file, a bad byte, a header-only file or a malformed row or label is one line naming the file and line,
    not a failure found hours into the sweep. Returns the files read."""
    from sltlab.tasks.glue import get_task, glue_root, load_split

    read = []
    for name in sorted({get_task(t).name for t in tasks}):
        info = get_task(name)
        for split in ("train", *info.dev_splits):
            load_split(info.name, split, data_dir)
            read.append(str(glue_root(data_dir) / info.dir_name / f"{split}.tsv"))
    return read
