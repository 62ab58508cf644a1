"""Every bad input gets one clear line: exit 2, exactly one line on stderr naming the field or path, no traceback, and
nothing written anywhere.

One table, CASES, of (id, argv, expected text in the error line), run in-process through `sltlab.cli.main`. In argv
`{w}` is the shared folder of inputs built below (configs, data, stores, tickets) and `{rid:NAME}` the id of a run in
its store. The expensive entry points (a cell's training, a theory cell, a PEFT sweep, the report) are replaced by a
trap, so an input that slips past validation fails its case at once instead of starting work. To add a case, add a
row; a config file is one entry in `configs()`.

The count of cases tried and passed is printed at the end of the test run (tests/conftest.py).

Round three (issue 23) adds the rows after `# === round three`: stores that are not stores, store rows that are
input, crafted artifacts, checks at the door (devices, data files, ranges, empty lists), endpoints that do not answer,
outputs that are not regular files, and type confusions in configs. `{silent}` is a TCP port that accepts and never
answers, `{junk}` one that answers with something other than Ray or HTTP, `{closed}` one nothing listens on.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sltlab
from sltlab.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "glue"
SRC = str(Path(sltlab.__file__).resolve().parents[1])


# ------------------------------------------------------------------------------------------------------------ configs
def _toml(top: dict[str, str], tables: dict[str, dict[str, str]]) -> str:
    lines = [f"{k} = {v}" for k, v in top.items()]
    for name, body in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {v}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


APPROX = {"name": '"t"', "d_model": "16", "heads": "[2]", "widths": "[16]", "variants": '["none"]',
          "methods": '["edge-popup"]', "seeds": "[0]", "score_seeds": "[0]", "n_train": "64", "n_test": "32",
          "batch_size": "32", "seq_len": "4", "store": '"runs/t.db"', "out_dir": '"runs/t"'}
APPROX_SEARCH = {"steps": "2", "lr": "0.05"}


def approx(**over: str) -> str:
    """The tiny approx config with some fields replaced (`search__lr` sets search.lr; a value None drops it)."""
    top, search = dict(APPROX), dict(APPROX_SEARCH)
    for k, v in over.items():
        table, key = (search, k[len("search__"):]) if k.startswith("search__") else (top, k)
        table[key] = v
    return _toml(top, {"search": search})


LM = {"name": '"t"', "methods": '["dense"]', "seeds": "[0]", "d_model": "16", "n_heads": "2", "n_layers": "1",
      "seq_len": "8", "batch_size": "4", "steps": "1", "store": '"runs/t.db"'}


def lm(**over: str) -> str:
    return _toml({**LM, **over}, {})


GLUE = {"tasks": '["sst2"]', "methods": '["edge-popup"]', "norms": '["none"]', "seeds": "[0]"}
GLUE_RUN = {"d_model": "16", "n_heads": "2", "n_layers": "1", "max_len": "16", "vocab_size": "60", "steps": "1",
            "batch_size": "2"}


def glue(run: dict[str, str] | None = None, **over: str) -> str:
    return _toml({}, {"sweep": {**GLUE, **over}, "sweep.run": {**GLUE_RUN, **(run or {})}})


def configs() -> dict[str, str | bytes]:
    return {
        # approx: every kind of field
        "approx_ok.toml": approx(),
        "approx_lr_nan.toml": approx(search__lr="nan"),
        "approx_lr_inf.toml": approx(search__lr="inf"),
        "approx_lr_neg.toml": approx(search__lr="-1.0"),
        "approx_lr_string.toml": approx(search__lr='"fast"'),
        "approx_steps_zero.toml": approx(search__steps="0"),
        "approx_steps_float.toml": approx(search__steps="2.5"),
        "approx_search_unknown.toml": approx(search__beta3="0.9"),
        "approx_optimizer.toml": approx(search__optimizer='"adamw2"'),
        "approx_weight_decay.toml": approx(search__weight_decay="-0.1"),
        "approx_warmup.toml": approx(search__warmup="-3"),
        "approx_temperature.toml": approx(methods='["annealed"]', search__temperature_end="2.0"),
        "approx_keep_zero.toml": approx(keep="0.0"),
        "approx_keep_big.toml": approx(keep="1.5"),
        "approx_keep_nan.toml": approx(keep="nan"),
        "approx_keep_string.toml": approx(keep='"half"'),
        "approx_gain_nan.toml": approx(source_gain="nan"),
        "approx_gain_huge.toml": approx(source_gain="1e30"),
        "approx_gain_neg.toml": approx(source_gain="-1.0"),
        "approx_gain_inf.toml": approx(source_gain="-inf"),
        "approx_heads_indivisible.toml": approx(heads="[3]"),
        "approx_heads_zero.toml": approx(heads="[0]"),
        "approx_widths_empty.toml": approx(widths="[]"),
        "approx_widths_narrow.toml": approx(widths="[4]"),
        "approx_widths_string.toml": approx(widths='"16"'),
        "approx_variant.toml": approx(variants='["bogus-ln"]'),
        "approx_method.toml": approx(methods='["magic"]'),
        "approx_module.toml": approx(module='"cnn"'),
        "approx_unknown_key.toml": approx(lerning_rate="0.1"),
        "approx_seq_len_zero.toml": approx(seq_len="0"),
        "approx_seq_len_huge.toml": approx(seq_len="10000000000"),
        "approx_n_train_neg.toml": approx(n_train="-5"),
        "approx_seeds_empty.toml": approx(seeds="[]"),
        "approx_seeds_float.toml": approx(seeds="[0.5]"),
        "approx_init.toml": approx(target_init='"xavier-magic"'),
        "approx_d_model_zero.toml": approx(d_model="0"),
        "approx_batch_float.toml": approx(batch_size="1.5"),
        "approx_batch_bool.toml": approx(batch_size="true"),
        "approx_scale.toml": approx(scale='"row"'),
        "approx_coats.toml": approx(methods='["multicoated"]', coats="1"),
        "approx_store_type.toml": approx(store="5"),
        "approx_search_not_table.toml": _toml({**APPROX, "search": "3"}, {}),
        # files that are not TOML, or not text
        "invalid.toml": 'name = "t"\nwidths = [16\n',
        "truncated.toml": approx()[:27],  # cut inside the third key
        "binary.toml": bytes(range(256)) * 4,
        "latin1.toml": 'name = "t"\nd_model = 16\n# caf\xe9\n'.encode("latin-1"),
        # lm
        "lm_method.toml": lm(methods='["sparse"]'),
        "lm_seeds_empty.toml": lm(seeds="[]"),
        "lm_norm.toml": lm(norm='"batchnorm"'),
        "lm_seq_len_huge.toml": lm(seq_len="100000000"),
        "lm_keep_nan.toml": lm(keep="nan"),
        "lm_lr_inf.toml": lm(lr_dense="inf"),
        "lm_lr_neg.toml": lm(lr_edge_popup="-0.1"),
        "lm_heads.toml": lm(n_heads="3"),
        "lm_floats.toml": lm(floats='"float8"'),
        "lm_device.toml": lm(device='"tpu9"'),
        "lm_val_fraction.toml": lm(val_fraction="1.0"),
        "lm_init.toml": lm(init='"zeros"'),
        "lm_init_gain_nan.toml": lm(init_gain="nan"),
        "lm_unknown.toml": lm(epochs="3"),
        "lm_warmup.toml": lm(warmup="-1"),
        "lm_grad_clip.toml": lm(grad_clip="-1.0"),
        "lm_temperature.toml": lm(methods='["annealed"]', temperature_end="0.0"),
        "lm_temperature_order.toml": lm(methods='["annealed"]', temperature_start="0.01", temperature_end="0.5"),
        "lm_steps_string.toml": lm(steps='"many"'),
        # glue sweeps
        "glue_unknown.toml": glue(foo="1"),
        "glue_tasks_string.toml": glue(tasks='"sst2"'),
        "glue_task_table.toml": glue() + "[sweep.task.bogus]\nsteps = 1\n",
        "glue_run_task.toml": glue(run={"task": '"rte"'}),
        "glue_lr_nan.toml": glue(run={"lr": "nan"}),
        "glue_run_unknown.toml": glue(run={"dropout": "0.1"}),
        "glue_method.toml": glue(methods='["lottery"]'),
        "glue_norm.toml": glue(norms='["groupnorm"]'),
        "glue_method_table.toml": glue() + "[sweep.method.bogus]\nlr = 1\n",
        # theory
        "theory_unknown.toml": "[width]\nwidthz = [32]\n",
        "theory_section.toml": "[depth]\nd_model = 16\n",
        "theory_gain_nan.toml": "[width]\nsource_gain = nan\n",
        "theory_heads_string.toml": '[width]\nheads = "2"\n',
        "theory_gains_inf.toml": "[threshold]\ngains = [1.0, inf]\n",
        "theory_heads_zero.toml": "[width]\nheads = 0\n",
        "theory_heads_indivisible.toml": "[width]\nd_model = 15\nheads = 2\n",
        "theory_widths_empty.toml": "[width]\nwidths = []\n",
        "theory_seq_len_zero.toml": "[width]\nseq_len = 0\n",
        "theory_gain_negative.toml": "[width]\nsource_gain = -1.0\n",
        "theory_eps_zero.toml": "[threshold]\neps = 0.0\n",
        "theory_blocks_zero.toml": "[angular]\nblocks = [0]\n",
        "theory_seq_lens_zero.toml": "[seqlen]\nseq_lens = [0, 4]\n",
        "theory_lr_negative.toml": "[warmstart]\nsearch_lrs = [-0.1]\n",
        "theory_method.toml": '[width]\nmethods = ["magic"]\n',
        # peft
        "peft_unknown.toml": '[sweep]\ntasks = ["mrpc"]\nmethods = ["ln"]\nbogus = 1\n',
        "peft_lr_select.toml": '[sweep]\ntasks = ["mrpc"]\nmethods = ["ln"]\nlr_select = "best"\n',
        "peft_lr_nan.toml": '[sweep]\ntasks = ["mrpc"]\nmethods = ["ln"]\n[sweep.lr_grid]\nln = [nan]\n',
        "peft_base_task.toml": '[sweep]\ntasks = ["mrpc"]\nmethods = ["ln"]\n[sweep.base]\ntask = "rte"\n',
        "peft_fraction.toml": '[sweep]\ntasks = ["mrpc"]\nmethods = ["ln-fisher@2.5"]\n',
    }


def configs_round_three() -> dict[str, str | bytes]:
    stsb = glue(tasks='["stsb"]')
    peft = '[sweep]\ntasks = ["mrpc"]\nmethods = ["ln"]\n'
    return {
        # numeric ranges and sizes (one schema: sltlab.runs.config.FIELD_RULES)
        "approx_target_width_zero.toml": approx(target_width="0"),
        "approx_d_model_huge.toml": approx(d_model="1048576"),
        "approx_widths_huge.toml": approx(widths="[1048576]"),
        "approx_budget.toml": approx(d_model="8192", heads="[1]", widths="[65536]"),
        "approx_heads_huge.toml": approx(heads="[5000]"),
        "approx_blocks_zero.toml": approx(module='"stack"', n_blocks="0"),
        "approx_blocks_huge.toml": approx(module='"stack"', n_blocks="100000"),
        "approx_coats_huge.toml": approx(methods='["multicoated"]', coats="300"),
        "approx_folds_zero.toml": approx(folds="[0]"),
        "approx_threads_zero.toml": approx(threads="0"),
        "approx_batch_huge.toml": approx(batch_size="2097152"),
        "approx_n_train_zero.toml": approx(n_train="0"),
        "approx_seed_negative.toml": approx(seeds="[-1]"),
        "approx_score_seed_negative.toml": approx(score_seeds="[-1]"),
        "approx_seed_huge.toml": approx(seeds="[1180591620717411303424]"),
        "approx_device_cuda.toml": approx(device='"cuda"'),
        # empty lists
        "approx_heads_empty.toml": approx(heads="[]"),
        "approx_variants_empty.toml": approx(variants="[]"),
        "approx_methods_empty.toml": approx(methods="[]"),
        "approx_score_seeds_empty.toml": approx(score_seeds="[]"),
        # type confusions
        "approx_heads_int.toml": approx(heads="2"),
        "approx_keep_bool.toml": approx(keep="true"),
        "approx_device_int.toml": approx(device="5"),
        "approx_seeds_bool.toml": approx(seeds="[true]"),
        "approx_seeds_string.toml": approx(seeds='"0"'),
        "approx_name_empty.toml": approx(name='""'),
        "approx_store_empty.toml": approx(store='""'),
        # lm
        "lm_d_model_huge.toml": lm(d_model="1048576"),
        "lm_layers_zero.toml": lm(n_layers="0"),
        "lm_steps_huge.toml": lm(steps="4294967296"),
        "lm_eval_batch_zero.toml": lm(eval_batch="0"),
        "lm_batch_zero.toml": lm(batch_size="0"),
        "lm_fold_zero.toml": lm(fold="0"),
        "lm_dense_d_model_zero.toml": lm(dense_d_model="0"),
        "lm_budget.toml": lm(d_model="65536", n_heads="2", n_layers="1"),
        "lm_seed_negative.toml": lm(seeds="[-1]"),
        "lm_methods_empty.toml": lm(methods="[]"),
        "lm_methods_string.toml": lm(methods='"dense"'),
        "lm_seeds_int.toml": lm(seeds="0"),
        "lm_steps_float.toml": lm(steps="5.0"),
        "lm_d_ff_string.toml": lm(d_ff='"big"'),
        "lm_device_cuda.toml": lm(device='"cuda"'),
        "lm_dataset_empty.toml": lm(dataset='""'),
        # glue
        "glue_sweep_int.toml": "sweep = 5\n",
        "glue_sweep_string.toml": 'sweep = "abc"\n',
        "glue_run_int.toml": _toml({}, {"sweep": {**GLUE, "run": "3"}}),
        "glue_method_int.toml": _toml({}, {"sweep": {**GLUE, "method": "3"}}),
        "glue_task_int.toml": _toml({}, {"sweep": {**GLUE, "task": "3"}}),
        "glue_method_dense_int.toml": glue() + "[sweep.method]\ndense = 3\n",
        "glue_seeds_string.toml": glue(seeds='"0"'),
        "glue_tasks_empty.toml": glue(tasks="[]"),
        "glue_methods_empty.toml": glue(methods="[]"),
        "glue_norms_empty.toml": glue(norms="[]"),
        "glue_seeds_empty.toml": glue(seeds="[]"),
        "glue_seed_negative.toml": glue(seeds="[-1]"),
        "glue_data_seed_negative.toml": glue(run={"data_seed": "-1"}),
        "glue_d_model_huge.toml": glue(run={"d_model": "1048576"}),
        "glue_max_len_zero.toml": glue(run={"max_len": "0"}),
        "glue_vocab_huge.toml": glue(run={"vocab_size": "1073741824"}),
        "glue_layers_huge.toml": glue(run={"n_layers": "5000"}),
        "glue_budget.toml": glue(run={"d_model": "65536", "n_heads": "2", "n_layers": "1"}),
        "glue_steps_float.toml": glue(run={"steps": "2.0"}),
        "glue_device_cuda.toml": glue(run={"device": '"cuda"'}),
        "glue_tokenizer_hub.toml": glue(run={"tokenizer": '"no-such-org/no-such-tokenizer"'}),
        "glue_stsb.toml": stsb,
        # theory
        "theory_width_int.toml": "width = 3\n",
        "theory_construct_int.toml": "construct = 3\n",
        "theory_seeds_string.toml": '[width]\nseeds = "0"\n',
        "theory_widths_huge.toml": "[width]\nwidths = [1048576]\n",
        "theory_d_model_huge.toml": "[width]\nd_model = 1048576\n",
        "theory_budget.toml": "[width]\nd_model = 8192\nheads = 1\nwidths = [65536]\nsearch_widths = [32]\n",
        "theory_per_coordinate_huge.toml": "[threshold]\nper_coordinate = [100000]\n",
        "theory_blocks_huge.toml": "[angular]\nblocks = [5000]\n",
        "theory_seed_negative.toml": "[width]\nseeds = [-1]\n",
        "theory_device_cuda.toml": 'device = "cuda"\n',
        # peft
        "peft_sweep_int.toml": "sweep = 5\n",
        "peft_base_int.toml": peft + "base = 3\n",
        "peft_lr_grid_int.toml": peft + "lr_grid = 3\n",
        "peft_lr_grid_string.toml": peft + '[sweep.lr_grid]\nln = "fast"\n',
        "peft_tasks_empty.toml": '[sweep]\ntasks = []\nmethods = ["ln"]\n',
        "peft_methods_empty.toml": '[sweep]\ntasks = ["mrpc"]\nmethods = []\n',
        "peft_seeds_empty.toml": peft + "seeds = []\n",
        "peft_seed_negative.toml": peft + "seeds = [-1]\n",
        "peft_max_len_zero.toml": peft + "[sweep.base]\nmax_len = 0\n",
        "peft_epochs_zero.toml": peft + "[sweep.base]\nepochs = 0\n",
        "peft_batch_zero.toml": peft + "[sweep.base]\nbatch_size = 0\n",
        "peft_subsample_zero.toml": peft + "[sweep.base]\nsubsample = 0\n",
        "peft_fisher_samples_negative.toml": peft + "[sweep.base]\nfisher_samples = -1\n",
        "peft_device_cuda.toml": peft + 'device = "cuda"\n',
    }


# -------------------------------------------------------------------------------------------------------- the cases
C = "{w}/cfg/"
CASES: list[tuple[str, str, str]] = [
    # --- top level and argparse (one line, not the whole usage)
    ("no-such-command", "frobnicate", "invalid choice: 'frobnicate'"),
    ("unknown-flag", "--frobnicate", "--frobnicate"),
    ("approx-missing-config-arg", "approx", "config"),
    ("approx-widths-not-int", f"approx {C}approx_ok.toml --widths abc", "--widths"),
    ("approx-heads-not-int", f"approx {C}approx_ok.toml --heads 2.5", "--heads"),
    ("export-floats-enum", "export x -o {w}/t.slt --floats float8", "--floats"),
    ("theory-experiment-enum", "theory depth", "depth"),
    ("runs-action-enum", "runs delete", "delete"),
    ("inspect-masks-not-int", "inspect {w}/ticket.slt --masks many", "--masks"),
    ("glue-seeds-not-int", "glue --task sst2 --seeds two", "--seeds"),
    # --- approx: config fields
    ("approx-lr-nan", f"approx {C}approx_lr_nan.toml", "search.lr"),
    ("approx-lr-inf", f"approx {C}approx_lr_inf.toml", "search.lr"),
    ("approx-lr-negative", f"approx {C}approx_lr_neg.toml", "lr"),
    ("approx-lr-string", f"approx {C}approx_lr_string.toml", "search.lr"),
    ("approx-steps-zero", f"approx {C}approx_steps_zero.toml", "steps"),
    ("approx-steps-float", f"approx {C}approx_steps_float.toml", "search.steps"),
    ("approx-search-unknown-key", f"approx {C}approx_search_unknown.toml", "search.beta3"),
    ("approx-optimizer-enum", f"approx {C}approx_optimizer.toml", "optimizer"),
    ("approx-weight-decay-negative", f"approx {C}approx_weight_decay.toml", "search.weight_decay"),
    ("approx-warmup-negative", f"approx {C}approx_warmup.toml", "search.warmup"),
    ("approx-temperatures-rising", f"approx {C}approx_temperature.toml", "search.temperature_end"),
    ("approx-keep-zero", f"approx {C}approx_keep_zero.toml", "study.keep"),
    ("approx-keep-above-one", f"approx {C}approx_keep_big.toml", "study.keep"),
    ("approx-keep-nan", f"approx {C}approx_keep_nan.toml", "study.keep"),
    ("approx-keep-string", f"approx {C}approx_keep_string.toml", "study.keep"),
    ("approx-source-gain-nan", f"approx {C}approx_gain_nan.toml", "study.source_gain"),
    ("approx-source-gain-huge", f"approx {C}approx_gain_huge.toml", "study.source_gain"),
    ("approx-source-gain-negative", f"approx {C}approx_gain_neg.toml", "study.source_gain"),
    ("approx-source-gain-minus-inf", f"approx {C}approx_gain_inf.toml", "study.source_gain"),
    ("approx-heads-indivisible", f"approx {C}approx_heads_indivisible.toml", "study.heads"),
    ("approx-heads-zero", f"approx {C}approx_heads_zero.toml", "study.heads"),
    ("approx-widths-empty", f"approx {C}approx_widths_empty.toml", "study.widths"),
    ("approx-width-below-target", f"approx {C}approx_widths_narrow.toml", "study.widths[0]"),
    ("approx-widths-string", f"approx {C}approx_widths_string.toml", "study.widths"),
    ("approx-variant-unknown", f"approx {C}approx_variant.toml", "study.variants[0]"),
    ("approx-method-unknown", f"approx {C}approx_method.toml", "study.methods[0]"),
    ("approx-module-unknown", f"approx {C}approx_module.toml", "study.module"),
    ("approx-unknown-key", f"approx {C}approx_unknown_key.toml", "study.lerning_rate"),
    ("approx-seq-len-zero", f"approx {C}approx_seq_len_zero.toml", "study.seq_len"),
    ("approx-seq-len-huge", f"approx {C}approx_seq_len_huge.toml", "study.seq_len"),
    ("approx-n-train-negative", f"approx {C}approx_n_train_neg.toml", "study.n_train"),
    ("approx-seeds-empty", f"approx {C}approx_seeds_empty.toml", "study.seeds"),
    ("approx-seed-float", f"approx {C}approx_seeds_float.toml", "study.seeds[0]"),
    ("approx-init-unknown", f"approx {C}approx_init.toml", "study.target_init"),
    ("approx-d-model-zero", f"approx {C}approx_d_model_zero.toml", "d_model"),
    ("approx-batch-float", f"approx {C}approx_batch_float.toml", "study.batch_size"),
    ("approx-batch-bool", f"approx {C}approx_batch_bool.toml", "study.batch_size"),
    ("approx-scale-enum", f"approx {C}approx_scale.toml", "study.scale"),
    ("approx-multicoated-one-coat", f"approx {C}approx_coats.toml", "study.coats"),
    ("approx-store-wrong-type", f"approx {C}approx_store_type.toml", "study.store"),
    ("approx-search-not-a-table", f"approx {C}approx_search_not_table.toml", "study.search"),
    # --- approx: files
    ("approx-config-missing", "approx {w}/nope.toml", "nope.toml"),
    ("approx-config-directory", "approx {w}/adir", "is a directory"),
    ("approx-config-invalid-toml", f"approx {C}invalid.toml", "not valid TOML"),
    ("approx-config-truncated", f"approx {C}truncated.toml", "not valid TOML"),
    ("approx-config-binary", f"approx {C}binary.toml", "not valid UTF-8"),
    ("approx-config-latin1", f"approx {C}latin1.toml", "latin1.toml, line 3"),
    ("approx-config-under-a-file", "approx {w}/afile/x.toml", "afile/x.toml"),
    # --- approx: command-line overrides and outputs
    ("approx-widths-flag-narrow", f"approx {C}approx_ok.toml --widths 2", "study.widths[0]"),
    ("approx-heads-flag-indivisible", f"approx {C}approx_ok.toml --heads 5", "study.heads"),
    ("approx-variants-flag", f"approx {C}approx_ok.toml --variants batchnorm", "study.variants[0]"),
    ("approx-methods-flag", f"approx {C}approx_ok.toml --methods magic", "study.methods[0]"),
    ("approx-out-is-a-file", f"approx {C}approx_ok.toml --out {{w}}/afile", "--out"),
    ("approx-out-under-a-file", f"approx {C}approx_ok.toml --out {{w}}/afile/sub", "--out"),
    ("approx-store-is-a-directory", f"approx {C}approx_ok.toml --store {{w}}/adir", "is a directory"),
    ("approx-store-not-sqlite", f"approx {C}approx_ok.toml --store {{w}}/notdb.db", "notdb.db"),
    ("approx-store-under-a-file", f"approx {C}approx_ok.toml --store {{w}}/afile/s.db", "afile/s.db"),
    # --- glue: flags
    ("glue-no-task", "glue --method dense", "--task"),
    ("glue-task-unknown", "glue --task sst3", "task"),
    ("glue-method-unknown", "glue --task sst2 --method lottery", "method"),
    ("glue-norm-unknown", "glue --task sst2 --norm groupnorm", "norm"),
    ("glue-ln-integrated-no-norm", "glue --task sst2 --method ln-integrated --norm none", "norm"),
    ("glue-seeds-not-a-list", "glue --task sst2 --seeds 0,x", "--seeds"),
    ("glue-threads-zero", "glue --task sst2 --threads 0", "--threads"),
    ("glue-threads-negative", "glue --task sst2 --threads -2", "--threads"),
    ("glue-set-no-equals", "glue --task sst2 --set steps", "--set"),
    ("glue-set-unknown", "glue --task sst2 --set dropout=0.1", "run.dropout"),
    ("glue-set-lr-nan", "glue --task sst2 --set lr=nan", "run.lr"),
    ("glue-set-lr-inf", "glue --task sst2 --set lr=inf", "run.lr"),
    ("glue-set-lr-negative", "glue --task sst2 --set lr=-0.1", "lr"),
    ("glue-set-keep-two", "glue --task sst2 --set keep=2", "keep"),
    ("glue-set-steps-zero", "glue --task sst2 --set steps=0", "steps"),
    ("glue-set-steps-string", "glue --task sst2 --set steps=many", "run.steps"),
    ("glue-set-max-len-huge", "glue --task sst2 --set max_len=100000000", "max_len"),
    ("glue-set-heads-indivisible", "glue --task sst2 --set n_heads=3", "n_heads"),
    ("glue-set-vocab-tiny", "glue --task sst2 --set vocab_size=3", "vocab_size"),
    ("glue-set-batch-nan", "glue --task sst2 --set batch_size=nan", "run.batch_size"),
    ("glue-set-embedding-scale-inf", "glue --task sst2 --set trained_embedding_scale=inf",
     "run.trained_embedding_scale"),
    ("glue-set-source-enum", "glue --task sst2 --set source=s3", "run.source"),
    ("glue-set-init-unknown", "glue --task sst2 --set init=magic", "init"),
    ("glue-set-rewind-beyond", "glue --task sst2 --method imp --set steps=5 --set imp_rewind_step=9",
     "imp_rewind_step"),
    ("glue-config-missing", "glue --config {w}/nope.toml", "nope.toml"),
    ("glue-config-directory", "glue --config {w}/adir", "is a directory"),
    ("glue-config-invalid-utf8", f"glue --config {C}latin1.toml", "not valid UTF-8"),
    ("glue-config-unknown-key", f"glue --config {C}glue_unknown.toml", "sweep.foo"),
    ("glue-config-tasks-string", f"glue --config {C}glue_tasks_string.toml", "sweep.tasks"),
    ("glue-config-task-table", f"glue --config {C}glue_task_table.toml", "task.bogus"),
    ("glue-config-run-task", f"glue --config {C}glue_run_task.toml", "run.task"),
    ("glue-config-lr-nan", f"glue --config {C}glue_lr_nan.toml", "run.lr"),
    ("glue-config-run-unknown", f"glue --config {C}glue_run_unknown.toml", "run.dropout"),
    ("glue-config-method", f"glue --config {C}glue_method.toml", "method"),
    ("glue-config-norm", f"glue --config {C}glue_norm.toml", "norm"),
    ("glue-config-method-table", f"glue --config {C}glue_method_table.toml", "method.bogus"),
    # --- glue: data
    ("glue-data-dir-missing", "glue --task sst2 --data-dir {w}/nowhere", "nowhere"),
    ("glue-data-dir-is-a-file", "glue --task sst2 --data-dir {w}/afile", "afile"),
    ("glue-task-folder-missing", "glue --task rte --data-dir {w}/data_notask", "RTE"),
    ("glue-row-extra-field", f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_extra --store {{w}}/store.db",
     "SST-2/train.tsv, line 3"),
    ("glue-row-missing-field", f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_short --store {{w}}/store.db",
     "SST-2/train.tsv, line 4"),
    ("glue-tsv-invalid-utf8", f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_latin1 --store {{w}}/store.db",
     "SST-2/train.tsv, line 2"),
    ("glue-tsv-binary", f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_binary --store {{w}}/store.db",
     "SST-2/train.tsv, line 1"),
    ("glue-tsv-bad-label", f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_label --store {{w}}/store.db",
     "SST-2/train.tsv, line 2"),
    ("glue-tsv-header-missing-column",
     f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_header --store {{w}}/store.db", "SST-2/train.tsv, line 1"),
    ("glue-tsv-empty", f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_empty --store {{w}}/store.db",
     "SST-2/train.tsv is empty"),
    ("glue-tsv-is-a-directory",
     f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_tsvdir --store {{w}}/store.db", "SST-2/train.tsv"),
    ("glue-tokenizer-file-missing", "glue --task sst2 --set tokenizer={w}/nope.json", "nope.json"),
    ("glue-tokenizer-file-garbage", "glue --task sst2 --set tokenizer={w}/garbage.json", "garbage.json"),
    ("glue-tokenizer-file-missing-pad", "glue --task sst2 --set tokenizer={w}/nopad.json", "[PAD]"),
    ("glue-set-weight-decay-negative", "glue --task sst2 --set weight_decay=-1", "weight_decay"),
    ("glue-set-warmup-negative", "glue --task sst2 --set warmup=-5", "warmup"),
    ("glue-set-grad-clip-nan", "glue --task sst2 --set grad_clip=nan", "grad_clip"),
    ("glue-set-temperature-end-zero", "glue --task sst2 --method annealed --set temperature_end=0", "temperature_end"),
    ("glue-set-imp-fraction-one", "glue --task sst2 --method imp --set imp_fraction=1.5", "imp_fraction"),
    ("glue-store-is-a-directory", f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_ok --store {{w}}/adir",
     "is a directory"),
    ("glue-store-not-sqlite", f"glue --config {C}glue_ok.toml --data-dir {{w}}/data_ok --store {{w}}/notdb.db",
     "notdb.db"),
    # --- glue-table
    ("glue-table-store-missing", "glue-table --store {w}/nope.db", "nope.db"),
    ("glue-table-store-directory", "glue-table --store {w}/adir", "is a directory"),
    ("glue-table-store-not-sqlite", "glue-table --store {w}/notdb.db", "notdb.db"),
    ("glue-table-out-is-a-file", "glue-table --store {w}/store.db --out {w}/afile", "--out"),
    # --- lm
    ("lm-config-missing", "lm {w}/nope.toml", "nope.toml"),
    ("lm-config-directory", "lm {w}/adir", "is a directory"),
    ("lm-config-binary", f"lm {C}binary.toml", "not valid UTF-8"),
    ("lm-method-unknown", f"lm {C}lm_method.toml", "lm.methods[0]"),
    ("lm-seeds-empty", f"lm {C}lm_seeds_empty.toml", "lm."),
    ("lm-norm-unknown", f"lm {C}lm_norm.toml", "lm.norm"),
    ("lm-seq-len-huge", f"lm {C}lm_seq_len_huge.toml", "lm.seq_len"),
    ("lm-keep-nan", f"lm {C}lm_keep_nan.toml", "lm.keep"),
    ("lm-lr-inf", f"lm {C}lm_lr_inf.toml", "lm.lr_dense"),
    ("lm-lr-negative", f"lm {C}lm_lr_neg.toml", "lm.lr_edge_popup"),
    ("lm-heads-indivisible", f"lm {C}lm_heads.toml", "lm.n_heads"),
    ("lm-floats-enum", f"lm {C}lm_floats.toml", "lm.floats"),
    ("lm-device-unknown", f"lm {C}lm_device.toml", "lm.device"),
    ("lm-val-fraction-one", f"lm {C}lm_val_fraction.toml", "lm.val_fraction"),
    ("lm-init-unknown", f"lm {C}lm_init.toml", "lm.init"),
    ("lm-init-gain-nan", f"lm {C}lm_init_gain_nan.toml", "lm.init_gain"),
    ("lm-unknown-key", f"lm {C}lm_unknown.toml", "lm.epochs"),
    ("lm-warmup-negative", f"lm {C}lm_warmup.toml", "lm.warmup"),
    ("lm-grad-clip-negative", f"lm {C}lm_grad_clip.toml", "lm.grad_clip"),
    ("lm-temperature-end-zero", f"lm {C}lm_temperature.toml", "temperature_end"),
    ("lm-temperatures-rising", f"lm {C}lm_temperature_order.toml", "temperature_end"),
    ("lm-steps-string", f"lm {C}lm_steps_string.toml", "lm.steps"),
    ("lm-flag-keep-nan", "lm --keep nan --steps 1", "lm.keep"),
    ("lm-flag-steps-zero", "lm --steps 0", "lm.steps"),
    ("lm-flag-methods", "lm --methods dense+magic", "lm.methods[0]"),
    ("lm-dataset-missing", "lm --dataset {w}/nope.txt --steps 1", "nope.txt"),
    ("lm-dataset-directory", "lm --dataset {w}/adir --steps 1", "is a directory"),
    ("lm-dataset-too-short", "lm --dataset {w}/tiny.txt --steps 1 --seq-len 64", "seq_len"),
    ("lm-corpus-data-dir-missing", "lm --dataset tinyshakespeare --data-dir {w}/nowhere --steps 1", "nowhere"),
    ("lm-corpus-file-missing", "lm --dataset wikitext-2 --data-dir {w}/data_ok --steps 1", "wikitext-2"),
    ("lm-store-directory", "lm --dataset {w}/short.txt --seq-len 8 --steps 1 --store {w}/adir", "is a directory"),
    # --- theory
    ("theory-config-missing", "theory width --config {w}/nope.toml", "nope.toml"),
    ("theory-config-invalid", f"theory width --config {C}invalid.toml", "not valid TOML"),
    ("theory-config-latin1", f"theory width --config {C}latin1.toml", "line 3"),
    ("theory-unknown-field", f"theory width --config {C}theory_unknown.toml", "theory.width.widthz"),
    ("theory-unknown-section", f"theory width --config {C}theory_section.toml", "theory.depth"),
    ("theory-gain-nan", f"theory width --config {C}theory_gain_nan.toml", "theory.width.source_gain"),
    ("theory-heads-string", f"theory width --config {C}theory_heads_string.toml", "theory.width.heads"),
    ("theory-gains-inf", f"theory threshold --config {C}theory_gains_inf.toml", "theory.threshold.gains[1]"),
    ("theory-heads-zero", f"theory width --config {C}theory_heads_zero.toml", "theory.width.heads"),
    ("theory-heads-indivisible", f"theory width --config {C}theory_heads_indivisible.toml", "theory.width.heads"),
    ("theory-widths-empty", f"theory width --config {C}theory_widths_empty.toml", "theory.width.widths"),
    ("theory-seq-len-zero", f"theory width --config {C}theory_seq_len_zero.toml", "theory.width.seq_len"),
    ("theory-gain-negative", f"theory width --config {C}theory_gain_negative.toml", "theory.width.source_gain"),
    ("theory-eps-zero", f"theory threshold --config {C}theory_eps_zero.toml", "theory.threshold.eps"),
    ("theory-blocks-zero", f"theory angular --config {C}theory_blocks_zero.toml", "theory.angular.blocks"),
    ("theory-seq-lens-zero", f"theory seqlen --config {C}theory_seq_lens_zero.toml", "theory.seqlen.seq_lens"),
    ("theory-lr-negative", f"theory warmstart --config {C}theory_lr_negative.toml", "theory.warmstart.search_lrs"),
    ("theory-method-unknown", f"theory width --config {C}theory_method.toml", "theory.width.methods"),
    ("theory-out-dir-is-a-file", "theory width --out-dir {w}/afile", "--out-dir"),
    ("theory-store-directory", "theory width --store {w}/adir", "is a directory"),
    # --- peft
    ("peft-no-task", "peft --method ln", "--task"),
    ("peft-task-unknown", "peft --task mrcp --method ln", "mrcp"),
    ("peft-method-unknown", "peft --task mrpc --method lora", "lora"),
    ("peft-no-method", "peft --task mrpc", "--method"),
    ("peft-fraction-without-method", "peft --task mrpc --fraction 0.2", "--fraction"),
    ("peft-fraction-not-number", "peft --task mrpc --method ln-fisher --fraction lots", "--fraction"),
    ("peft-fraction-nan", "peft --task mrpc --method ln-fisher --fraction nan", "fraction"),
    ("peft-fisher-without-fraction", "peft --task mrpc --method ln-fisher", "--fraction"),
    ("peft-shard-out-of-range", "peft --task mrpc --method ln --shard 3/2", "--shard"),
    ("peft-shard-not-i-n", "peft --task mrpc --method ln --shard half", "--shard"),
    ("peft-seeds-not-a-list", "peft --task mrpc --method ln --seeds 0,one", "--seeds"),
    ("peft-lr-not-number", "peft --task mrpc --method ln --lr fast", "--lr"),
    ("peft-lr-nan", "peft --task mrpc --method ln --lr nan", "lr"),
    ("peft-threads-zero", "peft --task mrpc --method ln --threads 0", "--threads"),
    ("peft-report-is-a-directory", "peft --task mrpc --method ln --no-run --report {w}/adir", "--report"),
    ("peft-model-missing", "peft --task mrpc --method ln --model {w}/nowhere", "nowhere"),
    ("peft-model-not-hf", "peft --task mrpc --method ln --model {w}/adir", "config.json"),
    ("peft-config-unknown", f"peft --config {C}peft_unknown.toml", "sweep.bogus"),
    ("peft-config-lr-select", f"peft --config {C}peft_lr_select.toml", "lr_select"),
    ("peft-config-lr-nan", f"peft --config {C}peft_lr_nan.toml", "lr_grid"),
    ("peft-config-base-task", f"peft --config {C}peft_base_task.toml", "base.task"),
    ("peft-config-fraction", f"peft --config {C}peft_fraction.toml", "fraction"),
    # --- runs
    ("runs-status-unknown", "runs list --store {w}/store.db --status bogus", "--status"),
    ("runs-kind-unknown", "runs list --store {w}/store.db --kind bogus", "--kind"),
    ("runs-show-no-id", "runs show --store {w}/store.db", "run_id"),
    ("runs-show-unknown-id", "runs show approx-ffffffffffff --store {w}/store.db", "approx-ffffffffffff"),
    ("runs-show-percent-is-not-a-wildcard", "runs show % --store {w}/store.db", "no run '%'"),
    ("runs-show-underscore-is-not-a-wildcard", "runs show approx_ --store {w}/store.db", "no run 'approx_'"),
    ("runs-show-ambiguous-prefix", "runs show approx- --store {w}/store.db", "ambiguous"),
    ("runs-store-missing", "runs list --store {w}/nope.db", "nope.db"),
    ("runs-store-directory", "runs list --store {w}/adir", "is a directory"),
    ("runs-store-text-file", "runs list --store {w}/notdb.db", "notdb.db"),
    ("runs-store-binary-file", "runs list --store {w}/binary.bin", "binary.bin"),
    ("runs-export-csv-directory", "runs export --store {w}/store.db --csv {w}/adir", "--csv"),
    ("runs-export-csv-under-a-file", "runs export --store {w}/store.db --csv {w}/afile/x.csv", "--csv"),
    # --- export
    ("export-output-directory", "export {rid:nockpt} --store {w}/store.db -o {w}/adir", "--output"),
    ("export-output-under-a-file", "export {rid:nockpt} --store {w}/store.db -o {w}/afile/t.slt", "--output"),
    ("export-unknown-id", "export approx-ffffffffffff --store {w}/store.db -o {w}/out.slt", "approx-ffffffffffff"),
    ("export-percent-id", "export %% --store {w}/store.db -o {w}/out.slt", "no run '%%'"),
    ("export-store-missing", "export approx-0 --store {w}/nope.db -o {w}/out.slt", "nope.db"),
    ("export-store-directory", "export approx-0 --store {w}/adir -o {w}/out.slt", "is a directory"),
    ("export-no-checkpoint", "export {rid:nockpt} --store {w}/store.db -o {w}/out.slt", "saved no checkpoint"),
    ("export-checkpoint-garbage", "export {rid:garbage} --store {w}/store.db -o {w}/out.slt", "ticket.safetensors"),
    ("export-checkpoint-truncated", "export {rid:truncated} --store {w}/store.db -o {w}/out.slt",
     "ticket.safetensors"),
    ("export-checkpoint-tampered", "export {rid:tampered} --store {w}/store.db -o {w}/out.slt", "SHA-256"),
    # --- inspect
    ("inspect-missing", "inspect {w}/nope.slt", "nope.slt"),
    ("inspect-directory", "inspect {w}/adir", "is a directory"),
    ("inspect-empty", "inspect {w}/empty.slt", "empty.slt"),
    ("inspect-text-file", "inspect {w}/afile", "not an sltlab ticket"),
    ("inspect-random-bytes", "inspect {w}/binary.bin", "binary.bin"),
    ("inspect-truncated", "inspect {w}/ticket_truncated.slt", "ticket_truncated.slt"),
    ("inspect-flipped-byte", "inspect {w}/ticket_flipped.slt --verify", "ticket_flipped.slt"),
    ("inspect-safetensors-not-a-ticket", "inspect {w}/store_art/ticket.safetensors", "not an sltlab ticket"),
    # --- analyze
    ("analyze-unknown-id", "analyze approx-ffffffffffff --store {w}/store.db", "approx-ffffffffffff"),
    ("analyze-underscore-id", "analyze ______ --store {w}/store.db", "no run '______'"),
    ("analyze-store-missing", "analyze approx-0 --store {w}/nope.db", "nope.db"),
    ("analyze-store-directory", "analyze approx-0 --store {w}/adir", "is a directory"),
    ("analyze-store-not-sqlite", "analyze approx-0 --store {w}/notdb.db", "notdb.db"),
    ("analyze-n-inputs-zero", "analyze approx-0 --store {w}/store.db --n-inputs 0", "--n-inputs"),
    # --- report
    ("report-out-is-a-file", "report --store {w}/store.db --out {w}/afile", "--out"),
    ("report-out-under-a-file", "report --store {w}/store.db --out {w}/afile/r", "--out"),
    ("report-store-missing", "report --store {w}/nope.db --out {w}/rep", "nope.db"),
    ("report-store-directory", "report --store {w}/adir --out {w}/rep", "is a directory"),
    ("report-also-missing", "report --store {w}/store.db --also {w}/nope.db --out {w}/rep", "nope.db"),
    ("report-attention-runs-zero", "report --store {w}/store.db --attention-runs 0 --out {w}/rep", "--attention-runs"),
    ("report-n-inputs-negative", "report --store {w}/store.db --n-inputs -3 --out {w}/rep", "--n-inputs"),
]

# === round three (issue 23)
A, G, L, P, T = f"approx {C}approx_ok.toml", f"glue --config {C}glue_ok.toml", "lm --steps 1", \
    "peft --task mrpc --method ln --quick", "theory width"
R3: list[tuple[str, str, str]] = [
    # --- class 1: a store is a store only if it is one; outputs replace regular files only
    ("r3-runs-list-empty-file", "runs list --store {w}/empty.db", "empty file"),
    ("r3-runs-list-foreign-sqlite", "runs list --store {w}/foreign.db", "something else"),
    ("r3-runs-list-other-application", "runs list --store {w}/otherapp.db", "another program"),
    ("r3-runs-list-newer-schema", "runs list --store {w}/newer.db", "newer sltlab"),
    ("r3-runs-list-renamed-column", "runs list --store {w}/renamed.db", "'metrics'"),
    ("r3-runs-list-fifo", "runs list --store {w}/fifo", "not a regular file"),
    ("r3-runs-show-empty-file", "runs show x --store {w}/empty.db", "empty file"),
    ("r3-runs-export-foreign", "runs export --store {w}/foreign.db", "something else"),
    ("r3-runs-migrate-foreign", "runs migrate --store {w}/foreign.db", "something else"),
    ("r3-glue-table-foreign", "glue-table --store {w}/foreign.db", "something else"),
    ("r3-glue-table-empty-file", "glue-table --store {w}/empty.db", "empty file"),
    ("r3-report-foreign", "report --store {w}/foreign.db --out {w}/rep", "something else"),
    ("r3-report-also-foreign", "report --store {w}/store.db --also {w}/foreign.db --out {w}/rep", "something else"),
    ("r3-analyze-empty-file", "analyze approx-0 --store {w}/empty.db", "empty file"),
    ("r3-export-other-application", "export approx-0 --store {w}/otherapp.db -o {w}/o.slt", "another program"),
    ("r3-approx-store-empty-file", f"{A} --store {{w}}/empty.db", "empty file"),
    ("r3-approx-store-foreign", f"{A} --store {{w}}/foreign.db", "something else"),
    ("r3-approx-dry-run-foreign", f"{A} --store {{w}}/foreign.db --dry-run", "something else"),
    ("r3-approx-store-newer", f"{A} --store {{w}}/newer.db", "newer sltlab"),
    ("r3-lm-store-foreign", "lm --steps 1 --store {w}/foreign.db", "something else"),
    ("r3-glue-store-foreign", f"{G} --data-dir {{w}}/data_ok --store {{w}}/foreign.db", "something else"),
    ("r3-theory-store-foreign", "theory width --store {w}/foreign.db", "something else"),
    ("r3-peft-report-store-foreign", "peft --task mrpc --method ln --no-run --report {w}/r.md --store {w}/foreign.db",
     "something else"),
    ("r3-runs-export-csv-symlink", "runs export --store {w}/store.db --csv {w}/alink", "symbolic link"),
    ("r3-runs-export-csv-dead-symlink", "runs export --store {w}/store.db --csv {w}/deadlink", "symbolic link"),
    ("r3-runs-export-csv-fifo", "runs export --store {w}/store.db --csv {w}/fifo", "FIFO"),
    ("r3-runs-export-csv-device", "runs export --store {w}/store.db --csv {w}/chardev", "device"),
    ("r3-export-output-symlink", "export {rid:nockpt} --store {w}/store.db -o {w}/alink", "symbolic link"),
    ("r3-export-output-fifo", "export {rid:nockpt} --store {w}/store.db -o {w}/fifo", "FIFO"),
    ("r3-peft-report-symlink", "peft --task mrpc --method ln --no-run --report {w}/alink", "symbolic link"),
    ("r3-peft-report-fifo", "peft --task mrpc --method ln --no-run --report {w}/fifo", "FIFO"),
    ("r3-glue-table-out-file-symlink", "glue-table --store {w}/store.db --out {w}/linked", "symbolic link"),
    ("r3-approx-out-file-symlink", f"{A} --out {{w}}/linked", "symbolic link"),
    ("r3-report-out-page-symlink", "report --store {w}/store.db --out {w}/linked", "symbolic link"),
    ("r3-theory-out-dir-symlink-to-file", "theory width --out-dir {w}/alink", "--out-dir"),
    ("r3-peft-no-run-without-report", "peft --task mrpc --method ln --no-run", "--no-run"),
    # --- class 2: a store's contents are input
    ("r3-runs-show-bad-json", "runs show {rid:badjson} --store {w}/store.db", "corrupt"),
    ("r3-runs-show-list-metrics", "runs show {rid:listmetrics} --store {w}/store.db", "corrupt"),
    ("r3-runs-show-text-started", "runs show {rid:textstarted} --store {w}/store.db", "corrupt"),
    ("r3-runs-show-null-config", "runs show {rid:nullconfig} --store {w}/store.db", "corrupt"),
    ("r3-runs-show-bad-status", "runs show {rid:badstatus} --store {w}/store.db", "corrupt"),
    ("r3-runs-show-path-run-id", "runs show approx-.. --store {w}/store.db", "corrupt"),
    ("r3-export-path-run-id", "export approx-.. --store {w}/store.db -o {w}/o.slt", "corrupt"),
    ("r3-analyze-path-run-id", "analyze approx-.. --store {w}/store.db", "corrupt"),
    ("r3-analyze-bad-json", "analyze {rid:badjson} --store {w}/store.db", "corrupt"),
    ("r3-export-kind-mismatch", "export {rid:kindmismatch} --store {w}/store.db -o {w}/o.slt", "corrupt"),
    # --- class 3: crafted artifacts are bounded before anything is allocated
    ("r3-inspect-d-model-huge", "inspect {w}/t_dmodel.slt", "parameters"),
    ("r3-inspect-max-len-negative", "inspect {w}/t_maxlen.slt", "max_len"),
    ("r3-inspect-probe-seed-huge", "inspect {w}/t_probe_big.slt", "probe record"),
    ("r3-inspect-probe-seed-negative", "inspect {w}/t_probe_neg.slt", "probe record"),
    ("r3-inspect-mask-shape-huge", "inspect {w}/t_maskshape.slt", "has shape"),
    ("r3-inspect-mask-not-a-layer", "inspect {w}/t_masknotlayer.slt", "not a masked layer"),
    ("r3-inspect-mask-listed-twice", "inspect {w}/t_masktwice.slt", "listed twice"),
    ("r3-inspect-padded-file", "inspect {w}/t_padded.slt", "truncated or padded"),
    ("r3-inspect-seed-edited", "inspect {w}/t_seed.slt --verify", "SHA-256"),
    ("r3-inspect-init-scheme-edited", "inspect {w}/t_scheme.slt --verify", "SHA-256"),
    ("r3-inspect-fifo", "inspect {w}/fifo", "not a regular file"),
    ("r3-inspect-masks-negative", "inspect {w}/ticket.slt --masks -3", "--masks"),
    # --- class 4: the door (device, data, ranges, tokenizer) for every study
    ("r3-approx-device-cuda", f"{A} --device cuda", "cuda"),
    ("r3-approx-device-cuda-index", f"{A} --device cuda:3", "cuda"),
    ("r3-approx-config-device-cuda", f"approx {C}approx_device_cuda.toml", "study.device"),
    ("r3-glue-device-cuda", f"{G} --data-dir {{w}}/data_ok --device cuda", "cuda"),
    ("r3-glue-config-device-cuda", f"glue --config {C}glue_device_cuda.toml --data-dir {{w}}/data_ok", "device"),
    ("r3-lm-device-cuda", f"{L} --device cuda", "cuda"),
    ("r3-lm-config-device-cuda", f"lm {C}lm_device_cuda.toml", "lm.device"),
    ("r3-peft-device-cuda", f"{P} --device cuda", "cuda"),
    ("r3-peft-config-device-cuda", f"peft --config {C}peft_device_cuda.toml --quick", "device"),
    ("r3-theory-device-cuda", f"{T} --device cuda", "cuda"),
    ("r3-theory-config-device-cuda", f"{T} --config {C}theory_device_cuda.toml", "device"),
    ("r3-glue-train-header-only", f"{G} --data-dir {{w}}/data_headeronly", "no rows"),
    ("r3-glue-dev-header-only", f"{G} --data-dir {{w}}/data_devheaderonly", "SST-2/dev.tsv has a header but no rows"),
    ("r3-glue-label-arabic-digit", f"{G} --data-dir {{w}}/data_arabic", "SST-2/train.tsv, line 2"),
    ("r3-glue-label-underscore", f"{G} --data-dir {{w}}/data_underscore", "SST-2/train.tsv, line 2"),
    ("r3-glue-label-plus-sign", f"{G} --data-dir {{w}}/data_plus", "SST-2/train.tsv, line 2"),
    ("r3-glue-label-space-inside", f"{G} --data-dir {{w}}/data_spaced", "SST-2/train.tsv, line 2"),
    ("r3-glue-header-duplicate-column", f"{G} --data-dir {{w}}/data_dupcol", "appears more than once"),
    ("r3-glue-cola-empty-headerless", "glue --task cola --data-dir {w}/data_colaempty", "CoLA/train.tsv has no rows"),
    ("r3-glue-stsb-nan", f"glue --config {C}glue_stsb.toml --data-dir {{w}}/data_stsb_nan", "STS-B/train.tsv, line 2"),
    ("r3-glue-stsb-inf", f"glue --config {C}glue_stsb.toml --data-dir {{w}}/data_stsb_inf", "STS-B/train.tsv, line 2"),
    ("r3-glue-stsb-above-five", f"glue --config {C}glue_stsb.toml --data-dir {{w}}/data_stsb_big", "outside [0, 5]"),
    ("r3-glue-stsb-negative", f"glue --config {C}glue_stsb.toml --data-dir {{w}}/data_stsb_neg", "outside [0, 5]"),
    ("r3-glue-stsb-overflow", f"glue --config {C}glue_stsb.toml --data-dir {{w}}/data_stsb_overflow",
     "outside [0, 5]"),
    ("r3-glue-stsb-underscore", f"glue --config {C}glue_stsb.toml --data-dir {{w}}/data_stsb_underscore",
     "STS-B/train.tsv, line 2"),
    ("r3-glue-stsb-arabic", f"glue --config {C}glue_stsb.toml --data-dir {{w}}/data_stsb_arabic",
     "STS-B/train.tsv, line 2"),
    ("r3-peft-train-header-only", f"{P} --data-dir {{w}}/data_mrpc_headeronly", "MRPC/train.tsv has a header"),
    ("r3-peft-label-arabic", f"{P} --data-dir {{w}}/data_mrpc_arabic", "MRPC/train.tsv, line 2"),
    ("r3-glue-tokenizer-hub-name", f"glue --config {C}glue_tokenizer_hub.toml --data-dir {{w}}/data_ok",
     "downloads nothing"),
    ("r3-glue-tokenizer-folder-empty", f"{G} --data-dir {{w}}/data_ok --set tokenizer={{w}}/adir", "tokenizer"),
    ("r3-approx-seeds-flag-negative", f"{A} --seeds -1", "--seeds"),
    ("r3-approx-seeds-flag-huge", f"{A} --seeds 99999999999", "--seeds"),
    ("r3-approx-seeds-flag-arabic", f"{A} --seeds \u0661", "--seeds"),
    ("r3-glue-seeds-flag-negative", f"{G} --seeds -1", "--seeds"),
    ("r3-lm-seeds-flag-negative", f"{L} --seeds -1", "--seeds"),
    ("r3-peft-seeds-flag-negative", f"{P} --seeds -1", "--seeds"),
    ("r3-theory-seeds-flag-negative", f"{T} --seeds -1", "--seeds"),
    ("r3-approx-widths-flag-huge", f"{A} --widths 1048576", "--widths"),
    ("r3-approx-heads-flag-huge", f"{A} --heads 99999", "--heads"),
    ("r3-approx-seed-negative", f"approx {C}approx_seed_negative.toml", "study.seeds[0]"),
    ("r3-approx-score-seed-negative", f"approx {C}approx_score_seed_negative.toml", "study.score_seeds[0]"),
    ("r3-approx-seed-huge", f"approx {C}approx_seed_huge.toml", "study.seeds"),
    ("r3-approx-target-width-zero", f"approx {C}approx_target_width_zero.toml", "study.target_width"),
    ("r3-approx-d-model-huge", f"approx {C}approx_d_model_huge.toml", "study.d_model"),
    ("r3-approx-widths-huge", f"approx {C}approx_widths_huge.toml", "study.widths[0]"),
    ("r3-approx-parameter-budget", f"approx {C}approx_budget.toml", "parameters"),
    ("r3-approx-heads-huge", f"approx {C}approx_heads_huge.toml", "study.heads[0]"),
    ("r3-approx-blocks-zero", f"approx {C}approx_blocks_zero.toml", "study.n_blocks"),
    ("r3-approx-blocks-huge", f"approx {C}approx_blocks_huge.toml", "study.n_blocks"),
    ("r3-approx-coats-huge", f"approx {C}approx_coats_huge.toml", "study.coats"),
    ("r3-approx-folds-zero", f"approx {C}approx_folds_zero.toml", "study.folds[0]"),
    ("r3-approx-threads-zero", f"approx {C}approx_threads_zero.toml", "study.threads"),
    ("r3-approx-batch-huge", f"approx {C}approx_batch_huge.toml", "study.batch_size"),
    ("r3-approx-n-train-zero", f"approx {C}approx_n_train_zero.toml", "study.n_train"),
    ("r3-lm-d-model-huge", f"lm {C}lm_d_model_huge.toml", "lm.d_model"),
    ("r3-lm-layers-zero", f"lm {C}lm_layers_zero.toml", "lm.n_layers"),
    ("r3-lm-steps-huge", f"lm {C}lm_steps_huge.toml", "lm.steps"),
    ("r3-lm-eval-batch-zero", f"lm {C}lm_eval_batch_zero.toml", "lm.eval_batch"),
    ("r3-lm-batch-zero", f"lm {C}lm_batch_zero.toml", "lm.batch_size"),
    ("r3-lm-fold-zero", f"lm {C}lm_fold_zero.toml", "lm.fold"),
    ("r3-lm-dense-d-model-zero", f"lm {C}lm_dense_d_model_zero.toml", "lm.dense_d_model"),
    ("r3-lm-parameter-budget", f"lm {C}lm_budget.toml", "parameters"),
    ("r3-lm-seed-negative", f"lm {C}lm_seed_negative.toml", "lm.seeds[0]"),
    ("r3-glue-seed-negative", f"glue --config {C}glue_seed_negative.toml", "sweep.seeds[0]"),
    ("r3-glue-data-seed-negative", f"glue --config {C}glue_data_seed_negative.toml", "run.data_seed"),
    ("r3-glue-d-model-huge", f"glue --config {C}glue_d_model_huge.toml", "run.d_model"),
    ("r3-glue-max-len-zero", f"glue --config {C}glue_max_len_zero.toml", "run.max_len"),
    ("r3-glue-vocab-huge", f"glue --config {C}glue_vocab_huge.toml", "run.vocab_size"),
    ("r3-glue-layers-huge", f"glue --config {C}glue_layers_huge.toml", "run.n_layers"),
    ("r3-glue-parameter-budget", f"glue --config {C}glue_budget.toml --data-dir {{w}}/data_ok", "parameters"),
    ("r3-theory-widths-huge", f"{T} --config {C}theory_widths_huge.toml", "theory.width.widths[0]"),
    ("r3-theory-d-model-huge", f"{T} --config {C}theory_d_model_huge.toml", "theory.width.d_model"),
    ("r3-theory-parameter-budget", f"{T} --config {C}theory_budget.toml", "parameters"),
    ("r3-theory-per-coordinate-huge", f"theory threshold --config {C}theory_per_coordinate_huge.toml",
     "theory.threshold.per_coordinate[0]"),
    ("r3-theory-blocks-huge", f"theory angular --config {C}theory_blocks_huge.toml", "theory.angular.blocks[0]"),
    ("r3-theory-seed-negative", f"{T} --config {C}theory_seed_negative.toml", "theory.width.seeds[0]"),
    ("r3-theory-set-widths-huge", f"{T} --set width.widths=[1048576]", "theory.width.widths[0]"),
    ("r3-peft-seed-negative", f"peft --config {C}peft_seed_negative.toml", "sweep.seeds[0]"),
    ("r3-peft-max-len-zero", f"peft --config {C}peft_max_len_zero.toml", "max_len"),
    ("r3-peft-epochs-zero", f"peft --config {C}peft_epochs_zero.toml", "epochs"),
    ("r3-peft-batch-zero", f"peft --config {C}peft_batch_zero.toml", "batch_size"),
    ("r3-peft-subsample-zero", f"peft --config {C}peft_subsample_zero.toml", "subsample"),
    ("r3-peft-fisher-samples-negative", f"peft --config {C}peft_fisher_samples_negative.toml", "fisher_samples"),
    # --- class 5: nonsense accepted before
    ("r3-approx-heads-empty", f"approx {C}approx_heads_empty.toml", "study.heads"),
    ("r3-approx-variants-empty", f"approx {C}approx_variants_empty.toml", "study.variants"),
    ("r3-approx-methods-empty", f"approx {C}approx_methods_empty.toml", "study.methods"),
    ("r3-approx-score-seeds-empty", f"approx {C}approx_score_seeds_empty.toml", "study.score_seeds"),
    ("r3-approx-variants-flag-comma", f"{A} --variants ,", "--variants"),
    ("r3-approx-methods-flag-comma", f"{A} --methods ,", "--methods"),
    ("r3-approx-widths-flag-comma", f"{A} --widths ,", "--widths"),
    ("r3-approx-heads-flag-comma", f"{A} --heads ,", "--heads"),
    ("r3-glue-task-flag-comma", "glue --task ,", "--task"),
    ("r3-glue-method-flag-comma", "glue --task sst2 --method ,", "--method"),
    ("r3-glue-norm-flag-comma", "glue --task sst2 --norm ,", "--norm"),
    ("r3-glue-tasks-empty", f"glue --config {C}glue_tasks_empty.toml", "sweep.tasks"),
    ("r3-glue-methods-empty", f"glue --config {C}glue_methods_empty.toml", "sweep.methods"),
    ("r3-glue-norms-empty", f"glue --config {C}glue_norms_empty.toml", "sweep.norms"),
    ("r3-glue-seeds-empty", f"glue --config {C}glue_seeds_empty.toml", "sweep.seeds"),
    ("r3-lm-methods-empty", f"lm {C}lm_methods_empty.toml", "lm.methods"),
    ("r3-lm-methods-flag-comma", "lm --methods ,", "--methods"),
    ("r3-peft-tasks-empty", f"peft --config {C}peft_tasks_empty.toml", "tasks"),
    ("r3-peft-methods-empty", f"peft --config {C}peft_methods_empty.toml", "methods"),
    ("r3-peft-seeds-empty", f"peft --config {C}peft_seeds_empty.toml", "seeds"),
    ("r3-peft-task-flag-comma", "peft --task , --method ln", "--task"),
    ("r3-report-also-the-store", "report --store {w}/store.db --also {w}/store.db --out {w}/rep", "--also"),
    ("r3-report-also-twice", "report --store {w}/other.db --also {w}/store.db --also {w}/store.db --out {w}/rep",
     "--also"),
    # --- class 6: endpoints and the machine's limits
    ("r3-approx-threads-huge", f"{A} --threads 100000", "--threads"),
    ("r3-glue-threads-huge", f"{G} --data-dir {{w}}/data_ok --threads 100000", "--threads"),
    ("r3-lm-threads-huge", f"{L} --threads 100000", "--threads"),
    ("r3-peft-threads-huge", f"{P} --threads 100000", "--threads"),
    ("r3-theory-threads-huge", f"{T} --threads 100000", "--threads"),
    ("r3-approx-workers-huge", f"{A} --workers 100000", "--workers"),
    ("r3-approx-retries-huge", f"{A} --retries 1000", "--retries"),
    ("r3-approx-retries-negative", f"{A} --retries -1", "--retries"),
    ("r3-approx-address-silent", f"{A} --executor ray --address 127.0.0.1:{{silent}}", "--address"),
    ("r3-approx-address-junk", f"{A} --executor ray --address 127.0.0.1:{{junk}}", "not as Ray"),
    ("r3-approx-address-closed", f"{A} --executor ray --address 127.0.0.1:{{closed}}", "nothing answers"),
    ("r3-glue-address-silent", f"{G} --data-dir {{w}}/data_ok --executor ray --address 127.0.0.1:{{silent}}",
     "--address"),
    ("r3-lm-address-silent", f"{L} --executor ray --address ray://127.0.0.1:{{silent}}", "--address"),
    ("r3-peft-address-silent", f"{P} --executor ray --address 127.0.0.1:{{silent}}", "--address"),
    ("r3-theory-address-silent", f"{T} --executor ray --address 127.0.0.1:{{silent}}", "--address"),
    ("r3-approx-track-http-closed", f"{A} --track mlflow:http://127.0.0.1:{{closed}}", "--track"),
    ("r3-approx-track-http-silent", f"{A} --track mlflow:http://127.0.0.1:{{silent}}", "--track"),
    ("r3-approx-track-sqlite-directory", f"{A} --track mlflow:sqlite:///{{w}}/adir", "folder"),
    ("r3-runs-export-mlflow-http-closed", "runs export --store {w}/store.db --mlflow http://127.0.0.1:{closed}",
     "--mlflow"),
    ("r3-runs-export-mlflow-http-silent", "runs export --store {w}/store.db --mlflow http://127.0.0.1:{silent}",
     "--mlflow"),
    ("r3-runs-export-mlflow-sqlite-directory", "runs export --store {w}/store.db --mlflow sqlite:///{w}/adir",
     "folder"),
    ("r3-runs-export-mlflow-sqlite-no-folder", "runs export --store {w}/store.db --mlflow sqlite:///{w}/nowhere/m.db",
     "does not exist"),
    ("r3-runs-export-mlflow-into-the-store", "runs export --store {w}/store.db --mlflow sqlite:///{w}/store.db",
     "sltlab results store"),
    ("r3-runs-export-mlflow-unknown-scheme", "runs export --store {w}/store.db --mlflow s3://bucket/x",
     "unsupported"),
    ("r3-runs-list-with-csv", "runs list --store {w}/store.db --csv {w}/x.csv", "--csv"),
    # --- class 8: type confusions in configs name their field
    ("r3-glue-sweep-int", f"glue --config {C}glue_sweep_int.toml", "sweep"),
    ("r3-glue-sweep-string", f"glue --config {C}glue_sweep_string.toml", "sweep"),
    ("r3-glue-run-int", f"glue --config {C}glue_run_int.toml", "sweep.run"),
    ("r3-glue-method-int", f"glue --config {C}glue_method_int.toml", "sweep.method"),
    ("r3-glue-task-int", f"glue --config {C}glue_task_int.toml", "sweep.task"),
    ("r3-glue-method-dense-int", f"glue --config {C}glue_method_dense_int.toml", "sweep.method.dense"),
    ("r3-glue-seeds-string", f"glue --config {C}glue_seeds_string.toml", "sweep.seeds"),
    ("r3-glue-steps-float", f"glue --config {C}glue_steps_float.toml", "run.steps"),
    ("r3-glue-set-run-int", "glue --task sst2 --set run=3", "sweep.run"),
    ("r3-peft-sweep-int", f"peft --config {C}peft_sweep_int.toml", "sweep"),
    ("r3-peft-base-int", f"peft --config {C}peft_base_int.toml", "sweep.base"),
    ("r3-peft-lr-grid-int", f"peft --config {C}peft_lr_grid_int.toml", "sweep.lr_grid"),
    ("r3-peft-lr-grid-string", f"peft --config {C}peft_lr_grid_string.toml", "lr_grid"),
    ("r3-approx-heads-int", f"approx {C}approx_heads_int.toml", "study.heads"),
    ("r3-approx-keep-bool", f"approx {C}approx_keep_bool.toml", "study.keep"),
    ("r3-approx-device-int", f"approx {C}approx_device_int.toml", "study.device"),
    ("r3-approx-seeds-bool", f"approx {C}approx_seeds_bool.toml", "study.seeds[0]"),
    ("r3-approx-seeds-string", f"approx {C}approx_seeds_string.toml", "study.seeds"),
    ("r3-approx-name-empty", f"approx {C}approx_name_empty.toml", "study.name"),
    ("r3-approx-store-empty-string", f"approx {C}approx_store_empty.toml", "study.store"),
    ("r3-lm-methods-string", f"lm {C}lm_methods_string.toml", "lm.methods"),
    ("r3-lm-seeds-int", f"lm {C}lm_seeds_int.toml", "lm.seeds"),
    ("r3-lm-steps-float", f"lm {C}lm_steps_float.toml", "lm.steps"),
    ("r3-lm-d-ff-string", f"lm {C}lm_d_ff_string.toml", "lm.d_ff"),
    ("r3-lm-dataset-empty", f"lm {C}lm_dataset_empty.toml", "lm.dataset"),
    ("r3-theory-width-int", f"{T} --config {C}theory_width_int.toml", "theory.width"),
    ("r3-theory-construct-int", f"{T} --config {C}theory_construct_int.toml", "theory.construct"),
    ("r3-theory-seeds-string", f"{T} --config {C}theory_seeds_string.toml", "theory.width.seeds"),
]
CASES += R3


# ------------------------------------------------------------------------------------------------------ the inputs
def _glue_data(root: Path, name: str, train: str | bytes | None = None, rm_task: bool = False,
               only: tuple[str, ...] = ()) -> None:
    """A copy of the GLUE fixtures (`only`: just these task folders, so the snapshot each case takes stays small)."""
    d = root / name
    if only:
        for task in only:
            shutil.copytree(FIXTURES / task, d / "glue" / task)
    else:
        shutil.copytree(FIXTURES, d / "glue")
    sst = d / "glue" / "SST-2" / "train.tsv"
    if isinstance(train, bytes):
        sst.write_bytes(train)
    elif train is not None:
        sst.write_text(train, encoding="utf-8")
    if rm_task:
        shutil.rmtree(d / "glue" / "RTE")


def _tiny_ticket(path: Path) -> bytes:
    from sltlab.nn.init import InitSpec
    from sltlab.nn.transformer import ModelConfig
    from sltlab.tickets.artifact import export_ticket
    from sltlab.tickets.spec import ModelSpec, build_model
    from sltlab.tickets.supermask import SupermaskConfig

    spec = ModelSpec("encoder-classifier", ModelConfig(d_model=8, n_heads=2, n_layers=1, vocab_size=20, max_len=8),
                     InitSpec(seed=1), SupermaskConfig(keep=0.5))
    return export_ticket(build_model(spec), spec, path)


def reseal(blob: bytes, edit) -> bytes:  # noqa: ANN001 - edit(header dict) changes it in place
    """A .slt with its header edited and its checksum recomputed: what a hostile or careless edit produces."""
    import hashlib
    import json
    import struct
    import zlib

    prefix = struct.Struct("<8sHHI")
    magic, version, reserved, hlen = prefix.unpack_from(blob)
    header = json.loads(zlib.decompress(blob[prefix.size:prefix.size + hlen]))
    payload = blob[prefix.size + hlen:-32]
    edit(header)
    hz = zlib.compress(json.dumps(header, sort_keys=True, separators=(",", ":")).encode(), 9)
    body = prefix.pack(magic, version, reserved, len(hz)) + hz + payload
    return body + hashlib.sha256(body).digest()


def _crafted_tickets(w: Path, blob: bytes) -> None:
    """Tickets whose checksum is right but whose header describes something else."""
    import hashlib

    def spec_model(**kw):  # noqa: ANN202
        return lambda h: h["spec"]["model"].update(kw)

    def first_mask(**kw):  # noqa: ANN202
        return lambda h: h["masks"][0].update(kw)

    edits = {
        "t_dmodel.slt": spec_model(d_model=2**14, n_heads=1, n_layers=64),
        "t_maxlen.slt": spec_model(max_len=-5),
        "t_probe_big.slt": lambda h: h["probe"].update(seed=2**70),
        "t_probe_neg.slt": lambda h: h["probe"].update(seed=-(2**70)),
        "t_maskshape.slt": first_mask(shape=[2**20, 2**10], ones=0),
        "t_masknotlayer.slt": first_mask(name="no.such.layer"),
        "t_masktwice.slt": lambda h: h["masks"].append(dict(h["masks"][0])),
        "t_seed.slt": lambda h: h["spec"]["init"].update(seed=h["spec"]["init"]["seed"] + 1),
        "t_scheme.slt": lambda h: h["spec"]["init"].update(scheme="xavier-uniform"),
    }
    for name, edit in edits.items():
        (w / name).write_bytes(reseal(blob, edit))
    body = blob[:-32] + b"\0" * 64  # padded past what the header declares, checksum recomputed
    (w / "t_padded.slt").write_bytes(body + hashlib.sha256(body).digest())


def _stores(w: Path) -> dict[str, str]:
    """Files that are not sltlab stores, and a store whose rows are not what sltlab writes."""
    from sltlab.runs.store import Store

    (w / "empty.db").write_bytes(b"")
    with sqlite3.connect(w / "foreign.db") as db:
        db.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    with sqlite3.connect(w / "otherapp.db") as db:
        db.execute("PRAGMA application_id = 1234")
        db.execute("CREATE TABLE runs (run_id TEXT)")
    Store(w / "newer.db").close()
    with sqlite3.connect(w / "newer.db") as db:
        db.execute("PRAGMA user_version = 99")
    with sqlite3.connect(w / "renamed.db") as db:
        db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, kind TEXT, status TEXT, seed INTEGER, config TEXT, "
                   "metricz TEXT, timings TEXT, error TEXT, code_version TEXT, host TEXT, started REAL, finished REAL)")
    Store(w / "other.db").close()
    bad = {  # name -> (run id, column values that are not what sltlab writes)
        "badjson": ("approx-0000000000b1", {"metrics": "{not json"}),
        "listmetrics": ("approx-0000000000b2", {"metrics": "[1, 2]"}),
        "textstarted": ("approx-0000000000b3", {"started": "yesterday"}),
        "nullconfig": ("approx-0000000000b4", {"config": "null"}),
        "badstatus": ("approx-0000000000b5", {"status": "done-ish"}),
        "kindmismatch": ("approx-0000000000b6", {"kind": "glue"}),
        "pathid": ("approx-../../../../tmp/x", {}),
    }
    with sqlite3.connect(w / "store.db") as db:
        for rid, cols in bad.values():
            row = {"run_id": rid, "kind": "approx", "status": "finished", "config": "{}", "metrics": "{}",
                   "started": 1.0, **cols}
            db.execute(f"INSERT INTO runs({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    return {name: rid for name, (rid, _) in bad.items()}


def _special_files(w: Path) -> None:
    import stat

    os.mkfifo(w / "fifo")
    (w / "alink").symlink_to(w / "afile")
    (w / "deadlink").symlink_to(w / "nowhere" / "x")
    with __import__("contextlib").suppress(OSError):  # a device node needs root; its row is skipped without one
        os.mknod(w / "chardev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (w / "linked").mkdir()
    for name in ("glue_table.md", "approx.csv", "report.md"):
        (w / "linked" / name).symlink_to(w / "afile")


def _round_three_data(w: Path) -> None:
    SST = ("SST-2",)
    header = "sentence\tlabel\n"
    _glue_data(w, "data_headeronly", header, only=SST)
    _glue_data(w, "data_devheaderonly", only=SST)
    (w / "data_devheaderonly" / "glue" / "SST-2" / "dev.tsv").write_text(header)
    _glue_data(w, "data_arabic", header + "a fine film\t\u0661\n", only=SST)
    _glue_data(w, "data_underscore", header + "a fine film\t0_1\n", only=SST)
    _glue_data(w, "data_plus", header + "a fine film\t+1\n", only=SST)
    _glue_data(w, "data_spaced", header + "a fine film\t1 0\n", only=SST)
    _glue_data(w, "data_dupcol", "sentence\tsentence\tlabel\na\tb\t1\n", only=SST)
    _glue_data(w, "data_colaempty", only=("CoLA",))
    (w / "data_colaempty" / "glue" / "CoLA" / "train.tsv").write_text("")
    stsb = ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            "0\tmain\tx\t2012\t1\tnone\tnone\tA plane.\tA jet.\t{}\n")
    for name, score in (("nan", "nan"), ("inf", "inf"), ("big", "6.0"), ("neg", "-0.5"), ("overflow", "1e999"),
                        ("underscore", "1_0"), ("arabic", "\u0663.5")):
        _glue_data(w, f"data_stsb_{name}", only=("STS-B",))
        (w / f"data_stsb_{name}" / "glue" / "STS-B" / "train.tsv").write_text(stsb.format(score))
    mrpc = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    _glue_data(w, "data_mrpc_headeronly", only=("MRPC",))
    (w / "data_mrpc_headeronly" / "glue" / "MRPC" / "train.tsv").write_text("\ufeff" + mrpc)
    _glue_data(w, "data_mrpc_arabic", only=("MRPC",))
    (w / "data_mrpc_arabic" / "glue" / "MRPC" / "train.tsv").write_text(mrpc + "\u0661\t1\t2\tA b.\tA c.\n")


def _checkpoint(path: Path) -> bytes:
    from sltlab.nn.init import InitSpec
    from sltlab.nn.transformer import ModelConfig
    from sltlab.tickets.checkpoint import save_checkpoint
    from sltlab.tickets.spec import ModelSpec, build_model
    from sltlab.tickets.supermask import SupermaskConfig

    spec = ModelSpec("encoder-classifier", ModelConfig(d_model=8, n_heads=2, n_layers=1, vocab_size=20, max_len=8),
                     InitSpec(seed=1), SupermaskConfig(keep=0.5))
    save_checkpoint(path, build_model(spec), spec)
    return path.read_bytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    from sltlab.runs.store import Store

    w = tmp_path_factory.mktemp("inputs")
    (w / "cfg").mkdir()
    for name, content in {**configs(), **configs_round_three(), "glue_ok.toml": glue()}.items():
        (w / "cfg" / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (w / "adir").mkdir()
    (w / "afile").write_text("just some text\n")
    (w / "notdb.db").write_text("this is not a database\n" * 20)
    (w / "binary.bin").write_bytes(bytes((i * 37 + 11) % 256 for i in range(4096)))
    (w / "empty.slt").write_bytes(b"")
    (w / "garbage.json").write_text('{"not": "a tokenizer"}')
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(w / "nopad.json"))
    (w / "tiny.txt").write_text("to be or not")
    (w / "short.txt").write_text("to be or not to be, that is the question\n" * 4)
    blob = _tiny_ticket(w / "ticket.slt")
    (w / "ticket_truncated.slt").write_bytes(blob[: len(blob) // 2])
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    (w / "ticket_flipped.slt").write_bytes(bytes(flipped))
    header = "sentence\tlabel\n"
    _glue_data(w, "data_ok")
    (w / "data_ok" / "tinyshakespeare").mkdir()
    (w / "data_ok" / "tinyshakespeare" / "input.txt").write_text("First Citizen: speak, speak.\n" * 100)
    _glue_data(w, "data_notask", rm_task=True)
    _glue_data(w, "data_extra", header + "a fine film\t1\nbad\t0\textra\n")
    _glue_data(w, "data_short", header + "a fine film\t1\nbad\t0\njust words\n")
    _glue_data(w, "data_latin1", (header + "caf\xe9 film\t1\n").encode("latin-1"))
    _glue_data(w, "data_binary", bytes(range(128, 256)) * 8)
    _glue_data(w, "data_label", header + "a fine film\tpositive\n")
    _glue_data(w, "data_header", "text\tlabel\na fine film\t1\n")
    _glue_data(w, "data_empty", "")
    _glue_data(w, "data_tsvdir")
    (w / "data_tsvdir" / "glue" / "SST-2" / "train.tsv").unlink()
    (w / "data_tsvdir" / "glue" / "SST-2" / "train.tsv").mkdir()
    ckpt = _checkpoint(w / "store_art" / "ticket.safetensors")
    rids = {}
    with Store(w / "store.db") as store:
        for name, data in (("nockpt", None), ("garbage", b"\x00garbage" * 10), ("truncated", ckpt[: len(ckpt) // 2]),
                           ("tampered", ckpt[:-1] + bytes([ckpt[-1] ^ 1]))):
            rid = store.start("approx", {"case": name}, 0)
            store.finish(rid, {"rel_error": 0.5})
            rids[name] = rid
            if data is not None:
                (store.artifact_dir(rid) / "ticket.safetensors").write_bytes(data)
    rids.update(_stores(w))
    _crafted_tickets(w, blob)
    _special_files(w)
    _round_three_data(w)
    # `with sqlite3.connect(...)` commits but does not close; a connection left for the cyclic collector would
    # close (checkpoint its WAL, delete -wal/-shm) in the middle of some later test and look like a write by it
    import gc

    gc.collect()
    assert not [p.name for p in w.rglob("*") if p.name.endswith(("-wal", "-shm"))], "a store was left open"
    return w, rids


@pytest.fixture(scope="module")
def ports():
    """{silent}: accepts connections and never answers; {junk}: answers every connection with an HTTP/1 line;
    {closed}: nothing listens there."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes the handshakes; nobody reads
    junk = socket.socket()
    junk.bind(("127.0.0.1", 0))
    junk.listen(64)

    def answer() -> None:
        while True:
            try:
                conn, _ = junk.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()[1]
    probe.close()
    yield {"silent": silent.getsockname()[1], "junk": junk.getsockname()[1], "closed": closed}
    silent.close()
    junk.close()


