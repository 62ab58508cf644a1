"""Masked search step vs dense training step of the same encoder, time and memory, on the CPU in fp32.

Model: 4-layer d=256 encoder classifier (4 heads, MLP 1024, pre-LN), seq 128, batch 32, vocab 8192. Each mode runs in
its own process so that peak memory (ru_maxrss) is its own. Also measures the ways to pick edge-popup's top-k
threshold (full sort vs topk vs kthvalue vs a cached threshold).

    .venv/bin/python benchmarks/bench_search_step.py [--steps 20] [--threads 2] [--out docs/benchmarks/search_step.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("dense", "edge-popup", "edge-popup-global", "annealed", "multicoated", "partially-frozen")
VARIANTS = {  # the supermask options behind each masked mode
    "edge-popup": {},
    "edge-popup-global": {"scope": "global"},
    "annealed": {"method": "annealed"},
    "multicoated": {"coats": 3},
    "partially-frozen": {"frozen_pruned": 0.2, "frozen_kept": 0.1},
}


def one_mode(mode: str, steps: int, threads: int) -> dict:
    import resource

    import torch
    from torch import nn

    from sltlab.nn.init import InitSpec
    from sltlab.nn.norm import NormSpec
    from sltlab.nn.transformer import ModelConfig
    from sltlab.tickets.spec import ModelSpec, build_model
    from sltlab.tickets.supermask import SupermaskConfig

    torch.set_num_threads(threads)
    cfg = ModelConfig(d_model=256, n_heads=4, n_layers=4, d_ff=1024, norm=NormSpec.parse("pre-ln"),
                      vocab_size=8192, max_len=128, n_outputs=2)
    mask = None
    if mode != "dense":
        mask = SupermaskConfig(keep=0.5, **VARIANTS[mode])
    model = build_model(ModelSpec("encoder-classifier", cfg, InitSpec(seed=0), mask))
    if mode == "dense":
        for p in model.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8192, (32, 128), generator=g)
    y = torch.randint(0, 2, (32,), generator=g)
    model.train()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_params = sum(p.numel() for p in model.parameters())
    return {"mode": mode, "median_s": statistics.median(times), "min_s": min(times),
            "peak_rss_mb": rss1 / 1024, "step_rss_growth_mb": (rss1 - rss0) / 1024, "params": n_params,
            "trainable": sum(p.numel() for p in params)}


def threshold_methods(threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    import numpy as np

    from sltlab.tickets.supermask import _kth_largest_threshold

    s = torch.randn(8192, 256)  # the size of the benchmark model's token embedding
    n, k = s.numel(), s.numel() // 2
    cached = s.reshape(-1).kthvalue(n - k + 1).values
    assert float(_kth_largest_threshold(s, 0.5)) == float(cached)
    ways = {
        "full sort": lambda: s.reshape(-1).sort().values[n - k],
        "torch.topk": lambda: s.reshape(-1).topk(k).values[-1],
        "torch.kthvalue": lambda: s.reshape(-1).kthvalue(n - k + 1).values,
        "np.partition (used on the CPU)": lambda: np.partition(s.reshape(-1).numpy(), n - k)[n - k],
        "cached (eval, unchanged scores)": lambda: cached,
    }
    out = []
    for name, fn in ways.items():
        fn()
        reps = 10
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append({"method": name, "ms": (time.perf_counter() - t0) / reps * 1e3})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds over all modes; this shared machine drifts by ~5%% between processes, so each "
                    "ratio is taken within a round and the median over rounds is reported")
    ap.add_argument("--out", default="docs/benchmarks/search_step.md")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args.mode, args.steps, args.threads)))
        return
    rounds: list[dict[str, dict]] = []
    for rep in range(args.repeats):
        row = {}
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--steps", str(args.steps),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            row[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(rep, row[mode], flush=True)
        rounds.append(row)
    results = []
    for mode in MODES:
        runs = [r[mode] for r in rounds]
        ratios = [r[mode]["median_s"] / r["dense"]["median_s"] for r in rounds]
        results.append({**runs[0], "median_s": statistics.median(x["median_s"] for x in runs),
                        "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in runs),
                        "step_rss_growth_mb": statistics.median(x["step_rss_growth_mb"] for x in runs),
                        "ratio": statistics.median(ratios), "ratio_lo": min(ratios), "ratio_hi": max(ratios)})
    thr = threshold_methods(args.threads)
    import torch

    lines = [
        "# Benchmark: masked search step vs dense training step",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores ({platform.processor() or 'cpu'}), "
        f"torch {torch.__version__}, {args.threads} threads, fp32. Date: {time.strftime('%Y-%m-%d')}.",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_search_step.py --steps {args.steps} --threads {args.threads}"
        f" --repeats {args.repeats}`",
        "",
        "Model: encoder classifier, 4 layers, d=256, 4 heads, MLP 1024, pre-LN, vocab 8192; batch 32 x seq 128;"
        " Adam; median over the timed steps after 3 warm-up steps. Masks on every Linear and Embedding, keep 0.5;"
        " multicoated: 3 coats; partially-frozen: 20% of each layer frozen pruned, 10% frozen kept.",
        f" Each mode runs in its own process, {args.repeats} rounds over all modes; ratio = median over rounds of"
        " (mode step / dense step of the same round), with the range over rounds.",
        "",
        "| mode | median step (s) | ratio to dense | range over rounds | peak RSS (MB) | RSS growth in steps (MB) "
        "| trainable |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['mode']} | {r['median_s']:.3f} | {r['ratio']:.2f}x "
                     f"| {r['ratio_lo']:.2f}-{r['ratio_hi']:.2f} | {r['peak_rss_mb']:.0f} "
                     f"| {r['step_rss_growth_mb']:.0f} | {r['trainable']:,} |")
    lines += ["", "Top-k threshold of one 8192x256 score tensor (keep 0.5), same element from every method:", "",
              "| method | ms |", "|---|---|"]
    lines += [f"| {t['method']} | {t['ms']:.3f} |" for t in thr]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
