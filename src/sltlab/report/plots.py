"""The report's figures, each a function from plain numbers to PNG bytes (matplotlib, Agg backend).

Kept apart from the report's sections so the report logic (what to compare, which test) reads without plotting
noise, and so each figure can be drawn from numbers a test makes up.
"""

from __future__ import annotations

import io
import math
import warnings
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
    # bbox "tight": long tick labels and legends are never clipped, whatever the layout engine managed
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return buf.getvalue()


def colours(labels: Sequence[str]) -> dict[str, str]:
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def error_vs_width(
    series: Mapping[str, Mapping[int, Sequence[float]]],
    fits: Mapping[str, Mapping[str, Any]],
    title: str,
) -> bytes:
    """Relative error against source width per variant, log y: the mean over weight seeds with a min-max band of
    the per-seed means, the seeds as dots, and both fitted laws (sltlab.analysis.fits.fit_laws_by_seed) drawn over
    the measured widths only: exponential dashed, power law dotted; the legend gives each law's slope with its
    interval and whether its lack-of-fit test passes. series[variant][width] = one value per weight seed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.6, 4.4))
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
        ax.plot(w, mean, "-o", color=col[label], label=label, ms=4)
        fit = fits.get(label) or {}
        if len(w) > 1 and fit.get("exp") and fit.get("power"):
            from sltlab.analysis.fits import predict

            xs = np.linspace(min(fit["widths"]), max(fit["widths"]), 60)
            for law, ls in (("exp", "--"), ("power", ":")):
                f = fit[law]
                lof = f["lack_of_fit"]["p"]
                ok = "" if not math.isfinite(lof) else (", fits" if lof >= 0.05 else ", lack of fit")
                unit = "/unit" if law == "exp" else ""
                ax.plot(xs, predict(fit, law, xs), ls, color=col[label], lw=1,
                        label=f"  {law} slope {f['slope']:.3g}{unit} [{f['slope_lo']:.3g}, {f['slope_hi']:.3g}]{ok}")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("source per-head width n (log)")
    ax.set_ylabel("relative error (held-out inputs)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return to_png(fig)


VERDICT_COLOURS = {"supported": "#2ca02c", "contradicted": "#d62728", "equivalent within margin": "#1f77b4",
                   "inconclusive": "#7f7f7f"}


def forest(claims: Sequence[Mapping[str, Any]]) -> bytes:
    """Every claim's standardised effect d_z with its interval, one row per claim, coloured by verdict."""
    plt = _plt()
    n = max(1, len(claims))
    labels = [f"{c.get('compare')} vs {c.get('reference')} · {c.get('name')} · {c.get('scope')}" for c in claims]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.24 * n))  # the labels widen the saved image (bbox "tight")
    for i, c in enumerate(claims):
        y = n - 1 - i
        d, lo, hi = c.get("dz"), *(c.get("dz_ci") or (math.nan, math.nan))
        colr = VERDICT_COLOURS.get(str(c.get("verdict")), "#7f7f7f")
        if d is not None and math.isfinite(d):
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                ax.hlines(y, lo, hi, color=colr, lw=1.5)
            ax.plot([d], [y], "o", color=colr, ms=4)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(n - 1, n - 1 - len(labels), -1), labels, fontsize=6)
    ax.set_xlabel("d_z = mean paired difference / sd of the differences (compare − reference), 95% interval")
    for v, colr in VERDICT_COLOURS.items():
        ax.plot([], [], "o", color=colr, label=v)
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def paired_claim(claim: Mapping[str, Any]) -> bytes:
    """Both arms of one claim, a line per weight seed joining its two values, the means as bars."""
    plt = _plt()
    vals = claim.get("values") or {}
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    a = np.array([v[0] for v in vals.values()], dtype=float)
    b = np.array([v[1] for v in vals.values()], dtype=float)
    colr = VERDICT_COLOURS.get(str(claim.get("verdict")), "#7f7f7f")
    for x, y in zip(b, a, strict=True):
        ax.plot([0, 1], [x, y], "-o", color=colr, alpha=0.5, ms=3, lw=0.8)
    if a.size:
        ax.hlines([np.nanmean(b), np.nanmean(a)], [-0.2, 0.8], [0.2, 1.2], color="black", lw=2)
    ax.set_xticks([0, 1], [str(claim.get("reference")), str(claim.get("compare"))], fontsize=8)
    ax.set_xlim(-0.4, 1.4)
    ax.set_ylabel(str(claim.get("measure")), fontsize=8)
    ax.set_title(f"{claim.get('scope')}\n{claim.get('verdict')}, n={claim.get('n')}", fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
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
    # a metric with no finite value anywhere (head diversity of one-head layers) would be an empty panel row
    metrics = [(m, lab) for m, lab in metrics
               if any(math.isfinite(x) for runs in data.get(m, {}).values() for run in runs for x in run)]
    if not metrics:
        metrics = [("entropy", "normalised entropy")]
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
                with warnings.catch_warnings():  # a one-head layer has no diversity: NaN is the honest mean
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean, sd = np.nanmean(arr, 0), np.nanstd(arr, 0)
                ax.errorbar(
                    layers,
                    mean,
                    yerr=sd,
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


def _column_means(arr: np.ndarray) -> np.ndarray:
    """Mean of the finite values of each column, NaN for a column without any (no empty-slice warning)."""
    ok = np.isfinite(arr)
    total = np.where(ok, arr, 0.0).sum(0)
    n = ok.sum(0)
    return np.divide(total, n, out=np.full(arr.shape[1], np.nan), where=n > 0)


def imp_rounds(
    runs: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
    cross: Mapping[str, Sequence[Sequence[tuple[float, float]]]],
    fraction: float,
    metric: str,
    title: str,
) -> bytes:
    """IMP masks across rounds. runs[norm] = per-run lists of round rows (round, density, jaccard_prev,
    jaccard_final, main); cross[pair label] = per-seed lists of (Jaccard, chance Jaccard) per round.

    Left: kept fraction with the (1 - fraction)^r schedule, and the Jaccard of each round's mask with the previous
    and with the final round. Middle (when `cross` has pairs): overlap between norm variants on the same initial
    weights against chance. Right: the dev metric of each round. Lines are means over runs, dots single runs."""
    plt = _plt()
    panels = 3 if cross else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.9 * panels, 3.5), squeeze=False)
    ax_mask, ax_metric = axes[0][0], axes[0][-1]
    col = colours(list(runs))
    n_rounds = max((len(rows) for rs in runs.values() for rows in rs), default=1)
    xs = np.arange(n_rounds)
    ax_mask.plot(xs, (1 - fraction) ** xs, color="grey", lw=4, alpha=0.25, label=f"(1 - {fraction:g})^r")
    styles = (
        ("density", "-", "o", "kept fraction"),
        ("jaccard_final", "--", "s", "Jaccard with final"),
        ("jaccard_prev", ":", "^", "Jaccard with previous"),
    )
    for j, (norm, rs) in enumerate(runs.items()):
        # the curves of different norms coincide by construction; a small shift keeps each visible
        shift = (j - (len(runs) - 1) / 2) * 0.06
        for key, ls, marker, _ in styles:
            arr = np.asarray([[row.get(key, np.nan) for row in rows] for rows in rs if len(rows) == n_rounds], float)
            if arr.size and np.isfinite(arr).any():
                ax_mask.plot(xs + shift, _column_means(arr), ls=ls, marker=marker, ms=4, color=col[norm], lw=1.2)
        arr = np.asarray([[row.get("main", np.nan) for row in rows] for rows in rs if len(rows) == n_rounds], float)
        if arr.size and np.isfinite(arr).any():
            for run in arr:
                ax_metric.scatter(xs + shift, run, s=12, color=col[norm], alpha=0.6)
            ax_metric.plot(xs + shift, _column_means(arr), "-o", ms=4, color=col[norm], label=norm)
    handles = [plt.Line2D([], [], color="grey", lw=4, alpha=0.25, label=f"schedule (1 - {fraction:g})^r")]
    handles += [plt.Line2D([], [], color="k", ls=ls, marker=m, ms=4, label=lab) for _, ls, m, lab in styles]
    handles += [plt.Line2D([], [], color=col[n], lw=2, label=n) for n in runs]
    ax_mask.legend(handles=handles, fontsize=6.5)
    ax_mask.set_ylim(0, 1.05)
    ax_mask.set_ylabel("fraction / Jaccard")
    ax_mask.set_title("kept weights and overlap between rounds", fontsize=9)
    if cross:
        ax = axes[0][1]
        ccol = colours(list(cross))
        for label, pairs in cross.items():
            arr = np.asarray([[j for j, _ in p] for p in pairs if len(p) == n_rounds], float)
            chance = np.asarray([[c for _, c in p] for p in pairs if len(p) == n_rounds], float)
            if not arr.size:
                continue
            for run in arr:
                ax.scatter(xs, run, s=12, color=ccol[label], alpha=0.6)
            ax.plot(xs, arr.mean(0), "-o", ms=4, color=ccol[label], label=label)
            ax.plot(xs, chance.mean(0), ":", color=ccol[label], lw=1, label=f"{label}: chance")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("Jaccard of the two norms' masks")
        ax.set_title("same weights, different norm", fontsize=9)
        ax.legend(fontsize=6.5)
    ax_metric.set_ylabel(f"dev {metric}")
    ax_metric.set_title("dev metric after each round", fontsize=9)
    if ax_metric.has_data():
        ax_metric.legend(fontsize=6.5)
    for ax in axes[0]:
        ax.set_xticks(xs, [f"{r}\n{(1 - fraction) ** r:.3g}" for r in xs], fontsize=8)
        ax.set_xlabel("IMP round (0 = dense) / kept fraction", fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_png(fig)


def bpb_vs_bytes(points: Mapping[str, Sequence[tuple[float, float]]], title: str) -> bytes:
    """Validation bits per byte against artifact bytes (log x), one colour per method, one dot per run."""
    plt = _plt()
    labels = sorted(points)
    col = colours(labels)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for lab in labels:
        xs = [x for x, y in points[lab] if math.isfinite(x) and math.isfinite(y) and x > 0]
        ys = [y for x, y in points[lab] if math.isfinite(x) and math.isfinite(y) and x > 0]
        if xs:
            ax.scatter(xs, ys, s=18, color=col[lab], alpha=0.8, label=lab)
    ax.set_xscale("log")
    ax.set_xlabel("artifact bytes (log scale)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)
