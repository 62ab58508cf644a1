"""Toy cells for the executor tests: importable by spawned pool workers and Ray workers (tests/ on PYTHONPATH).

A toy cell draws a seeded matrix, optionally sleeps, writes an artifact and returns metrics and a curve. It can be
told to fail, to diverge, or to wait to be killed once (it records its pid in a file and sleeps; the retry that
follows finds the marker and completes)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from sltlab.errors import DivergedError
from sltlab.runs.executor import Cell, CellContext, CellOutput


def toy_cell(arg: dict[str, Any], ctx: CellContext) -> CellOutput:
    if arg.get("kill_dir"):
        marker = Path(arg["kill_dir"]) / f"attempted-{arg['seed']}"
        if not marker.exists():
            marker.touch()
            (Path(arg["kill_dir"]) / f"pid-{arg['seed']}").write_text(str(os.getpid()))
            time.sleep(120)  # the test kills this process long before
    if arg.get("sleep"):
        time.sleep(arg["sleep"])
    if arg.get("fail"):
        raise ValueError(f"toy cell {arg['seed']} was told to fail")
    if arg.get("diverge"):
        raise DivergedError("loss 3.2e+09 > 1e3 x initial 1.1", step=40, loss=3.2e9)
    g = torch.Generator().manual_seed(int(arg["seed"]))
    x = torch.randn(64, 64, generator=g)
    y = x @ x.T
    (ctx.out_dir / "toy.bin").write_bytes(y.numpy().tobytes())
    curve = [[s, float(y[s].sum())] for s in range(1, 4)]
    return CellOutput({"value": float(y.sum()), "norm": float(y.norm())}, {"toy_s": 0.0}, {"loss": curve})


def toy_cells(n: int, **flags: Any) -> list[Cell]:
    """n toy cells; flags apply to every cell, or pass per-seed flags as {seed: {...}} under 'per_seed'."""
    per_seed = flags.pop("per_seed", {})
    return [
        Cell("toy", {"seed": s, "size": 64}, s, toy_cell, {"seed": s, **flags, **per_seed.get(s, {})},
             label=f"toy {s}")
        for s in range(n)
    ]
