"""The report's figures, each a function from plain numbers to PNG bytes (matplotlib, Agg backend).

Kept apart from the report's sections so the report logic (what to compare, which test) reads without plotting
noise, and so each figure can be drawn from numbers a test makes up.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_png(fig: Any) -> bytes:
    """Render and close a figure; PNG bytes with no timestamp, so the same numbers give the same file."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def colours(labels: Sequence[str]) -> dict[str, str]:
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def error_vs_width(
    series: Mapping[str, Mapping[int, Sequence[float]]],
    fits: Mapping[str, Mapping[str, Any]],
    title: str,
) -> bytes:
    """Relative error against source width per variant, log y: the mean over seeds with a min-max band, the
    seeds as dots, and the fitted exponential law exp(a + b * width) as a dashed line (slope b in the
    legend)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    col = colours(list(series))
    for label, by_width in series.items():
        w = np.array(sorted(by_width), dtype=float)
        vals = [np.asarray([v for v in by_width[int(x)] if v > 0 and math.isfinite(v)]) for x in w]
        keep = [i for i, v in enumerate(vals) if v.size]
        if not keep:
            continue
        w, vals = w[keep], [vals[i] for i in keep]
        mean = np.array([v.mean() for v in vals])
        ax.fill_between(w, [v.min() for v in vals], [v.max() for v in vals], color=col[label], alpha=0.15, lw=0)
        for x, v in zip(w, vals, strict=True):
            ax.scatter(np.full(v.size, x), v, s=8, color=col[label], alpha=0.5)
        fit = fits.get(label, {})
        slope = fit.get("exp_slope", float("nan"))
        text = (
            f"{label}: slope {slope:.3g}/unit, R² {fit.get('exp_r2', float('nan')):.2f}"
            if math.isfinite(slope)
            else label
        )
        ax.plot(w, mean, "-o", color=col[label], label=text, ms=4)
        if math.isfinite(slope) and len(w) > 1:
            xs = np.linspace(w.min(), w.max(), 50)
            ax.plot(xs, np.exp(fit["exp_intercept"] + slope * xs), "--", color=col[label], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("source per-head width n")
    ax.set_ylabel("relative error (held-out inputs)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)


def per_block(curves: Mapping[str, Sequence[Sequence[float]]], title: str) -> bytes:
    """Relative error after each block, one line per variant (mean over runs, error bars = sd), log y."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4))
    col = colours(list(curves))
    for label, runs in curves.items():
        arr = np.asarray(runs, dtype=float)
        blocks = np.arange(1, arr.shape[1] + 1)
        ax.errorbar(blocks, arr.mean(0), yerr=arr.std(0), marker="o", capsize=3, color=col[label], label=label)
    ax.set_yscale("log")
    ax.set_xticks(range(1, max(len(r[0]) for r in curves.values()) + 1))
    ax.set_xlabel("block (depth)")
    ax.set_ylabel("relative error of the block's output")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)


def strip(groups: Mapping[str, Sequence[float]], ylabel: str, title: str, chance: float | None = None) -> bytes:
    """One column of dots per group with its mean as a bar, and an optional dashed chance level."""
    plt = _plt()
    labels = list(groups)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels) + 1.5), 3.8))
    col = colours(labels)
    rng = np.random.default_rng(0)
    for i, lab in enumerate(labels):
        v = np.asarray([x for x in groups[lab] if math.isfinite(x)], dtype=float)
        if not v.size:
            continue
        ax.scatter(i + rng.uniform(-0.12, 0.12, v.size), v, s=14, color=col[lab], alpha=0.7)
        ax.hlines(v.mean(), i - 0.3, i + 0.3, color=col[lab], lw=2.5)
    if chance is not None and math.isfinite(chance):
        ax.axhline(chance, ls="--", color="grey", lw=1, label=f"chance {chance:.3f}")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def attention_layers(
    data: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
    title: str,
    metrics: Sequence[tuple[str, str]] = (
        ("entropy", "normalised entropy"),
        ("diversity", "head JSD (bits)"),
    ),
) -> bytes:
    """data[metric][f"{model}|{variant}"] = per-run lists of per-layer values. One row per metric, one column
    per model (ticket, random, target/dense); lines per variant over depth with sd error bars."""
    plt = _plt()
    models = sorted({k.split("|")[0] for m in data.values() for k in m}, key=model_order)
    variants = sorted({k.split("|")[1] for m in data.values() for k in m})
    col = colours(variants)
    fig, axes = plt.subplots(
        len(metrics),
        max(1, len(models)),
        figsize=(3.4 * max(1, len(models)), 2.8 * len(metrics)),
        squeeze=False,
        sharey="row",
    )
    for r, (metric, ylabel) in enumerate(metrics):
        for c, model in enumerate(models):
            ax = axes[r][c]
            for j, variant in enumerate(variants):
                runs = data.get(metric, {}).get(f"{model}|{variant}")
                if not runs:
                    continue
                arr = np.asarray(runs, dtype=float)
                layers = np.arange(arr.shape[1]) + (j - (len(variants) - 1) / 2) * 0.06
                ax.errorbar(
                    layers,
                    np.nanmean(arr, 0),
                    yerr=np.nanstd(arr, 0),
                    marker="o",
                    capsize=2,
                    color=col[variant],
                    label=variant,
                    ms=4,
                )
            ax.set_xticks(range(max((len(v[0]) for v in data.get(metric, {}).values() if v), default=1)))
            if r == 0:
                ax.set_title(model, fontsize=9)
            if r == len(metrics) - 1:
                ax.set_xlabel("layer")
            if c == 0:
                ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_png(fig)


def model_order(label: str) -> tuple[int, str]:
    order = {"ticket": 0, "random": 1, "target": 2, "dense": 3}
    return (order.get(label, 9), label)
