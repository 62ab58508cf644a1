"""Tables, fits and plots for the approximation study: what `sltlab approx` prints and writes after a sweep."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sltlab.analysis.fits import fit_laws
from sltlab.runs.store import RunRecord, atomic_write_text

GroupKey = tuple[int, str, str]  # (n_heads, method, variant)


def records_csv(records: list[RunRecord]) -> str:
    rows = [r.flat() for r in records]
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def method_label(config: dict[str, Any]) -> str:
    """The method, plus the source's folding when it is folded: folded and unfolded cells never share a group."""
    label = str(config["method"])
    if "fold" in config:
        label += f" fold={config['fold']}" + (f" {config['mask_sharing']}" if "mask_sharing" in config else "")
    return label


def group(records: list[RunRecord], metric: str = "rel_error") -> dict[GroupKey, dict[int, list[float]]]:
    """(heads, method, variant) -> width -> errors over seeds and score seeds."""
    out: dict[GroupKey, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        c = r.config
        out[(int(c["n_heads"]), method_label(c), str(c["variant"]))][int(c["width"])].append(float(r.metrics[metric]))
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def fits_table(groups: dict[GroupKey, dict[int, list[float]]]) -> list[dict[str, Any]]:
    rows = []
    for (heads, method, variant), by_width in groups.items():
        widths = [w for w, errs in by_width.items() for _ in errs]
        errors = [e for errs in by_width.values() for e in errs]
        fit = fit_laws(widths, errors)
        means = {w: float(np.mean(v)) for w, v in by_width.items()}
        rows.append({"heads": heads, "method": method, "variant": variant,
                     "err_first": means[min(means)], "err_last": means[max(means)], **fit})
    return rows


def fits_markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| heads | method | variant | err @ min width | err @ max width | exp slope / width | exp R² "
            "| power exponent | power R² | better fit |\n|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['heads']} | {r['method']} | {r['variant']} | {r['err_first']:.4f} | {r['err_last']:.4f} "
        f"| {r['exp_slope']:.4f} | {r['exp_r2']:.3f} | {r['power_slope']:.3f} | {r['power_r2']:.3f} | {r['better']} |\n"
        for r in rows
    )
    return head + body


def plot_error_vs_width(groups: dict[GroupKey, dict[int, list[float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = sorted({k[0] for k in groups})
    variants = sorted({k[2] for k in groups})
    methods = sorted({k[1] for k in groups})
    colours = {v: plt.get_cmap("tab10")(i) for i, v in enumerate(variants)}
    styles = {m: s for m, s in zip(methods, ["-", "--", ":", "-."], strict=False)}
    fig, axes = plt.subplots(1, len(heads), figsize=(5.2 * len(heads), 4.2), squeeze=False, sharey=True)
    for ax, h in zip(axes[0], heads, strict=True):
        for (gh, method, variant), by_width in groups.items():
            if gh != h:
                continue
            w = np.array(list(by_width))
            mean = np.array([np.mean(v) for v in by_width.values()])
            lo = np.array([np.min(v) for v in by_width.values()])
            hi = np.array([np.max(v) for v in by_width.values()])
            ax.plot(w, mean, styles.get(method, "-"), marker="o", color=colours[variant],
                    label=f"{variant} ({method})" if len(methods) > 1 else variant)
            ax.fill_between(w, lo, hi, color=colours[variant], alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("source per-head width n (key = value)")
        ax.set_title(f"H = {h}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("relative output error on held-out inputs")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_per_block(records: list[RunRecord], path: Path, title: str) -> bool:
    """Error after each block, at the largest width, per variant (stacks only). Returns False if nothing to plot."""
    stacks = [r for r in records if len(r.metrics.get("per_block_rel_error", [])) > 1]
    if not stacks:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wmax = max(int(r.config["width"]) for r in stacks)
    by_variant: dict[str, list[list[float]]] = defaultdict(list)
    for r in stacks:
        if int(r.config["width"]) == wmax:
            by_variant[f"{r.config['variant']} ({method_label(r.config)})"].append(r.metrics["per_block_rel_error"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, curves in sorted(by_variant.items()):
        arr = np.array(curves)
        blocks = np.arange(1, arr.shape[1] + 1)
        ax.errorbar(blocks, arr.mean(0), yerr=arr.std(0), marker="o", capsize=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel("relative error of the block's output")
    ax.set_title(f"{title}\nwidth n = {wmax}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    from sltlab.runs.store import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())


def summarise(records: list[RunRecord], out_dir: str | Path, title: str) -> dict[str, Any]:
    """Write approx.csv, fits.json, fits.md, error_vs_width.png (and per_block.png for stacks) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "approx.csv", records_csv(records))
    groups = group(records)
    rows = fits_table(groups)
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    atomic_write_text(out / "fits.json", json.dumps(clean, indent=2))
    md = fits_markdown(rows)
    atomic_write_text(out / "fits.md", md)
    plot_error_vs_width(groups, out / "error_vs_width.png", title)
    files = ["approx.csv", "fits.json", "fits.md", "error_vs_width.png"]
    if plot_per_block(records, out / "per_block.png", title):
        files.append("per_block.png")
    return {"fits": rows, "markdown": md, "files": [str(out / f) for f in files]}
