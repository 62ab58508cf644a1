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


def pytest_terminal_summary(terminalreporter):
    """The bad-input suite's figure (tests/test_bad_inputs.py), printed whenever it ran."""
    tried = clean = 0
    for outcome in ("passed", "failed", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            if "test_bad_inputs.py::test_bad_input[" in getattr(rep, "nodeid", "") and (
                rep.when == "call" or outcome == "error"
            ):
                tried += 1
                clean += outcome == "passed"
    if tried:
        terminalreporter.write_line(
            f"bad inputs: {tried} tried, {clean} clean (exit 2, one line naming the field or path, no traceback, "
            "nothing written)"
        )
