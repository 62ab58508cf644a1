"""`sltlab theory`: the theory's own experiments (Otsuka et al. 2025) with constructed tickets.

Each experiment is a section of the TOML config; every cell is a kind="theory" run in the store, so a rerun
skips finished cells; CSV and PNG files go to --out-dir (default runs/theory).
- width:     target MHA (d=16, H=2 by default): constructed vs searched tickets' error against source width,
             both laws fitted past the threshold, and the bound's shape eps(w) = H d^1.5 exp(-w / d) beside;
- threshold: the width the construction needs, against d and against the source's init scale;
- angular:   the angular-velocity task: trained single-head target, untrained B-block stacks (per block);
- seqlen:    the same against the sequence length T (the theory says the error does not grow with T);
- warmstart: gradient search started from the constructed ticket, against search from scratch;
- blocks:    whole blocks (attention + ReLU MLP + residuals) with none / pre-LN / post-LN / RMSNorm: constructed
             tickets in the theory's paired source, the error after every block against width and depth, the
             error bound of sltlab.tickets.bound beside the measured error, and edge-popup tickets at the same
             widths (default, density-matched, warm-started from the construction, longer schedule).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from sltlab.errors import ConfigError
from sltlab.runs.checks import check_output_dir
from sltlab.runs.store import Store, atomic_write_text
from sltlab.tasks.theory import EXPERIMENTS, RUNNERS
from sltlab.tasks.theory.angular import run_angular
from sltlab.tasks.theory.config import (
    DEFAULT_CONFIG,
    AngularExp,
    SeqlenExp,
    TheoryConfig,
    ThresholdExp,
    WarmstartExp,
    WidthExp,
    load_config,
)
from sltlab.tasks.theory.curves import (
    REACH_TOL,
    bound_width,
    fit_means_past,
    fit_past,
    mean_by,
    merged_entries,
    threshold_of,
)
from sltlab.tasks.theory.output import save_png, write_csv
from sltlab.tasks.theory.runner import Runner
from sltlab.tasks.theory.seqlen import run_seqlen
from sltlab.tasks.theory.threshold import run_threshold
from sltlab.tasks.theory.warmstart import run_warmstart
from sltlab.tasks.theory.width import run_width

# The experiments live in sltlab.tasks.theory; their names stay importable from here, where callers found them.
__all__ = [
    "DEFAULT_CONFIG",
    "EXPERIMENTS",
    "REACH_TOL",
    "RUNNERS",
    "AngularExp",
    "Runner",
    "SeqlenExp",
    "TheoryConfig",
    "ThresholdExp",
    "WarmstartExp",
    "WidthExp",
    "bound_width",
    "fit_means_past",
    "fit_past",
    "handle",
    "load_config",
    "mean_by",
    "merged_entries",
    "register",
    "run_angular",
    "run_seqlen",
    "run_threshold",
    "run_warmstart",
    "run_width",
    "save_png",
    "threshold_of",
    "write_csv",
]


def _print_summary(name: str, summary: dict[str, Any]) -> None:
    print(f"== {name}")
    for key, val in summary.items():
        if isinstance(val, dict):
            parts = []
            for k, v in val.items():
                if isinstance(v, float):
                    parts.append(f"{k}={v:.4g}")
                elif isinstance(v, int | str | bool):
                    parts.append(f"{k}={v}")
            print(f"  {key}: " + ", ".join(parts) if parts else f"  {key}: {val}")
        else:
            print(f"  {key}: {val}")


def check_sizes(cfg: TheoryConfig, experiment: str) -> None:
    """The widest attention each chosen experiment builds is within the parameter budget
    (sltlab.tickets.spec.check_size): widths and d_model are bounded one by one by the schema, their product here."""
    from sltlab.nn.transformer import ModelConfig
    from sltlab.tickets.spec import ModelSpec, check_size

    def mha(d: int, heads: int, width: int, blocks: int = 1) -> ModelSpec:
        return ModelSpec("stack" if blocks > 1 else "mha",
                         ModelConfig(d_model=d, n_heads=1, n_layers=blocks, n_k=width, n_v=width, mlp=False))

    w, t, a, q, m = cfg.width, cfg.threshold, cfg.angular, cfg.seqlen, cfg.warmstart
    shapes = {
        "width": ("theory.width.widths", mha(w.d_model, w.heads, w.heads * max(w.widths + w.search_widths))),
        "threshold": ("theory.threshold.per_coordinate",
                      mha(max(t.d_models), t.heads, t.heads * max(t.d_models) * max(t.per_coordinate))),
        # the angular-velocity task's attention works on 2-dimensional inputs
        "angular": ("theory.angular.widths", mha(2, 1, max(a.widths + a.stack_widths), max(a.blocks))),
        "seqlen": ("theory.seqlen.widths", mha(2, 1, max(q.widths), q.blocks)),
        "warmstart": ("theory.warmstart.widths", mha(m.d_model, m.heads, m.heads * max(m.widths))),
    }
    for name, (field, spec) in shapes.items():
        if experiment in (name, "all"):
            check_size(spec, field)


def handle(args: argparse.Namespace) -> int:
    import contextlib
    import tempfile

    from sltlab.commands.common import check_devices, config_path, dry_run, parse_seeds, run_and_report
    from sltlab.tasks.theory.runner import Collector

    if args.experiment not in (*EXPERIMENTS, "all"):
        raise ConfigError("experiment", f"unknown experiment {args.experiment!r}", " | ".join((*EXPERIMENTS, "all")))
    where = [f"{k}={v}" for k, v in (("device", args.device), ("precision", args.precision)) if v is not None]
    cfg = load_config(config_path(args), sets=[*args.sets, *where], seeds=parse_seeds(args.seeds))
    check_sizes(cfg, args.experiment)
    if not args.dry_run:  # before the first pass, which already costs a moment per experiment
        check_output_dir("--out-dir", args.out_dir)
        check_devices(cfg.device, "theory.device", args)  # the searched cells run there; constructions on the CPU
    store_path = Path(args.store or "runs/sltlab.db")
    names = EXPERIMENTS if args.experiment == "all" else (args.experiment,)
    # First pass: every experiment names its cells (placeholders stand in for missing metrics).
    collector = Collector(Store(store_path, readonly=True) if store_path.exists() else None)
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            with contextlib.suppress(Exception):  # summaries of placeholders may not compute; cells are noted
                RUNNERS[name](cfg, collector, Path(scratch))
    if collector.store is not None:
        collector.store.close()
    if args.dry_run:
        return dry_run(collector.cells, store_path)
    out = Path(args.out_dir)
    report = run_and_report(collector.cells, store_path, args)
    out.mkdir(parents=True, exist_ok=True)
    if not report.ok:
        print("theory: summaries need every cell; rerun the command to retry the failed ones")
        return 1
    with Store(store_path) as store:
        runner = Runner(store, progress=not args.quiet)
        for name in names:
            summary = RUNNERS[name](cfg, runner, out)
            _print_summary(name, summary)
            atomic_write_text(out / f"{name}_summary.txt", repr(summary) + "\n")
        print(
            f"{len(report.ran)} cells run, {len(report.skipped)} already in {store_path} "
            f"({runner.norm_warned} past the theory's norm assumption); CSV and PNG in {out}/"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from sltlab.commands.common import COMMON_HELP, add_common

    p = sub.add_parser(
        "theory",
        help="the SLT theory's experiments with constructed (subset-sum) tickets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=COMMON_HELP + (
            "\nexamples:\n"
            "  sltlab theory width configs/theory_quick.toml\n"
            "  sltlab theory threshold --seeds 0,1\n"
            "  sltlab theory angular --out-dir runs/theory --set angular.train_steps=200\n"
            "  sltlab theory all --store runs/sltlab.db --quiet --executor ray\n"
            "  sltlab theory blocks configs/theory_blocks.toml --workers 1     # whole blocks, every norm\n"
            "  sltlab theory blocks configs/theory_quick.toml --set blocks.widths=[64,128] --dry-run\n"
            "--set takes SECTION.FIELD (width, threshold, angular, seqlen, warmstart, blocks, construct);\n"
            "--seeds sets the seeds of every experiment.\n"
        ),
    )
    p.add_argument("experiment", choices=(*EXPERIMENTS, "all"), help="which experiment to run")
    add_common(p, f"TOML config (default {DEFAULT_CONFIG} when present)")
    p.add_argument("--out-dir", default="runs/theory", help="where CSV and PNG files go")
    p.set_defaults(func=handle)
