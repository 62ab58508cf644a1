"""Parameter-efficient fine-tuning of a pretrained BERT-family model: full, BitFit, LayerNorm-only, random
subset and Fisher-selected LayerNorm subsets (ValizadehAslani & Liang, "LayerNorm: a key component in
parameter-efficient fine-tuning"; issue 7), and binary masks over the frozen pretrained weights (issue 13).

Masks on pretrained weights (`mask`, `mask+ln`; Zhao et al. 2020, "Masking as an efficient alternative to
finetuning"): every Linear weight of the encoder's blocks (not the embeddings) gets an edge-popup supermask
(`sltlab.tickets.supermask`): the top-k of learned scores is kept, with the straight-through gradient dL/ds =
dL/dW_eff * W. The kept fraction follows a cubic schedule from 1 (every weight kept, so the first forward is the
pretrained model's, bit for bit) down to the density target `fraction` (default 0.9) at half the steps, then stays
there. Scores start at |W|, so the first weights dropped are the smallest, until the learned scores take over.
`mask` trains the scores and the head; `mask+ln` also the LayerNorm gain and bias: the LayerNorm-integrated ticket
on a pretrained model. What a method must store is recorded with every run: its trained floats and, for masks,
the mask bits as range-coded by the ticket artifact coder.

Every run saves what it trained in its artifact folder (`trained.safetensors`: the full tensors that hold a
trained scalar; `masks.bin`: the coded masks; `trained.json`: the manifest with checksums). `load_run_model`
rebuilds the trained model from the pretrained one and that folder; `export_run` writes ln / ln-fisher runs as a
Hugging Face `peft` LN-tuning adapter and every other run as a plain state-dict diff (`load_diff`).

Why parameter-level gradient masks: a method such as "the top 20% of LayerNorm scalars by Fisher information"
trains part of a tensor. Turning requires_grad on for the tensor and multiplying its gradient by a 0/1 mask
keeps Adam's moments of the frozen scalars at exactly zero, so their update is exactly zero; weight decay is
applied by us through the same mask (the optimiser's own decay is off), so a frozen scalar is bit-identical
after training. The trainable count of a run is therefore the number of True entries of its masks, exactly.

One run = one (task, method, fraction, mask source, lr, seed) cell, recorded in the store as kind "peft". The
lr grid is the paper's: every point is a run; the report takes the best on dev. Fisher information (for
ln-fisher masks and the component ranking) is computed once per (task, model, settings) on the pretrained
encoder with the seed-0 head and recorded as kind "peft-fisher" with its safetensors in the run's artifact
folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sltlab.analysis import fisher as fisher_mod
from sltlab.errors import ConfigError, SltlabError
from sltlab.runs.config import check_range
from sltlab.runs.device import (
    check_device_name,
    check_precision,
    determinism,
    resolve_device,
    run_id_fields,
    to_device,
    where_fields,
)
from sltlab.runs.store import Store
from sltlab.tasks.glue import GlueSplit, get_task, load_split
from sltlab.tasks.metrics import compute_metrics, main_metric
from sltlab.tasks.pretrained import Pretrained, load_pretrained, model_key, resolve_model_path, wrap_encoder
from sltlab.tickets.supermask import MaskCoverage, SupermaskConfig, apply_supermask, set_keep, supermasks

METHODS: tuple[str, ...] = ("full", "bitfit", "ln", "random", "ln-fisher", "mask", "mask+ln")
#: Methods that learn binary masks over the frozen pretrained weights; their `fraction` is the density target.
MASK_METHODS: tuple[str, ...] = ("mask", "mask+ln")
#: Kept fraction of the masked weights at the end of training when no fraction is given.
DEFAULT_MASK_DENSITY = 0.9
#: Which layers carry masks: every maskable layer of the encoder except its embeddings (fnmatch patterns).
MASK_TARGETS: tuple[str, ...] = ("encoder.*",)
MASK_EXCLUDE: tuple[str, ...] = ("*embeddings*",)
MASK_SOURCES: tuple[str, ...] = ("individual", "global", "cv")
#: The paper's small per-method grid, shifted for few-step CPU runs: whole-network updates want a small lr, a
#: few thousand scalars (plus the head) a large one.
DEFAULT_LR_GRID: dict[str, tuple[float, ...]] = {
    "full": (3e-5, 1e-4),
    "bitfit": (1e-3, 1e-2),
    "ln": (1e-3, 1e-2),
    "random": (1e-3, 1e-2),
    "ln-fisher": (1e-3, 1e-2),
    "mask": (1e-3, 1e-2),
    "mask+ln": (1e-3, 1e-2),
}
#: Tasks whose Fisher the global / cv mask sources combine (the report's tasks).
DEFAULT_FISHER_TASKS: tuple[str, ...] = ("rte", "mrpc", "stsb", "cola")


@dataclass(frozen=True)
class PeftConfig:
    """One fine-tuning run. The defaults are the paper's sizes; configs/peft_quick.toml shrinks them for CPUs.

    subsample: training examples (a fixed subsample drawn with data_seed, the same for every method and seed;
    None = the whole training set). dev_limit: dev examples scored (a fixed subsample; None = all). fraction:
    for ln-fisher, the share of LayerNorm scalars trained; for mask / mask+ln, the share of masked weights kept at
    the end (the density target, default DEFAULT_MASK_DENSITY). mask_source: whose Fisher ranks them
    (individual = this task; global = all fisher_tasks, each normalised to sum 1, summed; cv = the same
    without this task). fisher_samples: training examples the empirical Fisher averages over.
    """

    task: str
    method: str
    lr: float
    seed: int = 0
    fraction: float | None = None
    mask_source: str = "individual"
    model: str = "default"
    max_len: int = 128
    epochs: int = 3
    subsample: int | None = None
    dev_limit: int | None = None
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    pooling: str = "mean"
    data_seed: int = 0
    fisher_samples: int = 1000
    fisher_tasks: tuple[str, ...] = DEFAULT_FISHER_TASKS
    # where and how (sltlab.runs.device); in the record only away from cpu / fp32 / not deterministic
    device: str = "cpu"
    precision: str = "fp32"
    deterministic: bool = False

    def validate(self) -> None:
        check_device_name(self.device, "device")
        check_precision(self.precision, "precision")
        get_task(self.task)
        if self.method not in METHODS:
            raise ConfigError("method", f"unknown method {self.method!r}", " | ".join(METHODS))
        if self.method == "ln-fisher":
            if self.fraction is None:
                raise ConfigError("fraction", "ln-fisher needs --fraction", "a number in (0, 1], e.g. 0.2")
            check_range("fraction", self.fraction, 0.0, 1.0, lo_open=True)
            if self.mask_source not in MASK_SOURCES:
                raise ConfigError("mask_source", f"unknown source {self.mask_source!r}", " | ".join(MASK_SOURCES))
            if self.mask_source == "cv" and not [t for t in self.fisher_tasks if get_task(t).name != self.task]:
                raise ConfigError(
                    "fisher_tasks",
                    "cv needs at least one task other than the target",
                    "task names, e.g. rte, mrpc, stsb, cola",
                )
        elif self.method in MASK_METHODS:
            check_range("fraction", self.fraction, 0.0, 1.0, lo_open=True)
        elif self.fraction is not None:
            raise ConfigError("fraction", f"only ln-fisher, mask and mask+ln take a fraction, not {self.method}",
                              "omit it")
        check_range("lr", self.lr, 0.0, None, lo_open=True)
        for name in ("max_len", "epochs", "batch_size", "fisher_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{getattr(self, name)} must be at least 1", "a positive integer")
        for name in ("subsample", "dev_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(name, f"{v} must be at least 1", "a positive integer or omitted (all)")
        check_range("warmup_frac", self.warmup_frac, 0.0, 1.0, hi_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, None)
        for t in self.fisher_tasks:
            get_task(t)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", get_task(self.task).name)
        object.__setattr__(self, "fisher_tasks", tuple(get_task(t).name for t in self.fisher_tasks))
        if self.method != "ln-fisher":
            object.__setattr__(self, "mask_source", "individual")
        if self.method in MASK_METHODS and self.fraction is None:
            object.__setattr__(self, "fraction", DEFAULT_MASK_DENSITY)
        self.validate()

    def record(self) -> dict[str, Any]:
        """The store config: every field (so the run id is a hash of all of them), the device settings only away
        from their defaults (so runs made before they existed keep their ids)."""
        out = dataclasses.asdict(self)
        out["fisher_tasks"] = list(self.fisher_tasks)
        for k in ("device", "precision", "deterministic"):
            del out[k]
        out.update(run_id_fields(self.device, self.precision, self.deterministic))
        return out

    @property
    def label(self) -> str:
        """The method's table name: full, bitfit, ln, random, ln-fisher@0.2 (+ /global, /cv), mask@0.9."""
        if self.method in MASK_METHODS:
            return f"{self.method}@{self.fraction:g}"
        if self.method != "ln-fisher":
            return self.method
        src = "" if self.mask_source == "individual" else f"/{self.mask_source}"
        return f"ln-fisher@{self.fraction:g}{src}"


