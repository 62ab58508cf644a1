"""`sltlab lm [CONFIG]`: a supermask byte-level language model beside its dense twin, in bits per byte."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Train a byte-level causal transformer (vocabulary 256) on raw text, densely or as a strong lottery ticket
inside its random weights, and score it in validation bits per byte.

Methods: dense | edge-popup | annealed, each optionally with '+scales' (learned continuous scales:
scale_groups = 'sltlab' (scalar residual scales, per-head mask scales, a logit scale) or 'golf' (the
parameter-golf submission's attn_scale/mlp_scale per channel, head_scale per head, pre_logit_scale)). Data:
tinyshakespeare (90/10 split), wikitext-2 (official train/valid) under the data folder, the path of any text
file, or shards:DIR (the parameter-golf challenge's uint16 token shards, with tokenizer = 'sentencepiece' and
tokenizer_model = its .model file). Tokenizers: bytes (default), bpe, sentencepiece (bits per byte counted by the
challenge's byte rules).

Presets (--set preset=NAME): 'submission' = the parameter-golf supermask submission's recipe setting for setting,
'sltlab' = sltlab's tuned recipe; a config's own settings win over its preset's (docs/results/lm.md).

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
  sltlab lm configs/lm_golf.toml --dry-run          # the submission's 16 x 1024 shape and its byte budget
  sltlab lm configs/lm_golf_cpu.toml --set preset=sltlab     # the same shape under sltlab's tuned recipe
  sltlab lm configs/lm_golf.toml --set dataset=shards:data/fineweb10B_sp1024 \
      --set tokenizer_model=data/fineweb_1024_bpe.model --device cuda --precision bf16   # the challenge's data
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
    from sltlab.runs.store import Store
    from sltlab.tasks.lm_run import describe, study_cells, study_from_dict

    data = load_config(args)
    overrides = {name: getattr(args, name) for name, _ in _FLAGS}
    overrides.update(methods=parse_names(args.methods, "--methods"), seeds=parse_seeds(args.seeds), store=args.store,
                     device=args.device, precision=args.precision)
    data.update({k: v for k, v in overrides.items() if v is not None})
    study = study_from_dict(data)
    cells = study_cells(study, args.data_dir)
    if args.dry_run:
        print(describe(study))
        return dry_run(cells, study.store)
    from sltlab.tickets.spec import check_size

    for run in study.cells():  # the largest model (dense may have its own width) within the budget
        check_size(run.spec(), "lm.d_model")
    check_devices(study.device, "lm.device", args)
    # The data is read (and tokenized) here, before the store is opened and a run started: a missing or too short
    # file is the input's fault, not a failed run's; and a budget past one pass over it is said before it runs.
    from sltlab.tasks.lm_run import passes, prepare_corpus

    corpus = prepare_corpus(study, args.data_dir)
    print(describe(study))
    n = passes(study, corpus)
    unit = "tokens" if corpus.tokenized else "bytes"
    print(f"lm: {study.steps:,} steps x {study.batch_size} x {study.seq_len} = "
          f"{study.steps * study.batch_size * study.seq_len:,} {unit} = {n:.2f} passes over the train split "
          f"({corpus.train.numel():,} {unit})" + (" -- the budget reads the corpus more than once" if n > 1 else ""))
    print(f"lm '{study.name}': {len(cells)} cells -> {study.store}")
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
