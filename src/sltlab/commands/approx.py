"""`sltlab approx CONFIG`: the attention-approximation study (Otsuka et al. 2025) with and without LayerNorm."""

from __future__ import annotations

import argparse

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
  sltlab approx configs/approx_quick.toml                          # on every core of this machine
  sltlab approx configs/approx_quick.toml --variants none,pre-ln --widths 16,64 --seeds 0
  sltlab approx configs/approx_quick.toml --set search.lr=0.1 --set keep=0.3 --dry-run
  sltlab approx configs/approx_full.toml --store runs/full.db --out runs/approx_full
  sltlab approx configs/approx_full.toml --executor ray --address auto   # on the Ray cluster you joined
  sltlab approx configs/approx_variants.toml     # edge-popup vs multicoated vs partially frozen sources
"""


#: What the study writes to its output folder (sltlab.analysis.approx_summary), checked before the sweep.
OUTPUTS = ("approx.csv", "fits.json", "fits.md", "error_vs_width.png", "per_block.png")


def register(sub: argparse._SubParsersAction) -> None:
    from sltlab.commands.common import COMMON_HELP, add_common

    p = sub.add_parser("approx", help="attention-approximation study: error vs source width, with/without LN",
                       description=DESCRIPTION, epilog=COMMON_HELP + "\n" + EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "TOML file of ApproxStudy fields (see configs/approx_quick.toml)", config_required=True)
    p.add_argument("--out", help="folder for CSV, fits and plots (default: the config's `out_dir`)")
    p.add_argument("--variants", help="comma list overriding the norm variants, e.g. none,pre-ln")
    p.add_argument("--methods", help="comma list: edge-popup, annealed, multicoated, partially-frozen, construct")
    p.add_argument("--widths", help="comma list overriding the source widths, e.g. 16,64")
    p.add_argument("--heads", help="comma list overriding the head counts")
    p.set_defaults(func=main)


def _dry_run_grid(study, grid, cells, spec) -> int:  # type: ignore[no-untyped-def]
    """--dry-run of a study with an lr grid: the grid cells, and the final cells once their grid has finished."""
    from pathlib import Path

    from sltlab.runs.store import Store
    from sltlab.tasks.selection import dry_plan

    p = Path(study.store)
    if p.exists():  # read-only: a dry run creates, migrates and switches nothing
        with Store(p, readonly=True) as store:
            rows, waiting = dry_plan(grid, cells, spec, store)
    else:
        rows, waiting = dry_plan(grid, cells, spec, None)
    counts: dict[str, int] = {}
    for cell, status in rows:
        counts[status] = counts.get(status, 0) + 1
        print(f"{cell.run_id}  {status:11s}  {cell.label}")
    print(f"{len(rows)} cells in {p}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
          + (f"; {waiting} more once their lr grid has finished" if waiting else ""))
    return 0


def _print_sizing(study) -> None:  # type: ignore[no-untyped-def]
    """The power sizing of the study's declared claims (--dry-run): weight seeds needed per claim, from the pilot sd
    the config records, at the strictest Holm step of the family the report will correct over."""
    from sltlab.analysis.claims import sizing

    plan = study.claims
    arms = [v for v in (plan.compare or study.variants) if v != plan.reference]
    per_plan = len(plan.claim) * len(arms) * (len(study.widths) if plan.per_width else 1) * len(study.heads)
    m = plan.holm_family or 2 * per_plan
    rows = sizing(plan, m, len(study.seeds))
    print(f"claims plan: {len(plan.claim)} claims x {len(arms)} arms vs {plan.reference!r} x "
          f"{len(study.widths) if plan.per_width else 1} width(s) = {per_plan} tests (+ their TOSTs); sized at "
          f"alpha / {m} = {plan.alpha / m:.2g} (Holm's strictest step), power {plan.power:g}; "
          f"{len(study.seeds)} weight seeds planned")
    for r in rows:
        if "n_difference" not in r:
            print(f"  {r['claim']:28s} no margin or pilot sd declared: not sized")
            continue
        ok = "ok" if len(study.seeds) >= max(r["n_difference"], r["n_equivalence"]) else "UNDERPOWERED"
        print(f"  {r['claim']:28s} margin {r['margin']:<8.3g} pilot sd {r['sd']:<8.3g} needs n = {r['n_difference']} "
              f"(difference) / {r['n_equivalence']} (equivalence); at n = {r['n_planned']}: MDE "
              f"{r['mde_planned']:.3g}, TOST power {r['tost_power_planned']:.2f}  [{ok}]  ({r['sd_source']})")


def check_model_size(study: object) -> None:
    """The widest source the sweep builds fits the parameter budget (sltlab.tickets.spec.check_size), before any
    cell starts: a typo in widths or d_model is one line, not a crashed worker per cell."""
    from sltlab.tickets.spec import check_size

    runs = study.cells()  # type: ignore[attr-defined]
    widest = max(runs, key=lambda r: (r.width * r.n_heads, r.fold is None))
    check_size(widest.source_spec(), "study.widths")


def _ints(text: str | None, flag: str) -> list[int] | None:
    from sltlab.commands.common import parse_seeds
    from sltlab.runs.config import FIELD_RULES

    lo, hi = FIELD_RULES["widths" if flag == "--widths" else "heads"]
    return parse_seeds(text, flag, lo, hi)


def main(args: argparse.Namespace) -> int:
    from sltlab.analysis.approx_summary import summarise
    from sltlab.commands.common import check_devices, dry_run, exec_options, load_config, parse_names, parse_seeds
    from sltlab.runs.checks import check_output_dir
    from sltlab.runs.config import from_dict
    from sltlab.runs.store import Store
    from sltlab.tasks.approx import KIND, ApproxStudy, grid_cells, grid_spec, run_sweep, study_cells

    data = load_config(args)
    for key, value in (("variants", parse_names(args.variants, "--variants")),
                       ("methods", parse_names(args.methods, "--methods")),
                       ("widths", _ints(args.widths, "--widths")), ("heads", _ints(args.heads, "--heads")),
                       ("seeds", parse_seeds(args.seeds)), ("store", args.store), ("out_dir", args.out)):
        if value is not None:
            data[key] = value
    for key, value in (("device", args.device), ("precision", args.precision)):
        if value is not None:
            data[key] = value
    study = from_dict(ApproxStudy, data, prefix="study")
    cells = study_cells(study)
    if args.dry_run:
        if study.claims is not None:
            _print_sizing(study)
        if not study.lr_grid:
            return dry_run(cells, study.store)
        return _dry_run_grid(study, grid_cells(study), cells, grid_spec(study))
    check_output_dir("--out" if args.out else "study.out_dir", study.out_dir, OUTPUTS)  # before the sweep
    # the construction runs on the CPU whatever the device; every other method needs the device here
    if any(m != "construct" for m in study.methods):
        check_devices(study.device, "study.device", args)
    check_model_size(study)
    opts = exec_options(args, study.threads)
    n_final = len(cells) // max(1, len(study.lr_grid))
    grid_note = (f" (+ an lr grid of {len(study.lr_grid)} on {study.select_seeds} weight seed(s), chosen on held-out "
                 "inputs)" if study.lr_grid else "")
    print(f"approx '{study.name}': {n_final} cells{grid_note} -> {study.store}")
    with Store(study.store) as store:
        report = run_sweep(study, store, opts)
    print(report.summary())
    with Store(study.store, readonly=True) as store:
        records = [r for r in (store.get(i) for i in report.run_ids) if r.status == "finished"]
    assert all(r.kind == KIND for r in records)
    if records:
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
    if report.diverged:
        print(f"note: {len(report.diverged)} diverged run(s) are left out of the fits and tables")
    return 0 if report.ok else 1
