"""The theory's own experiments (Otsuka et al. 2025) with constructed (subset-sum) tickets.

One module per experiment, each with a `run_<name>(cfg, runner, out)` that runs (or finds in the store) every
cell of its section of the config, writes its CSV and PNG to `out` and returns a summary dict:
- width:     constructed vs searched tickets' error against the source width (width.py);
- threshold: the width the construction needs, against d and against the source's init scale (threshold.py);
- angular:   the angular-velocity task, trained single-head target and untrained B-block stacks (angular.py);
- seqlen:    the same against the sequence length T (seqlen.py);
- warmstart: gradient search started from the constructed ticket, against search from scratch (warmstart.py);
- blocks:    whole blocks (attention + ReLU MLP + residuals) with every norm: error after every block against
             width and depth, the stated bound beside it, and searched tickets at the same widths (blocks.py).
Shared pieces: config.py (the TOML sections), runner.py (one stored cell), curves.py (means, thresholds, fits),
output.py (CSV and PNG) and cells.py (a constructed ticket on an approximation-study cell).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sltlab.tasks.theory.angular import run_angular
from sltlab.tasks.theory.blocks import run_blocks
from sltlab.tasks.theory.config import TheoryConfig
from sltlab.tasks.theory.runner import Runner
from sltlab.tasks.theory.seqlen import run_seqlen
from sltlab.tasks.theory.threshold import run_threshold
from sltlab.tasks.theory.warmstart import run_warmstart
from sltlab.tasks.theory.width import run_width

# In the order `sltlab theory all` runs them.
RUNNERS: dict[str, Callable[[TheoryConfig, Runner, Path], dict[str, Any]]] = {
    "width": run_width,
    "threshold": run_threshold,
    "angular": run_angular,
    "seqlen": run_seqlen,
    "warmstart": run_warmstart,
    "blocks": run_blocks,
}
EXPERIMENTS: tuple[str, ...] = tuple(RUNNERS)
