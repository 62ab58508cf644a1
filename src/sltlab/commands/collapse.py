"""`sltlab collapse CONFIG`: rank collapse across depth of random networks, their tickets and trained networks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sltlab.runs.store import RunRecord
    from sltlab.tasks.collapse import CollapseStudy

DESCRIPTION = """\
Do strong lottery tickets collapse toward rank one across depth like the random network they live in, and does
LayerNorm change it? (Dong, Cordonnier & Loukas 2021; Wu et al. 2024.)

For every cell (architecture x norm x attention shape x weight seed x source) sltlab builds a depth-L network from
the seed, finds or builds its ticket (sources: the random network itself, the subset-sum construction, an edge-popup
search, and the same architecture trained dense, all imitating one narrow random target), and measures after every
layer the collapse metrics of sltlab.analysis.collapse (Dong et al.'s residual ratio, Wu et al.'s mu absolute and
relative, effective rank, smallest singular value, mean |cosine|) and the error against the target. Attention
shapes: full / causal / sliding-window masks and logit temperatures, varied one at a time from the base; the search
and the training run at the base shape. Cells are stored in SQLite under a hash of their config, so a sweep resumes.

Afterwards it writes collapse.csv (every cell, every layer), mu_depth.png (mu against depth, log-log, a line per
source and norm), shapes.png, summary.md with the table and the study's claims (paired by weight seed, Holm over
the study's own claims; `sltlab report` puts them in the report's family) to the output folder.
"""

EPILOG = """\
examples:
  sltlab collapse configs/collapse_quick.toml                     # a few minutes on 2 cores
  sltlab collapse configs/collapse_study.toml --workers 1         # the documented study (docs/results/theory.md)
  sltlab collapse configs/collapse_quick.toml --norms none,pre-ln --seeds 0,1 --dry-run
  sltlab collapse configs/collapse_quick.toml --no-run            # redraw tables, figures and claims
"""


def register(sub: argparse._SubParsersAction) -> None:
    from sltlab.commands.common import COMMON_HELP, add_common

    p = sub.add_parser("collapse", help="rank collapse across depth: random networks, tickets, trained networks",
                       description=DESCRIPTION, epilog=COMMON_HELP + "\n" + EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "TOML file of CollapseStudy fields (see configs/collapse_quick.toml)", config_required=True)
    p.add_argument("--out", help="folder for the CSV, figures and summary (default: the config's `out_dir`)")
    p.add_argument("--norms", help="comma list overriding the norms, e.g. none,pre-ln")
    p.add_argument("--sources", help="comma list overriding the sources: random, constructed, searched, trained")
    p.add_argument("--no-run", action="store_true", help="summarise the cells already in the store; run nothing")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sltlab.commands.common import dry_run, load_config, parse_seeds
    from sltlab.runs.checks import check_output_dir
    from sltlab.runs.config import comma_list, from_dict
    from sltlab.runs.store import Store
    from sltlab.tasks.collapse import CollapseStudy, study_cells

    data = load_config(args)
    for key, value in (("norms", comma_list(args.norms)), ("sources", comma_list(args.sources)),
                       ("seeds", parse_seeds(args.seeds)), ("store", args.store), ("out_dir", args.out)):
        if value is not None:
            data[key] = value
    study = from_dict(CollapseStudy, data, prefix="study")
    cells = study_cells(study)
    if args.dry_run:
        return dry_run(cells, study.store)
    out = check_output_dir("--out" if args.out else "study.out_dir", study.out_dir)
    ok = True
    if not args.no_run:
        print(f"collapse '{study.name}': {len(cells)} cells -> {study.store}")
        from sltlab.commands.common import exec_options
        from sltlab.tasks.collapse import run_sweep

        opts = exec_options(args, study.threads)
        with Store(study.store) as store:
            report = run_sweep(study, store, opts)
        print(report.summary())
        ok = report.ok
        if report.diverged:
            print(f"note: {len(report.diverged)} search/training run(s) diverged (an overflowing network without a "
                  "norm); they are left out, and their seeds out of the claims that need them")
    ids = [c.run_id for c in cells]
    with Store(study.store) as store:
        records = [store.get(i) for i in ids if store.is_finished(i)]
    if not records:
        print("collapse: no finished cells to summarise")
        return 0 if ok else 1
    files = write_summary(study, records, out)
    for f in files:
        print(f"wrote {f}")
    return 0 if ok else 1


def write_summary(study: CollapseStudy, records: list[RunRecord], out: Path) -> list[Path]:
    """collapse.csv, mu_depth.png, shapes.png and summary.md (table and claims) in `out`."""
    from sltlab.analysis.claims import CLAIM_HEADERS, ClaimSet, fmt_claim_row
    from sltlab.report.blocks import Table
    from sltlab.runs.store import atomic_write_bytes, atomic_write_text
    from sltlab.tasks.collapse import (
        collapse_claims,
        mu_figure,
        record_rows,
        shapes_figure,
        summary_table,
        table_headers,
    )
    from sltlab.tasks.theory.output import write_csv

    out.mkdir(parents=True, exist_ok=True)
    rows = record_rows(records)
    long = []
    for r in rows:
        m = r["metrics"]
        for layer in range(r["depth"]):
            long.append({k: r[k] for k in ("arch", "norm", "mask", "temperature", "seed", "source")}
                        | {"layer": layer + 1, "error": m["layer_rel_error"][layer]}
                        | {k: m[k][layer] for k in ("res_l1linf", "mu", "mu_rel", "erank", "sigma_min", "abs_cos")}
                        | {"target_mu_rel": m["target_mu_rel"][layer]})
    files = [out / "collapse.csv", out / "mu_depth.png", out / "summary.md"]
    write_csv(files[0], long)
    atomic_write_bytes(files[1], mu_figure(rows))
    shapes = shapes_figure(rows)
    if shapes is not None:
        files.append(out / "shapes.png")
        atomic_write_bytes(files[-1], shapes)
    cs = ClaimSet()
    for c in collapse_claims(rows, study.claims):
        cs.add(c)
    cs.finalize()
    md = (f"# {study.name}: rank collapse across depth\n\n"
          + Table(table_headers(rows), summary_table(rows)).md()
          + "\n## Claims (paired by weight seed; Holm across this study's claims)\n\n"
          + Table(CLAIM_HEADERS, [fmt_claim_row(c) for c in cs.as_list()]).md())
    atomic_write_text(files[2], md)
    print(md)
    return files