def _snapshot(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under `roots` with its kind, size and modification time (in ns): a write changes one of them."""
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            st = p.lstat()
            out[f"{root.name}/{p.relative_to(root)}"] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


class WorkStarted(BaseException):
    """Raised by the traps: validation let an input through to the expensive part."""


def _trap(*_a, **_k):
    raise WorkStarted("the command started work before rejecting its input")


@pytest.fixture
def traps(monkeypatch):
    import sltlab.report
    import sltlab.report.peft
    import sltlab.runs.executor
    import sltlab.tasks.approx
    import sltlab.tasks.glue_run
    import sltlab.tasks.lm_run
    import sltlab.tasks.peft
    import sltlab.tasks.theory.runner

    monkeypatch.setattr(sltlab.runs.executor, "run_cells", _trap)  # every study's cells go through it
    monkeypatch.setattr(sltlab.tasks.approx, "run_cell", _trap)
    monkeypatch.setattr(sltlab.tasks.glue_run, "train_cell", _trap)
    monkeypatch.setattr(sltlab.tasks.lm_run, "run_cell", _trap)
    monkeypatch.setattr(sltlab.tasks.peft, "run_sweep", _trap)
    monkeypatch.setattr(sltlab.report.peft, "write_report", _trap)
    monkeypatch.setattr(sltlab.tasks.theory.runner.Runner, "__call__", _trap)
    monkeypatch.setattr(sltlab.report, "build_report", _trap)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, world, ports, traps, tmp_path, tmp_path_factory, monkeypatch, capsys):
    _id, template, expected = case
    w, rids = world
    if "cuda" in template and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: a CUDA device is not a bad input here")
    if "{w}/chardev" in template and not (w / "chardev").exists():
        pytest.skip("making a device node needs root")
    text = template.replace("{w}", str(w))
    for name, rid in rids.items():
        text = text.replace(f"{{rid:{name}}}", rid)
    for name, port in ports.items():
        text = text.replace(f"{{{name}}}", str(port))
    monkeypatch.setenv("SLTLAB_CONNECT_TIMEOUT", "0.5")  # endpoints that do not answer: half a second each
    argv = text.split()
    expected = expected.replace("{w}", str(w))
    # The tokenizer cache is a cache, kept outside the folders that must stay untouched.
    monkeypatch.setenv("SLTLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("SLTLAB_DATA", str(w / "data_ok"))
    monkeypatch.chdir(tmp_path)
    before = _snapshot(w, tmp_path)
    threads = torch.get_num_threads()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}, stderr: {err!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err!r}"
    assert "Traceback" not in err
    assert lines[0].startswith("sltlab"), lines[0]
    assert expected in lines[0], f"{expected!r} not named in: {lines[0]}"
    assert _snapshot(w, tmp_path) == before, "the command wrote files although it rejected its input"


def test_closed_pipe_is_quiet(tmp_path):
    """`sltlab runs list | head -1`: the reader goes away; no BrokenPipeError, no traceback."""
    from sltlab.runs.store import Store

    Store(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as db:  # one transaction: the rows only need to outgrow a pipe's buffer
        db.executemany("INSERT INTO runs(run_id, kind, status, config, metrics, started) VALUES (?, 'approx', "
                       "'finished', '{}', '{\"rel_error\": 0.1}', 0)", [(f"approx-{i:012x}",) for i in range(3000)])
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = f"{sys.executable} -m sltlab.cli runs list --store {tmp_path / 's.db'} | head -1"
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, env=env)
    assert out.stdout.startswith("run id"), out.stdout
    assert out.stderr == "", out.stderr
    assert out.returncode == 141  # what a tool killed by SIGPIPE returns; a shell without pipefail sees head's 0
