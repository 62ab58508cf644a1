"""`sltlab theory`: the theory's own experiments (Otsuka et al. 2025) with constructed tickets.

Each experiment is a section of the TOML config; every cell is a kind="theory" run in the store, so a rerun
skips finished cells; CSV and PNG files go to --out-dir (default runs/theory).
- width:     target MHA (d=16, H=2 by default): constructed vs searched tickets' error against source width,
             both laws fitted past the threshold, and the bound's shape eps(w) = H d^1.5 exp(-w / d) beside;
- threshold: the width the construction needs, against d and against the source's init scale;
- angular:   the angular-velocity task: trained single-head target, untrained B-block stacks (per block);
- seqlen:    the same against the sequence length T (the theory says the error does not grow with T);
- warmstart: gradient search started from the constructed ticket, against search from scratch.
"""

from __future__ import annotations

import argparse
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


def handle(args: argparse.Namespace) -> int:
    if args.experiment not in (*EXPERIMENTS, "all"):
        raise ConfigError("experiment", f"unknown experiment {args.experiment!r}", " | ".join((*EXPERIMENTS, "all")))
    cfg = load_config(args.config)
    out = check_output_dir("--out-dir", args.out_dir)
    names = EXPERIMENTS if args.experiment == "all" else (args.experiment,)
    with Store(args.store) as store:
        out.mkdir(parents=True, exist_ok=True)
        runner = Runner(store, progress=not args.quiet)
        for name in names:
            summary = RUNNERS[name](cfg, runner, out)
            _print_summary(name, summary)
            atomic_write_text(out / f"{name}_summary.txt", repr(summary) + "\n")
        print(
            f"{runner.ran} cells run ({runner.norm_warned} past the theory's norm assumption), {runner.done} "
            f"already in {args.store}; CSV and PNG in {out}/"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "theory",
        help="the SLT theory's experiments with constructed (subset-sum) tickets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  sltlab theory width --config configs/theory_quick.toml\n"
            "  sltlab theory threshold\n"
            "  sltlab theory angular --out-dir runs/theory\n"
            "  sltlab theory all --store runs/sltlab.db --quiet\n"
        ),
    )
    p.add_argument("experiment", choices=(*EXPERIMENTS, "all"), help="which experiment to run")
    p.add_argument("--config", default=None, help=f"TOML config (default {DEFAULT_CONFIG} when present)")
    p.add_argument("--store", default="runs/sltlab.db", help="results store (SQLite)")
    p.add_argument("--out-dir", default="runs/theory", help="where CSV and PNG files go")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handle)
