"""`sltlab lm [CONFIG]`: a supermask byte-level language model beside its dense twin, in bits per byte."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Train a byte-level causal transformer (vocabulary 256) on raw text, densely or as a strong lottery ticket
inside its random weights, and score it in validation bits per byte.

Methods: dense | edge-popup | annealed, each optionally with '+scales' (the parameter-golf recipe: learned
per-block attention/MLP residual scales, per-head mask scales and a pre-logit scale). Data: tinyshakespeare
(90/10 split), wikitext-2 (official train/valid) under the data folder, or the path of any text file.

Every method x seed is a run in the store (kind 'lm'), keyed by a hash of its config, so a repeated command
skips finished cells. Each run also writes ticket.safetensors and the compact artifact ticket.slt; its size
is reported as artifact_bytes (export it anywhere with `sltlab export RUN_ID -o t.slt`).
"""

EPILOG = """\
examples:
  sltlab lm configs/lm_quick.toml
  sltlab lm configs/lm_quick.toml --methods annealed+scales --seeds 0,1,2
  sltlab lm --dataset wikitext-2 --methods dense,edge-popup --set steps=200 --set n_layers=2
  sltlab lm --dataset my_corpus.txt --set norm=pre-rms --set keep=0.3
  sltlab lm configs/lm_full.toml --store runs/lm_full.db --device cuda     # GPU-sized; see docs/results/lm.md
  sltlab lm configs/lm_fold.toml --set mask_sharing=shared   # one random block at every depth; docs/results/fold.md
"""

# Shorthands kept from the first release; every LMStudy field is also reachable as --set FIELD=VALUE.
_FLAGS = (
    ("dataset", str),
    ("norm", str),
    ("steps", int),
    ("d_model", int),
    ("n_heads", int),
    ("n_layers", int),
    ("seq_len", int),
    ("batch_size", int),
    ("keep", float),
    ("lr_dense", float),
    ("lr_edge_popup", float),
    ("lr_annealed", float),
    ("eval_bytes", int),
    ("floats", str),
    ("fold", int),
    ("mask_sharing", str),
)


def register(sub: argparse._SubParsersAction) -> None:
    from sltlab.commands.common import COMMON_HELP, add_common

    p = sub.add_parser(
        "lm",
        help="supermask byte-level LM vs dense, in validation bits per byte",
        description=DESCRIPTION,
        epilog=COMMON_HELP + "\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p, "TOML file of LMStudy fields (default: built-in quick settings)")
    p.add_argument("--methods", help="comma list, e.g. dense,edge-popup,annealed+scales")
    for name, tp in _FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=tp, help=argparse.SUPPRESS if name not in
                       ("dataset",) else "a data set name (tinyshakespeare, wikitext-2) or a text file")
    p.add_argument("--data-dir", help="data folder holding tinyshakespeare/ and wikitext-2/")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sltlab.commands.common import check_devices, dry_run, load_config, parse_names, parse_seeds, run_and_report
    from sltlab.runs.config import from_dict
    from sltlab.runs.store import Store
    from sltlab.tasks.lm_run import LMStudy, study_cells

    data = load_config(args)
    overrides = {name: getattr(args, name) for name, _ in _FLAGS}
    overrides.update(methods=parse_names(args.methods, "--methods"), seeds=parse_seeds(args.seeds), store=args.store,
                     device=args.device, precision=args.precision)
    data.update({k: v for k, v in overrides.items() if v is not None})
    study = from_dict(LMStudy, data, prefix="lm")
    cells = study_cells(study, args.data_dir)
    if args.dry_run:
        return dry_run(cells, study.store)
    from sltlab.tickets.spec import check_size

    for run in study.cells():  # the largest model (dense may have its own width) within the budget
        check_size(run.spec(), "lm.d_model")
    check_devices(study.device, "lm.device", args)
    # The text is read here, before the store is opened and a run started: a missing or too short file is the
    # input's fault, not a failed run's (reading it twice costs well under a second for these corpora).
    from sltlab.tasks.text import check_length, load_corpus

    check_length(load_corpus(study.dataset, args.data_dir, study.val_fraction), study.seq_len)
    print(
        f"lm '{study.name}': {study.dataset}, d={study.d_model} layers={study.n_layers} "
        f"heads={study.n_heads} "
        f"seq={study.seq_len} batch={study.batch_size} steps={study.steps}, {len(cells)} cells "
        f"-> {study.store}"
    )
    report = run_and_report(cells, study.store, args)
    with Store(study.store, readonly=True) as store:
        records = [r for r in (store.get(i) for i in report.run_ids) if r.status == "finished"]
    print("\n| method | seed | val bpb | tokens/s | density | artifact bytes | train s | run |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        m, c = r.metrics, r.config
        name = c["method"] + ("+scales" if c.get("scales") else "")
        speed = r.timings.get("tokens_per_s", m.get("tokens_per_s", 0))  # runs made before it was a timing
        print(
            f"| {name} | {c['seed']} | {m['val_bpb']:.4f} | {speed:.0f} | {m['density']:.3f} | "
            f"{m.get('artifact_bytes', 0):,} | {r.timings.get('train_s', 0):.0f} | {r.run_id} |"
        )
    return 0 if report.ok else 1
