"""`sltlab approx CONFIG`: the attention-approximation study (Otsuka et al. 2025) with and without LayerNorm."""

from __future__ import annotations

import argparse
import dataclasses

DESCRIPTION = """\
Does a wider random multi-head attention contain a strong lottery ticket that imitates a target attention, and how
does the error fall with the source's width, with and without LayerNorm?

For every cell of the sweep (heads x norm variant x method x width x seed x score seed) sltlab draws a target and a
wider random source from the seed, finds the source's mask (edge-popup, multicoated or partially-frozen edge-popup,
or annealed search on the output MSE, or the theory's subset-sum construction), and measures the relative output
error on held-out random inputs. Cells are stored in SQLite under a hash of their config, so an interrupted sweep
resumes. After the sweep it writes approx.csv, fits.md/json (exponential and power-law fits of error vs width per
variant) and error_vs_width.png to the output folder, and prints the fits.

Norm variants: none, pre-ln, post-ln, pre-rms, post-rms, with '+affine' for a learned gain/bias
(ln-integrated = pre-ln+affine: masks and the LayerNorm's gain and bias are learned, nothing else).
"""

EPILOG = """\
examples:
  sltlab approx configs/approx_quick.toml
  sltlab approx configs/approx_quick.toml --variants none pre-ln --widths 16 64 --seeds 0
  sltlab approx configs/approx_full.toml --store runs/full.db --out runs/approx_full
  sltlab approx configs/approx_variants.toml     # edge-popup vs multicoated vs partially frozen sources
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("approx", help="attention-approximation study: error vs source width, with/without LN",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="TOML file of ApproxStudy fields (see configs/approx_quick.toml)")
    p.add_argument("--store", help="SQLite store (default: the config's `store`, else runs/sltlab.db)")
    p.add_argument("--out", help="folder for CSV, fits and plots (default: the config's `out_dir`)")
    p.add_argument("--variants", nargs="+", help="override the config's norm variants")
    p.add_argument("--methods", nargs="+",
                   help="override the methods: edge-popup annealed multicoated partially-frozen construct")
    p.add_argument("--widths", nargs="+", type=int, help="override the source widths")
    p.add_argument("--heads", nargs="+", type=int, help="override the head counts")
    p.add_argument("--seeds", nargs="+", type=int, help="override the weight seeds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sltlab.analysis.approx_summary import summarise
    from sltlab.runs.checks import check_output_dir
    from sltlab.runs.store import Store
    from sltlab.tasks.approx import KIND, load_study, run_study

    study = load_study(args.config)
    overrides = {k: tuple(v) for k, v in
                 (("variants", args.variants), ("methods", args.methods), ("widths", args.widths),
                  ("heads", args.heads), ("seeds", args.seeds)) if v}
    if args.store:
        overrides["store"] = args.store
    if args.out:
        overrides["out_dir"] = args.out
    study = dataclasses.replace(study, **overrides)
    check_output_dir("--out" if args.out else "study.out_dir", study.out_dir)  # before the sweep, not after it
    cells = study.cells()
    print(f"approx '{study.name}': {len(cells)} cells -> {study.store}")
    ids = run_study(study, progress=not args.quiet)
    with Store(study.store) as store:
        records = [store.get(i) for i in ids]
    assert all(r.kind == KIND for r in records)
    title = (f"{study.name}: {study.module}, d={study.d_model}, keep={study.keep}, scale={study.scale}, "
             f"{len(study.seeds)}x{len(study.score_seeds)} seeds")
    summary = summarise(records, study.out_dir, title)
    print(summary["markdown"])
    for f in summary["files"]:
        print(f"wrote {f}")
    falling = [r for r in summary["fits"] if not r["falls"]]
    if falling:
        names = ", ".join(f"H={r['heads']} {r['variant']} ({r['method']})" for r in falling)
        print(f"note: the error does not fall with width for: {names}")
    return 0
