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

Every cell is one store run of kind "glue" whose config is `GlueRunConfig` as a dict (method defaults resolved, so
the run id is a hash of what actually ran), plus `data`, the fingerprint of the local files it reads
(sltlab.paths.fingerprint: fixed data is new data, rerun under a new id), and whose metrics hold `main_metric`,
`main`, each official metric, `params_total`, `params_trainable`, `density` and, for imp, `rounds`. Masked methods
save their ticket with `save_checkpoint(artifact_dir / "ticket.safetensors", ...)`; dense and imp save the whole
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

from sltlab.analysis.claims import ClaimsPlan
from sltlab.errors import ConfigError, SltlabError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.paths import fingerprint
from sltlab.runs.config import check_range, from_dict
from sltlab.runs.device import (
    Where,
    determinism,
    resolve_device,
    to_device,
)
from sltlab.runs.executor import Cell, CellContext, CellOutput, ExecOptions, run_cells
from sltlab.runs.store import Store
from sltlab.tasks.glue import TASKS, GlueSplit, TaskInfo, get_task, load_split, split_files
from sltlab.tasks.metrics import compute_metrics, main_metric
from sltlab.tasks.tokenize import TextEncoder, TokenizerSpec, make_encoder
from sltlab.tickets import methods
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
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, mask_density