# -------------------- trainable selection --------------------


def body_names(model: nn.Module) -> list[str]:
    """Parameters of the pretrained part (everything but the head), in module order; mask scores included."""
    return [n for n, _ in model.named_parameters() if fisher_mod.component_of(n)[1] != "head"]


def score_names(model: nn.Module) -> list[str]:
    """The supermask scores of a masked model (empty for the other methods)."""
    return [n for n, _ in model.named_parameters() if n.endswith(".scores")]


def attach_masks(model: nn.Module) -> MaskCoverage:
    """Put an edge-popup supermask on every Linear weight of the encoder's blocks (MASK_TARGETS minus
    MASK_EXCLUDE), keeping every weight (keep = 1), with scores |W|. Returns the coverage."""
    cov = apply_supermask(model, SupermaskConfig(keep=1.0, targets=MASK_TARGETS, exclude=MASK_EXCLUDE))
    with torch.no_grad():
        for name, sm in supermasks(model).items():
            sm.scores.copy_(model.get_submodule(name).parametrizations.weight.original.abs())
    return cov


def density_at(step: int, steps: int, density: float) -> float:
    """The kept fraction before training step `step` (0-based): cubic from 1 to `density` over the first half
    of the steps (Zhu & Gupta's gradual pruning schedule), then `density`."""
    ramp = max(1, round(0.5 * steps))
    left = max(0.0, 1.0 - step / ramp)
    return density + (1.0 - density) * left**3


def head_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if fisher_mod.component_of(n)[1] == "head"]


def layernorm_names(model: nn.Module) -> list[str]:
    return [n for n in body_names(model) if fisher_mod.is_layernorm_param(n)]


def trainable_masks(
    model: nn.Module,
    method: str,
    *,
    fraction: float | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Bool masks (shaped like the parameters) of the scalars each method trains; absent names stay frozen.

    full: everything. bitfit: every bias of the body + head. ln: every LayerNorm gain and bias + head. random:
    as many scalars as `ln` trains in the body, drawn uniformly from all body scalars with `seed` + head.
    ln-fisher: the top round(fraction * N_LN) LayerNorm scalars by `scores` (a Fisher dict covering the
    LayerNorm names) + head. mask: every supermask score (the model must carry them: `attach_masks`) + head;
    mask+ln: the same + every LayerNorm gain and bias. The head is always trained: a fresh head is needed for
    any new task.
    """
    params = dict(model.named_parameters())
    ones = {n: torch.ones_like(params[n], dtype=torch.bool) for n in head_names(model)}
    body = body_names(model)
    if method in MASK_METHODS:
        scored = score_names(model)
        if not scored:
            raise ConfigError("method", f"{method} needs a model with supermasks", "call attach_masks(model) first")
        chosen = scored + (layernorm_names(model) if method == "mask+ln" else [])
        return {**{n: torch.ones_like(params[n], dtype=torch.bool) for n in chosen}, **ones}
    if method == "full":
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    if method == "bitfit":
        chosen = [n for n in body if n.endswith("bias")]
        return {**{n: torch.ones_like(params[n], dtype=torch.bool) for n in chosen}, **ones}
    ln = layernorm_names(model)
    if not ln:
        raise ConfigError("model", "has no LayerNorm parameters", "a BERT-family model")
    if method == "ln":
        return {**{n: torch.ones_like(params[n], dtype=torch.bool) for n in ln}, **ones}
    if method == "random":
        k = sum(params[n].numel() for n in ln)
        sizes = [params[n].numel() for n in body]
        g = torch.Generator().manual_seed(int(seed))
        # drawn on the CPU from the seeded stream (the same subset on every device), then moved beside each tensor
        flat = torch.zeros(sum(sizes), dtype=torch.bool, device="cpu")
        flat[torch.randperm(flat.numel(), generator=g, device="cpu")[:k]] = True
        out: dict[str, torch.Tensor] = {}
        start = 0
        for n, size in zip(body, sizes, strict=True):
            m = flat[start : start + size]
            start += size
            if m.any():
                out[n] = m.reshape(params[n].shape).to(params[n].device, copy=True)
        return {**out, **ones}
    if method == "ln-fisher":
        if fraction is None or scores is None:
            raise ConfigError("fraction", "ln-fisher needs a fraction and Fisher scores", "a number in (0, 1]")
        missing = [n for n in ln if n not in scores]
        if missing:
            raise ConfigError("fisher", f"has no entry for {missing[0]!r}", "a Fisher dict of this model's LayerNorms")
        masks = fisher_mod.top_fraction_mask({n: scores[n] for n in ln}, fraction)
        return {**{n: m.to(params[n].device) for n, m in masks.items() if m.any()}, **ones}
    raise ConfigError("method", f"unknown method {method!r}", " | ".join(METHODS))


def count(masks: Mapping[str, torch.Tensor], names: list[str] | None = None) -> int:
    """Number of True scalars (over `names` only if given)."""
    return int(sum(int(m.sum()) for n, m in masks.items() if names is None or n in names))


class GradientMasks:
    """Freeze a model except the True scalars of `masks`: requires_grad per tensor, a gradient hook per
    partial one.

    `decay(lr, weight_decay)` is decoupled (AdamW-style) weight decay through the masks, skipping biases and
    LayerNorms as BERT does; use it with the optimiser's own weight_decay = 0. `remove()` drops the hooks.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        self.model = model
        self.masks = dict(masks)
        self._handles: list[Any] = []
        self._partial: dict[str, torch.Tensor] = {}
        named = dict(model.named_parameters())
        unknown = [n for n in masks if n not in named]
        if unknown:
            raise ConfigError("masks", f"no parameter named {unknown[0]!r}", "names from model.named_parameters()")
        for n, p in named.items():
            m = self.masks.get(n)
            if m is not None and tuple(m.shape) != tuple(p.shape):
                raise ConfigError("masks", f"mask for {n} has shape {tuple(m.shape)}, not {tuple(p.shape)}")
            p.requires_grad_(m is not None and bool(m.any()))
            if m is not None and p.requires_grad and not bool(m.all()):
                fm = m.to(device=p.device, dtype=p.dtype)
                self._partial[n] = fm
                self._handles.append(p.register_hook(lambda g, fm=fm: g * fm))

    @torch.no_grad()
    def decay(self, lr: float, weight_decay: float) -> None:
        if weight_decay <= 0:
            return
        for n, p in self.model.named_parameters():
            if not p.requires_grad or n.endswith("bias") or n.endswith(".scores") or fisher_mod.is_layernorm_param(n):
                continue  # mask scores rank weights: decaying them would only rescale the ranking
            m = self._partial.get(n)
            if m is None:
                p.mul_(1.0 - lr * weight_decay)
            else:  # frozen scalars: factor exactly 1.0, so bit-identical
                p.mul_(1.0 - lr * weight_decay * m)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# -------------------- data --------------------


@dataclass
class Tokenized:
    """A split tokenised once: every row's token ids (and token types) unpadded, back to back, and its labels.

    Kept ragged so a batch is padded to its own longest row, exactly as the tokenizer's padding="longest" on that
    batch would: the same tensors as tokenising per batch, without tokenising every batch of every epoch."""

    ids: torch.Tensor  # int64, all rows concatenated
    types: torch.Tensor | None  # int64 token type ids, same layout (None when the model takes none)
    offsets: torch.Tensor  # int64 [n + 1]: row i is ids[offsets[i]:offsets[i + 1]]
    labels: torch.Tensor | None
    pad_id: int
    pad_type: int = 0
    left: bool = False  # the tokenizer pads on the left

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        starts = self.offsets[idx].tolist()
        ends = self.offsets[[i + 1 for i in idx]].tolist()
        width = max(e - b for b, e in zip(starts, ends, strict=True))
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.int64, device="cpu")
        att = torch.zeros((len(idx), width), dtype=torch.int64, device="cpu")
        types = None if self.types is None else torch.full_like(ids, self.pad_type)
        for r, (b, e) in enumerate(zip(starts, ends, strict=True)):
            cols = slice(width - (e - b), width) if self.left else slice(0, e - b)
            ids[r, cols] = self.ids[b:e]
            att[r, cols] = 1
            if types is not None and self.types is not None:
                types[r, cols] = self.types[b:e]
        out = {"input_ids": ids, "attention_mask": att}
        if types is not None:
            out["token_type_ids"] = types
        if self.labels is not None:
            out["labels"] = self.labels[idx]
        return out


