"""Empirical Fisher information, per-component aggregation and weight-change analysis for any nn.Module.

Why this module exists: ValizadehAslani & Liang ("LayerNorm: a key component in parameter-efficient
fine-tuning") rank the components of BERT by how much they change during fine-tuning and by how much Fisher
information they carry, and then train only the most informative LayerNorm scalars. The same questions apply
to our own supermasked transformers, so everything here is generic: it works on parameter *names*, and
`component_of` maps both Hugging Face BERT-family names and sltlab names onto one shared vocabulary of
components, so that tables and heat maps of a pretrained BERT and of a random sltlab ticket line up.

The empirical Fisher of a parameter theta_j is F_j = E_(x, y)[(d log p(y | x) / d theta_j)^2], estimated as
the mean over samples of the squared *per-sample* gradient (not the square of the batch gradient, which would
be much smaller and mix samples). Per-sample gradients come from one forward pass per batch and one vmapped
backward (`torch.autograd.grad(..., is_grads_batched=True)`); if an operator does not support that, we fall
back to one backward per sample, which gives the same numbers more slowly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sltlab.errors import ConfigError

PerSampleLoss = Callable[[nn.Module, Any], torch.Tensor]
ComponentKey = tuple[int | None, str]

#: The shared component vocabulary, in the order tables and heat maps list them. Labels follow BERT's
#: module names (the paper's Table 1); `output.LayerNorm` is the LayerNorm after the feed-forward block
#: (sltlab's norm2), `attention.LayerNorm` the one after (post-LN) or before (pre-LN) attention (norm1).
COMPONENTS: tuple[str, ...] = (
    "embeddings",
    "embeddings.LayerNorm",
    "query",
    "key",
    "value",
    "attention.output",
    "attention.LayerNorm",
    "intermediate",
    "output",
    "output.LayerNorm",
    "scale",
    "final.LayerNorm",
    "pooler",
    "head",
    "other",
)

# (regex on the name without parametrization plumbing, component). First match wins; group "layer" if any.
_LAYER = r"(?:^|\.)(?:layer|layers|blocks|h)\.(?P<layer>\d+)\."
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), c)
    for p, c in (
        # Hugging Face BERT / RoBERTa / ELECTRA / MiniLM
        (_LAYER + r"attention\.self\.query\.", "query"),
        (_LAYER + r"attention\.self\.key\.", "key"),
        (_LAYER + r"attention\.self\.value\.", "value"),
        (_LAYER + r"attention\.output\.dense\.", "attention.output"),
        (_LAYER + r"attention\.output\.LayerNorm\.", "attention.LayerNorm"),
        (_LAYER + r"intermediate\.dense\.", "intermediate"),
        (_LAYER + r"output\.dense\.", "output"),
        (_LAYER + r"output\.LayerNorm\.", "output.LayerNorm"),
        # DistilBERT
        (_LAYER + r"attention\.q_lin\.", "query"),
        (_LAYER + r"attention\.k_lin\.", "key"),
        (_LAYER + r"attention\.v_lin\.", "value"),
        (_LAYER + r"attention\.out_lin\.", "attention.output"),
        (_LAYER + r"sa_layer_norm\.", "attention.LayerNorm"),
        (_LAYER + r"ffn\.lin1\.", "intermediate"),
        (_LAYER + r"ffn\.lin2\.", "output"),
        (_LAYER + r"output_layer_norm\.", "output.LayerNorm"),
        # sltlab (stack.blocks.N.*)
        (_LAYER + r"attn\.q\.", "query"),
        (_LAYER + r"attn\.k\.", "key"),
        (_LAYER + r"attn\.v\.", "value"),
        (_LAYER + r"attn\.o\.", "attention.output"),
        (_LAYER + r"norm1\.", "attention.LayerNorm"),
        (_LAYER + r"mlp\.fc1\.", "intermediate"),
        (_LAYER + r"mlp\.fc2\.", "output"),
        (_LAYER + r"norm2\.", "output.LayerNorm"),
        (_LAYER + r"(?:attn_scale|mlp_scale)$", "scale"),
        # whole-model parts
        (r"embeddings\.LayerNorm\.", "embeddings.LayerNorm"),
        (r"embeddings\.(?:word|position|token_type)_embeddings\.", "embeddings"),
        (r"(?:^|\.)(?:tok_emb|pos_emb)\.", "embeddings"),
        (r"(?:^|\.)norm_f\.", "final.LayerNorm"),
        (r"(?:^|\.)pooler\.", "pooler"),
        (r"(?:^|\.)(?:classifier|head|lm_head|pre_classifier|logit_scale)(?:\.|$)", "head"),
    )
)


def _plain_name(name: str) -> str:
    """Drop torch.nn.utils.parametrize plumbing (`.parametrizations.weight.original`, supermask scores)."""
    name = name.replace(".parametrizations.", ".")
    name = re.sub(r"\.original\d*$", "", name)
    return name


def component_of(param_name: str) -> ComponentKey:
    """Map a parameter name to (layer index, component label) in the shared vocabulary `COMPONENTS`.

    Works for HF BERT-family names (`bert.encoder.layer.3.output.LayerNorm.weight` ->
    (3, "output.LayerNorm")), DistilBERT names and sltlab names (`stack.blocks.1.attn.q.weight` ->
    (1, "query"), `...norm2.bias` -> (1, "output.LayerNorm")). Parts outside the layer stack (embeddings,
    pooler, head, final norm) have layer None; names nothing matches give (None, "other") so that generic
    analyses never crash on an unknown module.
    """
    name = _plain_name(param_name)
    for pattern, component in _RULES:
        m = pattern.search(name)
        if m:
            layer = m.groupdict().get("layer")
            return (int(layer) if layer is not None else None, component)
    return (None, "other")


def is_layernorm_param(param_name: str) -> bool:
    """True for the gain and bias of any LayerNorm in a BERT-family or sltlab model (by name)."""
    return component_of(param_name)[1].endswith("LayerNorm")


def _select(
    model: nn.Module, params: Iterable[str] | Callable[[str], bool] | None
) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    if params is None:
        chosen = {n: p for n, p in named.items() if p.requires_grad}
    elif callable(params):
        chosen = {n: p for n, p in named.items() if params(n)}
    else:
        wanted = list(params)
        missing = [n for n in wanted if n not in named]
        if missing:
            raise ConfigError("params", f"no parameter named {missing[0]!r} in the model",
                              "names from model.named_parameters()")
        chosen = {n: named[n] for n in wanted}
    if not chosen:
        raise ConfigError("params", "selects no parameter",
                          "None (all trainable), a list of names or a predicate")
    return chosen


def empirical_fisher(
    model: nn.Module,
    per_sample_loss_fn: PerSampleLoss,
    batches: Iterable[Any],
    params: Iterable[str] | Callable[[str], bool] | None = None,
    *,
    max_samples: int | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over samples of squared per-sample gradients of log p(y | x).

    `per_sample_loss_fn(model, batch)` returns a 1-D tensor with one negative log-likelihood per sample
    (e.g. `F.cross_entropy(logits, y, reduction="none")`; for regression a Gaussian NLL, i.e. half the squared
    error). `params` picks the parameters: None = every parameter with requires_grad, a list of names, or a
    predicate on names. The model is used as given (call `model.eval()` first to switch dropout off, as the
    paper's Fisher is of the deterministic model). Returns float32 tensors shaped like the parameters, on the
    CPU. Parameters' requires_grad flags are restored afterwards.
    """
    chosen = _select(model, params)
    names = list(chosen)
    tensors = [chosen[n] for n in names]
    saved_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in tensors:
        p.requires_grad_(True)
    # accumulated where the model is (no copy to the host per sample), returned on the CPU
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    seen = 0
    batched_ok = True
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_samples, desc="fisher", unit="ex", disable=not progress, leave=False)
        for batch in batches:
            losses = per_sample_loss_fn(model, batch)
            if losses.dim() != 1:
                raise ConfigError("per_sample_loss_fn", f"returned shape {tuple(losses.shape)}",
                                  "a 1-D tensor with one loss per sample")
            n = losses.shape[0]
            if max_samples is not None:
                n = min(n, max_samples - seen)
            if n <= 0:
                break
            grads: list[torch.Tensor] | None = None
            if batched_ok:
                try:
                    eye = torch.zeros(n, losses.shape[0], dtype=losses.dtype, device=losses.device)
                    eye[torch.arange(n), torch.arange(n)] = 1.0
                    out = torch.autograd.grad(losses, tensors, grad_outputs=eye, is_grads_batched=True,
                                              retain_graph=True, allow_unused=True)
                    grads = [g.detach().float().pow(2).sum(0) if g is not None else None for g in out]
                except RuntimeError:
                    batched_ok = False  # an operator without a batching rule: use the per-sample loop below
            if grads is None:
                acc = [torch.zeros_like(s) for s in sums]
                for i in range(n):
                    out = torch.autograd.grad(losses[i], tensors, retain_graph=i < n - 1, allow_unused=True)
                    for a, g in zip(acc, out, strict=True):
                        if g is not None:
                            a += g.detach().float().pow(2)
                grads = acc
            for s, g in zip(sums, grads, strict=True):
                if g is not None:
                    s += g
            seen += n
            bar.update(n)
            if max_samples is not None and seen >= max_samples:
                break
        bar.close()
    finally:
        for n_, p in model.named_parameters():
            p.requires_grad_(saved_flags[n_])
    if seen == 0:
        raise ConfigError("batches", "gave no samples", "at least one non-empty batch")
    return {n: (s / seen).cpu() for n, s in zip(names, sums, strict=True)}


