"""The prepared GPU check runs on the CPU in its --tiny form and writes its JSON and Markdown (what CI can run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["ok"] and res["failed"] == [] and res["device"] == "cpu" and res["tiny"]
    s = res["sections"]
    assert set(s) == {"tests", "step", "glue", "lm", "golf", "approx"}
    assert s["tests"]["returncode"] == 0 and " passed" in s["tests"]["summary"]
    modes = {r["mode"]: r for r in s["step"]["rows"]}
    assert set(modes) == {"dense", "edge-popup", "annealed", "edge-popup-global"}
    assert modes["dense"]["ratio_to_dense"] == 1.0
    assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in modes.values())
    assert [r["method"] for r in s["glue"]["rows"]] == ["dense", "edge-popup"]
    assert all(r["examples_per_s"] > 0 and 0 <= r["accuracy"] <= 1 for r in s["glue"]["rows"])
    assert s["lm"]["tokens_per_s"] > 0 and s["lm"]["val_bpb"] > 0
    golf = s["golf"]
    assert golf["tokens_per_s"] > 0 and golf["masked_weights"] > 0 and golf["tiny"]
    assert golf["submission_tokens_per_step"] == 262_144
    assert golf["projected_50k_steps_h"] == pytest.approx(50_000 * 262_144 / golf["tokens_per_s"] / 3600)
    fp32 = [r for r in s["approx"]["rows"] if r["precision"] == "fp32"]
    assert fp32 and all(r["relative_difference"] == 0.0 for r in fp32)  # CPU against CPU: bit-identical
    md = (out / "gpu_check.md").read_text()
    for heading in ("# GPU check", "## Device tests", "## Masked vs dense step", "## GLUE cell", "## LM cell",
                    "## CPU vs device agreement", "## The parameter-golf submission's shape", "all sections passed"):
        assert heading in md
