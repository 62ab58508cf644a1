"""`sltlab report`: build the research report (HTML + Markdown + PNGs + JSON) from the results store.

Every section reads what the store holds; a partial or empty store gives a report that says what is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sltlab.errors import ConfigError

EPILOG = """examples:
  sltlab report                                       # runs/sltlab.db -> runs/report/
  sltlab report --store runs/sltlab.db --out runs/report
  sltlab report --also runs/glue_quick.db --also runs/peft_quick.db
  sltlab report --store runs/sltlab.db --data-dir ../shared/data --attention-runs 5
outputs: OUT/report.html (self-contained), OUT/report.md, OUT/figures/*.png, OUT/report.json
The stores are only read. A rebuild replaces only the files the previous build wrote (listed in
OUT/.sltlab-manifest.json): other files in OUT, your own figures included, are never touched, and a build stopped
part-way leaves the previous report whole.
"""


def _handler(args: argparse.Namespace) -> int:
    from sltlab.report import build_report

    if args.attention_runs < 1:
        raise ConfigError("--attention-runs", f"{args.attention_runs} must be at least 1", "an integer >= 1")
    if args.n_inputs < 1:
        raise ConfigError("--n-inputs", f"{args.n_inputs} must be at least 1", "an integer >= 1")
    from sltlab.report.build import PAGES
    from sltlab.runs.checks import check_output_dir, check_store_file
    from sltlab.runs.io import MANIFEST, refuse_special

    check_output_dir("--out", args.out, (*PAGES, MANIFEST))
    refuse_special("--out", Path(args.out) / "figures")
    check_store_file("--store", args.store)
    seen = [Path(args.store).resolve()]
    for extra in args.also:
        check_store_file("--also", extra)
        if Path(extra).resolve() in seen:
            what = "the --store itself" if Path(extra).resolve() == seen[0] else "given twice"
            raise ConfigError("--also", f"{extra} is {what}; its runs would count twice", "other stores")
        seen.append(Path(extra).resolve())
    log = (lambda _m: None) if args.quiet else print
    res = build_report(
        args.store,
        args.out,
        data_dir=args.data_dir,
        n_inputs=args.n_inputs,
        max_attention_runs=args.attention_runs,
        progress=not args.quiet,
        log=log,
        extra_stores=args.also,
    )
    print(f"report: {res.html} ({len(res.figures)} figures), {res.markdown}, {res.json}")
    concl = res.summary.get("conclusion", {})
    if concl:
        print(
            f"LayerNorm -> more consistent tickets: {concl.get('consistency')}; "
            f"less diverse tickets: {concl.get('diversity')}"
        )
    if res.missing:
        print("missing from the store: " + "; ".join(res.missing))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="build the HTML/Markdown research report from the store",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", default="runs/sltlab.db", help="results store (default: runs/sltlab.db)")
    p.add_argument("--also", action="append", default=[], metavar="STORE",
                   help="another store whose runs join the report (repeatable), e.g. runs/glue_quick.db; its "
                        "checkpoints must sit in the same runs folder")
    p.add_argument("--out", default="runs/report", help="output folder (default: runs/report)")
    p.add_argument("--data-dir", default=None, help="data root for GLUE dev sentences (else $SLTLAB_DATA, ...)")
    p.add_argument("--n-inputs", type=int, default=128, help="inputs per model for attention statistics")
    p.add_argument(
        "--attention-runs",
        type=int,
        default=3,
        help="runs (seeds) per setting and variant whose attention is analysed (default 3)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_handler)