def token_cache_dir() -> Path:
    """Where tokenised splits are kept: $SLTLAB_CACHE/tokens, else ~/.cache/sltlab/tokens. (Not inside the model
    folder: the bundled model lives in site-packages.)"""
    root = os.environ.get("SLTLAB_CACHE") or str(Path.home() / ".cache" / "sltlab")
    return Path(root).expanduser() / "tokens"


def _tokenizer_hash(pre: Pretrained) -> str:
    """A hash of the tokenizer's files (what decides the ids), computed once per loaded model."""
    import hashlib

    cached = getattr(pre, "_tokenizer_sha", None)
    if cached:
        return str(cached)
    h = hashlib.sha256(pre.model_type.encode())
    for name in sorted(("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                        "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")):
        f = pre.path / name
        if f.is_file():
            h.update(name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    digest = h.hexdigest()
    pre._tokenizer_sha = digest  # type: ignore[attr-defined]
    return digest


def tokenize_split(pre: Pretrained, split: GlueSplit, max_len: int, cache: bool = True) -> Tokenized:
    """Tokenise every row of `split` once (pairs truncated longest-first to max_len), reading / writing a cache
    file keyed by a hash of the tokenizer's files, the texts, the labels and max_len (safetensors, no pickle)."""
    import hashlib

    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    regression = get_task(split.task).is_regression
    h = hashlib.sha256(f"{_tokenizer_hash(pre)}|{max_len}|{split.task}|{regression}".encode())
    for texts in (split.texts_a, split.texts_b or []):
        h.update(len(texts).to_bytes(8, "little"))
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    if split.labels is not None:
        h.update(np.ascontiguousarray(split.labels).tobytes())
    path = token_cache_dir() / f"{h.hexdigest()[:32]}.safetensors"
    tok = pre.tokenizer
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    pad_type = int(getattr(tok, "pad_token_type_id", 0) or 0)
    left = getattr(tok, "padding_side", "right") == "left"
    with_types = pre.model_type != "distilbert"
    lab_dtype = torch.float32 if regression else torch.long
    labels = None if split.labels is None else torch.as_tensor(split.labels, dtype=lab_dtype)
    if cache and path.is_file():
        try:
            t = load_file(str(path))
            return Tokenized(t["ids"], t.get("types"), t["offsets"], labels, pad_id, pad_type, left)
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged cache file is rebuilt below
    enc = tok(list(split.texts_a), None if split.texts_b is None else list(split.texts_b), truncation=True,
              max_length=max_len, padding=False)
    rows = enc["input_ids"]
    lengths = torch.tensor([0] + [len(r) for r in rows], dtype=torch.int64, device="cpu")
    offsets = torch.cumsum(lengths, 0)
    ids = torch.tensor([i for r in rows for i in r], dtype=torch.int64, device="cpu")
    types = None
    if with_types and "token_type_ids" in enc:
        types = torch.tensor([i for r in enc["token_type_ids"] for i in r], dtype=torch.int64, device="cpu")
    out = Tokenized(ids, types, offsets, labels, pad_id, pad_type, left)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            save_file({"ids": ids, "offsets": offsets, **({"types": types} if types is not None else {})},
                      str(tmp))
            tmp.replace(path)
        except OSError:
            pass  # a cache that cannot be written only costs the next run its tokenising
    return out


class _Rows(torch.utils.data.Dataset):
    """Row indices: the collate function of a Tokenized split builds the batch from them."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _SeededBatches(torch.utils.data.Sampler):
    """Index batches, reshuffled every pass by one seeded generator (so the order is a function of the seed)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.gen = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n = self.n
        order = torch.randperm(n, generator=self.gen, device="cpu").tolist() if self.shuffle else list(range(n))
        for i in range(0, n, self.batch_size):
            yield order[i : i + self.batch_size]


class Batches:
    """Mini-batches of a GlueSplit, tokenised once (`tokenize_split`) and served by a torch DataLoader (pinned
    memory and non-blocking copies when `device` is a GPU); reshuffled every pass with a seeded generator when
    shuffle is on."""

    def __init__(
        self,
        pre: Pretrained,
        split: GlueSplit,
        max_len: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | None = None,
    ):
        self.pre, self.split, self.max_len, self.batch_size = pre, split, max_len, batch_size
        self.shuffle = shuffle
        self.device = device or torch.device("cpu")
        self.data = tokenize_split(pre, split, max_len)
        self.sampler = _SeededBatches(len(self.data), batch_size, shuffle, seed)
        self.loader = torch.utils.data.DataLoader(
            _Rows(len(self.data)),
            batch_sampler=self.sampler,
            collate_fn=self.data.collate,
            pin_memory=self.device.type == "cuda",
            # its own generator: a DataLoader draws a base seed per pass, which must not come from (and so shift)
            # the global stream that dropout uses
            generator=torch.Generator().manual_seed(0),
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            yield {k: to_device(v, self.device) for k, v in batch.items()}


def fixed_subsample(split: GlueSplit, limit: int | None, seed: int) -> GlueSplit:
    """A seeded subsample of `limit` rows (all rows, in file order, when limit is None or covers the
    split)."""
    if limit is None or limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return split.subset(idx)


def per_sample_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Negative log-likelihood per example: cross-entropy, or half the squared error for regression."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    y = batch["labels"]
    if out.shape[-1] == 1:
        return 0.5 * (out.squeeze(-1) - y.float()) ** 2
    return F.cross_entropy(out, y, reduction="none")


def mean_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return per_sample_loss(model, batch).mean()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches) -> dict[str, float]:
    """Official metric(s) of the task on `batches` (in points)."""
    model.eval()
    preds, labels = [], []
    for batch in batches:
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        preds.append(out.squeeze(-1) if out.shape[-1] == 1 else out.argmax(-1))
        labels.append(batch["labels"])
    return compute_metrics(batches.split.task, torch.cat(preds).cpu().numpy(), torch.cat(labels).cpu().numpy())


# -------------------- model cache --------------------

_ENCODERS: dict[str, Pretrained] = {}


def pristine(model: str | None) -> Pretrained:
    """The loaded pretrained model (head for 2 classes, seed 0), cached per process; copy before changing
    it."""
    path = resolve_model_path(None if model in (None, "", "default") else model)
    key = str(path.resolve())
    if key not in _ENCODERS:
        _ENCODERS[key] = load_pretrained(path, 2, 0)
    return _ENCODERS[key]


def fresh_model(pre: Pretrained, n_outputs: int, seed: int, pooling: str) -> nn.Module:
    """A copy of the pretrained encoder with a new head drawn from `seed`."""
    enc = copy.deepcopy(pre.model.encoder)
    return wrap_encoder(enc, pre.model.head.in_features, n_outputs, seed, pooling=pooling)


# -------------------- Fisher --------------------


def fisher_config(cfg: PeftConfig, task: str) -> dict[str, Any]:
    """The store config of the Fisher run a PEFT run with `cfg` uses for `task`."""
    return {
        "task": get_task(task).name,
        "model": cfg.model,
        "max_len": cfg.max_len,
        "samples": cfg.fisher_samples,
        "pooling": cfg.pooling,
        "data_seed": cfg.data_seed,
        "head_seed": 0,
    }


def ensure_fisher(
    store: Store, cfg: PeftConfig, task: str, data_dir: str | None = None, progress: bool = False
) -> dict[str, torch.Tensor]:
    """The empirical Fisher of every body parameter for `task` (computed once, then read from the store)."""
    fcfg = fisher_config(cfg, task)
    path = store.artifact_dir(_run_id("peft-fisher", fcfg)) / "fisher.safetensors"
    if _finished(store, "peft-fisher", fcfg) and path.is_file():
        return fisher_mod.load_fisher(path)
    run_id = store.start("peft-fisher", fcfg, 0)
    try:
        t0 = time.perf_counter()
        info = get_task(task)
        pre = pristine(cfg.model)
        # The Fisher is a measurement: fp32 on the run's device (its record does not name the device; on the CPU it
        # is bit-identical, on a GPU equal to float32 rounding).
        device = resolve_device(cfg.device, "device")
        model = fresh_model(pre, info.n_outputs, 0, cfg.pooling).to(device)
        model.eval()
        train = fixed_subsample(load_split(task, "train", data_dir=data_dir), cfg.fisher_samples, cfg.data_seed + 1)
        batches = Batches(pre, train, cfg.max_len, 1, shuffle=False, device=device)
        fisher = fisher_mod.empirical_fisher(
            model, per_sample_loss, batches, params=body_names(model), progress=progress
        )
        fisher_mod.save_fisher(path, fisher, {"task": info.name, "model": cfg.model})
        table = fisher_mod.aggregate_by_component(fisher, "mean")
        store.finish(
            run_id,
            {"fisher_by_component": _table_json(table), "path": str(path)},
            {"wall_s": time.perf_counter() - t0},
        )
    except BaseException as err:
        store.fail(run_id, f"{type(err).__name__}: {err}")
        raise
    return fisher


def mask_scores(store: Store, cfg: PeftConfig, data_dir: str | None, progress: bool) -> dict[str, torch.Tensor]:
    """Fisher scores ranking the LayerNorm scalars for `cfg.mask_source` (normalised over the LayerNorms)."""
    if cfg.mask_source == "individual":
        tasks = [cfg.task]
    elif cfg.mask_source == "global":
        tasks = sorted(set(cfg.fisher_tasks) | {cfg.task})
    else:
        tasks = [t for t in cfg.fisher_tasks if t != cfg.task]
    fishers = {}
    for t in tasks:
        f = ensure_fisher(store, cfg, t, data_dir, progress)
        fishers[t] = {n: v for n, v in f.items() if fisher_mod.is_layernorm_param(n)}
    return fisher_mod.combine_fisher(fishers)


def _table_json(table: Mapping[fisher_mod.ComponentKey, float]) -> dict[str, float]:
    return {f"{'all' if layer is None else layer}:{c}": v for (layer, c), v in table.items()}


def table_from_json(d: Mapping[str, float]) -> dict[fisher_mod.ComponentKey, float]:
    """Inverse of the store encoding "layer:component" -> value."""
    out: dict[fisher_mod.ComponentKey, float] = {}
    for k, v in d.items():
        layer, comp = k.split(":", 1)
        out[(None if layer == "all" else int(layer), comp)] = float(v)
    return out


def _run_id(kind: str, config: dict[str, Any], seed: int | None = 0) -> str:
    from sltlab.runs.store import make_run_id

    return make_run_id(kind, config, seed)


def _finished(store: Store, kind: str, config: dict[str, Any], seed: int | None = 0) -> bool:
    return store.is_finished(_run_id(kind, config, seed))


# -------------------- one run --------------------


def run_peft(cfg: PeftConfig, store: Store, data_dir: str | None = None, progress: bool = True) -> str:
    """Fine-tune, score on dev and record one run; skipped (same id returned) when the store has it
    finished."""
    record = cfg.record()
    run_id = _run_id("peft", record, cfg.seed)
    if store.is_finished(run_id):
        return run_id
    scores = mask_scores(store, cfg, data_dir, progress) if cfg.method == "ln-fisher" else None
    run_id = store.start("peft", record, cfg.seed)
    try:
        t0 = time.perf_counter()
        info = get_task(cfg.task)
        pre = pristine(cfg.model)
        train = fixed_subsample(load_split(cfg.task, "train", data_dir=data_dir), cfg.subsample, cfg.data_seed)
        dev = fixed_subsample(load_split(cfg.task, info.dev_splits[0], data_dir=data_dir), cfg.dev_limit, cfg.data_seed)
        device = resolve_device(cfg.device, "device")
        model = fresh_model(pre, info.n_outputs, cfg.seed, cfg.pooling)
        coverage = attach_masks(model) if cfg.method in MASK_METHODS else None
        model = model.to(device)
        masks = trainable_masks(model, cfg.method, fraction=cfg.fraction, scores=scores, seed=cfg.seed)
        before = (
            {n: p.detach().clone() for n, p in model.named_parameters() if n in body_names(model)}
            if cfg.method == "full"
            else {}
        )
        with determinism(device, cfg.deterministic):
            history = train_masked(
                model,
                masks,
                Batches(pre, train, cfg.max_len, cfg.batch_size, shuffle=True, seed=cfg.seed, device=device),
                cfg,
                progress=progress,
                desc=f"{cfg.task} {cfg.label} lr={cfg.lr:g} s{cfg.seed}",
            )
        t_train = time.perf_counter() - t0
        scores_dev = evaluate(model, Batches(pre, dev, cfg.max_len, 64, shuffle=False, device=device))
        scored = set(score_names(model))  # mask scores are not parameters of the model a run yields
        body = [n for n in body_names(model) if n not in scored]
        n_body = sum(p.numel() for n, p in model.named_parameters() if n in body)
        n_total = sum(p.numel() for n, p in model.named_parameters() if n not in scored)
        trainable = count(masks) - count(masks, list(scored))
        trainable_body = count(masks, body)
        metrics: dict[str, Any] = {
            "main_metric": main_metric(cfg.task),
            "main": scores_dev[main_metric(cfg.task)],
            **scores_dev,
            "trainable": trainable,
            "trainable_body": trainable_body,
            "total": n_total,
            "total_body": n_body,
            "share": trainable_body / n_body,
            "share_with_head": trainable / n_total,
            "final_loss": history[-1]["loss"] if history else float("nan"),
            **history.movement(),
            "train_n": len(train),
            "dev_n": len(dev),
            "wall_s": time.perf_counter() - t0,
        }
        if coverage is not None:
            metrics["masked_share"] = coverage.masked / n_body  # of the pretrained scalars
        metrics.update(save_run_artifact(model, masks, cfg, store.artifact_dir(run_id)))
        if cfg.method == "full":
            after = {n: p.detach() for n, p in model.named_parameters() if n in before}
            metrics["change_by_component"] = _table_json(fisher_mod.parameter_change(before, after))
        store.finish(run_id, metrics, {"train_s": t_train, "wall_s": metrics["wall_s"]})
    except BaseException as err:
        store.fail(run_id, f"{type(err).__name__}: {err}")
        raise
    return run_id


def train_masked(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    batches: Sized,
    cfg: PeftConfig,
    *,
    progress: bool = True,
    desc: str = "peft",
) -> list[dict[str, float]]:
    """AdamW (decay through the masks) with warm-up and cosine decay, via the one loop `run_search`.

    `batches` is any re-iterable sized collection of batch dicts (a `Batches`, or a list in tests); one epoch
    is one pass over it.
    """
    from sltlab.tickets.search import SearchConfig, run_search

    torch.manual_seed(cfg.seed)  # dropout
    steps = len(batches) * cfg.epochs
    gm = GradientMasks(model, masks)
    masked = cfg.method in MASK_METHODS and bool(supermasks(model))
    if masked:
        set_keep(model, density_at(0, steps, float(cfg.fraction or DEFAULT_MASK_DENSITY)))
    scfg = SearchConfig(
        steps=steps,
        lr=cfg.lr,
        optimizer="adamw",
        weight_decay=0.0,
        schedule="cosine",
        warmup=int(cfg.warmup_frac * steps),
        grad_clip=cfg.grad_clip,
    )

    def decay(step: int, rec: dict[str, float], m: nn.Module) -> None:
        gm.decay(rec["lr"], cfg.weight_decay)
        if masked and step < steps:  # the kept fraction of the next step
            set_keep(m, density_at(step, steps, float(cfg.fraction or DEFAULT_MASK_DENSITY)))

    try:
        return run_search(model, mean_loss, batches, scfg, callbacks=[decay], progress=progress, desc=desc,
                          precision=cfg.precision)
    finally:
        gm.remove()


# -------------------- what a run trained: artifacts, loading, export --------------------

TRAINED = "trained.safetensors"
TRAINED_MASKS = "masks.bin"
TRAINED_MANIFEST = "trained.json"


def _sha_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def trained_tensors(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full tensors that hold a trained scalar (scores excluded: the masks replace them), by name."""
    named = dict(model.named_parameters())
    return {n: named[n].detach().cpu().clone().contiguous() for n, m in masks.items()
            if bool(m.any()) and not n.endswith(".scores")}


def save_run_artifact(model: nn.Module, masks: Mapping[str, torch.Tensor], cfg: PeftConfig,
                      out: Path) -> dict[str, Any]:
    """Write what a run trained to `out` and return what it must store: trained floats, mask bits and bytes.

    stored_floats: the trained scalars (a partial tensor counts its trained entries; the file holds the whole
    tensor, its untrained entries at their pretrained values). mask_bits: the coded size of the masks (the
    ticket artifact coder, `sltlab.tickets.artifact.encode_masks`). stored_bytes = 4 * stored_floats + mask bytes."""
    from safetensors.torch import save as st_save

    from sltlab.runs.store import atomic_write_bytes
    from sltlab.tickets.artifact import encode_masks
    from sltlab.tickets.supermask import get_masks

    tensors = trained_tensors(model, masks)
    data = st_save(tensors)
    files = {TRAINED: _sha_bytes(data)}
    atomic_write_bytes(out / TRAINED, data)
    mask_table: list[dict[str, Any]] = []
    stream = b""
    if supermasks(model):
        binary = get_masks(model)
        stream, ones = encode_masks(list(binary.values()))
        mask_table = [{"name": n, "shape": list(m.shape), "ones": k} for (n, m), k in zip(binary.items(), ones,
                                                                                         strict=True)]
        files[TRAINED_MASKS] = _sha_bytes(stream)
        atomic_write_bytes(out / TRAINED_MASKS, stream)
    stored_floats = sum(int(m.sum()) for n, m in masks.items() if not n.endswith(".scores"))
    n_mask = sum(math.prod(e["shape"]) for e in mask_table)
    manifest = {"format": "sltlab-peft-run", "version": 1, "method": cfg.method, "config": cfg.record(),
                "tensors": sorted(tensors), "masks": mask_table, "files": files}
    atomic_write_bytes(out / TRAINED_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
    return {
        "stored_floats": stored_floats,
        "mask_weights": n_mask,
        "mask_density": sum(e["ones"] for e in mask_table) / n_mask if n_mask else 1.0,
        "mask_bits": 8 * len(stream),
        "stored_bytes": 4 * stored_floats + len(stream),
    }


def _read_run_artifact(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], bytes]:
    from safetensors.torch import load as st_load

    from sltlab.errors import ArtifactError

    mf = folder / TRAINED_MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{folder} holds no {TRAINED_MANIFEST}: the run saved nothing it trained "
                            "(runs from before issue 13 did not); rerun it")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
        files = manifest["files"]
        blobs = {name: (folder / name).read_bytes() for name in files}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{folder}: the run's artifact is unreadable ({err}); rerun it") from None
    for name, digest in files.items():
        if _sha_bytes(blobs[name]) != digest:
            raise ArtifactError(f"{folder}: {name} fails its SHA-256 check; the run's artifact is corrupted")
    return manifest, st_load(blobs[TRAINED]), blobs.get(TRAINED_MASKS, b"")


def load_run_model(store: Store, run_id: str) -> nn.Module:
    """The model a finished peft run ended with, rebuilt from the pretrained model and the run's artifact: its
    dev metrics are those the run recorded, bit for bit. Masked runs come back with their supermasks (fixed to
    the stored masks); `sltlab.tickets.bake` turns them into plain weights."""
    from sltlab.errors import ArtifactError
    from sltlab.tickets.artifact import decode_masks, fix_mask

    rec = store.get(run_id)
    if rec.kind != "peft":
        raise ConfigError("run_id", f"{rec.run_id} is a {rec.kind} run", "the id of a peft run")
    cfg = PeftConfig(**{**rec.config, "fisher_tasks": tuple(rec.config["fisher_tasks"])})
    manifest, tensors, stream = _read_run_artifact(store.artifact_dir(rec.run_id))
    model = fresh_model(pristine(cfg.model), get_task(cfg.task).n_outputs, cfg.seed, cfg.pooling)
    if cfg.method in MASK_METHODS:
        attach_masks(model)
        set_keep(model, float(cfg.fraction or DEFAULT_MASK_DENSITY))
        table = manifest.get("masks", [])
        sms = supermasks(model)
        if [e["name"] for e in table] != list(sms):
            raise ArtifactError(f"{rec.run_id}: the stored masks do not match the model's masked layers")
        decoded = decode_masks(stream, [(math.prod(e["shape"]), e["ones"]) for e in table])
        for e, flat in zip(table, decoded, strict=True):
            fix_mask(sms[e["name"]], flat.reshape(e["shape"]))
            if not torch.equal(sms[e["name"]].hard_mask().bool(), flat.reshape(e["shape"])):
                raise ArtifactError(f"{rec.run_id}: mask {e['name']!r} could not be reproduced")
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in tensors.items():
            if n not in named or named[n].shape != t.shape:
                raise ArtifactError(f"{rec.run_id}: stored tensor {n!r} is not a parameter of the model")
            named[n].copy_(t)
    model.eval()
    return model


PEFT_BASE = "sltlab_base.json"
DIFF = "diff.safetensors"
DIFF_MASKS = "masks.safetensors"


def exported_base(folder: str | Path) -> nn.Module:
    """The base model an exported run applies to: the pretrained encoder and the run's initial head (pooling as
    the run had it), as `sltlab_base.json` in the export folder describes it."""
    from sltlab.errors import ArtifactError

    path = Path(folder) / PEFT_BASE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return load_pretrained(info["model_path"], int(info["n_outputs"]), int(info["seed"]),
                               pooling=info["pooling"]).model
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{path} is missing or unreadable ({err}); export the run again") from None


def export_run(store: Store, run_id: str, out: str | Path) -> tuple[str, Path]:
    """Write a finished run for use outside sltlab. ln / ln-fisher: a Hugging Face peft LN-tuning adapter
    (LNTuningConfig over every LayerNorm, full tensors with the untrained scalars at their pretrained values, the
    head as a module to save): `peft.PeftModel.from_pretrained(exported_base(out), out)`. Other methods: a plain
    state-dict diff (`diff.safetensors`, and `masks.safetensors` for masked runs): `load_diff(out)`.
    Returns (what was written, folder)."""
    from sltlab.runs.store import atomic_write_bytes

    rec = store.get(run_id)
    model = load_run_model(store, rec.run_id)
    cfg = PeftConfig(**{**rec.config, "fisher_tasks": tuple(rec.config["fisher_tasks"])})
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    base_info = {"model_path": str(resolve_model_path(None if cfg.model in ("", "default") else cfg.model)),
                 "n_outputs": get_task(cfg.task).n_outputs, "seed": cfg.seed, "pooling": cfg.pooling,
                 "task": cfg.task, "method": cfg.label, "run_id": rec.run_id}
    atomic_write_bytes(folder / PEFT_BASE, json.dumps(base_info, indent=1).encode("utf-8"))
    if cfg.method in ("ln", "ln-fisher"):
        _export_ln_adapter(model, exported_base(folder), folder, base_info["model_path"])
        return "a Hugging Face peft LN-tuning adapter", folder
    from safetensors.torch import save as st_save

    from sltlab.tickets.supermask import bake, get_masks

    manifest, tensors, _ = _read_run_artifact(store.artifact_dir(rec.run_id))
    binary = {f"{n}.weight": m.contiguous() for n, m in get_masks(model).items()}
    bake(model)
    state = model.state_dict()
    diff = {n: state[n].clone().contiguous() for n in tensors}
    atomic_write_bytes(folder / DIFF, st_save(diff))
    if binary:
        atomic_write_bytes(folder / DIFF_MASKS, st_save(binary))
    return "a state-dict diff (load it with sltlab.tasks.peft.load_diff)", folder


def _export_ln_adapter(trained: nn.Module, base: nn.Module, folder: Path, model_path: str) -> None:
    try:
        import peft as hf_peft
    except ImportError:
        raise ConfigError("--peft", "writing a peft adapter needs the peft package", "pip install peft") from None
    ln_modules = sorted({n.rsplit(".", 1)[0] for n in layernorm_names(base)})
    pcfg = hf_peft.LNTuningConfig(target_modules=ln_modules, modules_to_save=["head"],
                                  base_model_name_or_path=model_path)
    with warnings.catch_warnings():
        # peft warns that LayerNorm is an "unsupported layer type" of a custom model; LN tuning copies it whole
        warnings.simplefilter("ignore", UserWarning)
        pm = hf_peft.get_peft_model(base, pcfg)
    pm.peft_config["default"].base_model_name_or_path = model_path  # get_peft_model resets it for custom models
    inner = pm.base_model.model
    named = dict(trained.named_parameters())
    with torch.no_grad():
        for mod in ln_modules:
            layer = inner.get_submodule(mod).ln_tuning_layers["default"]
            for leaf, p in layer.named_parameters():
                p.copy_(named[f"{mod}.{leaf}"])
        for leaf, p in inner.head.modules_to_save["default"].named_parameters():
            p.copy_(named[f"head.{leaf}"])
    pm.save_pretrained(str(folder))


def load_diff(folder: str | Path) -> nn.Module:
    """The model of a run exported as a state-dict diff: the base (`exported_base`), the diff's tensors loaded
    over it, and the masks (if any) multiplied into their weights. A plain model in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from sltlab.errors import ArtifactError

    folder = Path(folder)
    model = exported_base(folder)
    try:
        diff = load_file(str(folder / DIFF))
        binary = load_file(str(folder / DIFF_MASKS)) if (folder / DIFF_MASKS).is_file() else {}
    except (OSError, SafetensorError) as err:
        raise ArtifactError(f"{folder}: the diff does not load ({err}); export the run again") from None
    state = model.state_dict()
    with torch.no_grad():
        for n, t in {**diff, **binary}.items():
            if n not in state or state[n].shape != t.shape:
                raise ArtifactError(f"{folder}: {n!r} is not a tensor of the base model")
        for n, t in diff.items():
            state[n].copy_(t)
        for n, m in binary.items():
            state[n].mul_(m.to(state[n].dtype))
    model.eval()
    return model


# -------------------- sweeps --------------------


@dataclass(frozen=True)
class SweepConfig:
    """A grid of PEFT runs (configs/peft_quick.toml). methods: "full", "ln-fisher@0.2", "ln-fisher@0.2/cv" ...

    lr_select: "all" runs every lr of the grid for every seed; "first-seed" runs the grid for the first seed
    and only the best lr (by dev main metric) for the other seeds, which halves the cost at 2 seeds. base:
    every other PeftConfig field (max_len, epochs, subsample, ...).
    """

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1)
    extra_methods: tuple[str, ...] = ()
    lr_select: str = "first-seed"
    lr_grid: dict[str, Any] = dataclasses.field(default_factory=dict)
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    # every run's device settings (sltlab.runs.device); those away from cpu/fp32 override the same keys in `base`
    device: str = "cpu"
    precision: str = "fp32"
    deterministic: bool = False

    def __post_init__(self) -> None:
        check_device_name(self.device, "device")
        check_precision(self.precision, "precision")
        object.__setattr__(self, "base", {**self.base, **where_fields(self.device, self.precision,
                                                                      self.deterministic)})
        if self.lr_select not in ("all", "first-seed"):
            raise ConfigError("lr_select", f"got {self.lr_select!r}", "all | first-seed")
        if not self.seeds:
            raise ConfigError("seeds", "is empty", "a list of integers")
        for m in (*self.methods, *self.extra_methods):
            parse_method(m)
        for k in self.lr_grid:
            if k not in METHODS:
                raise ConfigError(f"lr_grid.{k}", "is not a method", " | ".join(METHODS))
        reserved = {"task", "method", "fraction", "mask_source", "lr", "seed"} & set(self.base)
        if reserved:
            raise ConfigError(f"base.{sorted(reserved)[0]}", "is set by the sweep", "other PeftConfig fields")
        if not self.tasks or not self.methods:
            raise ConfigError("tasks" if not self.tasks else "methods", "is empty", "a non-empty list")
        object.__setattr__(self, "tasks", tuple(get_task(t).name for t in self.tasks))
        for m in self.lr_grid:
            for lr in self.grid(m):
                check_range(f"lr_grid.{m}", lr, 0.0, None, lo_open=True)
        base = default_base(self.base)  # every base field checked now, not after hours of runs
        resolve_model_path(None if base["model"] in ("", "default") else base["model"])

    def grid(self, method: str) -> tuple[float, ...]:
        vals = self.lr_grid.get(method, DEFAULT_LR_GRID[method])
        if isinstance(vals, int | float):
            vals = (vals,)
        return tuple(float(v) for v in vals)


def parse_method(text: str) -> tuple[str, float | None, str]:
    """ "ln-fisher@0.2/cv" -> ("ln-fisher", 0.2, "cv"); "ln" -> ("ln", None, "individual")."""
    rest, _, source = text.partition("/")
    method, _, frac = rest.partition("@")
    if method not in METHODS:
        raise ConfigError("methods", f"unknown method {text!r}",
                          "full | bitfit | ln | random | ln-fisher@F[/SRC] | mask[@D] | mask+ln[@D]")
    if method == "ln-fisher" and not frac:
        raise ConfigError("methods", f"{text!r} needs a fraction", "ln-fisher@0.2")
    if source and source not in MASK_SOURCES:
        raise ConfigError("methods", f"unknown mask source in {text!r}", " | ".join(MASK_SOURCES))
    try:
        fraction = float(frac) if frac else None
    except ValueError:
        raise ConfigError("methods", f"bad fraction in {text!r}", "ln-fisher@0.2") from None
    if fraction is not None and not 0 < fraction <= 1:  # also NaN
        raise ConfigError("methods", f"the fraction in {text!r} is outside (0, 1]", "ln-fisher@0.2")
    return method, fraction, source or "individual"


def make_config(task: str, method_text: str, lr: float, seed: int, base: Mapping[str, Any]) -> PeftConfig:
    from sltlab.runs.config import from_dict

    method, fraction, source = parse_method(method_text)
    return from_dict(
        PeftConfig,
        {
            **base,
            "task": task,
            "method": method,
            "fraction": fraction,
            "mask_source": source,
            "lr": lr,
            "seed": seed,
        },
    )


def best_lr(store: Store, cfgs: list[PeftConfig]) -> PeftConfig | None:
    """The config of the grid with the highest dev main metric (None while any grid point is unfinished)."""
    best: tuple[float, PeftConfig] | None = None
    for c in cfgs:
        rid = _run_id("peft", c.record(), c.seed)
        if not store.is_finished(rid):
            return None
        main = float(store.get(rid).metrics["main"])
        if best is None or main > best[0]:
            best = (main, c)
    return best[1] if best else None


def run_sweep(
    sweep: SweepConfig,
    store: Store,
    data_dir: str | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
) -> list[str]:
    """Run the grid; this shard takes every n-th task. Order: the methods' lr grids on the first seed, then
    the other seeds (at the best lr when lr_select is first-seed), then the same for `extra_methods`.

    Finished runs are skipped, so an interrupted sweep resumes. Returns the run ids of this shard.
    """
    index, n_shards = shard
    tasks = [t for i, t in enumerate(sweep.tasks) if i % n_shards == index]
    done: list[str] = []
    first, others = sweep.seeds[0], sweep.seeds[1:]

    def one(cfg: PeftConfig) -> None:
        done.append(run_peft(cfg, store, data_dir, progress))
        log(_summary(store, done[-1]))

    for methods in (sweep.methods, sweep.extra_methods):
        for task in tasks:
            for m in methods:
                grid_seeds = sweep.seeds if sweep.lr_select == "all" else (first,)
                for seed in grid_seeds:
                    for lr in sweep.grid(parse_method(m)[0]):
                        one(make_config(task, m, lr, seed, sweep.base))
        if sweep.lr_select != "first-seed":
            continue
        for task in tasks:
            for m in methods:
                grid = [make_config(task, m, lr, first, sweep.base) for lr in sweep.grid(parse_method(m)[0])]
                chosen = best_lr(store, grid)
                if chosen is None:
                    raise ConfigError("lr_select", f"the lr grid of {task} {m} did not finish", "rerun the sweep")
                for seed in others:
                    one(dataclasses.replace(chosen, seed=seed))
    return done


def _summary(store: Store, run_id: str) -> str:
    rec = store.get(run_id)
    c, m = rec.config, rec.metrics
    lab = c["method"] + (f"@{c['fraction']:g}" if c.get("fraction") is not None else "")
    masked = f"  masked={100 * m['masked_share']:.1f}% of pretrained" if "masked_share" in m else ""
    stored = f"  stored={m['stored_bytes']:,} B" if "stored_bytes" in m else ""
    return (
        f"{run_id}  {c['task']:5s} {lab:16s} lr={c['lr']:<7g} seed={c['seed']}  "
        f"{m['main_metric']}={m['main']:.2f}  trainable={m['trainable']}{masked}{stored}  ({m['wall_s']:.0f}s)"
    )


def base_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run config shared by all cells of a sweep (what a report filters on)."""
    return {k: v for k, v in record.items() if k not in ("task", "method", "fraction", "mask_source", "lr", "seed")}


def default_base(base: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep's base settings completed with PeftConfig's defaults (for matching store records)."""
    cfg = make_config("rte", "full", 1.0, 0, base)
    return base_settings(cfg.record())


def model_label(model: str) -> str:
    return model_key(resolve_model_path(None if model in ("", "default") else model))


# -------------------- report --------------------

#: The paper's claims, as (a, b, relation): ">" a beats b, ">=" a is not worse, "~" the two are equivalent.
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("full", "bitfit", ">="),
    ("bitfit", "ln", "~"),
    ("ln", "random", ">"),
    ("full", "ln", ">="),
    ("ln", "ln-fisher@0.5", "~"),
    ("ln", "ln-fisher@0.2", "~"),
    ("ln", "ln-fisher@0.1", "~"),
    # masks over the pretrained weights (issue 13): as good as LN-only? does learning LN with the mask help?
    # how far from full fine-tuning?
    ("mask@0.9", "ln", "~"),
    ("mask+ln@0.9", "mask@0.9", ">"),
    ("full", "mask@0.9", ">="),
)
#: Equivalence margin of "~", in points of the main metric.
MARGIN = 2.0


@dataclass
class Cell:
    """The runs of one (task, method label) at its chosen lr: scores in points, per seed."""

    task: str
    label: str
    lr: float
    scores: dict[int, float]
    runs: list[Any]
    grid: dict[float, dict[int, float]]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.scores.values()))) if self.scores else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(list(self.scores.values()), ddof=1)) if len(self.scores) > 1 else float("nan")


