"""Ticket artifact benchmark: mask bits per weight vs binary entropy, export/load time, vs bit-packing + zlib.

Tickets are real: edge-popup searches on a byte-level LM (TinyShakespeare when the data folder has it, else a
generated text) at densities 0.5, 0.3, 0.1, 0.03, and one annealed+scales search whose density is its own.
Writes docs/benchmarks/artifact.md (machine, command, tables).

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_artifact.py            # ~5 minutes
    .venv/bin/python benchmarks/bench_artifact.py --steps 5 --big-layers 1 --out /tmp/a.md  # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.runs.provenance import machine_summary
from sltlab.runs.store import atomic_write_text
from sltlab.tasks.lm_run import LMStudy, run_cell
from sltlab.tickets.artifact import binary_entropy, decode_ticket, export_ticket, load_ticket, probe_output
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, get_masks


def packed_zlib(masks: dict[str, torch.Tensor]) -> tuple[int, int, float]:
    """Bytes of plain bit-packing, of bit-packing + zlib -9, and the zlib time."""
    packed = b"".join(np.packbits(m.reshape(-1).numpy().astype(np.uint8)).tobytes() for m in masks.values())
    t = time.perf_counter()
    z = zlib.compress(packed, 9)
    return len(packed), len(z), time.perf_counter() - t


def mask_row(label: str, model: torch.nn.Module, spec: ModelSpec) -> dict:
    masks = get_masks(model)
    n = sum(m.numel() for m in masks.values())
    ones = sum(int(m.sum()) for m in masks.values())
    floor_bits = sum(m.numel() * binary_entropy(float(m.float().mean())) for m in masks.values())
    blob = export_ticket(model, spec)
    sizes = decode_ticket(blob).sizes
    bpw = 8 * sizes["masks"] / n
    packed, zipped, _ = packed_zlib(masks)
    return {
        "label": label,
        "weights": n,
        "density": ones / n,
        "bpw": bpw,
        "h": binary_entropy(ones / n),
        "floor_bpw": floor_bits / n,
        "ratio": 8 * sizes["masks"] / floor_bits,
        "zlib_bpw": 8 * zipped / n,
        "packed_bpw": 8 * packed / n,
        "total": len(blob),
    }


def big_model(layers: int) -> tuple[torch.nn.Module, ModelSpec]:
    """A ~10M-weight causal LM (d=512, 3 layers) with edge-popup masks at keep 0.5 and per-head scales."""
    cfg = ModelConfig(
        d_model=512,
        n_heads=8,
        n_layers=layers,
        vocab_size=256,
        max_len=128,
        residual_scales=True,
        norm=NormSpec.parse("pre-ln+affine"),
    )
    spec = ModelSpec(
        "causal-lm",
        cfg,
        InitSpec(seed=0),
        SupermaskConfig(
            keep=0.5, scale="head", train_norm=True, free=("*attn_scale", "*mlp_scale", "logit_scale"), seed=1
        ),
        {"logit_scale": True},
    )
    model = build_model(spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a ticket's scores and floats after a search: random but fixed
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval()
    return model, spec


def timing_rows(layers: int, tmp: Path) -> tuple[list[str], dict]:
    model, spec = big_model(layers)
    n_weights = sum(t.numel() for k, t in model.state_dict().items() if not k.endswith(".scores"))
    masks = get_masks(model)
    t = time.perf_counter()
    blob = export_ticket(model, spec, tmp / "big.slt")
    t_export = time.perf_counter() - t
    t = time.perf_counter()
    parts = decode_ticket(blob)
    t_decode = time.perf_counter() - t
    t = time.perf_counter()
    loaded = load_ticket(tmp / "big.slt")
    t_load = time.perf_counter() - t
    same = torch.equal(probe_output(model, spec), probe_output(loaded, spec))
    packed, zipped, t_zlib = packed_zlib(masks)
    t = time.perf_counter()
    fresh = build_model(spec)
    t_build = time.perf_counter() - t
    del fresh
    fp32 = 4 * n_weights
    rows = [
        "| what | value |",
        "|---|---|",
        f"| model | causal LM d=512, 8 heads, {layers} layers, vocab 256: {n_weights:,} weights, "
        f"{sum(m.numel() for m in masks.values()):,} masked at density 0.5 |",
        f"| artifact bytes | {len(blob):,} (masks {parts.sizes['masks']:,}, "
        f"floats {parts.sizes['floats']:,}, "
        f"header {parts.sizes['header']:,}) |",
        f"| same weights as fp32 | {fp32:,} bytes ({fp32 / len(blob):.1f}x the artifact) |",
        f"| masks bit-packed / bit-packed + zlib -9 | {packed:,} / {zipped:,} bytes (zlib {t_zlib:.2f} s) |",
        f"| export_ticket (masks coded, floats found, probe run) | {t_export:.2f} s |",
        f"| decode (checksum + range decoding) | {t_decode:.2f} s |",
        f"| load_ticket (decode + rebuild from seed + fix masks) | {t_load:.2f} s |",
        f"| of which: build_model from the seed alone | {t_build:.2f} s |",
        f"| rebuilt output bit-identical | {'yes' if same else 'NO'} |",
    ]
    return rows, {"same": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="search steps per ticket (default 60)")
    ap.add_argument("--big-layers", type=int, default=3, help="layers of the timing model (3: ~10M weights)")
    ap.add_argument("--out", default="docs/benchmarks/artifact.md")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"sltlab_bench_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    dataset = "tinyshakespeare"
    try:
        from sltlab.paths import data_dir

        root = data_dir(args.data_dir, required=False)
        if root is None or not (root / "tinyshakespeare" / "input.txt").is_file():
            raise FileNotFoundError
    except (FileNotFoundError, Exception):
        rng = np.random.default_rng(0)
        words = ["the ", "king ", "and ", "queen ", "of ", "ticket ", "mask "]
        (tmp / "text.txt").write_text("".join(rng.choice(words) for _ in range(40000)))
        dataset = str(tmp / "text.txt")
    rows = []
    cells = [(f"edge-popup keep={k}", "edge-popup", k) for k in (0.5, 0.3, 0.1, 0.03)]
    cells.append(("annealed+scales (keep 0.5 start)", "annealed+scales", 0.5))
    t0 = time.perf_counter()
    for label, method, keep in cells:
        study = LMStudy(
            dataset=dataset,
            methods=(method,),
            keep=keep,
            steps=args.steps,
            eval_bytes=4096,
            d_model=128,
            n_heads=4,
            n_layers=2,
            device="cpu",
        )
        model, metrics, _ = run_cell(study.cells()[0], args.data_dir)
        rows.append(mask_row(label, model, study.cells()[0].spec()) | {"val_bpb": metrics["val_bpb"]})
        print(f"{label}: {rows[-1]['bpw']:.4f} bits/weight, ratio {rows[-1]['ratio']:.4f}", flush=True)
    t_search = time.perf_counter() - t0
    timing, _ = timing_rows(args.big_layers, tmp)
    lines = [
        "# Ticket artifact benchmark",
        "",
        f"Machine: {machine_summary()}.",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}` (searches took {t_search:.0f} s).",
        "",
        f"## Mask bits per weight vs binary entropy (real tickets, {args.steps}-step searches)",
        "",
        f"Byte-level LM d=128, 4 heads, 2 layers on {Path(dataset).name}: every Linear/Embedding masked. "
        "`ratio` = coded mask bits / sum over tensors of n·H(p_tensor) (the floor for a static per-tensor "
        "model); the issue's target is <= 1.02. `H(density)` is the entropy of the overall density.",
        "",
        "| ticket | masked weights | density | bits/weight | H(density) | ratio | bit-packing | "
        "bit-packing + zlib -9 | artifact bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['weights']:,} | {r['density']:.4f} | {r['bpw']:.4f} | {r['h']:.4f} | "
            f"{r['ratio']:.4f} | {r['packed_bpw']:.4f} | {r['zlib_bpw']:.4f} | {r['total']:,} |"
        )
    worst = max(rows, key=lambda r: r["ratio"])
    sparse = min(rows, key=lambda r: r["density"])
    verdict = "meets" if worst["ratio"] <= 1.02 else "MISSES"
    lines += [
        "",
        "## Export and load time, ~10M-weight model",
        "",
        *timing,
        "",
        f"Reading: the worst ratio to the entropy floor is {worst['ratio']:.4f} ({worst['label']}), which "
        f"{verdict} the <= 1.02 target. At density {sparse['density']:.2f} the range coder needs "
        f"{sparse['bpw']:.4f} bits/weight, bit-packing 1 and bit-packing + zlib {sparse['zlib_bpw']:.4f} "
        f"({sparse['zlib_bpw'] / sparse['bpw']:.2f}x the coder). Times are wall-clock on a shared machine "
        f"(load average {os.getloadavg()[0]:.1f} at the end of the run), so they are upper bounds.",
        "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
