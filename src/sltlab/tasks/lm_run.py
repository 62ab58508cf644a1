"""One supermask language model cell: a byte-level causal transformer, trained dense or searched as a ticket.

Methods (each optionally with "+scales"):
    dense            every weight trained (the reference of the same shape);
    edge-popup       top-`keep` masks over the random weights, straight-through (Ramanujan et al. 2020);
    annealed         sampled masks with an annealed temperature, deterministic 1[scores > 0] at the end.
"+scales" adds learned continuous scales, `scale_groups`:
    sltlab  per-block scalar attention/MLP residual scales (`ModelConfig(residual_scales=True)`), per-head scales on
            q/k/v/o and per-layer ones elsewhere (`SupermaskConfig(scale="head")`), a scalar logit scale
            (`ModelSpec(options={"logit_scale": True})`): a few hundred floats;
    golf    the parameter-golf submission's groups (`ModelConfig(scale_groups="golf")`): attn_scale[d] and
            mlp_scale[d] per block, head_scale[H] on the attention output, pre_logit_scale[d] (33,920 floats at
            16 x 1024).
A random network cannot change its weights' magnitudes, so these few floats are what let a mask match the
output scale.

The submission's architecture and recipe are options (their defaults keep every earlier run id): activation,
mlp_mult, a gain-free RMS norm, qk_norm, embed_norm, rotary positions; `score_init` (scores start at a constant,
mask 1[s >= 0]); `data_order` ("stream": the text in order, as the challenge's loader reads it); `preset`
(PRESETS: "submission" is its recipe setting for setting, "sltlab" sltlab's tuned one), filled in under a config's
own settings when the study is read. `seed` is the weight seed (the random network, the unit of replication);
`score_seed` (default: `seed`) seeds the score draw and the batch order. Data: text files and corpora as bytes,
byte-level BPE or SentencePiece (a model file, or one trained on the train split), or the challenge's token shards
(`dataset = "shards:DIR"`), bits per byte counted by the challenge's byte rules (sltlab.tasks.tokens).

Every cell is a run in the store (kind "lm"): config {dataset, method, scales, norm, seed, shape, ...},
config also `data`, the fingerprint of the corpus files (sltlab.paths.fingerprint; for SentencePiece also the
model file); metrics {val_bpb, artifact_bytes, params, density, ...}, timings {train_s, tokens_per_s, ...}
(wall-clock values are timings, so two identical runs have identical metrics); beside it `ticket.safetensors` (the
checkpoint) and `ticket.slt` (the compact artifact whose size is reported); a dense run also writes `dense.int8`
(the challenge's int8 + zlib rules, sltlab.tickets.quant) and scores it reloaded (int8_val_bpb). code_bytes: the
sltlab files a fresh interpreter imports to load and score an artifact (measured, `loader_files`).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from sltlab.errors import ConfigError
from sltlab.nn.init import INIT_SCHEMES, InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.paths import fingerprint
from sltlab.runs.config import check_range
from sltlab.runs.device import (
    Where,
    determinism,
    resolve_device,
    sync,
    to_device,
)
from sltlab.runs.executor import Cell, CellContext, CellOutput, ExecOptions, run_cells
from sltlab.tasks.text import (
    VOCAB,
    ByteCorpus,
    check_bpe_vocab,
    check_length,
    corpus_files,
    eval_bpb,
    lm_loss,
    load_corpus,
    random_batches,
    stream_batches,
    tokenize_bpe,
)
from sltlab.tickets import methods
from sltlab.tickets.search import SearchConfig, run_search
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, mask_density, supermasks

KIND = "lm"
MAX_SEQ_LEN = 65536
BASE_METHODS = methods.names("lm")  # the methods registry (sltlab.tickets.methods)
SCALE_FREE = ("*attn_scale", "*mlp_scale", "logit_scale")
GOLF_FREE = ("*attn_scale", "*mlp_scale", "*head_scale", "pre_logit_scale")  # the submission's four groups
SHARDS = "shards:"  # dataset = "shards:DIR": the challenge's token shards in DIR
RECIPE_DEFAULTS: dict[str, Any] = {
    "n_kv_heads": None, "tie_embeddings": False, "logit_softcap": None, "lr_schedule": "cosine",
    "warmdown_steps": 0, "temperature_schedule": "geometric", "forward_mask": "sample", "tokenizer": "bytes",
    "lr_scales": None,
    # issue 22: the submission's architecture, its scale groups and mask start, data order, tokenizer file,
    # and the score seed (issue 20). Hashed only where they differ from these, so earlier run ids stay.
    "activation": "gelu", "mlp_mult": None, "qk_norm": False, "embed_norm": False, "positions": "learned",
    "scale_groups": "sltlab", "score_init": None, "data_order": "random", "tokenizer_model": None,
    "score_seed": None,
}
#: Recipe presets (`preset = NAME` in a config, `--set preset=NAME` on the command line): the settings each
#: names are filled in under the config's own, so a config that sets one of them keeps its value.
#:   submission  the parameter-golf supermask submission (PR 1753, train_supermask.py), setting for setting:
#:               scores start at 0 and the mask is 1[s >= 0] (every weight kept at step 0), the forward is that
#:               mask with the sigmoid(s/T) gradient, T linear 1 -> 0.5, Adam lr 0.1 for masks and scales alike,
#:               constant lr with no warm-up and a 200-step linear warm-down, clip 1.0, its four scale groups,
#:               batches streamed in order (no shuffling)
#:   sltlab      sltlab's tuned recipe (docs/results/lm.md, issue 14's grid): centred seeded scores (mask 1[s > 0]),
#:               the same threshold forward, T geometric 1 -> 0.5, mask lr 0.02, scales lr 0.01, 10 warm-up and
#:               60 warm-down steps, sltlab's scales (scalar residual scales, per-head mask scales on q/k/v/o, a
#:               logit scale), random windows
PRESETS: dict[str, dict[str, Any]] = {
    "submission": {
        "forward_mask": "threshold", "score_init": 0.0, "temperature_start": 1.0, "temperature_end": 0.5,
        "temperature_schedule": "linear", "lr_annealed": 0.1, "lr_scales": 0.1, "lr_schedule": "constant",
        "warmup": 0, "warmdown_steps": 200, "grad_clip": 1.0, "scale_groups": "golf", "data_order": "stream",
    },
    "sltlab": {
        "forward_mask": "threshold", "score_init": None, "temperature_start": 1.0, "temperature_end": 0.5,
        "temperature_schedule": "geometric", "lr_annealed": 0.02, "lr_scales": 0.01, "lr_schedule": "constant",
        "warmup": 10, "warmdown_steps": 60, "grad_clip": 1.0, "scale_groups": "sltlab", "data_order": "random",
    },
}
#: The challenge's artifact cap (bytes of the artifact + bytes of the code).
BYTE_CAP = 16_000_000


def parse_method(text: str, field: str = "lm.methods") -> tuple[str, bool]:
    """'annealed+scales' -> ('annealed', True)."""
    base, _, suffix = text.partition("+")
    if base not in BASE_METHODS or suffix not in ("", "scales"):
        raise ConfigError(
            field, f"unknown method {text!r}", "dense, edge-popup or annealed, each optionally with '+scales'"
        )
    return base, suffix == "scales"


@dataclass(frozen=True)
class LMStudy(Where):
    """A set of LM cells (methods x seeds) over one model shape and data set; TOML fields at the top level."""

    name: str = "lm"
    dataset: str = "tinyshakespeare"
    methods: tuple[str, ...] = ("dense", "edge-popup", "annealed+scales")
    seeds: tuple[int, ...] = (0,)
    norm: str = "pre-ln"
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int | None = None
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 400
    keep: float = 0.5
    init: str = "kaiming-uniform"
    init_gain: float = 1.0
    lr_dense: float = 3e-3
    lr_edge_popup: float = 0.01
    lr_annealed: float = 0.2
    warmup: int = 20
    grad_clip: float = 1.0
    temperature_start: float = 1.0
    temperature_end: float = 0.05
    val_fraction: float = 0.1
    eval_bytes: int = 262144
    eval_batch: int = 32
    floats: Literal["float32", "float16", "bfloat16"] = "float32"
    # A folded model (sltlab.nn.transformer): `fold` stages of n_layers / fold layers sharing one random block,
    # a mask per layer ("unshared") or per stage ("shared"). Hashed into run ids only when set.
    fold: int | None = None
    mask_sharing: Literal["unshared", "shared"] = "unshared"
    # The parameter-golf recipe's parts (docs/results/lm.md). Each is hashed into run ids only when it differs
    # from its default, so every earlier run keeps its id.
    n_kv_heads: int | None = None          # grouped-query attention (None = n_heads)
    tie_embeddings: bool = False           # LM head = token embedding (one tensor, one mask)
    logit_softcap: float | None = None     # logits -> c tanh(logits / c)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmdown_steps: int = 0                # linear lr fall to 0 over the last this many steps
    temperature_schedule: Literal["geometric", "linear", "constant"] = "geometric"
    # annealed masks: train on a sample of Bernoulli(sigmoid(s/T)) ("sample"), or on the mask evaluation uses,
    # 1[s > 0], with the sigmoid's gradient ("threshold": the recipe's fix, docs/results/lm.md)
    forward_mask: Literal["sample", "threshold"] = "sample"
    # peak lr of the trainable floats that are not scores (the scale groups, a trainable norm) in ticket runs;
    # None = the method's own lr (scores and scales alike, as before)
    lr_scales: float | None = None
    tokenizer: Literal["bytes", "bpe", "sentencepiece"] = "bytes"
    vocab_size: int = 1024                 # the BPE's / SentencePiece model's vocabulary (bytes: always 256)
    # sentencepiece: the .model file to use; None = train one on the train split with the challenge's settings
    tokenizer_model: str | None = None
    # The submission's architecture (sltlab.nn.transformer's module docstring); defaults: sltlab's.
    activation: Literal["gelu", "relu", "relu2"] = "gelu"
    mlp_mult: int | None = None
    qk_norm: bool = False
    embed_norm: bool = False
    positions: Literal["learned", "rope"] = "learned"
    # what "+scales" adds: "sltlab" (scalar residual scales, per-head mask scales, a logit scale) or "golf" (the
    # submission's: attn_scale[d], mlp_scale[d], head_scale[H] on the attention output, pre_logit_scale[d])
    scale_groups: Literal["sltlab", "golf"] = "sltlab"
    # annealed masks: every score starts here and the mask keeps ties (1[s >= 0]); None = seeded, centred draw
    score_init: float | None = None
    # batches: "random" windows (seeded) or "stream" (the text in order, as the challenge's loader reads it)
    data_order: Literal["random", "stream"] = "random"
    # the seed of the score init and the batch order; None = `seed` (the weight seed), as before issue 20
    score_seed: int | None = None
    preset: str | None = None              # recorded; applied when the study is read (study_from_dict)
    # The equal-bytes partner: dense cells use this width instead of d_model (an int8 dense model stored in
    # about the bytes of the supermask model's masks); None = the same shape as the tickets.
    dense_d_model: int | None = None
    device: str = field(default="auto", kw_only=True)  # the rest of sltlab.runs.device.Where as inherited
    store: str = "runs/sltlab.db"

    def validate(self) -> None:
        for i, m in enumerate(self.methods):
            parse_method(m, f"lm.methods[{i}]")
        if not self.methods or not self.seeds:
            raise ConfigError("lm.methods", "needs at least one method and one seed")
        NormSpec.parse(self.norm, field="lm.norm")
        if self.init not in INIT_SCHEMES:
            raise ConfigError("lm.init", f"unknown scheme {self.init!r}", " | ".join(INIT_SCHEMES))
        for name in ("d_model", "n_heads", "n_layers", "seq_len", "batch_size", "steps", "eval_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"lm.{name}", f"{getattr(self, name)} must be at least 1", "an integer >= 1"
                )
        if self.d_model % self.n_heads:
            raise ConfigError(
                "lm.n_heads",
                f"d_model={self.d_model} is not divisible by {self.n_heads}",
                "a divisor of d_model",
            )
        check_range("lm.keep", self.keep, 0.0, 1.0, lo_open=True)
        # The position table and the attention scores grow with seq_len (squared); past this no machine holds them.
        check_range("lm.seq_len", self.seq_len, 1, MAX_SEQ_LEN)
        check_range("lm.init_gain", self.init_gain, 0.0, 1e3, lo_open=True)
        check_range("lm.warmup", self.warmup, 0)
        check_range("lm.grad_clip", self.grad_clip, 0.0)
        try:  # the search's own checks (temperatures), now rather than when the first cell starts
            SearchConfig(steps=self.steps, lr=1.0, temperature_start=self.temperature_start,
                         temperature_end=self.temperature_end, schedule=self.lr_schedule,
                         warmdown_steps=self.warmdown_steps, temperature_schedule=self.temperature_schedule)
        except ConfigError as err:
            raise ConfigError(err.field.replace("search.", "lm.", 1), err.problem, err.accepts) from None
        check_range("lm.val_fraction", self.val_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        for name in ("lr_dense", "lr_edge_popup", "lr_annealed"):
            check_range(f"lm.{name}", getattr(self, name), 0.0, lo_open=True)
        check_range("lm.eval_bytes", self.eval_bytes, 0)
        self.check_where("lm.")
        if self.lr_scales is not None:
            check_range("lm.lr_scales", self.lr_scales, 0.0, lo_open=True)
        if self.forward_mask not in ("sample", "threshold"):
            raise ConfigError("lm.forward_mask", f"unknown forward mask {self.forward_mask!r}",
                              "sample | threshold (annealed masks)")
        if self.tokenizer not in ("bytes", "bpe", "sentencepiece"):
            raise ConfigError("lm.tokenizer", f"unknown tokenizer {self.tokenizer!r}",
                              "bytes (256 byte values) | bpe (byte-level BPE of vocab_size tokens) | sentencepiece "
                              "(a SentencePiece model: tokenizer_model, else one trained on the train split)")
        check_bpe_vocab(self.vocab_size, "lm.vocab_size")
        if self.tokenizer_model is not None and self.tokenizer != "sentencepiece":
            raise ConfigError("lm.tokenizer_model", f"a SentencePiece model is given but tokenizer is "
                              f"{self.tokenizer!r}", "tokenizer = 'sentencepiece', or no tokenizer_model")
        if self.dataset.startswith(SHARDS) and self.tokenizer != "sentencepiece":
            raise ConfigError("lm.tokenizer", "token shards are SentencePiece ids; their bytes are counted through "
                              "the model's pieces", "tokenizer = 'sentencepiece' with tokenizer_model = the "
                              "shards' .model file")
        if self.dataset.startswith(SHARDS) and self.tokenizer_model is None:
            raise ConfigError("lm.tokenizer_model", "token shards need the SentencePiece model that made them "
                              "(to count bytes)", "the path of its .model file")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError("lm.preset", f"unknown preset {self.preset!r}", " | ".join(PRESETS))
        if self.scale_groups not in ("sltlab", "golf"):
            raise ConfigError("lm.scale_groups", f"unknown scale groups {self.scale_groups!r}",
                              "sltlab | golf (what '+scales' adds)")
        if self.data_order not in ("random", "stream"):
            raise ConfigError("lm.data_order", f"unknown data order {self.data_order!r}", "random | stream")
        if self.score_seed is not None:
            check_range("lm.score_seed", self.score_seed, 0, 2**62)
        if self.score_init is not None:
            SupermaskConfig(method="annealed", score_init=self.score_init)
        if self.dense_d_model is not None:
            check_range("lm.dense_d_model", self.dense_d_model, 1)
            if self.dense_d_model % self.n_heads:
                raise ConfigError("lm.dense_d_model", f"{self.dense_d_model} is not divisible by "
                                  f"n_heads={self.n_heads}", "a multiple of n_heads, or omitted")
        try:
            ModelConfig(d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers, fold=self.fold,
                        mask_sharing=self.mask_sharing, n_kv_heads=self.n_kv_heads,
                        logit_softcap=self.logit_softcap, activation=self.activation, mlp_mult=self.mlp_mult,
                        d_ff=self.d_ff, positions=self.positions)
            if self.dense_d_model is not None:
                ModelConfig(d_model=self.dense_d_model, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                            positions=self.positions)
        except ConfigError as err:
            raise ConfigError(err.field.replace("model.", "lm.", 1), err.problem, err.accepts) from None
        if self.floats not in ("float32", "float16", "bfloat16"):
            raise ConfigError(
                "lm.floats", f"unknown float format {self.floats!r}", "float32 | float16 | bfloat16"
            )

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        self.validate()

    def cells(self) -> list[LMRun]:
        return [LMRun(self, m, s) for m in self.methods for s in self.seeds]


@dataclass(frozen=True)
class LMRun:
    study: LMStudy
    method_text: str
    seed: int

    @property
    def method(self) -> str:
        return parse_method(self.method_text)[0]

    @property
    def scales(self) -> bool:
        return parse_method(self.method_text)[1]

    @property
    def lr(self) -> float:
        """Adam's peak rate: the methods optimise different things (weights, |scores| ranks, logits of
        sampling probabilities), so each has its own."""
        s = self.study
        return {"dense": s.lr_dense, "edge-popup": s.lr_edge_popup, "annealed": s.lr_annealed}[self.method]

    @property
    def free_lr(self) -> float | None:
        """The scale groups' own peak lr (lr_scales) where it differs from the method's lr, else None."""
        ls = self.study.lr_scales
        return ls if self.method != "dense" and ls is not None and ls != self.lr else None

    def config_dict(self) -> dict[str, Any]:
        """What the store hashes: every setting that changes the result (not the store path or study name)."""
        s = self.study
        cfg = {
            k: getattr(s, k)
            for k in (
                "dataset",
                "norm",
                "d_model",
                "n_heads",
                "n_layers",
                "d_ff",
                "seq_len",
                "batch_size",
                "steps",
                "init",
                "init_gain",
                "warmup",
                "grad_clip",
                "val_fraction",
                "eval_bytes",
                "floats",
            )
        }
        cfg.update(
            method=self.method,
            scales=self.scales,
            seed=self.seed,
            lr=self.lr,
        )
        if self.method != "dense":
            cfg["keep"] = s.keep
        if self.method == "annealed":
            cfg.update(temperature_start=s.temperature_start, temperature_end=s.temperature_end)
        cfg.update(s.where_id())  # nothing at cpu / fp32
        # only a folded model (fewer stages than layers) carries these, so every other cell keeps its run id
        if s.fold is not None and s.fold < s.n_layers:
            cfg["fold"] = s.fold
            if s.mask_sharing != "unshared":
                cfg["mask_sharing"] = s.mask_sharing
        for name, default in RECIPE_DEFAULTS.items():  # the recipe's options, only where set
            if getattr(s, name) != default:
                cfg[name] = getattr(s, name)
        if s.tokenizer != "bytes":
            cfg["vocab_size"] = s.vocab_size
        if self.method != "annealed":
            for name in ("temperature_schedule", "forward_mask", "score_init"):
                cfg.pop(name, None)
        if self.free_lr is None:  # dense, or the scales at the method's own lr: the same run as before
            cfg.pop("lr_scales", None)
        if not self.scales:  # the scale groups' kind only matters where there are scales
            cfg.pop("scale_groups", None)
        if self.method == "dense":  # a dense run has no scores to seed
            cfg.pop("score_init", None)
        if self.method == "dense" and s.dense_d_model is not None:
            cfg["d_model"] = s.dense_d_model
        return cfg

    @property
    def d_model(self) -> int:
        s = self.study
        return s.dense_d_model if self.method == "dense" and s.dense_d_model is not None else s.d_model

    @property
    def score_seed(self) -> int:
        """What seeds the scores and the batch order: score_seed if given, else the weight seed."""
        return self.seed if self.study.score_seed is None else self.study.score_seed

    @property
    def golf_scales(self) -> bool:
        return self.scales and self.study.scale_groups == "golf"

    def model_config(self) -> ModelConfig:
        s = self.study
        return ModelConfig(
            d_model=self.d_model,
            n_heads=s.n_heads,
            n_layers=s.n_layers,
            d_ff=s.d_ff,
            norm=NormSpec.parse(s.norm, field="lm.norm"),
            residual_scales=self.scales and not self.golf_scales,
            vocab_size=VOCAB if s.tokenizer == "bytes" else s.vocab_size,
            max_len=s.seq_len,
            fold=s.fold,
            mask_sharing=s.mask_sharing,
            n_kv_heads=s.n_kv_heads,
            tie_embeddings=s.tie_embeddings,
            logit_softcap=s.logit_softcap,
            activation=s.activation,
            mlp_mult=s.mlp_mult,
            qk_norm=s.qk_norm,
            embed_norm=s.embed_norm,
            positions=s.positions,
            scale_groups="golf" if self.golf_scales else "none",
        )

    def spec(self) -> ModelSpec:
        s = self.study
        cfg = self.model_config()
        density = s.keep if s.init == "scaled-signed-constant" and self.method != "dense" else 1.0
        scheme: Any = s.init
        init = InitSpec(scheme=scheme, seed=self.seed, gain=s.init_gain, density=density)
        mask = None
        sltlab_scales = self.scales and not self.golf_scales
        if self.method != "dense":
            mask = SupermaskConfig(
                method=self.method,
                keep=s.keep,
                scale="head" if sltlab_scales else "none",  # type: ignore[arg-type]
                train_norm=cfg.norm.affine == "trainable",
                free=(GOLF_FREE if self.golf_scales else SCALE_FREE) if self.scales else (),
                seed=self.score_seed,
                temperature=s.temperature_start,
                forward_mask=s.forward_mask if self.method == "annealed" else "sample",
                score_init=s.score_init if self.method == "annealed" else None,
            )
        return ModelSpec("causal-lm", cfg, init, mask, {"logit_scale": sltlab_scales})

    def search_config(self) -> SearchConfig:
        s = self.study
        lr = self.lr
        return SearchConfig(
            steps=s.steps,
            lr=lr,
            optimizer="adam",
            schedule=s.lr_schedule,
            warmup=s.warmup,
            grad_clip=s.grad_clip,
            temperature_start=s.temperature_start,
            temperature_end=s.temperature_end,
            warmdown_steps=s.warmdown_steps,
            temperature_schedule=s.temperature_schedule,
        )


def count_weights(model: nn.Module) -> int:
    """Elements of the base network (seeded weights, norms, scales), not supermask scores; a tensor shared by
    several layers (a folded model) counts once."""
    seen = {(t.data_ptr(), t.shape): t.numel() for k, t in model.state_dict().items() if not k.endswith(".scores")}
    return sum(seen.values())


def run_cell(
    run: LMRun, data_root: str | None = None, progress: bool = False, artifact_dir: Path | None = None,
    full_curve: bool = False,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train or search one model, score it in validation bits per byte, export its artifact if a folder is
    given. Returns (model, metrics, timings)."""
    from sltlab.tickets.artifact import export_ticket
    from sltlab.tickets.checkpoint import save_checkpoint

    s = run.study
    t0 = time.perf_counter()
    corpus = prepare_corpus(s, data_root)
    spec = run.spec()
    device = resolve_device(s.device, "lm.device")
    model = build_model(spec).to(device)  # weights are drawn on the CPU, then moved: same values everywhere
    if s.data_order == "stream":
        source = stream_batches(corpus.train, s.batch_size, s.seq_len)
    else:
        source = random_batches(corpus.train, s.batch_size, s.seq_len,
                                torch.Generator().manual_seed(run.score_seed * 7919 + 17))
    batches = ((to_device(x, device), to_device(y, device)) for x, y in source)
    t1 = time.perf_counter()
    with determinism(device, s.deterministic):
        history = run_search(
            model,
            lm_loss,
            batches,
            run.search_config(),
            progress=progress,
            desc=f"lm {run.method_text} s={run.seed}",
            log_every=10,
            precision=s.precision,
            free_lr=run.free_lr,
        )
    sync(device)
    t2 = time.perf_counter()
    max_bytes = s.eval_bytes or None
    val_bpb = eval_bpb(model, corpus.val.to(device), s.seq_len, s.eval_batch, max_bytes, progress=progress,
                       token_bytes=corpus.token_bytes, byte_rule=corpus.byte_rule)
    t3 = time.perf_counter()
    model = model.cpu()
    tail = [h["loss"] for h in history[-5:]]
    metrics: dict[str, Any] = {
        "val_bpb": val_bpb,
        "train_bpb_end": train_bits_per_byte(sum(tail) / len(tail), corpus),
        "params": count_weights(model),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "density": mask_density(model) if supermasks(model) else 1.0,
        "curve": [[int(h["step"]), round(h["loss"], 5)] for h in history[:: max(1, len(history) // 20)]],
        "device": str(device),
        **history.movement(),
        **corpus.sizes,
    }
    if corpus.tokenizer_sha256:
        metrics["tokenizer_sha256"] = corpus.tokenizer_sha256
    if full_curve:
        metrics["_curve"] = [[int(h["step"]), float(h["loss"])] for h in history]
    timings = {"setup_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2,
               "tokens_per_s": s.steps * s.batch_size * s.seq_len / max(t2 - t1, 1e-9)}
    if artifact_dir is not None:
        t4 = time.perf_counter()
        save_checkpoint(
            artifact_dir / "ticket.safetensors",
            model,
            spec,
            which="all" if run.method == "dense" else "trainable",
        )
        blob = export_ticket(model, spec, artifact_dir / "ticket.slt", floats=s.floats)
        from sltlab.tickets.artifact import decode_ticket, verify_parts

        parts = decode_ticket(blob)
        sizes = parts.sizes
        # Rebuild from the file alone and compare the probe output: the stored ticket is the model we scored.
        metrics["artifact_bit_identical"] = bool(verify_parts(parts)["bit_identical"])
        metrics.update(
            artifact_bytes=len(blob),
            mask_bytes=sizes["masks"],
            float_bytes=sizes["floats"],
            mask_bits_per_weight=8 * sizes["masks"] / max(1, _masked_weights(model)),
        )
        if run.method == "dense":
            # the int8 + zlib artifact under the challenge's export rules, loaded back and scored
            from sltlab.tickets.quant import VERSION, export_int8, load_int8

            q_blob = export_int8(model, spec, artifact_dir / "dense.int8")
            metrics["int8_artifact_bytes"] = len(q_blob)
            metrics["int8_format"] = VERSION  # 2: the challenge's rules (1: sltlab's first format)
            metrics["int8_val_bpb"] = eval_bpb(load_int8(q_blob).to(device), corpus.val.to(device), s.seq_len,
                                               s.eval_batch, max_bytes, token_bytes=corpus.token_bytes,
                                               byte_rule=corpus.byte_rule)
            # the same rules with every matrix int8 (rule 2 keeps a small model's matrices fp16): what int8 costs
            m_blob = export_int8(model, spec, keep_float_max_numel=0)
            metrics["int8_matrices_artifact_bytes"] = len(m_blob)
            metrics["int8_matrices_val_bpb"] = eval_bpb(load_int8(m_blob).to(device), corpus.val.to(device),
                                                        s.seq_len, s.eval_batch, max_bytes,
                                                        token_bytes=corpus.token_bytes, byte_rule=corpus.byte_rule)
        metrics["code_bytes"] = counted_code_bytes()
        timings["export_s"] = time.perf_counter() - t4
    return model, metrics, timings


def prepare_corpus(study: LMStudy, data_root: str | None = None) -> ByteCorpus:
    """The study's train and validation data, tokenized as it asks, long enough for its seq_len."""
    from sltlab.tasks import tokens

    s = study
    if s.dataset.startswith(SHARDS):
        assert s.tokenizer_model is not None  # validate() demands it
        corpus = tokens.shard_corpus(s.dataset[len(SHARDS):], tokens.read_sentencepiece(s.tokenizer_model),
                                     s.vocab_size)
    else:
        corpus = load_corpus(s.dataset, data_root, s.val_fraction)
        if s.tokenizer == "bpe":
            corpus = tokenize_bpe(corpus, s.vocab_size)
        elif s.tokenizer == "sentencepiece":
            model = (tokens.read_sentencepiece(s.tokenizer_model) if s.tokenizer_model is not None else
                     tokens.train_sentencepiece(bytes(corpus.train.numpy().tobytes()), s.vocab_size,
                                                name=corpus.name))
            corpus = tokens.tokenize_sentencepiece(corpus, model, s.vocab_size)
    check_length(corpus, s.seq_len)
    return corpus


def train_bits_per_byte(loss_nats: float, corpus: ByteCorpus) -> float:
    """A mean training loss (nats per token) in bits per byte: / ln 2, times the train split's tokens per byte
    (1 for bytes; for BPE and SentencePiece the split's own average, since a batch's bytes are not counted)."""
    bits = loss_nats / math.log(2)
    if not corpus.tokenized:
        return bits
    return bits * corpus.train.numel() / max(corpus.sizes["train_bytes"], 1)


def passes(study: LMStudy, corpus: ByteCorpus) -> float:
    """How many times the step budget reads the train split (steps x batch x seq_len tokens / its tokens)."""
    return study.steps * study.batch_size * study.seq_len / max(int(corpus.train.numel()), 1)


#: What a reader imports to rebuild and score an artifact: the ticket and int8 loaders, the text and token
#: data with their bits per byte. Their sltlab modules, as a fresh interpreter imports them, are the code bytes.
LOADER_MODULES = ("sltlab.tickets.artifact", "sltlab.tickets.quant", "sltlab.tasks.text", "sltlab.tasks.tokens")
_IMPORTED = """
import importlib, json, sys
for m in sys.argv[1:]:
    importlib.import_module(m)
print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items())
                        if (n == "sltlab" or n.startswith("sltlab.")) and getattr(m, "__file__", None))))
"""


@functools.lru_cache(maxsize=1)
def loader_files() -> tuple[str, ...]:
    """The sltlab source files a fresh interpreter imports to load and score an artifact (measured in a
    subprocess, once per process): what the challenge would count as code, third-party libraries aside."""
    import json
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _IMPORTED, *LOADER_MODULES], capture_output=True, text=True,
                         env=env, check=True, timeout=300)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def counted_code_bytes() -> int:
    """Raw bytes of `loader_files()`, counted as the parameter-golf challenge counts code bytes toward its cap."""
    return sum(Path(f).stat().st_size for f in loader_files())


def byte_budget(study: LMStudy, method: str = "annealed+scales") -> dict[str, Any]:
    """The arithmetic of a ticket's bytes for `method` under this study, before any run: masked weights (one bit
    each bounds the mask bytes: the range coder lands at n x H(density) <= n bits), scale floats at the study's
    float width, the measured code bytes, and the total against the 16,000,000-byte cap."""
    run = LMRun(study, method, study.seeds[0])
    with torch.device("meta"):
        model = build_model(replace(run.spec(), mask=None))
    weights = sum(p.numel() for p in model.parameters() if p.ndim >= 2)  # parameters() lists a tied one once
    floats = 0
    if run.scales:
        names = GOLF_FREE if run.golf_scales else SCALE_FREE
        floats = sum(p.numel() for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, x) for x in names))
    if run.scales and not run.golf_scales:  # sltlab's per-head mask scales sit in the supermasks
        floats += sum(h[0] if (h := getattr(m, "_sltlab_heads", None)) else 1
                      for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding)
                      if not (study.tie_embeddings and m is getattr(model, "lm_head", None)))
    width = {"float32": 4, "float16": 2, "bfloat16": 2}[study.floats]
    mask_bytes = -(-weights // 8)
    code = counted_code_bytes()
    return {"masked_weights": weights, "scale_floats": floats, "float_bytes": floats * width,
            "mask_bytes_max": mask_bytes, "code_bytes": code, "code_files": len(loader_files()),
            "total_max": mask_bytes + floats * width + code, "cap": BYTE_CAP}


def _masked_weights(model: nn.Module) -> int:
    return sum(sm.scores.numel() for sm in supermasks(model).values())


def study_from_dict(data: dict[str, Any]) -> LMStudy:
    """An LMStudy from plain fields (TOML, --set), its preset's settings filled in under the fields given."""
    from sltlab.runs.config import from_dict

    name = data.get("preset")
    if name is not None:
        if name not in PRESETS:
            raise ConfigError("lm.preset", f"unknown preset {name!r}", " | ".join(PRESETS))
        data = {**PRESETS[name], **data}
    return from_dict(LMStudy, data, prefix="lm")


def load_study(path: str, overrides: dict[str, Any] | None = None) -> LMStudy:
    """Read LMStudy fields from TOML (top level), then apply non-None `overrides` (CLI flags)."""
    from sltlab.runs.config import load_toml

    data = load_toml(path) if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return study_from_dict(data)


@dataclass(frozen=True)
class LMCellArg:
    run: LMRun
    data_root: str | None = None


def lm_cell(arg: LMCellArg, ctx: CellContext) -> CellOutput:
    """The executor's entry point: one model, scored; its checkpoint and .slt artifact as the run's files."""
    _, metrics, timings = run_cell(arg.run, arg.data_root, ctx.progress, ctx.out_dir, full_curve=True)
    curve = metrics.pop("_curve", [])
    return CellOutput(metrics, timings, {"loss": curve} if curve else {})


def data_files(study: LMStudy, data_root: str | None = None) -> list[Path]:
    """The files a run's data depends on: the corpus's (or the shard folder's), and a SentencePiece model file."""
    from sltlab.tasks import tokens

    if study.dataset.startswith(SHARDS):
        folder = Path(study.dataset[len(SHARDS):]).expanduser()
        if not folder.is_dir():
            raise ConfigError("lm.dataset", f"shard folder {str(folder)!r} does not exist",
                              "shards:DIR with DIR holding *_train_*.bin and *_val_*.bin token shards")
        files = tokens.shard_files(folder, "train") + tokens.shard_files(folder, "val")
    else:
        files = list(corpus_files(study.dataset, data_root))
    if study.tokenizer_model is not None:
        model = Path(study.tokenizer_model).expanduser()
        if not model.is_file():
            raise ConfigError("lm.tokenizer_model", f"{str(model)!r} is not a file",
                              "the path of a SentencePiece .model file (e.g. fineweb_1024_bpe.model)")
        files.append(model)
    return files


def study_cells(study: LMStudy, data_root: str | None = None) -> list[Cell]:
    # the corpus's fingerprint is part of each run's identity (sltlab.paths.fingerprint): other text, other runs
    data = {"data": fingerprint(data_files(study, data_root))}
    return [
        Cell(KIND, {**run.config_dict(), **data}, run.seed, lm_cell, LMCellArg(run, data_root),
             label=f"{run.method_text} s={run.seed}", device=str(study.device))
        for run in study.cells()
    ]


def run_study(
    study: LMStudy,
    data_root: str | None = None,
    store_path: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    options: ExecOptions | None = None,
) -> list[str]:
    """Run every cell not yet finished in the store (resume); return all cells' run ids in order."""
    from sltlab.runs.store import Store

    opts = options or ExecOptions(executor="serial", threads=torch.get_num_threads(), progress=progress)
    with Store(store_path or study.store) as store:
        report = run_cells(study_cells(study, data_root), store, opts, log=log)
        if report.skipped:
            log(f"lm: {len(report.skipped)} of {len(report.run_ids)} cells already finished in {store.path}")
        for rid in report.ran:
            rec = store.get(rid)
            log(f"lm: {rec.config['method']} seed={rec.seed}: val_bpb={rec.metrics['val_bpb']:.4f} "
                f"artifact={rec.metrics.get('artifact_bytes')} B  ({rid})")
        for rid, err in report.failed.items():
            log(f"lm: {rid} FAILED: {err.splitlines()[0]}")
    return report.run_ids


def describe(study: LMStudy) -> str:
    """The study's shape, recipe and, per mask method, the byte arithmetic of its ticket (what --dry-run prints)."""
    s = study
    cfg = LMRun(s, "edge-popup", s.seeds[0]).model_config()  # the tickets' shape (a dense partner may be narrower)
    vocab = "bytes (256)" if s.tokenizer == "bytes" else f"{s.tokenizer} ({s.vocab_size})"
    arch = [f"{s.n_layers} layers x d {s.d_model}", f"{s.n_heads} heads" + (
        f" / {s.n_kv_heads} key-value heads" if s.n_kv_heads else ""), f"head width {cfg.head_dim_qk}",
        f"MLP {cfg.ff_width} ({s.activation})", s.norm] + [name for name, on in (
            ("qk_norm", s.qk_norm), ("embed_norm", s.embed_norm), ("tied embeddings", s.tie_embeddings)) if on]
    arch.append("rotary positions" if s.positions == "rope" else "learned positions")
    if s.logit_softcap:
        arch.append(f"logit soft-cap {s.logit_softcap:g}")
    lines = [f"lm '{s.name}'" + (f" (preset {s.preset})" if s.preset else "") + f": {s.dataset}, {vocab}",
             "  shape: " + ", ".join(arch) + f"; context {s.seq_len}",
             f"  budget: {s.steps:,} steps x {s.batch_size} x {s.seq_len} = {s.steps * s.batch_size * s.seq_len:,} "
             "tokens per cell",
             f"  recipe: warm-up {s.warmup}, {s.lr_schedule} lr, warm-down {s.warmdown_steps}; annealed: lr "
             f"{s.lr_annealed:g}, scores from {'a seeded draw' if s.score_init is None else s.score_init}"
             f", forward {s.forward_mask}, T {s.temperature_start:g} -> {s.temperature_end:g} "
             f"{s.temperature_schedule}; scales lr {s.lr_scales if s.lr_scales is not None else 'the mask lr'}, "
             f"groups {s.scale_groups}; data {s.data_order}"]
    for method in dict.fromkeys(m for m in s.methods if parse_method(m)[0] != "dense"):
        b = byte_budget(s, method)
        lines.append(
            f"  {method}: {b['masked_weights']:,} mask bits, {b['scale_floats']:,} scale floats; bytes: masks <= "
            f"{b['mask_bytes_max']:,} (1 bit per weight; coded at n x H(density) <= n bits) + floats "
            f"{b['float_bytes']:,} ({s.floats}) + code {b['code_bytes']:,} ({b['code_files']} files the loader "
            f"imports) = {b['total_max']:,} + a header of a few KB, against the cap of {b['cap']:,}")
    if "dense" in {parse_method(m)[0] for m in s.methods}:
        run = LMRun(s, "dense", s.seeds[0])
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(run.spec()).parameters())
        lines.append(f"  dense: d {run.d_model}, {n:,} weights, stored int8 + zlib under the challenge's rules "
                     "(int8_artifact_bytes, measured at the run)")
    return "\n".join(lines)