def collect_cells(sweep: SweepConfig, store: Store) -> dict[tuple[str, str], Cell]:
    """Finished runs of this sweep's settings grouped by (task, label), at the lr chosen on dev.

    The lr is chosen as the sweep ran it: by the first seed's score (first-seed) or by the seed mean (all).
    """
    want = default_base(sweep.base)
    groups: dict[tuple[str, str], dict[float, list[Any]]] = {}
    for rec in store.runs("peft"):
        c = rec.config
        if base_settings(c) != want or c["task"] not in sweep.tasks:
            continue
        cfg = PeftConfig(**{**c, "fisher_tasks": tuple(c["fisher_tasks"])})
        groups.setdefault((cfg.task, cfg.label), {}).setdefault(cfg.lr, []).append(rec)
    cells = {}
    first = sweep.seeds[0]
    for key, by_lr in groups.items():
        grid = {lr: {r.seed: 100 * float(r.metrics["main"]) for r in recs} for lr, recs in by_lr.items()}

        def rank(lr: float, grid: dict[float, dict[int, float]] = grid) -> float:
            if sweep.lr_select == "first-seed":
                return grid[lr].get(first, float("-inf"))
            return float(np.mean(list(grid[lr].values())))

        lr = max(grid, key=rank)
        cells[key] = Cell(key[0], key[1], lr, dict(sorted(grid[lr].items())), by_lr[lr], grid)
    return cells