def aggregate_by_component(
    values: Mapping[str, torch.Tensor], reduce: str = "mean"
) -> dict[ComponentKey, float]:
    """Reduce per-scalar values (Fisher, |change|) to one number per (layer, component).

    `reduce="mean"` averages over every scalar of the component (weights and biases together), which compares
    components of very different sizes fairly; `"sum"` totals them.
    """
    if reduce not in ("mean", "sum"):
        raise ConfigError("reduce", f"unknown reduction {reduce!r}", "mean | sum")
    totals: dict[ComponentKey, float] = {}
    counts: dict[ComponentKey, int] = {}
    for name, v in values.items():
        key = component_of(name)
        totals[key] = totals.get(key, 0.0) + float(v.double().sum())
        counts[key] = counts.get(key, 0) + v.numel()
    if reduce == "sum":
        return totals
    return {k: totals[k] / counts[k] for k in totals}


def normalise_per_task(
    fishers: Mapping[str, Mapping[str, torch.Tensor]]
) -> dict[str, dict[str, torch.Tensor]]:
    """Scale each task's Fisher so that it sums to 1 over all its scalars.

    Why: tasks differ in loss scale (regression vs classification, number of classes), so a raw sum across
    tasks would be dominated by one task; after this every task has one unit of "information" to distribute.
    """
    out: dict[str, dict[str, torch.Tensor]] = {}
    for task, fisher in fishers.items():
        total = sum(float(v.double().sum()) for v in fisher.values())
        if not math.isfinite(total) or total <= 0:
            raise ConfigError(f"fisher[{task}]", f"total Fisher is {total}", "a positive, finite sum")
        out[task] = {n: (v.double() / total).float() for n, v in fisher.items()}
    return out