# From the methods registry (sltlab.tickets.methods): what GLUE offers, which of it is a mask, default lrs.
METHODS: tuple[str, ...] = methods.names("glue")
MASKED = methods.names("glue", ("mask",))
# Adam learning rates that work at the quick scale: scores need far larger steps than weights.
DEFAULT_LR = {m: methods.default_lr(m, "glue") for m in METHODS}
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
class GlueRunConfig(Where):
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

    seed / score_seed: `seed` is the weight seed (the random network, the unit of replication); `score_seed` draws
    the mask scores and the batch order. None (the default) = the weight seed draws them too, as before the field
    existed (and the run id is unchanged).

    holdout: rows of the training split held out before anything trains (drawn with `data_seed`, before the
    train_limit subsample; the tokenizer never sees them either). Every run scores them (`holdout_main` and the
    task's metrics with a `holdout_` prefix): that is what a sweep's lr grid chooses on. The dev split is scored
    once per run and reported, never used to choose. 0 = no held-out rows (left out of the run id).
    """

    task: str = "sst2"
    method: Literal["dense", "edge-popup", "ln-integrated", "annealed", "imp"] = "edge-popup"
    norm: str = "pre-ln"
    seed: int = 0
    score_seed: int | None = None
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
    holdout: int = 0
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
    # device / precision / deterministic (sltlab.runs.device.Where): left out of the run id at their defaults

    def validate(self) -> None:
        self.check_where()
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
        check_range("max_len", self.max_len, 4, 65536)  # beyond, the position table alone outgrows memory
        check_range("lr", self.lr, 0.0)
        check_range("affine_lr", self.affine_lr, 0.0)
        if self.affine_lr and self.method not in MASKED:
            raise ConfigError(
                "affine_lr",
                f"only masked methods train scores apart from other tensors, not {self.method!r}",
                "drop affine_lr, or use lr for dense and imp",
            )
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("warmup", self.warmup, 0)
        check_range("grad_clip", self.grad_clip, 0.0)
        check_range("train_limit", self.train_limit, 0)
        check_range("holdout", self.holdout, 0)
        if self.score_seed is not None:
            check_range("score_seed", self.score_seed, 0)
        check_range("dev_limit", self.dev_limit, 0)
        check_range("trained_embedding_scale", self.trained_embedding_scale, 0.0, lo_open=True)
        if self.imp_rewind_step > self.steps:
            raise ConfigError(
                "imp_rewind_step",
                f"{self.imp_rewind_step} is beyond the {self.steps} steps",
                f"an integer in [0, {self.steps}]",
            )
        InitSpec(scheme=self.init, seed=self.seed)  # type: ignore[arg-type]
        try:  # their errors name this config's fields, not the model's or tokenizer's
            ModelConfig(d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers, d_ff=self.d_ff,
                        fold=self.fold, mask_sharing=self.mask_sharing)
            TokenizerSpec(vocab_size=self.vocab_size)
        except ConfigError as err:
            raise ConfigError(err.field.split(".", 1)[-1], err.problem, err.accepts) from None
        if self.method == "imp" and self.fold is not None and self.fold < self.n_layers:
            # its magnitude pruning and baking treat every layer's weight as its own tensor
            raise ConfigError("fold", "IMP does not support folded (weight-shared) models",
                              "fold omitted (or = n_layers) with imp, or another method")
        try:
            self.imp_config()
        except ConfigError as err:  # ImpConfig names its fields imp.X; this config calls them imp_X
            raise ConfigError(err.field.replace("imp.", "imp_", 1), err.problem, err.accepts) from None
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
        for key in ("affine_lr", "holdout"):  # at their defaults, runs keep the ids they had before these existed
            if not out[key]:
                del out[key]
        if out["score_seed"] is None:
            del out["score_seed"]
        for k in ("device", "precision", "deterministic"):
            del out[k]
        out.update(self.where_id())
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

    @property
    def order_seed(self) -> int:
        """What draws the mask scores and the batch order: the score seed, else the weight seed."""
        return self.seed if self.score_seed is None else self.score_seed

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
        perm = torch.randperm(len(self.data), generator=self.gen, device="cpu")  # host-side, seeded
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
    holdout: Encoded | None = None


def prepare_data(cfg: GlueRunConfig, data_dir: str | Path | None = None, cache: str | Path | None = None) -> TaskData:
    """Load train and dev splits, subsample train if asked, train (or load) the tokenizer, encode
    everything."""
    info = get_task(cfg.task)
    train = load_split(info.name, "train", data_dir, source=cfg.source)
    held = None
    if cfg.holdout:
        if cfg.holdout >= len(train):
            raise ConfigError("holdout", f"{cfg.holdout} rows held out of a training split of {len(train)}",
                              f"fewer than {len(train)} rows, e.g. {max(1, len(train) // 10)}")
        # drawn before the subsample, from its own stream of data_seed: the same rows for every seed and method
        pick = np.random.default_rng([cfg.data_seed, 1]).choice(len(train), cfg.holdout, replace=False)
        keep = np.setdiff1d(np.arange(len(train)), pick)
        held, train = train.subset(np.sort(pick)), train.subset(keep)
    if cfg.train_limit and len(train) > cfg.train_limit:
        rng = np.random.default_rng(cfg.data_seed)
        train = train.subset(np.sort(rng.choice(len(train), cfg.train_limit, replace=False)))
    texts = list(train.texts_a) + (list(train.texts_b) if train.texts_b is not None else [])
    encoder = make_encoder(texts, TokenizerSpec(vocab_size=cfg.vocab_size, pretrained=cfg.tokenizer), cache)
    data = TaskData(info, encoder, _encode(encoder, train, info, cfg.max_len),
                    holdout=_encode(encoder, held, info, cfg.max_len) if held is not None else None)
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
            seed=cfg.order_seed,
            temperature=cfg.temperature_start,
        )
    # type: ignore
    return ModelSpec("encoder-classifier", model, InitSpec(scheme=cfg.init, seed=cfg.seed), mask)


class OnDevice:
    """Re-iterable view of CPU batches (tuples of tensors) moved to `device` one by one (pinned first on CUDA, so
    the copy overlaps the previous step's compute)."""

    def __init__(self, batches: Any, device: torch.device):
        self.batches, self.device = batches, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for b in self.batches:
            yield tuple(to_device(t, self.device) for t in b)


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
    device = next(model.parameters()).device
    outs = []
    for i in range(0, len(data), batch_size):
        ids, att = _trim(data.input_ids[i : i + batch_size], data.attention_mask[i : i + batch_size])
        out = model(to_device(ids, device), to_device(att, device))
        outs.append(out.squeeze(-1) * 5.0 if info.is_regression else out.argmax(-1))
    return torch.cat(outs).cpu().numpy()


def evaluate(model: nn.Module, data: TaskData) -> dict[str, float]:
    """The task's official metrics on its dev split(s), plus `main_metric`'s value as `main`; with held-out
    training rows, the same metrics on them, prefixed `holdout_` (what an lr grid chooses on)."""
    info = data.info
    out: dict[str, float] = {}
    if data.holdout is not None:
        ph = predict(model, data.holdout, info)
        hm = compute_metrics(info.name, ph, data.holdout.labels.numpy()) if len(data.dev) == 1 else \
            compute_metrics(info.name, ph, data.holdout.labels.numpy(), data.holdout.labels.numpy(), ph)
        out = {f"holdout_{k}": v for k, v in hm.items()}
        out["holdout_main"] = hm[main_metric(info.name)]
    return {**_evaluate_dev(model, data), **out}


def _evaluate_dev(model: nn.Module, data: TaskData) -> dict[str, float]:
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
    device = resolve_device(cfg.device, "device")
    # Dense / imp: build_model leaves every weight trainable except a frozen-affine norm's gain/bias (the norm
    # spec is honoured; use norm "pre-ln+affine" to train them too).
    model = build_model(spec)
    if cfg.method in ("dense", "imp") and cfg.trained_embedding_scale != 1.0:
        with torch.no_grad():
            for emb in (model.tok_emb, model.pos_emb):
                emb.weight.mul_(cfg.trained_embedding_scale)
    model.to(device)  # drawn on the CPU in float32, moved once
    with determinism(device, cfg.deterministic):
        model, metrics, extras = _fit(cfg, data, model, progress)
    model.cpu()
    extras = {k: _to_cpu(v) for k, v in extras.items()}
    return model, spec, metrics, extras


def _to_cpu(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.cpu()
    if isinstance(v, dict):
        return {k: _to_cpu(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_to_cpu(x) for x in v]
    return v


def _fit(cfg: GlueRunConfig, data: TaskData, model: nn.Module, progress: bool) -> tuple[nn.Module, dict, dict]:
    info = data.info
    device = next(model.parameters()).device
    search = cfg.search_config()
    loss_fn = _loss(info)
    desc = f"{info.name} {cfg.method} {cfg.norm} s{cfg.seed}" + (f"/{cfg.score_seed}" if cfg.score_seed is not None
                                                                  else "")
    total, trainable = count_params(model)
    extras: dict[str, Any] = {}
    if cfg.method != "imp":
        history = run_search(
            model,
            loss_fn,
            OnDevice(Batches(data.train, cfg.batch_size, cfg.order_seed), device),
            search,
            progress=progress,
            desc=desc,
            free_lr=cfg.affine_lr or None,
            precision=cfg.precision,
        )
        metrics = evaluate(model, data)
        if cfg.method in MASKED:
            metrics["density"] = mask_density(model)
        metrics["final_loss"] = history[-1]["loss"] if history else math.nan
        extras["curve"] = [[int(h["step"]), float(h["loss"])] for h in history]
        metrics.update(history.movement())
        return model, {**metrics, "params_total": total, "params_trainable": trainable}, extras
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
            OnDevice(Batches(data.train, cfg.batch_size, cfg.order_seed), device),
            search,
            callbacks=cbs,
            progress=progress,
            desc=f"{desc} r{r}",
            precision=cfg.precision,
        )
        metrics = evaluate(model, data)
        offset = r * search.steps  # one curve over every round, steps counted across rounds
        extras.setdefault("curve", []).extend([[offset + int(h["step"]), float(h["loss"])] for h in history])
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
    metrics.update(history.movement())  # of the last round
    extras["masks"] = bake_prune_masks(model)
    extras["round_masks"] = round_masks
    return model, {**metrics, "params_total": total, "params_trainable": trainable}, extras


@dataclass(frozen=True)
class GlueCellArg:
    """What a GLUE cell needs besides its config: where the data is (each worker reads it itself)."""

    cfg: GlueRunConfig
    data_dir: str | None = None
    cache: str | None = None


_DATA: dict[tuple, TaskData] = {}  # per process: consecutive cells of one task share the encoded data


def _data_key(cfg: GlueRunConfig) -> tuple:
    return (cfg.task, cfg.train_limit, cfg.dev_limit, cfg.data_seed, cfg.holdout, cfg.vocab_size, cfg.tokenizer,
            cfg.max_len,
            cfg.source)


def cell_data(cfg: GlueRunConfig, data_dir: str | Path | None, cache: str | Path | None) -> TaskData:
    key = (*_data_key(cfg), str(data_dir), str(cache))
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = prepare_data(cfg, data_dir, cache)
    return _DATA[key]


def glue_cell(arg: GlueCellArg, ctx: CellContext, data: TaskData | None = None) -> CellOutput:
    """The executor's entry point: data, search / training, scores; the ticket and tokenizer as artifacts."""
    cfg = arg.cfg
    t0 = time.perf_counter()
    data = data if data is not None else cell_data(cfg, arg.data_dir, arg.cache)
    t1 = time.perf_counter()
    torch.manual_seed(cfg.order_seed)
    model, spec, metrics, extras = train_cell(cfg, data, ctx.progress)
    t2 = time.perf_counter()
    which = "trainable" if cfg.method in MASKED else "all"
    extra = {f"mask::{k}": v.to(torch.uint8) for k, v in extras.get("masks", {}).items()}
    save_checkpoint(ctx.out_dir / "ticket.safetensors", model, spec, which=which, extra=extra)
    if extras.get("round_masks"):
        save_round_masks(ctx.out_dir / ROUND_MASKS_FILE, extras["round_masks"])
    data.encoder.save(ctx.out_dir / "tokenizer.json")  # the analysis re-encodes dev text with the run's own vocab
    curve = extras.get("curve") or []
    metrics.update(
        main_metric=main_metric(cfg.task),
        dev_n=len(next(iter(data.dev.values()))),
        train_n=len(data.train),
        holdout_n=len(data.holdout) if data.holdout is not None else 0,
        vocab_size=data.encoder.vocab_size,
        vocab_sha256=data.encoder.vocab_sha256,  # names the exact vocabulary the run encoded its text with
    )
    timings = {
        "data_s": t1 - t0,
        "train_eval_s": t2 - t1,
        "total_s": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
    }
    return CellOutput(metrics, timings, {"loss": curve} if curve else {})


def glue_cells(cfgs: list[GlueRunConfig], data_dir: str | Path | None = None,
               cache: str | Path | None = None) -> list[Cell]:
    out = []
    prints: dict[str, str] = {}
    for cfg in cfgs:
        cfg = cfg.resolved()
        arg = GlueCellArg(cfg, None if data_dir is None else str(data_dir), None if cache is None else str(cache))
        config = cfg.to_dict()
        if cfg.source == "local":  # the files' fingerprint is part of the run's identity (sltlab.paths.fingerprint)
            if cfg.task not in prints:
                prints[cfg.task] = fingerprint(split_files(cfg.task, data_dir))
            config["data"] = prints[cfg.task]
        out.append(Cell(KIND, config, cfg.seed, glue_cell, arg,
                        label=f"{cfg.task} {cfg.method} {cfg.norm} lr={cfg.lr:g}"
                              + (f" alr={cfg.affine_lr:g}" if cfg.affine_lr else "") + f" s{cfg.seed}"
                              + (f"/{cfg.score_seed}" if cfg.score_seed is not None else ""),
                        device=getattr(cfg, "device", "cpu")))
    return out


def run_cell(
    cfg: GlueRunConfig,
    store: Store,
    data_dir: str | Path | None = None,
    progress: bool = False,
    data: TaskData | None = None,
    cache: str | Path | None = None,
) -> tuple[str, bool]:
    """Run one cell into the store, in this process, unless it is already finished. Returns (run_id, ran).
    A failure raises (after it is recorded)."""
    (cell,) = glue_cells([cfg], data_dir, cache)
    if store.is_finished(cell.run_id):
        return cell.run_id, False
    if data is not None:
        _DATA.clear()
        _DATA[(*_data_key(cell.arg.cfg), str(cell.arg.data_dir), str(cell.arg.cache))] = data
    report = run_cells([cell], store, ExecOptions(executor="serial", threads=torch.get_num_threads(),
                                                  progress=False))
    if report.failed:
        raise SltlabError(report.failed[cell.run_id].splitlines()[0])
    return cell.run_id, True


# ---------------------------------------------------------------------------------------------------- sweep
@dataclass(frozen=True)
class GlueSweepConfig(Where):
    """tasks x methods x norms x seeds (x score seeds), each cell a GlueRunConfig built from `run` (shared
    settings), then `task[task]` (per-task settings, e.g. fewer steps on a small task), then `method[method]`
    (per-method settings such as lr). Cells that cannot exist (ln-integrated without a norm) are skipped.

    seeds are weight seeds (the unit of replication); score_seeds ([] = none: the weight seed draws scores and
    batch order, as before) are nested in each. lr_grid / affine_lr_grid: {norm or "*": [values]} — every
    masked cell's lr (and affine lr) chosen per (task, method, norm) from its norm's grid on the held-out training
    rows (`run.holdout` > 0 required) of the first `select_seeds` weight seeds and the first score seed; the other
    cells run at the chosen values only (sltlab.tasks.selection). Dev scores are never used to choose."""

    tasks: tuple[str, ...] = ("sst2",)
    methods: tuple[str, ...] = ("dense", "edge-popup")
    norms: tuple[str, ...] = ("none", "pre-ln")
    seeds: tuple[int, ...] = (0,)
    score_seeds: tuple[int, ...] = ()
    lr_grid: dict[str, list[float]] = field(default_factory=dict)
    affine_lr_grid: dict[str, list[float]] = field(default_factory=dict)
    select_on: str = "train-holdout"
    select_seeds: int = 1
    # a name for the study's plan in the store (default: glue-<tasks>); only read with `claims`
    study: str = ""
    claims: ClaimsPlan | None = None
    run: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    # device / precision / deterministic (sltlab.runs.device.Where): those away from cpu/fp32 override the same keys
    # in `run`

    def __post_init__(self) -> None:
        self.check_where()
        from sltlab.analysis.selection import check_select_on

        check_select_on(self.select_on, "select_on")
        for name in ("lr_grid", "affine_lr_grid"):
            for norm, values in getattr(self, name).items():
                if norm != "*":
                    NormSpec.parse(norm, field=f"{name}.{norm}")
                if not isinstance(values, list | tuple) or not values:
                    raise ConfigError(f"{name}.{norm}", f"got {values!r}", "a non-empty list of learning rates")
                for i, v in enumerate(values):
                    if isinstance(v, bool) or not isinstance(v, int | float):
                        raise ConfigError(f"{name}.{norm}[{i}]", f"got {v!r}", "a number")
                    check_range(f"{name}.{norm}[{i}]", float(v), 0.0, lo_open=True)
        if self.has_grid and not self.run.get("holdout"):
            raise ConfigError("run.holdout", "an lr grid is chosen on held-out training rows, but none are held out",
                              "run.holdout = 1000 (rows of the training split no run trains on)")
        if self.seeds:
            check_range("select_seeds", self.select_seeds, 1, len(self.seeds))

    @property
    def has_grid(self) -> bool:
        return bool(self.lr_grid or self.affine_lr_grid)

    def grid_for(self, method: str, norm: str) -> list[tuple[float | None, float | None]]:
        """The (lr, affine_lr) points of a masked method under `norm` (None = not varied)."""
        if method not in MASKED:
            return [(None, None)]
        key = NormSpec.parse(norm).name
        lrs = self.lr_grid.get(key, self.lr_grid.get("*", [None]))
        alrs = (self.affine_lr_grid.get(key, self.affine_lr_grid.get("*", [None])) if method == "ln-integrated"
                else [None])
        return [(lr, alr) for lr in lrs for alr in alrs]

    def grid_spec(self) -> Any:
        from sltlab.tasks.selection import GridSpec

        return GridSpec(("lr", "affine_lr"), "holdout_main", lower_is_better=False)

    def grid_cells(self) -> list[GlueRunConfig]:
        """Every grid point on the selection seeds (the first select_seeds weight seeds, first score seed)."""
        sub = dataclasses.replace(self, seeds=self.seeds[: self.select_seeds], score_seeds=self.score_seeds[:1])
        return sub.cells()

    def cells(self) -> list[GlueRunConfig]:
        bad = sorted(set(self.run) & {"task", "method", "norm", "seed", "score_seed"})
        if bad:
            raise ConfigError(f"run.{bad[0]}", "is set by the sweep lists", "tasks, methods, norms, seeds, score_seeds")
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
                    for (lr, alr), seed, score_seed in (
                        (g, w, s) for g in self.grid_for(method, norm) for w in self.seeds
                        for s in (self.score_seeds or (None,))
                    ):
                        data = {
                            **self.run,
                            **self.where_fields(),
                            **self.task.get(task, {}),
                            **self.method.get(method, {}),
                            "task": task,
                            "method": method,
                            "norm": norm,
                            "seed": seed,
                            **({"score_seed": score_seed} if score_seed is not None else {}),
                            **({"lr": lr} if lr is not None else {}),
                            **({"affine_lr": alr} if alr is not None else {}),
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


def record_plan(sweep: GlueSweepConfig, store: Store, data_dir: str | Path | None = None) -> None:
    """Record the sweep's claims plan (if any) before any of its cells runs (sltlab.tasks.plans)."""
    if sweep.claims is None:
        return
    from sltlab.tasks.plans import record_plan as _record

    name = sweep.study or "glue-" + "-".join(sweep.tasks)
    _record(store, name, KIND, sweep.claims, design={
        "tasks": list(sweep.tasks), "methods": list(sweep.methods), "norms": list(sweep.norms),
        "seeds": list(sweep.seeds), "score_seeds": list(sweep.score_seeds), "lr_grid": sweep.lr_grid,
        "affine_lr_grid": sweep.affine_lr_grid, "select_on": sweep.select_on,
        "run_ids": [c.run_id for c in glue_cells(sweep.cells(), data_dir)]})


def run_study(sweep: GlueSweepConfig, store: Store, options: ExecOptions, data_dir: str | Path | None = None,
              log: Any = print) -> Any:
    """The sweep's cells into an open store: its plan first, then straight through, or with a grid the grid
    cells, the choice on held-out rows, and the other cells at the chosen point. Returns the final cells'
    SweepReport."""
    record_plan(sweep, store, data_dir)
    cells = glue_cells(sweep.cells(), data_dir)
    if not sweep.has_grid:
        return run_cells(cells, store, options, log=log)
    from sltlab.tasks.selection import run_selected

    report, _ = run_selected(glue_cells(sweep.grid_cells(), data_dir), cells, sweep.grid_spec(), store, options,
                             log)
    return report


def run_sweep(
    sweep: GlueSweepConfig,
    store: Store,
    data_dir: str | Path | None = None,
    progress: bool = True,
    log: Any = print,
    options: ExecOptions | None = None,
) -> dict[str, list[str]]:
    """Run every cell not yet finished. A failing cell is recorded as failed and the sweep goes on.
    Returns {'ran': [...], 'skipped': [...], 'failed': [...]} run ids."""
    opts = options or ExecOptions(executor="serial", threads=torch.get_num_threads(), progress=progress)
    report = run_study(sweep, store, opts, data_dir, log)
    for rid in report.ran:
        rec = store.get(rid)
        cfg = rec.config
        log(f"{rid}  {cfg['task']:5s} {cfg['method']:13s} {cfg['norm']:7s} seed {rec.seed}  "
            f"{rec.metrics['main_metric']}={100 * rec.metrics['main']:.1f}  ({rec.timings['total_s']:.0f}s)")
    for rid, err in report.failed.items():
        log(f"{rid}  FAILED: {err.splitlines()[0]}")
    return {"ran": report.ran, "skipped": report.skipped, "failed": list(report.failed),
            "diverged": list(report.diverged)}
