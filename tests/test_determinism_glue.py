"""GLUE runs are reproducible across processes: the WordPiece vocabulary is a function of the text and settings
alone, and the same tiny GLUE cell run in two fresh folders gives bit-identical metrics, masks and files.

Each process gets its own tokenizer cache and store, so nothing one process wrote can hide a difference in the
other (`tokenizers`' own trainer gave a different vocabulary in each process on the same text)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import sltlab

SRC = str(Path(sltlab.__file__).resolve().parents[1])

TOKENIZER_SCRIPT = r"""
import hashlib, json, sys
from pathlib import Path
from sltlab.tasks.tokenize import TokenizerSpec, train_tokenizer
texts = json.loads(Path(sys.argv[1]).read_text())
enc = train_tokenizer(texts, TokenizerSpec(vocab_size=int(sys.argv[3]), min_frequency=1), cache=sys.argv[2])
files = list(Path(sys.argv[2]).glob("tokenizers/*/tokenizer.json"))
assert len(files) == 1, files
print(enc.vocab_sha256, hashlib.sha256(files[0].read_bytes()).hexdigest(), enc.vocab_size)
"""

CELL_SCRIPT = r"""
import hashlib, json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from sltlab.runs.store import Store
from sltlab.tasks.glue_run import GlueRunConfig, run_cell
from sltlab.tickets.checkpoint import load_checkpoint
from sltlab.tickets.supermask import get_masks
data, work = sys.argv[1], Path(sys.argv[2])
cfg = GlueRunConfig(task="sst2", method="ln-integrated", norm="pre-ln", seed=2, d_model=16, n_heads=2, n_layers=1,
                    max_len=16, vocab_size=120, batch_size=16, steps=30)
with Store(work / "s.db") as store:
    rid, ran = run_cell(cfg, store, data, cache=work / "cache")
    rec = store.get(rid)
    art = store.artifact_dir(rid)
assert ran and rec.status == "finished"
model, _ = load_checkpoint(art / "ticket.safetensors")
h = hashlib.sha256()
for name, m in sorted(get_masks(model).items()):
    h.update(name.encode()); h.update(m.numpy().tobytes())
files = {f: hashlib.sha256((art / f).read_bytes()).hexdigest() for f in ("ticket.safetensors", "tokenizer.json")}
print(json.dumps({"run_id": rid, "metrics": rec.metrics, "masks": h.hexdigest(), "files": files}, sort_keys=True))
"""

WORDS = [f"{a}{b}{c}" for a in "bcdfg" for b in "aeiou" for c in "lmnrst"]


def _python(script: str, *argv: str) -> str:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def _texts(n: int, seed: int = 0) -> list[str]:
    """Sentences of made-up words with flat frequencies: many pairs tie, which is what a tie-break must settle."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def test_vocabulary_is_the_same_in_two_processes(tmp_path):
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(_texts(600)))
    a = _python(TOKENIZER_SCRIPT, str(texts), str(tmp_path / "cache_a"), "120")
    b = _python(TOKENIZER_SCRIPT, str(texts), str(tmp_path / "cache_b"), "120")
    assert a == b
    assert a.split()[2] == "120"  # the merges ran up to the asked size: the tie-breaks were exercised


def test_build_vocab_tie_break_and_limits():
    from sltlab.tasks.tokenize import SPECIALS, TokenizerSpec, build_vocab

    # "ab" and "cd" occur equally often: the pair whose text sorts first is merged first.
    vocab = build_vocab(["ab cd"] * 3, TokenizerSpec(vocab_size=10, min_frequency=1))
    assert vocab[: len(SPECIALS)] == list(SPECIALS)
    assert vocab[len(SPECIALS):] == ["##b", "##d", "a", "c", "ab", "cd"][: 10 - len(SPECIALS)]
    # min_frequency: pairs rarer than it are never merged; characters are always kept.
    assert build_vocab(["ab cd"], TokenizerSpec(vocab_size=50, min_frequency=2))[len(SPECIALS):] == [
        "##b", "##d", "a", "c"]
    # the order of the texts does not matter, only their content
    texts = _texts(200, seed=3)
    spec = TokenizerSpec(vocab_size=150, min_frequency=1)
    assert build_vocab(texts, spec) == build_vocab(list(reversed(texts)), spec)
    assert len(build_vocab(texts, spec)) == 150


def _sst2(root: Path) -> Path:
    rng = random.Random(1)
    d = root / "glue" / "SST-2"
    d.mkdir(parents=True)
    for split, n in (("train", 160), ("dev", 48)):
        rows = ["sentence\tlabel"]
        for text in _texts(n, seed=len(split)):
            y = rng.randint(0, 1)
            rows.append(f"{text} {'good' if y else 'bad'} {rng.choice(WORDS)}\t{y}")
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_glue_cell_is_bit_identical_in_two_fresh_folders(tmp_path):
    data = _sst2(tmp_path / "data")
    runs = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        runs.append(json.loads(_python(CELL_SCRIPT, str(data), str(work))))
    a, b = runs
    assert a == b
    assert a["metrics"]["vocab_sha256"] and a["files"]["ticket.safetensors"]
    assert os.path.getsize(tmp_path / "a" / "artifacts" / a["run_id"] / "ticket.safetensors") > 0
