import os
import tempfile

import pytest
import torch

# Tests share 2 cores with other work; one thread keeps timings stable and results identical.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tokenised splits (sltlab.tasks.peft.tokenize_split) are cached; tests keep theirs out of the user's ~/.cache.
os.environ.setdefault("SLTLAB_CACHE", tempfile.mkdtemp(prefix="sltlab-test-cache-"))


@pytest.fixture
def tiny_cfg():
    from sltlab.nn.transformer import ModelConfig

    return ModelConfig(d_model=16, n_heads=2, n_layers=2, vocab_size=50, max_len=16, n_outputs=3)
