"""Peak memory of rebuilding and running a ticket, folded vs unfolded (issue 16).

For each case a ticket of a byte-level causal LM (random masks over seeded weights: memory does not depend on
which mask was found) is exported to a temporary .slt file; then a *fresh* Python process imports torch and
sltlab, notes its resident set size (RSS), loads the ticket (`sltlab.load_ticket`: weights regenerated from the
seed, masks decoded and fixed) and runs one forward pass, and reports its peak RSS (VmHWM in /proc/self/status,
the kernel's high-water mark of that process; not getrusage's ru_maxrss, which Linux carries over from the
parent at fork) minus the RSS before loading. tracemalloc cannot be used: torch's CPU
tensors are not allocated through Python's allocator. Beside the measured peak, the page lists what the loaded
model holds, counted from its tensors (each storage once): random weights, supermask scores (float32, one per
mask; a loaded ticket keeps its masks in them), and the cached float masks edge-popup keeps for the forward.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fold_memory.py           # ~2 minutes
    .venv/bin/python benchmarks/bench_fold_memory.py --d-model 64 --layers 4 --out /tmp/f.md    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES: list[tuple[str, int | None, str, bool]] = [
    # label, fold, mask sharing, masked
    ("random network, no mask (reference)", None, "unshared", False),
    ("unfolded ticket", None, "unshared", True),
    ("folded S=2, a mask per layer", 2, "unshared", True),
    ("folded S=1, a mask per layer", 1, "unshared", True),
    ("folded S=1, a mask per stage (shared)", 1, "shared", True),
]


def make_spec(d_model: int, layers: int, fold: int | None, sharing: str, masked: bool):  # noqa: ANN201
    from sltlab.nn.init import InitSpec
    from sltlab.nn.transformer import ModelConfig
    from sltlab.tickets.spec import ModelSpec
    from sltlab.tickets.supermask import SupermaskConfig

    cfg = ModelConfig(d_model=d_model, n_heads=4, n_layers=layers, vocab_size=256, max_len=128, fold=fold,
                      mask_sharing=sharing)  # type: ignore[arg-type]
    return ModelSpec("causal-lm", cfg, InitSpec(seed=0), SupermaskConfig(keep=0.5, seed=1) if masked else None)


def _status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (resident high-water mark) of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux")


def measure(path: str, batch: int, seq: int) -> dict[str, float]:
    """Runs in the fresh child: load the ticket, one forward, report memory (bytes) and time."""
    import constriction  # noqa: F401 - imported by the decoder; loaded before the baseline so it is not counted
    import torch

    from sltlab.tickets.artifact import load_ticket
    from sltlab.tickets.supermask import supermasks

    torch.set_num_threads(1)
    before = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    model = load_ticket(path)
    t1 = time.perf_counter()
    x = torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)
    t2 = time.perf_counter()
    # Not getrusage's ru_maxrss: Linux carries the parent's high-water mark into a forked child (the parent here
    # grows with every export), so every case would report at least the parent's peak. VmHWM belongs to this
    # process's own address space, fresh at exec.
    peak = _status_bytes("VmHWM")
    storages: dict[int, tuple[str, int]] = {}
    for name, p in model.named_parameters():
        kind = "scores" if name.endswith("scores") else "weights" if p.ndim >= 2 else "other"
        storages[p.untyped_storage().data_ptr()] = (kind, p.untyped_storage().nbytes())
    sms = {id(sm): sm for sm in supermasks(model).values()}
    held = {"weights": 0, "scores": 0, "other": 0}
    for kind, nbytes in storages.values():
        held[kind] += nbytes
    held["mask_cache"] = sum(sm._cache.untyped_storage().nbytes() for sm in sms.values() if sm._cache is not None)
    return {"peak_minus_start": peak - before, "start": before, "load_s": t1 - t0, "forward_s": t2 - t1, **held}




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default="docs/benchmarks/fold_memory.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.seq)))
        return 0

    import torch

    from sltlab.runs.provenance import machine_summary
    from sltlab.runs.store import atomic_write_text
    from sltlab.tickets.artifact import export_ticket
    from sltlab.tickets.spec import build_model

    mib = 1 << 20
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, fold, sharing, masked in CASES:
            spec = make_spec(args.d_model, args.layers, fold, sharing, masked)
            path = Path(tmp) / "t.slt"
            size = len(export_ticket(build_model(spec), spec, path))
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, __file__, "--child", str(path), "--batch", str(args.batch), "--seq", str(args.seq)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((label, size, r))
            print(f"{label}: peak +{r['peak_minus_start'] / mib:.1f} MiB, weights {r['weights'] / mib:.1f} MiB, "
                  f"scores {r['scores'] / mib:.1f} MiB, mask cache {r['mask_cache'] / mib:.1f} MiB, "
                  f"artifact {size:,} B", flush=True)
    del torch
    head = ("| case | peak RSS over start (MiB) | random weights (MiB) | scores (MiB) | cached masks (MiB) | other "
            "floats (MiB) | load (s) | artifact (B) |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {label} | {r['peak_minus_start'] / mib:.1f} | {r['weights'] / mib:.1f} | {r['scores'] / mib:.1f} "
        f"| {r['mask_cache'] / mib:.1f} | {r['other'] / mib:.1f} | {r['load_s']:.2f} | {size:,} |\n"
        for label, size, r in rows
    )
    cmd = " ".join(["benchmarks/bench_fold_memory.py", *(argv if argv is not None else sys.argv[1:])])
    page = (
        "# Folded sources: memory to rebuild and run a ticket\n\n"
        f"Machine: {machine_summary()}. Command: `{cmd}`.\n\n"
        f"A byte-level causal LM, d={args.d_model}, {args.layers} layers, 4 heads, vocabulary 256; masks at density "
        f"0.5 on every linear and embedding layer. Each case is loaded in a fresh process (`load_ticket`, then one "
        f"forward of batch {args.batch} x {args.seq}); the peak is VmHWM minus the RSS after imports. The "
        "other columns count the loaded model's tensors (each storage once).\n\n" + head + body
    )
    atomic_write_text(Path(args.out), page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
