"""Tables and figures of the parameter-golf recipe study (docs/results/lm.md) from its store.

    python benchmarks/lm_golf_figures.py runs/lm_golf.db --out docs/results

Prints, per corpus and method, mean ± std of validation bpb over the seeds with artifact bytes, steps and wall
time, and writes lm_golf_curves.png (training loss per step, mean over seeds) and lm_golf_bytes.png (val bpb
against artifact bytes: tickets' .slt, dense models' int8 + zlib and float32 files).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from sltlab.runs.store import Store


def label(cfg: dict[str, Any]) -> str:
    name = cfg["method"] + ("+scales" if cfg.get("scales") else "")
    if name == "annealed+scales" and cfg.get("forward_mask") == "threshold":
        name = "recipe (annealed+scales)" if cfg.get("lr_scales") else "recipe, scales at the mask lr"
    if cfg["method"] == "dense":
        name += f" d={cfg['d_model']} lr={cfg['lr']:g}"
    return name


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    with Store(args.store) as store:
        records = [r for r in store.runs("lm") if r.config.get("init") == "golf"]
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in records:
        groups[(r.config["dataset"], label(r.config))].append(r)
    print("| corpus | method | seeds | val bpb | artifact bytes | int8 artifact bytes / its val bpb | steps | "
          "train s | code bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (ds, name), rs in sorted(groups.items()):
        m = [r.metrics for r in rs]
        int8 = ""
        if "int8_artifact_bytes" in m[0]:
            int8 = (f"{statistics.mean(x['int8_artifact_bytes'] for x in m):,.0f} / "
                    f"{_ms([x['int8_val_bpb'] for x in m])}")
        print(f"| {ds} | {name} | {len(rs)} | {_ms([x['val_bpb'] for x in m])} | "
              f"{statistics.mean(x['artifact_bytes'] for x in m):,.0f} | {int8} | {rs[0].config['steps']} | "
              f"{statistics.mean(r.timings.get('train_s', 0) for r in rs):.0f} | {m[0].get('code_bytes', '')} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = sorted({ds for ds, _ in groups})
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4), squeeze=False)
    for ax, ds in zip(axes[0], corpora, strict=True):
        for (d2, name), rs in sorted(groups.items()):
            if d2 != ds:
                continue
            curves = [r.curves.get("loss", []) for r in rs]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [curves[0][i][0] for i in range(n)][::2]
            mean = [statistics.mean(c[i][1] for c in curves) / 0.6931471805599453 for i in range(n)][::2]
            ax.plot(steps, mean, label=name)
        ax.set_title(f"{ds}: training loss (bits per token, mean over seeds)")
        ax.set_xlabel("step")
        ax.set_ylim(top=5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(args.out) / "lm_golf_curves.png", dpi=110)

    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4), squeeze=False)
    for ax, ds in zip(axes[0], corpora, strict=True):
        for (d2, name), rs in sorted(groups.items()):
            if d2 != ds:
                continue
            xs = [r.metrics["artifact_bytes"] for r in rs]
            ys = [r.metrics["val_bpb"] for r in rs]
            marker = "s" if name.startswith("dense") else "o"
            ax.scatter(xs, ys, label=name + (" (float32)" if marker == "s" else ""), marker=marker)
            if "int8_artifact_bytes" in rs[0].metrics:
                ax.scatter([r.metrics["int8_artifact_bytes"] for r in rs], [r.metrics["int8_val_bpb"] for r in rs],
                           marker="^", label=name + " (int8 + zlib)")
        ax.set_xscale("log")
        ax.set_xlabel("artifact bytes")
        ax.set_ylabel("val bits per byte")
        ax.set_title(ds)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(args.out) / "lm_golf_bytes.png", dpi=110)


if __name__ == "__main__":
    main()
