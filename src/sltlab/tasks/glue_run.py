"""One GLUE cell (task x method x norm x seed) from data to a store record, and the sweep over many cells.

Methods (`GlueRunConfig.method`):
- dense: every weight trained from the seeded init (the reference of the same shape);
- edge-popup: a supermask over the frozen seeded weights, top-`keep` of |scores| per layer (or global);
- ln-integrated: edge-popup masks plus the LayerNorm gain/bias learned (needs a norm; `mask_scale` adds
  learned per-layer or per-head scales);
- annealed: the annealed straight-through supermask (temperature annealed from temperature_start to _end);
- imp: iterative magnitude pruning with rewinding (sltlab.tickets.imp), `imp_rounds` rounds of `imp_fraction`.

What happens to the embeddings and the classifier head in the masked methods is the `head` option: 'masked'
(default: the head is a random layer masked like the rest, a pure strong ticket) or 'trained' (the head is
left unmasked and trained, a common relaxation). The embeddings are always masked like any other weight.

Every cell is one store run of kind "glue" whose config is `GlueRunConfig` as a dict (method defaults
resolved, so the run id is a hash of what actually ran) and whose metrics hold `main_metric`, `main`, each
official metric, `params_total`, `params_trainable`, `density` and, for imp, `rounds`. Masked methods save
their ticket with `save_checkpoint(artifact_dir / "ticket.safetensors", ...)`; dense and imp save the whole
(baked) model there too; the trained tokenizer goes beside it as tokenizer.json. imp also saves the mask of every
round (0 = dense .. imp_rounds) as `ROUND_MASKS_FILE` (`sltlab.tickets.checkpoint.save_round_masks`), which
`sltlab report` and `sltlab analyze` compare across rounds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sltlab.errors import ConfigError, SltlabError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.spec import ModelSpec, build_model
from sltlab.nn.transformer import ModelConfig
from sltlab.runs.config import check_range, from_dict
from sltlab.runs.store import Store, make_run_id
from sltlab.tasks.glue import TASKS, GlueSplit, TaskInfo, get_task, load_split
from sltlab.tasks.metrics import compute_metrics, main_metric
from sltlab.tasks.tokenize import TextEncoder, TokenizerSpec, make_encoder
from sltlab.tickets.checkpoint import ROUND_MASKS_FILE, save_checkpoint, save_round_masks
from sltlab.tickets.imp import (
    ImpConfig,
    attach_prune_masks,
    bake_prune_masks,
    prune_masks,
    prune_round,
    rewind,
    rewind_callback,
    snapshot,
    sparsity,
)
from sltlab.tickets.search import SearchConfig, run_search
from sltlab.tickets.supermask import SupermaskConfig, mask_density

METHODS: tuple[str, ...] = ("dense", "edge-popup", "ln-integrated", "annealed", "imp")
MASKED = ("edge-popup", "ln-integrated", "annealed")
# Adam learning rates that work at the quick scale: scores need far larger steps than weights.
DEFAULT_LR = {"dense": 1e-3, "imp": 1e-3, "edge-popup": 0.1, "ln-integrated": 0.1, "annealed": 0.1}
KIND = "glue"

# The CPU-scale settings behind `sltlab glue --quick` and configs/glue_quick.toml (a test keeps them equal).
QUICK: dict[str, Any] = {
    "d_model": 128,
    "n_heads": 4,
    "n_layers": 2,
    "max_len": 64,
    "vocab_size": 8000,
    "steps": 400,
    "batch_size": 32,
    "train_limit": 20000,
    "imp_rounds": 1,
    "imp_fraction": 0.5,
}


@dataclass(frozen=True)
class GlueRunConfig:
    """Everything one cell depends on. lr = 0 means the method's default (DEFAULT_LR), resolved before
    hashing.

    trained_embedding_scale: dense and imp multiply the seeded token and position embeddings by this factor
    before training. The seeded tables have std 1 (an embedding has fan-in 1), and Adam at lr 1e-3 barely
    moves them in a few hundred steps (SST-2, quick model: 67% dev accuracy after 400 steps at lr 3e-3 without
    it, 75% after 300 steps at lr 1e-3 with the 0.05 scale, a std near BERT's 0.02). The masked methods keep
    the pure seeded weights: a strong ticket only selects them.

    fold / mask_sharing: a folded model (sltlab.nn.transformer): `fold` stages of n_layers / fold blocks that
    share one random block each, a mask per block ("unshared") or per stage ("shared"); dense training of a
    folded model trains a weight-tied recurrent encoder. Left out of the run id at their defaults (None:
    unfolded; "unshared").

    affine_lr: peak lr of what a masked method trains besides its scores (the LN-integrated ticket's norm
    gain/bias and scales, a trained head); 0 = the method's lr. Left out of the run id while 0, so runs made
    before the field existed keep their ids.

    train_limit: 0 = the whole training set, else a subsample of that many rows drawn with `data_seed` (the
    same rows for every seed and method, so seeds vary the network and the batch order only). dev_limit: 0 =
    all.
    """

    task: str = "sst2"
    method: Literal["dense", "edge-popup", "ln-integrated", "annealed", "imp"] = "edge-popup"
    norm: str = "pre-ln"
    seed: int = 0
    # model
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int | None = None
    max_len: int = 64
    pooling: Literal["mean", "first"] = "mean"
    fold: int | None = None
    mask_sharing: Literal["unshared", "shared"] = "unshared"
    init: str = "kaiming-normal"
    trained_embedding_scale: float = 0.05
    # tokenizer
    vocab_size: int = 8000
    tokenizer: str = ""
    # data
    train_limit: int = 0
    dev_limit: int = 0
    data_seed: int = 0
    source: Literal["local", "hf"] = "local"
    # optimisation
    steps: int = 400
    batch_size: int = 32
    lr: float = 0.0
    affine_lr: float = 0.0
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float = 1.0
    # masks
    keep: float = 0.5
    mask_scope: Literal["layer", "global"] = "layer"
    mask_scale: Literal["none", "layer", "head"] = "none"
    head: Literal["masked", "trained"] = "masked"
    temperature_start: float = 1.0
    temperature_end: float = 0.05
    # imp
    imp_rounds: int = 2
    imp_fraction: float = 0.5
    imp_scope: Literal["layer", "global"] = "layer"
    imp_rewind_step: int = 0

    def validate(self) -> None:
        info = get_task(self.task)
        object.__setattr__(self, "task", info.name)
        if self.method not in METHODS:
            raise ConfigError("method", f"unknown method {self.method!r}", " | ".join(METHODS))
        norm = NormSpec.parse(self.norm, field="norm")
        object.__setattr__(self, "norm", norm.name)
        if self.method == "ln-integrated" and norm.kind == "none":
            raise ConfigError(
                "norm",
                "ln-integrated learns the norm's gain/bias, so it needs a norm",
                "pre-ln | post-ln | pre-rms | post-rms",
            )
        check_range("keep", self.keep, 0.0, 1.0, lo_open=True)
        check_range("steps", self.steps, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("max_len", self.max_len, 4)
        check_range("lr", self.lr, 0.0)
        check_range("affine_lr", self.affine_lr, 0.0)
        if self.affine_lr and self.method not in MASKED:
            raise ConfigError(
                "affine_lr",
                f"only masked methods train scores apart from other tensors, not {self.method!r}",
                "drop affine_lr, or use lr for dense and imp",
            )
        check_range("train_limit", self.train_limit, 0)
        check_range("dev_limit", self.dev_limit, 0)
        check_range("trained_embedding_scale", self.trained_embedding_scale, 0.0, lo_open=True)
        if self.imp_rewind_step > self.steps:
            raise ConfigError(
                "imp_rewind_step",
                f"{self.imp_rewind_step} is beyond the {self.steps} steps",
                f"an integer in [0, {self.steps}]",
            )
        InitSpec(scheme=self.init, seed=self.seed)  # type: ignore[arg-type]
        try:
            ModelConfig(d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers, d_ff=self.d_ff,
                        fold=self.fold, mask_sharing=self.mask_sharing)
        except ConfigError as err:
            raise ConfigError(err.field.removeprefix("model."), err.problem, err.accepts) from None
        if self.method == "imp" and self.fold is not None and self.fold < self.n_layers:
            # its magnitude pruning and baking treat every layer's weight as its own tensor
            raise ConfigError("fold", "IMP does not support folded (weight-shared) models",
                              "fold omitted (or = n_layers) with imp, or another method")
        TokenizerSpec(vocab_size=self.vocab_size)
        self.imp_config()
        SearchConfig(
            steps=self.steps,
            lr=self.lr or 1.0,
            temperature_start=self.temperature_start,
            temperature_end=self.temperature_end,
        )

    def __post_init__(self) -> None:
        self.validate()

    def resolved(self) -> GlueRunConfig:
        """The config with method defaults filled in (what is hashed into the run id)."""
        return dataclasses.replace(self, lr=self.lr or DEFAULT_LR[self.method])

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self.resolved())
        if not out["affine_lr"]:
            del out["affine_lr"]
        # an unfolded model (fold None or n_layers) is today's model whatever the mask sharing: today's run id
        folded = self.fold is not None and self.fold < self.n_layers
        if not folded:
            del out["fold"]
        if not folded or out["mask_sharing"] == "unshared":
            del out["mask_sharing"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = "") -> GlueRunConfig:
        return from_dict(cls, data, prefix=prefix)

    def imp_config(self) -> ImpConfig:
        return ImpConfig(
            rounds=self.imp_rounds,
            fraction=self.imp_fraction,
            scope=self.imp_scope,
            rewind_step=self.imp_rewind_step,
        )

    def search_config(self) -> SearchConfig:
        return SearchConfig(
            steps=self.steps,
            lr=self.lr or DEFAULT_LR[self.method],
            optimizer="adam",
            weight_decay=self.weight_decay,
            schedule="cosine",
            warmup=self.warmup,
            grad_clip=self.grad_clip,
            temperature_start=self.temperature_start,
            temperature_end=self.temperature_end,
        )


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class Encoded:
    """A tokenised split: input_ids / attention_mask (N, max_len) and float or long labels (N,)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class Batches:
    """Shuffled mini-batches, one epoch per iteration; the order is a function of the seed alone."""

    def __init__(self, data: Encoded, batch_size: int, seed: int):
        self.data, self.batch_size = data, batch_size
        self.gen = torch.Generator().manual_seed(int(seed) * 7919 + 17)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self.data), generator=self.gen)
        for i in range(0, len(perm) - self.batch_size + 1 if len(perm) >= self.batch_size else 1, self.batch_size):
            idx = perm[i : i + self.batch_size]
            yield _trim(self.data.input_ids[idx], self.data.attention_mask[idx]) + (self.data.labels[idx],)


