"""Where a cell runs and in which arithmetic: the `device`, `precision` and `deterministic` fields every study shares,
declared once in `Where`, which every study config inherits.

- device: "auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda" or "cuda:N". Seeded weights are always
  drawn on the CPU in float32 (bit-exact anywhere) and moved once; everything made later is made on the model's
  device.
- precision: "fp32" (no autocast), "bf16" or "fp16": torch.autocast around the forward (and so the backward) of
  each step. Parameters stay float32, so scores, masks, optimiser state and norm affine are float32 throughout;
  fp16 adds a gradient scaler, since its narrow exponent range underflows small gradients.
- deterministic: torch's deterministic algorithms (CUDA only matters: the CPU kernels used here are already
  deterministic). Costs speed; see docs/BENCHMARKS.md for what still differs from the CPU.

The defaults (cpu, fp32, not deterministic) are left out of every run id, so runs made before these fields existed
keep their ids; any other value enters the id, because results on a GPU or in bf16 differ from the CPU's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from sltlab.errors import ConfigError

DEVICE_DEFAULT = "cpu"
PRECISION_DEFAULT = "fp32"
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_ACCEPTS = "auto | cpu | cuda | cuda:N"


def check_device_name(name: str, field: str = "device") -> str:
    """Syntax only (a config may be written on a machine without the GPU it is meant for); returns `name`."""
    if not isinstance(name, str):
        raise ConfigError(field, f"got {name!r}", DEVICE_ACCEPTS)
    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(field, f"unknown device {name!r}", DEVICE_ACCEPTS) from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ConfigError(field, f"unsupported device {name!r}", DEVICE_ACCEPTS)
    return name


def check_precision(name: str, field: str = "precision") -> str:
    if name not in PRECISIONS:
        raise ConfigError(field, f"unknown precision {name!r}", " | ".join(PRECISIONS))
    return name


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU; "
            "check CUDA_VISIBLE_DEVICES and the driver")


def resolve_device(name: str, field: str = "device") -> torch.device:
    """The torch.device for a config value; "auto" picks CUDA when available. A CUDA device that is not there is
    one clear ConfigError line naming the field (the CLI exits 2)."""
    check_device_name(name, field)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(field, f"{name} requested but torch has no CUDA ({_no_cuda_reason()})", "auto | cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(field, f"{name} requested but only {count} CUDA device(s) are visible",
                              f"cuda:0 .. cuda:{count - 1}")
    return dev


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of one forward pass: nothing for fp32, torch.autocast for bf16 / fp16."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (None otherwise): fp16's 5-bit exponent underflows small gradients."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for an empty module)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def determinism(device: torch.device, deterministic: bool) -> Iterator[None]:
    """Within the block, torch's deterministic algorithms when asked for (restored afterwards).

    cuBLAS needs CUBLAS_WORKSPACE_CONFIG set before its first call in the process to be deterministic; it is set
    here if absent (a process that already ran cuBLAS keeps its workspace, and torch then raises on the first
    nondeterministic call, which names the cause)."""
    if not deterministic:
        yield
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_bench = torch.backends.cudnn.benchmark
    old_det = torch.backends.cudnn.deterministic
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        torch.backends.cudnn.benchmark = old_bench
        torch.backends.cudnn.deterministic = old_det


def device_kind(name: str) -> str:
    """"cpu" or "cuda": what a run id records. The index of a GPU does not change results; "auto" is resolved on
    the machine that computes the id (name the device explicitly when a CPU-only driver sends cells to GPU
    workers)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def run_id_fields(device: str, precision: str, deterministic: bool = False) -> dict[str, Any]:
    """What enters a run id: only the settings away from the CPU / fp32 defaults, so the ids of runs made before
    these fields existed stay as they were."""
    out: dict[str, Any] = {}
    kind = device_kind(device)
    if kind != DEVICE_DEFAULT:
        out["device"] = kind
    if precision != PRECISION_DEFAULT:
        out["precision"] = precision
    if deterministic:
        out["deterministic"] = True
    return out


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`: unchanged when already there (so the CPU path copies nothing); from pinned memory, without
    blocking the host, to a GPU."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def where_fields(device: str, precision: str, deterministic: bool) -> dict[str, Any]:
    """The sweep-level device settings to fold into each cell's config: only those away from their defaults, so a
    per-cell setting in the config file is not overwritten by a default."""
    out: dict[str, Any] = {}
    if device != DEVICE_DEFAULT:
        out["device"] = device
    if precision != PRECISION_DEFAULT:
        out["precision"] = precision
    if deterministic:
        out["deterministic"] = True
    return out


@dataclass(frozen=True, kw_only=True)
class Where:
    """The `device`, `precision` and `deterministic` fields, declared once: every study config inherits them
    (keyword-only, so they follow the config's own fields and never shift its positional ones). A config names
    them in its errors with its own prefix (`check_where("study.")`), puts `where_id()` into its run ids (nothing at
    the defaults, so ids made before these fields existed stay as they were) and folds `where_fields()` into the
    settings of its cells."""

    device: str = DEVICE_DEFAULT
    precision: str = PRECISION_DEFAULT
    deterministic: bool = False

    def check_where(self, prefix: str = "") -> None:
        """Syntax only (a config may be written on a machine without the GPU it is meant for)."""
        check_device_name(self.device, f"{prefix}device")
        check_precision(self.precision, f"{prefix}precision")

    def where_id(self) -> dict[str, Any]:
        return run_id_fields(self.device, self.precision, self.deterministic)

    def where_fields(self) -> dict[str, Any]:
        return where_fields(self.device, self.precision, self.deterministic)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (for timings only; never inside a step loop)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
