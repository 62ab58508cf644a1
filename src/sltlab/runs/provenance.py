"""Where and with what a run was made: code commit, torch build, device, Python, host, executor.

The driver knows the code (its checkout); the worker knows the machine (host, torch build, device). Both halves are
merged into the run record, so a result that ran on a cluster node says which node and which build.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def code_provenance() -> dict[str, Any]:
    """The package version and the git commit of the checkout sltlab is imported from ('unknown' outside one)."""
    from sltlab.version import __version__

    here = Path(__file__).resolve().parent
    out: dict[str, Any] = {"sltlab": __version__, "commit": "unknown", "dirty": "unknown"}
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            out["commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            if status.returncode == 0:
                out["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def machine_provenance(device: str | None = None) -> dict[str, Any]:
    """The worker's side: host, Python, torch version and build, the device the cell ran on, torch threads."""
    import torch

    return {**_machine(device or "cpu"), "torch_threads": torch.get_num_threads()}


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows; platform.processor() alone is
    empty on most Linux machines."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_summary() -> str:
    """One line for a benchmark's record: CPU, visible CPUs, torch threads, Python, torch, OS."""
    import os

    import torch

    return (
        f"{cpu_name()}; {os.cpu_count()} logical CPUs visible, torch threads {torch.get_num_threads()}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


@functools.lru_cache(maxsize=8)
def _machine(dev: str) -> dict[str, Any]:
    import torch

    build = f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu"
    name = cpu_name()
    if dev.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(dev))
    return {
        "host": platform.node(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_build": build,
        "device": dev,
        "device_name": name,
    }