def _trim(ids: torch.Tensor, att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the columns that are padding in every row: most SST-2 sentences fill a fraction of max_len, and
    the
    masked mean pooling and key-padding mask make the result the same as with full padding (a 2-4x saving)."""
    n = max(1, int(att.sum(1).max()))
    return ids[:, :n], att[:, :n]


def _encode(enc: TextEncoder, split: GlueSplit, info: TaskInfo, max_len: int) -> Encoded:
    x = enc.encode(split.texts_a, split.texts_b, max_len=max_len)
    if split.labels is None:
        raise ConfigError("split", f"{info.name} {split.split} has no labels to train or score on", "train | dev")
    dtype = torch.float32 if info.is_regression else torch.long
    return Encoded(x["input_ids"], x["attention_mask"], torch.as_tensor(split.labels, dtype=dtype))


@dataclass
class TaskData:
    info: TaskInfo
    encoder: TextEncoder
    train: Encoded
    dev: dict[str, Encoded] = field(default_factory=dict)


def prepare_data(cfg: GlueRunConfig, data_dir: str | Path | None = None, cache: str | Path | None = None) -> TaskData:
    """Load train and dev splits, subsample train if asked, train (or load) the tokenizer, encode
    everything."""
    info = get_task(cfg.task)
    train = load_split(info.name, "train", data_dir, source=cfg.source)
    if cfg.train_limit and len(train) > cfg.train_limit:
        rng = np.random.default_rng(cfg.data_seed)
        train = train.subset(np.sort(rng.choice(len(train), cfg.train_limit, replace=False)))
    texts = list(train.texts_a) + (list(train.texts_b) if train.texts_b is not None else [])
    encoder = make_encoder(texts, TokenizerSpec(vocab_size=cfg.vocab_size, pretrained=cfg.tokenizer), cache)
    data = TaskData(info, encoder, _encode(encoder, train, info, cfg.max_len))
    for split in info.dev_splits:
        dev = load_split(info.name, split, data_dir, limit=cfg.dev_limit or None, source=cfg.source)
        data.dev[split] = _encode(encoder, dev, info, cfg.max_len)
    return data


# ---------------------------------------------------------------------------------------------------- model
def model_spec(cfg: GlueRunConfig, vocab_size: int, n_outputs: int) -> ModelSpec:
    """The ModelSpec of a cell: same shape and seeded weights for every method; only norm affine and mask
    differ."""
    norm = NormSpec.parse(cfg.norm)
    if cfg.method == "ln-integrated":
        norm = dataclasses.replace(norm, affine="trainable")
    model = ModelConfig(
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        n_layers=cfg.n_layers,
        d_ff=cfg.d_ff,
        norm=norm,
        vocab_size=vocab_size,
        max_len=cfg.max_len,
        n_outputs=n_outputs,
        pooling=cfg.pooling,
        fold=cfg.fold,
        mask_sharing=cfg.mask_sharing,
    )
    mask = None
    if cfg.method in MASKED:
        trained_head = cfg.head == "trained"
        mask = SupermaskConfig(
            method="annealed" if cfg.method == "annealed" else "edge-popup",
            keep=cfg.keep,
            scope=cfg.mask_scope,
            exclude=("head",) if trained_head else (),
            free=("head.*",) if trained_head else (),
            scale=cfg.mask_scale if cfg.method == "ln-integrated" else "none",
            train_norm=cfg.method == "ln-integrated",
            seed=cfg.seed,
            temperature=cfg.temperature_start,
        )
    # type: ignore
    return ModelSpec("encoder-classifier", model, InitSpec(scheme=cfg.init, seed=cfg.seed), mask)


def _loss(info: TaskInfo) -> Any:
    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        ids, att, y = batch
        out = model(ids, att)
        if info.is_regression:
            return F.mse_loss(out.squeeze(-1), y / 5.0)  # STS-B scores in [0, 5] -> [0, 1] targets
        return F.cross_entropy(out, y)

    return loss_fn


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, info: TaskInfo, batch_size: int = 256) -> np.ndarray:
    """Class ids (classification) or scores on the label scale (STS-B) for every row of `data`."""
    model.eval()
    outs = []
    for i in range(0, len(data), batch_size):
        out = model(*_trim(data.input_ids[i : i + batch_size], data.attention_mask[i : i + batch_size]))
        outs.append(out.squeeze(-1) * 5.0 if info.is_regression else out.argmax(-1))
    return torch.cat(outs).numpy()


def evaluate(model: nn.Module, data: TaskData) -> dict[str, float]:
    """The task's official metrics on its dev split(s), plus `main_metric`'s value as `main`."""
    info = data.info
    splits = list(data.dev)
    p0 = predict(model, data.dev[splits[0]], info)
    y0 = data.dev[splits[0]].labels.numpy()
    if len(splits) == 2:  # MNLI matched / mismatched
        p1 = predict(model, data.dev[splits[1]], info)
        metrics = compute_metrics(info.name, p0, y0, data.dev[splits[1]].labels.numpy(), p1)
    else:
        metrics = compute_metrics(info.name, p0, y0)
    metrics["main"] = metrics[main_metric(info.name)]
    return metrics


def count_params(model: nn.Module) -> tuple[int, int]:
    """(base-network weights, trainable floats): scores and scales are not part of the base network."""
    total = trainable = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable += p.numel()
        if not (name.endswith(".scores") or name.endswith(".scale")):
            total += p.numel()
    return total, trainable


# ---------------------------------------------------------------------------------------------------- one
# cell
def train_cell(cfg: GlueRunConfig, data: TaskData, progress: bool = False) -> tuple[nn.Module, ModelSpec, dict, dict]:
    """Build the model of `cfg`, find its ticket / train it, score it. Returns (model, spec, metrics,
    extras)."""
    info = data.info
    spec = model_spec(cfg, data.encoder.vocab_size, info.n_outputs)
    # Dense / imp: build_model leaves every weight trainable except a frozen-affine norm's gain/bias (the norm
    # spec is honoured; use norm "pre-ln+affine" to train them too).
    model = build_model(spec)
    if cfg.method in ("dense", "imp") and cfg.trained_embedding_scale != 1.0:
        with torch.no_grad():
            for emb in (model.tok_emb, model.pos_emb):
                emb.weight.mul_(cfg.trained_embedding_scale)
    search = cfg.search_config()
    loss_fn = _loss(info)
    desc = f"{info.name} {cfg.method} {cfg.norm} s{cfg.seed}"
    total, trainable = count_params(model)
    extras: dict[str, Any] = {}
    if cfg.method != "imp":
        history = run_search(
            model,
            loss_fn,
            Batches(data.train, cfg.batch_size, cfg.seed),
            search,
            progress=progress,
            desc=desc,
            free_lr=cfg.affine_lr or None,
        )
        metrics = evaluate(model, data)
        if cfg.method in MASKED:
            metrics["density"] = mask_density(model)
        metrics["final_loss"] = history[-1]["loss"] if history else math.nan
        return model, spec, {**metrics, "params_total": total, "params_trainable": trainable}, extras
    imp = cfg.imp_config()
    attach_prune_masks(model, imp)
    saved: dict[str, dict[str, torch.Tensor]] = {"state": snapshot(model)}
    rounds = []
    round_masks: list[dict[str, torch.Tensor]] = []
    metrics: dict[str, Any] = {}
    for r in range(imp.rounds + 1):
        if r > 0:
            prune_round(model, imp, r)
            rewind(model, saved["state"])
        cbs = [rewind_callback(imp, saved)] if r == 0 and imp.rewind_step > 0 else []
        history = run_search(
            model,
            loss_fn,
            Batches(data.train, cfg.batch_size, cfg.seed),
            search,
            callbacks=cbs,
            progress=progress,
            desc=f"{desc} r{r}",
        )
        metrics = evaluate(model, data)
        round_masks.append({name: pm.mask.clone() for name, pm in prune_masks(model).items()})
        rounds.append(
            {
                "round": r,
                "sparsity": sparsity(model),
                "main": metrics["main"],
                "final_loss": history[-1]["loss"] if history else math.nan,
            }
        )
    metrics["density"] = 1.0 - sparsity(model)
    metrics["rounds"] = rounds
    metrics["final_loss"] = rounds[-1]["final_loss"]
    extras["masks"] = bake_prune_masks(model)
    extras["round_masks"] = round_masks
    return model, spec, {**metrics, "params_total": total, "params_trainable": trainable}, extras


def run_cell(
    cfg: GlueRunConfig,
    store: Store,
    data_dir: str | Path | None = None,
    progress: bool = False,
    data: TaskData | None = None,
    cache: str | Path | None = None,
) -> tuple[str, bool]:
    """Run one cell into the store unless it is already finished. Returns (run_id, ran)."""
    cfg = cfg.resolved()
    config = cfg.to_dict()
    run_id = store.start(KIND, config, cfg.seed)
    if store.is_finished(run_id):
        return run_id, False
    try:
        t0 = time.perf_counter()
        data = data if data is not None else prepare_data(cfg, data_dir, cache)
        t1 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model, spec, metrics, extras = train_cell(cfg, data, progress)
        t2 = time.perf_counter()
        which = "trainable" if cfg.method in MASKED else "all"
        extra = {f"mask::{k}": v.to(torch.uint8) for k, v in extras.get("masks", {}).items()}
        art = store.artifact_dir(run_id)
        save_checkpoint(art / "ticket.safetensors", model, spec, which=which, extra=extra)
        if extras.get("round_masks"):
            save_round_masks(art / ROUND_MASKS_FILE, extras["round_masks"])
        data.encoder.save(art / "tokenizer.json")  # the analysis re-encodes dev text with the run's own vocab
        metrics.update(
            main_metric=main_metric(cfg.task),
            dev_n=len(next(iter(data.dev.values()))),
            train_n=len(data.train),
            vocab_size=data.encoder.vocab_size,
        )
        timings = {
            "data_s": t1 - t0,
            "train_eval_s": t2 - t1,
            "total_s": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(),
        }
        store.finish(run_id, metrics, timings)
    except (SltlabError, RuntimeError) as err:
        store.fail(run_id, f"{type(err).__name__}: {err}")
        raise
    except KeyboardInterrupt:
        store.fail(run_id, "interrupted")
        raise
    return run_id, True


# ---------------------------------------------------------------------------------------------------- sweep
@dataclass(frozen=True)
class GlueSweepConfig:
    """tasks x methods x norms x seeds, each cell a GlueRunConfig built from `run` (shared settings), then
    `task[task]` (per-task settings, e.g. fewer steps on a small task), then `method[method]` (per-method
    settings such as lr). Cells that cannot exist (ln-integrated without a norm) are skipped."""

    tasks: tuple[str, ...] = ("sst2",)
    methods: tuple[str, ...] = ("dense", "edge-popup")
    norms: tuple[str, ...] = ("none", "pre-ln")
    seeds: tuple[int, ...] = (0,)
    run: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[GlueRunConfig]:
        bad = sorted(set(self.run) & {"task", "method", "norm", "seed"})
        if bad:
            raise ConfigError(f"run.{bad[0]}", "is set by the sweep lists", "tasks, methods, norms, seeds")
        for t in self.task:  # settings for tasks left out of this sweep (e.g. by --task) are simply unused
            try:
                get_task(t)
            except ConfigError:
                raise ConfigError(f"task.{t}", "is not a GLUE task", ", ".join(TASKS)) from None
        for m in self.method:
            if m not in METHODS:
                raise ConfigError(f"method.{m}", "is not a method", " | ".join(METHODS))
        out = []
        for task in self.tasks:
            for method in self.methods:
                for norm in self.norms:
                    if method == "ln-integrated" and NormSpec.parse(norm, field="norms").kind == "none":
                        continue
                    for seed in self.seeds:
                        data = {
                            **self.run,
                            **self.task.get(task, {}),
                            **self.method.get(method, {}),
                            "task": task,
                            "method": method,
                            "norm": norm,
                            "seed": seed,
                        }
                        out.append(GlueRunConfig.from_dict(data, prefix="run"))
        if not out:
            if "ln-integrated" in self.methods:
                raise ConfigError(
                    "norms",
                    "ln-integrated learns the norm's gain/bias, so it needs a norm",
                    "pre-ln | post-ln | pre-rms | post-rms",
                )
            raise ConfigError("sweep", "no cell to run", "non-empty tasks, methods, norms and seeds")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GlueSweepConfig:
        return from_dict(cls, data, prefix="sweep")


def run_sweep(
    sweep: GlueSweepConfig,
    store: Store,
    data_dir: str | Path | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, list[str]]:
    """Run every cell not yet finished; data is prepared once per (task, data settings). A failing cell is
    recorded
    as failed and the sweep goes on. Returns {'ran': [...], 'skipped': [...], 'failed': [...]} run ids."""
    cells = sweep.cells()
    out: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": []}
    cache: dict[tuple, TaskData] = {}
    bar = tqdm(cells, desc="glue sweep", disable=not progress, dynamic_ncols=True)
    for cfg in bar:
        cfg = cfg.resolved()
        rid = make_run_id(KIND, cfg.to_dict(), cfg.seed)
        if store.is_finished(rid):
            out["skipped"].append(rid)
            continue
        key = (
            cfg.task,
            cfg.train_limit,
            cfg.dev_limit,
            cfg.data_seed,
            cfg.vocab_size,
            cfg.tokenizer,
            cfg.max_len,
            cfg.source,
        )
        bar.set_postfix_str(f"{cfg.task} {cfg.method} {cfg.norm} s{cfg.seed}")
        try:
            if key not in cache:
                cache.clear()
                cache[key] = prepare_data(cfg, data_dir)
            rid, _ = run_cell(cfg, store, data_dir, progress=False, data=cache[key])
            rec = store.get(rid)
            log(
                f"{rid}  {cfg.task:5s} {cfg.method:13s} {cfg.norm:7s} seed {cfg.seed}  "
                f"{rec.metrics['main_metric']}={100 * rec.metrics['main']:.1f}  "
                f"({rec.timings['total_s']:.0f}s)"
            )
            out["ran"].append(rid)
        except SltlabError as err:
            log(f"{rid}  FAILED: {err}")
            out["failed"].append(rid)
    return out
