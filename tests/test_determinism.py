"""Same config and seed on the CPU -> bit-identical weights and tickets, across separate processes."""

import hashlib
import subprocess
import sys

SCRIPT = r"""
import hashlib, torch
from sltlab.tasks.approx import ApproxStudy, run_cell
from sltlab.tickets.search import SearchConfig
from sltlab.tickets.supermask import get_masks
torch.set_num_threads(1)
study = ApproxStudy(widths=(16,), variants=("ln-integrated",), methods=("{method}",), seeds=(3,), n_train=256,
                    n_test=64, batch_size=32, search=SearchConfig(steps=25, lr=0.05))
source, metrics, _ = run_cell(study.cells()[0])
h = hashlib.sha256()
for name, t in sorted(source.state_dict().items()):
    h.update(name.encode()); h.update(t.detach().contiguous().numpy().tobytes())
for name, m in sorted(get_masks(source).items()):
    h.update(name.encode()); h.update(m.numpy().tobytes())
print(h.hexdigest(), repr(metrics["rel_error"]))
"""


def _run(method: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT.replace("{method}", method)], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return out.stdout.strip()


def test_two_processes_find_bit_identical_tickets():
    for method in ("edge-popup", "annealed", "multicoated", "partially-frozen"):
        a, b = _run(method), _run(method)
        assert a == b, method
        assert len(a.split()[0]) == hashlib.sha256().digest_size * 2
