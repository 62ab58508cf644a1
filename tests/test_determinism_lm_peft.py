"""Same config and seed on the CPU -> bit-identical LM and PEFT runs in two separate processes and folders
(metrics to the last bit, artifact bytes)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from test_peft import _write_rte, _write_tiny_model_dir

LM = r"""
import hashlib, sys, torch
from pathlib import Path
from sltlab.tasks.lm_run import LMStudy, run_cell
torch.set_num_threads(1)
study = LMStudy(dataset=sys.argv[1], methods=("edge-popup+scales",), d_model=16, n_heads=2, n_layers=1, seq_len=16,
                batch_size=8, steps=30, eval_bytes=2048, lr_edge_popup=0.05, warmup=2, device="cpu")
out = Path(sys.argv[2])
_, metrics, _ = run_cell(study.cells()[0], artifact_dir=out)
print(hashlib.sha256((out / "ticket.slt").read_bytes()).hexdigest(), repr(metrics["val_bpb"]))
"""

PEFT = r"""
import hashlib, sys, torch
from pathlib import Path
from sltlab.runs.store import Store
from sltlab.tasks import peft
torch.set_num_threads(1)
model_dir, data, folder = sys.argv[1:4]
base = {"model": model_dir, "max_len": 16, "epochs": 1, "batch_size": 8, "fisher_samples": 6,
        "fisher_tasks": ["rte"]}
with Store(Path(folder) / "s.db") as store:
    rid = peft.run_peft(peft.make_config("rte", "ln-fisher@0.5", 1e-2, 0, base), store, data_dir=data, progress=False)
    rec = store.get(rid)
    blob = (store.path.parent / "artifacts" / rid / "trained.safetensors").read_bytes()
print(rid, hashlib.sha256(blob).hexdigest(), repr(rec.metrics["main"]), repr(rec.metrics["final_loss"]))
"""


def _run(script: str, *args: str, cache: Path) -> str:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "SLTLAB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_lm_cell_is_bit_identical_in_two_processes(tmp_path):
    rng = random.Random(0)
    words = ["the ", "king ", "and ", "queen ", "of ", "ticket ", "lottery ", "mask "]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(rng.choice(words) for _ in range(6000)))
    a = _run(LM, str(corpus), str(tmp_path / "a"), cache=tmp_path / "ca")
    b = _run(LM, str(corpus), str(tmp_path / "b"), cache=tmp_path / "cb")
    assert a == b and len(a.split()[0]) == 64


def test_peft_run_with_fisher_is_bit_identical_in_two_processes(tmp_path):
    model_dir = _write_tiny_model_dir(tmp_path / "tiny-bert")
    data = _write_rte(tmp_path / "data")
    a = _run(PEFT, str(model_dir), str(data), str(tmp_path / "a"), cache=tmp_path / "ca")
    b = _run(PEFT, str(model_dir), str(data), str(tmp_path / "b"), cache=tmp_path / "cb")
    assert a == b and a.startswith("peft-")
