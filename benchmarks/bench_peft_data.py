"""PEFT data path on the CPU: examples/s of the medium SST-2 setting (MiniLM, max_len 64, batch 8, method ln) over a
short run, and what tokenising costs (once per task now, then read from the cache; per batch of every epoch before).

    SLTLAB_DATA=... PYTHONPATH=src nice -n 10 python benchmarks/bench_peft_data.py [--steps 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from typing import Any


class _Take:
    """The first n batches of a re-iterable, as a sized collection (one short epoch)."""

    def __init__(self, batches: Any, n: int):
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        return itertools.islice(iter(self.batches), self.n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    import os

    import torch

    torch.set_num_threads(1)
    os.environ["SLTLAB_CACHE"] = tempfile.mkdtemp(prefix="sltlab-cache-")  # start cold: the first build is timed
    from sltlab.tasks.glue import load_split
    from sltlab.tasks.peft import (
        Batches,
        PeftConfig,
        fixed_subsample,
        fresh_model,
        pristine,
        train_masked,
        trainable_masks,
    )

    cfg = PeftConfig(task="sst2", method="ln", lr=1e-3, max_len=64, epochs=1, subsample=2048, batch_size=8)
    pre = pristine("default")
    train = fixed_subsample(load_split("sst2", "train", data_dir=args.data_dir), 2048, 0)
    t0 = time.perf_counter()
    Batches(pre, train, 64, 8, shuffle=True, seed=0)
    print(f"tokenise 2048 examples once (cold cache, then written): {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    b = Batches(pre, train, 64, 8, shuffle=True, seed=0)
    print(f"load from the cache: {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    n = sum(batch["input_ids"].shape[0] for batch in b)
    print(f"one epoch of batches ({n} examples): {time.perf_counter() - t0:.2f} s")
    for rep in range(args.repeats):
        model = fresh_model(pre, 2, 0, "mean")
        masks = trainable_masks(model, "ln")
        batches = _Take(Batches(pre, train, 64, 8, shuffle=True, seed=0), args.steps)
        t0 = time.perf_counter()
        train_masked(model, masks, batches, cfg, progress=False)
        dt = time.perf_counter() - t0
        print(f"repeat {rep}: {args.steps} steps x 8 = {8 * args.steps} examples in {dt:.2f} s -> "
              f"{8 * args.steps / dt:.1f} examples/s")


if __name__ == "__main__":
    main()
