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
  sltlab lm configs/lm_quick.toml --methods annealed+scales --seeds 0 1 2
  sltlab lm --dataset wikitext-2 --methods dense edge-popup --steps 200 --n-layers 2
  sltlab lm --dataset my_corpus.txt --norm pre-rms --keep 0.3
  sltlab lm configs/lm_full.toml --store runs/lm_full.db     # GPU-sized; see docs/results/lm.md
  sltlab lm configs/lm_fold.toml --mask-sharing shared      # one random block at every depth; docs/results/fold.md
"""

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
    ("device", str),
    ("fold", int),
    ("mask_sharing", str),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lm",
        help="supermask byte-level LM vs dense, in validation bits per byte",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="TOML file of LMStudy fields (default: built-in quick settings)")
    p.add_argument("--methods", nargs="+", help="e.g. dense edge-popup annealed+scales")
    p.add_argument("--seeds", nargs="+", type=int, help="weight/score seeds")
    for name, tp in _FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=tp, help=f"override the config's {name}")
    p.add_argument("--data-dir", help="data folder holding tinyshakespeare/ and wikitext-2/")
    p.add_argument("--store", help="SQLite store (default: the config's store, else runs/sltlab.db)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from sltlab.runs.store import Store
    from sltlab.tasks.lm_run import load_study, run_study

    overrides = {name: getattr(args, name) for name, _ in _FLAGS}
    overrides.update(methods=args.methods, seeds=args.seeds, store=args.store)
    study = load_study(args.config or "", overrides)
    print(
        f"lm '{study.name}': {study.dataset}, d={study.d_model} layers={study.n_layers} "
        f"heads={study.n_heads} "
        f"seq={study.seq_len} batch={study.batch_size} steps={study.steps}, {len(study.cells())} cells "
        f"-> {study.store}"
    )
    ids = run_study(study, args.data_dir, progress=not args.quiet)
    with Store(study.store) as store:
        records = [store.get(i) for i in ids]
    print("\n| method | seed | val bpb | tokens/s | density | artifact bytes | train s | run |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        m, c = r.metrics, r.config
        name = c["method"] + ("+scales" if c.get("scales") else "")
        print(
            f"| {name} | {c['seed']} | {m['val_bpb']:.4f} | {m['tokens_per_s']:.0f} | {m['density']:.3f} | "
            f"{m.get('artifact_bytes', 0):,} | {r.timings.get('train_s', 0):.0f} | {r.run_id} |"
        )
    return 0