def combine_fisher(
    fishers: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Sum per-task-normalised Fisher over tasks (`include`, default all) minus `exclude`.

    `combine_fisher(f)` is the paper's *global* mask source; `combine_fisher(f, exclude=[task])` its
    cross-validation (leave-one-task-out) source, which never looks at the target task's data.
    """
    tasks = [t for t in (list(include) if include is not None else list(fishers)) if t not in set(exclude)]
    if not tasks:
        raise ConfigError("mask_source", "no task left to take the Fisher from",
                          "Fisher files for at least one other task")
    norm = normalise_per_task({t: fishers[t] for t in tasks})
    names = list(norm[tasks[0]])
    for t in tasks[1:]:
        if set(norm[t]) != set(names):
            raise ConfigError(f"fisher[{t}]", "covers other parameters than the first task",
                              "Fisher of the same model's same parameters for every task")
    return {n: sum(norm[t][n] for t in tasks) for n in names}  # type: ignore[misc]


def top_fraction_mask(scores: Mapping[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Boolean masks keeping exactly round(fraction * N) scalars with the highest scores, across all tensors.

    Ties are broken by position (a stable sort over the names in the mapping's order), so the same scores
    always give the same mask.
    """
    if not (0.0 < fraction <= 1.0):
        raise ConfigError("fraction", f"{fraction} is outside (0, 1]", "a number in (0, 1]")
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).double().cpu() for n in names])
    k = round(fraction * flat.numel())
    order = torch.argsort(-flat, stable=True)
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    out: dict[str, torch.Tensor] = {}
    start = 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start:start + size].reshape(scores[n].shape)
        start += size
    return out


