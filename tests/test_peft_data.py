"""PEFT's data path: tokenised once per split (cached on disk, keyed by the tokenizer's and the data's hash), then
batched by a DataLoader into exactly the tensors that tokenising each batch gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sltlab.tasks.glue import GlueSplit
from sltlab.tasks.peft import Batches, token_cache_dir, tokenize_split
from sltlab.tasks.pretrained import Pretrained, resolve_model_path


@pytest.fixture(scope="module")
def pre() -> Pretrained:
    """The bundled MiniLM's tokenizer (no model needed to batch)."""
    import transformers

    path = resolve_model_path(None)
    tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return Pretrained(None, tok, path, "bert")  # type: ignore[arg-type]


def _split(task: str, pairs: bool, n: int = 37) -> GlueSplit:
    rng = np.random.default_rng(0)
    words = ["the", "film", "was", "a", "surprisingly", "unremarkable", "plot", "and", "acting", "é", "naïve"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(2 * n)]
    labels = rng.integers(0, 2, size=n)
    return GlueSplit(task, "train", texts[:n], texts[n:] if pairs else None, labels)


@pytest.mark.parametrize(("task", "pairs"), [("sst2", False), ("mrpc", True)])
def test_batches_equal_tokenising_each_batch(pre: Pretrained, task: str, pairs: bool, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLTLAB_CACHE", str(tmp_path))
    split = _split(task, pairs)
    for shuffle in (True, False):
        b = Batches(pre, split, 24, 8, shuffle=shuffle, seed=3)
        gen = torch.Generator().manual_seed(3)
        assert len(b) == 5
        for _epoch in range(2):  # the order is reshuffled every pass, as before
            n = len(split)
            order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
            got = list(b)
            assert len(got) == 5
            for i, batch in zip(range(0, n, 8), got, strict=True):
                idx = order[i : i + 8]
                want = pre.encode([split.texts_a[j] for j in idx],
                                  None if split.texts_b is None else [split.texts_b[j] for j in idx], 24)
                assert set(batch) == {*want, "labels"}
                for k, v in want.items():
                    assert batch[k].dtype == v.dtype and torch.equal(batch[k], v), k
                assert torch.equal(batch["labels"], torch.as_tensor(split.labels[idx], dtype=torch.long))


def test_tokenised_once_then_read_from_the_cache(pre: Pretrained, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLTLAB_CACHE", str(tmp_path))
    split = _split("mrpc", True)
    a = tokenize_split(pre, split, 24)
    files = list(token_cache_dir().glob("*.safetensors"))
    assert len(files) == 1
    calls = {"n": 0}
    real = pre.tokenizer

    class Counting:
        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(real, name)

        def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            return real(*args, **kwargs)

    monkeypatch.setattr(pre, "tokenizer", Counting())
    b = tokenize_split(pre, split, 24)
    assert calls["n"] == 0 and torch.equal(a.ids, b.ids) and torch.equal(a.offsets, b.offsets)
    # another max_len or other texts: another key
    tokenize_split(pre, split, 16)
    assert calls["n"] == 1 and len(list(token_cache_dir().glob("*.safetensors"))) == 2
    # a damaged cache file is rebuilt, not trusted
    files[0].write_bytes(b"garbage")
    c = tokenize_split(pre, split, 24)
    assert calls["n"] == 2 and torch.equal(a.ids, c.ids)
