"""One supermask language model cell: a byte-level causal transformer, trained dense or searched as a ticket.

Methods (each optionally with "+scales"):
    dense            every weight trained (the reference of the same shape);
    edge-popup       top-`keep` masks over the random weights, straight-through (Ramanujan et al. 2020);
    annealed         sampled masks with an annealed temperature, deterministic 1[scores > 0] at the end.
"+scales" is the parameter-golf recipe: learned per-block attention/MLP residual scales
(`ModelConfig(residual_scales=True)`), per-head scales on q/k/v/o and per-layer ones elsewhere
(`SupermaskConfig(scale="head")`), and a learned pre-logit scale (`ModelSpec(options={"logit_scale": True})`).
A random network cannot change its weights' magnitudes, so these few floats are what let a mask match the
output scale.

Every cell is a run in the store (kind "lm"): config {dataset, method, scales, norm, seed, shape, ...},
config also `data`, the fingerprint of the corpus files (sltlab.paths.fingerprint); metrics {val_bpb,
artifact_bytes, params, density, ...}, timings {train_s, tokens_per_s, ...} (wall-clock values are timings, so two
identical runs have identical metrics); beside it `ticket.safetensors` (the
checkpoint) and `ticket.slt` (the compact artifact whose size is reported).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    check_bpe_vocab,
    check_length,
    corpus_files,
    eval_bpb,
    lm_loss,
    load_corpus,
    random_batches,
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
RECIPE_DEFAULTS: dict[str, Any] = {
    "n_kv_heads": None, "tie_embeddings": False, "logit_softcap": None, "lr_schedule": "cosine",
    "warmdown_steps": 0, "temperature_schedule": "geometric", "forward_mask": "sample", "tokenizer": "bytes",
    "lr_scales": None,
}


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
    tokenizer: Literal["bytes", "bpe"] = "bytes"
    vocab_size: int = 1024                 # the BPE's vocabulary (bytes: always 256)
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
        if self.tokenizer not in ("bytes", "bpe"):
            raise ConfigError("lm.tokenizer", f"unknown tokenizer {self.tokenizer!r}",
                              "bytes (256 byte values) | bpe (byte-level BPE of vocab_size tokens)")
        check_bpe_vocab(self.vocab_size, "lm.vocab_size")
        if self.dense_d_model is not None:
            check_range("lm.dense_d_model", self.dense_d_model, 1)
            if self.dense_d_model % self.n_heads:
                raise ConfigError("lm.dense_d_model", f"{self.dense_d_model} is not divisible by "
                                  f"n_heads={self.n_heads}", "a multiple of n_heads, or omitted")
        try:
            ModelConfig(d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers, fold=self.fold,
                        mask_sharing=self.mask_sharing, n_kv_heads=self.n_kv_heads,
                        logit_softcap=self.logit_softcap)
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
            cfg.pop("temperature_schedule", None)
            cfg.pop("forward_mask", None)
        if self.free_lr is None:  # dense, or the scales at the method's own lr: the same run as before
            cfg.pop("lr_scales", None)
        if self.method == "dense" and s.dense_d_model is not None:
            cfg["d_model"] = s.dense_d_model
        return cfg

    @property
    def d_model(self) -> int:
        s = self.study
        return s.dense_d_model if self.method == "dense" and s.dense_d_model is not None else s.d_model

    def spec(self) -> ModelSpec:
        s = self.study
        norm = NormSpec.parse(s.norm, field="lm.norm")
        cfg = ModelConfig(
            d_model=self.d_model,
            n_heads=s.n_heads,
            n_layers=s.n_layers,
            d_ff=s.d_ff,
            norm=norm,
            residual_scales=self.scales,
            vocab_size=VOCAB if s.tokenizer == "bytes" else s.vocab_size,
            max_len=s.seq_len,
            fold=s.fold,
            mask_sharing=s.mask_sharing,
            n_kv_heads=s.n_kv_heads,
            tie_embeddings=s.tie_embeddings,
            logit_softcap=s.logit_softcap,
        )
        density = s.keep if s.init == "scaled-signed-constant" and self.method != "dense" else 1.0
        scheme: Any = s.init
        init = InitSpec(scheme=scheme, seed=self.seed, gain=s.init_gain, density=density)
        mask = None
        if self.method != "dense":
            mask = SupermaskConfig(
                method=self.method,
                keep=s.keep,
                scale="head" if self.scales else "none",  # type: ignore[arg-type]
                train_norm=norm.affine == "trainable",
                free=SCALE_FREE if self.scales else (),
                seed=self.seed,
                temperature=s.temperature_start,
                forward_mask=s.forward_mask if self.method == "annealed" else "sample",
            )
        return ModelSpec("causal-lm", cfg, init, mask, {"logit_scale": self.scales})

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
    corpus = load_corpus(s.dataset, data_root, s.val_fraction)
    if s.tokenizer == "bpe":
        corpus = tokenize_bpe(corpus, s.vocab_size)
    check_length(corpus, s.seq_len)
    spec = run.spec()
    device = resolve_device(s.device, "lm.device")
    model = build_model(spec).to(device)  # weights are drawn on the CPU, then moved: same values everywhere
    gen = torch.Generator().manual_seed(run.seed * 7919 + 17)
    batches = (
        (to_device(x, device), to_device(y, device))
        for x, y in random_batches(corpus.train, s.batch_size, s.seq_len, gen)
    )
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
                       token_bytes=corpus.token_bytes)
    t3 = time.perf_counter()
    model = model.cpu()
    tail = [h["loss"] for h in history[-5:]]
    metrics: dict[str, Any] = {
        "val_bpb": val_bpb,
        "train_bpb_end": sum(tail) / len(tail) / 0.6931471805599453,
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
            # the int8 + zlib artifact (the competition's dense format), loaded back and scored
            from sltlab.tickets.quant import export_int8, load_int8

            q_blob = export_int8(model, spec, artifact_dir / "dense.int8")
            metrics["int8_artifact_bytes"] = len(q_blob)
            metrics["int8_val_bpb"] = eval_bpb(load_int8(q_blob).to(device), corpus.val.to(device), s.seq_len,
                                               s.eval_batch, max_bytes, token_bytes=corpus.token_bytes)
        metrics["code_bytes"] = counted_code_bytes()
        timings["export_s"] = time.perf_counter() - t4
    return model, metrics, timings


#: The source files a reader needs to rebuild and score an artifact (model, init, masks, both artifact formats,
#: the text and its bits per byte), counted as the parameter-golf competition counts its code bytes: raw bytes
#: of the code, beside the artifact's, toward the 16,000,000-byte cap.
CODE_FILES = (
    "errors.py", "nn/__init__.py", "nn/init.py", "nn/norm.py", "nn/transformer.py", "runs/config.py",
    "tickets/spec.py", "tickets/supermask.py", "tickets/artifact.py", "tickets/quant.py", "tasks/text.py",
)


def counted_code_bytes() -> int:
    root = Path(__file__).resolve().parent.parent
    return sum((root / f).stat().st_size for f in CODE_FILES)


def _masked_weights(model: nn.Module) -> int:
    return sum(sm.scores.numel() for sm in supermasks(model).values())


def load_study(path: str, overrides: dict[str, Any] | None = None) -> LMStudy:
    """Read LMStudy fields from TOML (top level), then apply non-None `overrides` (CLI flags)."""
    from sltlab.runs.config import from_dict, load_toml

    data = load_toml(path) if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(LMStudy, data, prefix="lm")


@dataclass(frozen=True)
class LMCellArg:
    run: LMRun
    data_root: str | None = None


def lm_cell(arg: LMCellArg, ctx: CellContext) -> CellOutput:
    """The executor's entry point: one model, scored; its checkpoint and .slt artifact as the run's files."""
    _, metrics, timings = run_cell(arg.run, arg.data_root, ctx.progress, ctx.out_dir, full_curve=True)
    curve = metrics.pop("_curve", [])
    return CellOutput(metrics, timings, {"loss": curve} if curve else {})


def study_cells(study: LMStudy, data_root: str | None = None) -> list[Cell]:
    # the corpus's fingerprint is part of each run's identity (sltlab.paths.fingerprint): other text, other runs
    data = {"data": fingerprint(corpus_files(study.dataset, data_root))}
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
