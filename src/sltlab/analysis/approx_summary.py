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

from sltlab.analysis.fits import fit_laws_by_seed
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


def seed_points(records: list[RunRecord], metric: str = "rel_error") -> dict[GroupKey, list[tuple[int, float, float]]]:
    """(heads, method, variant) -> (weight seed, width, error) points; score seeds are repeated points of their
    weight seed (fit_laws_by_seed averages them)."""
    out: dict[GroupKey, list[tuple[int, float, float]]] = defaultdict(list)
    for r in records:
        c = r.config
        out[(int(c["n_heads"]), method_label(c), str(c["variant"]))].append(
            (int(c["seed"]), float(c["width"]), float(r.metrics[metric])))
    return dict(sorted(out.items()))


def fits_table(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Both laws per group with the weight seed as the unit (sltlab.analysis.fits.fit_laws_by_seed): slopes with
    their t intervals, a lack-of-fit test against the seeds' spread (3+ widths), the first and last width's error."""
    rows = []
    for (heads, method, variant), pts in seed_points(records).items():
        fit = fit_laws_by_seed(pts)
        by_w: dict[float, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for seed, w, e in pts:
            by_w[w][seed].append(e)
        means = {w: float(np.mean([np.mean(v) for v in s.values()])) for w, s in by_w.items()}
        row: dict[str, Any] = {"heads": heads, "method": method, "variant": variant, "n_seeds": fit["n_seeds"],
                               "n_widths": len(fit["widths"]), "err_first": means[min(means)],
                               "err_last": means[max(means)], "better": fit["better"]}
        for law in ("exp", "power"):
            f = fit.get(law) or {}
            lof = f.get("lack_of_fit", {})
            row.update({f"{law}_slope": f.get("slope", math.nan), f"{law}_slope_lo": f.get("slope_lo", math.nan),
                        f"{law}_slope_hi": f.get("slope_hi", math.nan), f"{law}_r2": f.get("r2", math.nan),
                        f"{law}_lof_p": lof.get("p", math.nan)})
        row["falls"] = bool(row["exp_slope"] < 0 and row["power_slope"] < 0)
        rows.append(row)
    return rows


def _ci(r: dict[str, Any], law: str, d: int) -> str:
    lo, hi = r[f"{law}_slope_lo"], r[f"{law}_slope_hi"]
    ci = f" [{lo:.{d}f}, {hi:.{d}f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{r[f'{law}_slope']:.{d}f}{ci}"


def _p(x: float) -> str:
    return "n/a" if not math.isfinite(x) else ("<0.001" if x < 0.001 else f"{x:.3f}")


def fits_markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| heads | method | variant | n seeds | err @ min width | err @ max width | exp slope / width [95% CI] "
            "| exp lack-of-fit p | power exponent [95% CI] | power lack-of-fit p | law that fits |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['heads']} | {r['method']} | {r['variant']} | {r['n_seeds']} | {r['err_first']:.4f} "
        f"| {r['err_last']:.4f} | {_ci(r, 'exp', 4)} | {_p(r['exp_lof_p'])} | {_ci(r, 'power', 3)} "
        f"| {_p(r['power_lof_p'])} | {r['better']} |\n"
        for r in rows
    )
    note = ("\nSlopes: mean of the per-weight-seed slopes with a t interval over weight seeds. Lack of fit: the law "
            "plus a per-seed offset against a free mean per width (small p: the law misses the curve's shape by more "
            "than the seeds scatter; needs 3+ widths).\n")
    return head + body + note


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
    rows = fits_table(records)
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    atomic_write_text(out / "fits.json", json.dumps(clean, indent=2))
    md = fits_markdown(rows)
    atomic_write_text(out / "fits.md", md)
    plot_error_vs_width(groups, out / "error_vs_width.png", title)
    files = ["approx.csv", "fits.json", "fits.md", "error_vs_width.png"]
    if plot_per_block(records, out / "per_block.png", title):
        files.append("per_block.png")
    return {"fits": rows, "markdown": md, "files": [str(out / f) for f in files]}
