import os
import shutil
import tempfile

import pytest
import torch

# Tests share 2 cores with other work; one thread keeps timings stable and results identical.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tokenised splits (sltlab.tasks.peft.tokenize_split) are cached; tests keep theirs out of the user's ~/.cache.
if "SLTLAB_CACHE" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="sltlab-test-cache-")
    os.environ["SLTLAB_CACHE"] = _CACHE
else:
    _CACHE = None


def pytest_sessionfinish(session, exitstatus):
    if _CACHE is not None:  # ours, not one the caller chose
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def tiny_cfg():
    from sltlab.nn.transformer import ModelConfig

    return ModelConfig(d_model=16, n_heads=2, n_layers=2, vocab_size=50, max_len=16, n_outputs=3)


def _count(terminalreporter, marker: str) -> tuple[int, int, list[str]]:
    """Rows of a table test (tried, passed, the failed rows' ids) from the run's reports."""
    tried = clean = 0
    failed = []
    for outcome in ("passed", "failed", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(rep, "nodeid", "")
            if marker in nodeid and (rep.when == "call" or outcome == "error"):
                tried += 1
                clean += outcome == "passed"
                if outcome != "passed":
                    failed.append(nodeid.split("[", 1)[-1].rstrip("]"))
    return tried, clean, failed


def pytest_terminal_summary(terminalreporter):
    """The red-team figures (tests/test_bad_inputs.py, tests/test_faults.py), printed whenever they ran."""
    tried, clean, _ = _count(terminalreporter, "test_bad_inputs.py::test_bad_input[")
    if tried:
        terminalreporter.write_line(
            f"bad inputs: {tried} tried, {clean} clean (exit 2, one line naming the field or path, no traceback, "
            "nothing written)"
        )
    tried, clean, failed = _count(terminalreporter, "test_faults.py::test_fault[")
    if tried:
        by_class: dict[str, int] = {}
        for outcome in ("passed", "failed", "error"):
            for rep in terminalreporter.stats.get(outcome, []):
                nodeid = getattr(rep, "nodeid", "")
                if "test_faults.py::test_fault[" in nodeid and (rep.when == "call" or outcome == "error"):
                    cls = nodeid.split("[", 1)[1].split("-", 1)[0]
                    by_class[cls] = by_class.get(cls, 0) + 1
        classes = ", ".join(f"{k} {v}" for k, v in sorted(by_class.items()))
        terminalreporter.write_line(f"faults and scenarios: {tried} tried ({classes}), {clean} survived"
                                    + (f"; failed: {', '.join(failed)}" if failed else ""))