def parameter_change(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor], *, by: str = "component"
) -> dict[Any, float]:
    """D = mean |w_after - w_before| per (layer, component) (`by="component"`) or per parameter (`by="name"`).

    Only names present in both mappings with equal shapes count, so a classifier head that exists only after
    fine-tuning is simply left out.
    """
    diffs = {
        n: (after[n].detach().double().cpu() - before[n].detach().double().cpu()).abs()
        for n in before
        if n in after and tuple(before[n].shape) == tuple(after[n].shape) and before[n].is_floating_point()
    }
    if not diffs:
        raise ConfigError("parameter_change", "the two state dicts share no parameter",
                          "two states of one model")
    if by == "name":
        return {n: float(d.mean()) for n, d in diffs.items()}
    if by != "component":
        raise ConfigError("by", f"unknown grouping {by!r}", "component | name")
    return aggregate_by_component(diffs, reduce="mean")


def component_matrix(
    table: Mapping[ComponentKey, float], components: Iterable[str] | None = None
) -> tuple[list[str], list[str], list[list[float]]]:
    """Arrange a (layer, component) -> value table as rows = components, columns = layers ("all" for None).

    Returns (row labels, column labels, matrix with NaN where a component has no entry for that layer).
    """
    layers = sorted({k[0] for k in table if k[0] is not None})
    has_global = any(k[0] is None for k in table)
    cols: list[int | None] = list(layers) + ([None] if has_global else [])
    order = list(components) if components is not None else list(COMPONENTS)
    present = {k[1] for k in table}
    rows = [c for c in order if c in present] + sorted(present - set(order))
    matrix = [[float(table.get((layer, c), float("nan"))) for layer in cols] for c in rows]
    return rows, [("all" if layer is None else str(layer)) for layer in cols], matrix


def component_markdown(table: Mapping[ComponentKey, float], fmt: str = "{:.3g}") -> str:
    """A markdown table of a (layer, component) table: one row per component, one column per layer."""
    rows, cols, matrix = component_matrix(table)
    lines = ["| component | " + " | ".join(f"layer {c}" if c != "all" else "global" for c in cols) + " |",
             "| --- |" + " ---: |" * len(cols)]
    for r, vals in zip(rows, matrix, strict=True):
        cells = ["" if math.isnan(v) else fmt.format(v) for v in vals]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rank_components(
    table: Mapping[ComponentKey, float], *, over_layers: bool = True
) -> list[tuple[str, float]]:
    """Components sorted from largest to smallest value; with `over_layers` the layers are averaged first."""
    if not over_layers:
        return sorted(((f"{c}@{layer}", v) for (layer, c), v in table.items()), key=lambda t: -t[1])
    acc: dict[str, list[float]] = {}
    for (_, c), v in table.items():
        acc.setdefault(c, []).append(v)
    return sorted(((c, sum(v) / len(v)) for c, v in acc.items()), key=lambda t: -t[1])


def plot_component_heatmap(
    table: Mapping[ComponentKey, float],
    path: str | Path,
    *,
    title: str = "",
    log: bool = False,
    cbar_label: str = "",
) -> Path:
    """Save a heat map (rows = components, columns = layers) of a (layer, component) table as PNG/SVG/PDF.

    `log=True` colours by log10 of the value, which Fisher information needs (it spans orders of magnitude).
    The file is written atomically (temporary file, then os.replace).
    """
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols, matrix = component_matrix(table)
    data = np.array(matrix, dtype=float)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.where(data > 0, np.log10(data), np.nan)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(cols), 0.9 + 0.38 * len(rows)))
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), [c if c == "all" else f"L{c}" for c in cols])
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = matrix[i][j]
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=ax, label=(f"log10 {cbar_label}" if log else cbar_label))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def save_fisher(
    path: str | Path, fisher: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a Fisher dict as safetensors (atomically), so other tasks' runs reuse it (global / cv masks)."""
    import os

    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({n: v.detach().float().contiguous().cpu() for n, v in fisher.items()}, str(tmp),
              metadata=dict(metadata or {}))
    os.replace(tmp, out)
    return out


def load_fisher(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a Fisher dict written by `save_fisher`."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ConfigError("fisher", f"file {p} does not exist", "a .safetensors file written by save_fisher")
    return dict(load_file(str(p)))