def _fmt(x: float, d: int = 1) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{d}f}"


def _claim_rows(
    cells: Mapping[tuple[str, str], Cell], tasks: list[str], baselines: Mapping[str, float] | None = None
) -> list[str]:
    """One row per claim. `baselines` (task -> majority score) lets a row count the pairs in which both
    methods merely reproduce the majority baseline: those pairs agree for a trivial reason."""
    from sltlab.analysis.stats import bootstrap_ci, fmt_p, mann_whitney

    rows = [
        "| claim | pairs (task, seed) | both at baseline | mean diff a−b [95% CI] | Mann-Whitney p "
        "(task-centred) | Cliff's δ | verdict |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for a, b, rel in CLAIMS:
        diffs, xa, xb = [], [], []
        trivial = 0
        for t in tasks:
            ca, cb = cells.get((t, a)), cells.get((t, b))
            if ca is None or cb is None:
                continue
            centre = float(np.mean([c.mean for (tt, _), c in cells.items() if tt == t]))
            for s in sorted(set(ca.scores) & set(cb.scores)):
                diffs.append(ca.scores[s] - cb.scores[s])
                base = (baselines or {}).get(t)
                if base is not None and max(abs(ca.scores[s] - base), abs(cb.scores[s] - base)) < 0.05:
                    trivial += 1
                xa.append(ca.scores[s] - centre)
                xb.append(cb.scores[s] - centre)
        if not diffs:
            rows.append(f"| {a} {rel} {b} | 0 | – | – | – | – | not run |")
            continue
        ci = bootstrap_ci(diffs)
        mw = mann_whitney(xa, xb)
        lo, hi = ci.lo, ci.hi
        if not (math.isfinite(lo) and math.isfinite(hi)):
            verdict = "too few pairs"
        elif rel == ">":
            verdict = "holds (CI > 0)" if lo > 0 else ("reversed (CI < 0)" if hi < 0 else "not shown (CI spans 0)")
        elif rel == ">=":
            verdict = "holds (a not below b)" if hi >= 0 and ci.estimate >= -MARGIN else "fails (a below b)"
            if lo > 0:
                verdict = "holds (a > b)"
        else:
            verdict = (
                f"holds (CI within ±{MARGIN:g})"
                if lo >= -MARGIN and hi <= MARGIN
                else "differ (CI excludes 0)"
                if lo > 0 or hi < 0
                else "inconclusive (CI wide)"
            )
        rows.append(
            f"| {a} {rel} {b} | {len(diffs)} | {trivial if baselines else '–'} | "
            f"{ci.estimate:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
            f"{fmt_p(mw['p'])} | {mw['cliffs_delta']:+.2f} ({mw['effect']}) | {verdict} |"
        )
    return rows


def _fisher_tables(sweep: SweepConfig, store: Store) -> tuple[dict[str, Any], list[str]]:
    """Per-task and combined Fisher component tables from the sweep's Fisher runs."""
    cfg = make_config(sweep.tasks[0], "full", 1.0, 0, sweep.base)
    per_task: dict[str, dict[str, torch.Tensor]] = {}
    for t in sorted(set(sweep.tasks) | set(cfg.fisher_tasks)):
        fcfg = fisher_config(cfg, t)
        rid = _run_id("peft-fisher", fcfg)
        path = store.artifact_dir(rid) / "fisher.safetensors"
        if store.is_finished(rid) and path.is_file():
            per_task[t] = fisher_mod.load_fisher(path)
    if not per_task:
        return {}, []
    norm = fisher_mod.normalise_per_task(per_task)
    tables = {t: fisher_mod.aggregate_by_component(f, "mean") for t, f in norm.items()}
    combined = fisher_mod.aggregate_by_component(fisher_mod.combine_fisher(per_task), "mean")
    return {"combined": combined, **tables}, sorted(per_task)


def majority_baseline(task: str, base: Mapping[str, Any], data_dir: str | None) -> float:
    """Dev main metric (points) of predicting the training subsample's majority class (STS-B: its mean).

    Why: at CPU scale a fine-tuned model may not leave this baseline, and the table must say so.
    """
    info = get_task(task)
    train = fixed_subsample(load_split(task, "train", data_dir=data_dir), base["subsample"], base["data_seed"])
    dev = fixed_subsample(load_split(task, info.dev_splits[0], data_dir=data_dir), base["dev_limit"], base["data_seed"])
    assert train.labels is not None and dev.labels is not None
    if info.is_regression:
        const = np.full(len(dev), float(np.mean(train.labels)))
    else:
        const = np.full(len(dev), int(np.bincount(train.labels.astype(np.int64)).argmax()))
    return 100 * compute_metrics(task, const, dev.labels)[main_metric(task)]


def write_report(sweep: SweepConfig, store: Store, path: Path, command: str = "", data_dir: str | None = None) -> Path:
    """Markdown report of the sweep's finished runs (+ heat maps beside it): tables, claims, components.

    With the GLUE data reachable (`data_dir`, see `sltlab.paths.data_dir`) the main table also shows the
    majority-class baseline on the same dev subsample.
    """
    from sltlab.runs.store import atomic_write_text

    tasks = list(sweep.tasks)
    cells = collect_cells(sweep, store)
    labels = [
        PeftConfig(
            task="rte",
            method=parse_method(m)[0],
            lr=1.0,
            fraction=parse_method(m)[1],
            mask_source=parse_method(m)[2],
        ).label
        for m in (*sweep.methods, *sweep.extra_methods)
    ]
    base = default_base(sweep.base)
    n_runs = sum(len(c.runs) for c in cells.values())
    select = "by the first seed" if sweep.lr_select == "first-seed" else "by the seed mean"
    n_all = sum(len(v) for c in cells.values() for v in c.grid.values())
    lines = [
        "# Parameter-efficient fine-tuning: LayerNorm, BitFit, random and Fisher-selected subsets",
        "",
        f"Model: `{base['model']}` ({model_label(base['model'])}). Main metric in points (x100) on the dev "
        f"set (fixed subsample of {base['dev_limit'] or 'all'} examples), mean ± sd over seeds at the "
        f"learning rate chosen on dev ({select}). Training: {base['subsample'] or 'all'} examples, "
        f"{base['epochs']} epoch(s), batch {base['batch_size']}, max_len {base['max_len']}, AdamW (decay "
        f"{base['weight_decay']}) with warm-up {base['warmup_frac']} and cosine decay; every method also "
        f"trains a fresh head. {n_all} runs finished, {n_runs} of them at the chosen lr.",
        "",
        f"Command: `{command or 'sltlab peft --config ...'}`",
        "",
        "## Main table",
        "",
        "Share = trainable pretrained scalars / all pretrained scalars (the paper's measure); every method "
        "also trains the task's head: "
        + ", ".join(
            f"{t} {c.runs[0].metrics['trainable'] - c.runs[0].metrics['trainable_body']:,}"
            for t in tasks
            for c in [next((c for (tt, _), c in cells.items() if tt == t), None)]
            if c is not None
        )
        + " scalars.",
        "",
        "| method | "
        + " | ".join(f"{t} ({main_metric(t)})" for t in tasks)
        + " | mean over tasks | trainable pretrained scalars (+ head) | share of pretrained | stored: floats, "
        "mask bits (bytes) |",
        "| --- |" + " ---: |" * (len(tasks) + 4),
    ]
    for lab in labels:
        row, means, share, trainable, stored = [], [], "", "", "–"
        for t in tasks:
            c = cells.get((t, lab))
            if c is None:
                row.append("not run")
                continue
            means.append(c.mean)
            row.append(f"{_fmt(c.mean)} ± {_fmt(c.sd)} (n={len(c.scores)})")
            m = c.runs[0].metrics
            trainable = f"{m['trainable_body']:,}"
            share = f"{100 * m['share']:.4f}%"
            if "stored_bytes" in m:  # runs from before issue 13 did not record it
                bits = f", {m['mask_bits']:,} bits over {m['mask_weights']:,} weights" if m["mask_bits"] else ""
                stored = f"{m['stored_floats']:,}{bits} ({m['stored_bytes']:,})"
        avg = _fmt(float(np.mean(means))) if len(means) == len(tasks) else "–"
        lines.append(f"| {lab} | " + " | ".join(row) + f" | {avg} | {trainable} | {share} | {stored} |")
    baselines: dict[str, float] = {}
    try:
        baselines = {t: majority_baseline(t, base, data_dir) for t in tasks}
        majority = [_fmt(baselines[t]) for t in tasks]
        lines.append("| *majority class / constant* | " + " | ".join(majority) + " | | 0 | 0% | 0 |")
    except SltlabError:
        pass  # no data here: the report still renders from the store alone
    lines += [
        "",
        "## Every cell at its chosen lr",
        "",
        "| task | method | lr | seeds: main | all metrics (mean) | trainable | share | wall s (mean) |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for t in tasks:
        for lab in labels:
            c = cells.get((t, lab))
            if c is None:
                continue
            names = [n for n in get_task(t).metrics if n in c.runs[0].metrics]
            allm = ", ".join(f"{n} {100 * np.mean([r.metrics[n] for r in c.runs]):.1f}" for n in names)
            seeds = ", ".join(f"s{s}: {v:.1f}" for s, v in c.scores.items())
            m = c.runs[0].metrics
            wall = np.mean([r.metrics["wall_s"] for r in c.runs])
            lines.append(
                f"| {t} | {lab} | {c.lr:g} | {seeds} | {allm} | {m['trainable']:,} | "
                f"{100 * m['share']:.4f}% | {wall:.0f} |"
            )
    lines += [
        "",
        "## Learning-rate grid (every run)",
        "",
        "| task | method | lr | main by seed |",
        "| --- | --- | ---: | --- |",
    ]
    for t in tasks:
        for lab in labels:
            c = cells.get((t, lab))
            for lr, by_seed in sorted((c.grid if c else {}).items()):
                mark = " (chosen)" if lr == c.lr else ""
                lines.append(
                    f"| {t} | {lab} | {lr:g}{mark} | "
                    + ", ".join(f"s{s}: {v:.1f}" for s, v in sorted(by_seed.items()))
                    + " |"
                )
    lines += [
        "",
        "## Does the paper's ordering hold? (full ≥ BitFit ≈ LN > random)",
        "",
        "Pairs are (task, seed) at each method's chosen lr; the CI is a percentile bootstrap of the mean "
        "paired difference (`sltlab.analysis.stats.bootstrap_ci`); the Mann-Whitney test compares the two "
        "methods' scores after subtracting each task's mean over methods (`mann_whitney`). "
        f"'~' means equivalent within ±{MARGIN:g} points.",
        "",
    ]
    lines += _claim_rows(cells, tasks, baselines)
    # component change after full fine-tuning
    full = [c for (t, lab), c in cells.items() if lab == "full"]
    if full:
        acc: dict[fisher_mod.ComponentKey, list[float]] = {}
        for c in full:
            for r in c.runs:
                for k, v in table_from_json(r.metrics.get("change_by_component", {})).items():
                    acc.setdefault(k, []).append(v)
        change = {k: float(np.mean(v)) for k, v in acc.items()}
        fig = fisher_mod.plot_component_heatmap(
            change,
            path.with_name(path.stem + "_change.png"),
            title="mean |w_fine - w_pre| after full fine-tuning",
            cbar_label="D",
        )
        ranked = fisher_mod.rank_components({k: v for k, v in change.items() if k[0] is not None})
        lines += [
            "",
            "## Which components change most under full fine-tuning",
            "",
            f"D = mean |w_fine − w_pre| per component and layer, averaged over {len(full)} task(s) and their "
            f"seeds at the chosen lr. Heat map: `{fig.name}`.",
            "",
            fisher_mod.component_markdown(change),
            "",
            "Ranking of the per-layer components (mean over layers): "
            + ", ".join(f"{i + 1}. {c} ({v:.3g})" for i, (c, v) in enumerate(ranked))
            + ".",
        ]
    tables, ftasks = _fisher_tables(sweep, store)
    if tables:
        comb = tables["combined"]
        fig = fisher_mod.plot_component_heatmap(
            comb,
            path.with_name(path.stem + "_fisher.png"),
            log=True,
            title="Fisher information (normalised per task, summed)",
            cbar_label="Fisher / scalar",
        )
        lines += [
            "",
            "## Fisher information by component",
            "",
            f"Empirical Fisher of the pretrained encoder with the seed-0 head, from "
            f"{base['fisher_samples']} training examples per task ({', '.join(ftasks)}), each task "
            "normalised to sum 1 over all scalars, summed over tasks, then averaged per scalar of each "
            f"component. Heat map: `{fig.name}`.",
            "",
            fisher_mod.component_markdown(comb),
            "",
            "| rank | " + " | ".join(["combined", *ftasks]) + " |",
            "| ---: |" + " --- |" * (1 + len(ftasks)),
        ]
        ranks = {
            k: fisher_mod.rank_components({kk: v for kk, v in tab.items() if kk[0] is not None})
            for k, tab in tables.items()
        }
        for i in range(max(len(v) for v in ranks.values())):
            cells_ = [ranks[k][i][0] if i < len(ranks[k]) else "" for k in ["combined", *ftasks]]
            lines.append(f"| {i + 1} | " + " | ".join(cells_) + " |")
    lines.append("")
    atomic_write_text(path, "\n".join(lines))
    return path
