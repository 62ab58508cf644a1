"""Checkpoints: the tensors a run trained (never the seeded weights) as safetensors, the ModelSpec as JSON metadata,
and a SHA-256 over the tensors. Loading rebuilds the model from the spec, then loads and checks the tensors.

IMP runs also keep the mask of every pruning round (`save_round_masks`, file ROUND_MASKS_FILE beside the
checkpoint): bit-packed, with the shapes and a SHA-256 of the unpacked masks in the metadata."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save
from torch import nn

from sltlab.errors import ArtifactError, ConfigError
from sltlab.runs.store import atomic_write_bytes
from sltlab.tickets.spec import ModelSpec, build_model

FORMAT = "sltlab-checkpoint-1"
MASK_RANK = "scores"
ROUNDS_FORMAT = "sltlab-imp-rounds-1"
ROUND_MASKS_FILE = "imp_rounds.safetensors"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted, so equal tensors and metadata give equal bytes.

    safetensors writes the metadata from a hash map whose order changes from process to process, so two runs that
    saved identical tensors wrote files that differed in bytes (and could not be compared by hash). The tensor data
    is already laid out in a fixed order; only the header is rewritten, padded with spaces to 8 bytes as
    safetensors pads it, and the data offsets (relative to the end of the header) stay valid."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + n :]


def trained_tensors(model: nn.Module, which: Literal["trainable", "all"] = "trainable") -> dict[str, torch.Tensor]:
    """'trainable': scores and every parameter with requires_grad; 'all': the whole state dict (dense, IMP)."""
    if which == "all":
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if p.requires_grad or name.endswith(".scores")
    }


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    spec: ModelSpec,
    which: Literal["trainable", "all"] = "trainable",
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write atomically to `path` (a .safetensors file). `extra`: more named tensors (e.g. IMP masks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = trained_tensors(model, which)
    for k, v in (extra or {}).items():
        tensors[f"extra::{k}"] = v.detach().clone()
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    # mask_rank: what edge-popup ranks to rebuild a mask from stored scores; a future change of that rule must
    # change this value so old files are refused instead of silently rebuilding other masks.
    meta = {"format": FORMAT, "spec": spec.to_json(), "which": which, "sha256": _digest(tensors),
            "mask_rank": MASK_RANK}
    atomic_write_bytes(path, canonical_safetensors(save(tensors, metadata=meta)))
    return path


def read_checkpoint(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"checkpoint {path} is not a readable safetensors file: {err}") from err
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an sltlab checkpoint (format {meta.get('format')!r}, want {FORMAT})")
    if meta.get("mask_rank", MASK_RANK) != MASK_RANK:
        raise ArtifactError(f"{path} ranks masks by {meta['mask_rank']!r}, this sltlab by {MASK_RANK!r}: its masks "
                            "cannot be rebuilt exactly; re-run the study that made it")
    if _digest(tensors) != meta.get("sha256"):
        raise ArtifactError(f"checkpoint {path} fails its SHA-256 check: the file is corrupted")
    try:
        spec = ModelSpec.from_json(meta["spec"])
    except (KeyError, json.JSONDecodeError, ConfigError) as err:
        raise ArtifactError(f"checkpoint {path} has no valid model spec: {err}") from err
    return spec, tensors, meta


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model from its spec (weights regenerated from the seed) and load the trained tensors."""
    spec, tensors, _ = read_checkpoint(path)
    model = build_model(spec)
    state = {k: v for k, v in tensors.items() if not k.startswith("extra::")}
    missing = set(state) - set(model.state_dict())
    if missing:
        raise ArtifactError(f"checkpoint {path} has tensors the model lacks: {sorted(missing)[:5]}")
    with torch.no_grad():
        # every alias of a shared tensor (a folded model's tied weights) by each of its names, as the state dict has
        own = dict(model.named_parameters(remove_duplicate=False))
        own.update(dict(model.named_buffers(remove_duplicate=False)))
        for k, v in state.items():
            own[k].copy_(v)
    model.eval()
    return model, spec


def checkpoint_extras(path: str | Path) -> dict[str, torch.Tensor]:
    _, tensors, _ = read_checkpoint(path)
    return {k[len("extra::"):]: v for k, v in tensors.items() if k.startswith("extra::")}


def save_round_masks(path: str | Path, rounds: Sequence[Mapping[str, torch.Tensor]]) -> Path:
    """Write the masks of IMP rounds 0..R ({module name: bool mask} each) atomically to `path`.

    A mask is stored as `round<r>.<module>`, its bits packed into uint8 (8x smaller than bool: IMP masks cover every
    weight of the model, the embeddings included); the shapes and a SHA-256 over the unpacked masks go in the
    metadata, so a reload is checked against the masks that were saved, not against their packing."""
    if not rounds:
        raise ArtifactError(f"no IMP round masks to save to {path}")
    masks = {
        f"round{r}.{name}": m.detach().cpu().to(torch.bool).contiguous()
        for r, ms in enumerate(rounds)
        for name, m in ms.items()
    }
    packed = {k: torch.from_numpy(np.packbits(m.reshape(-1).numpy())) for k, m in masks.items()}
    meta = {
        "format": ROUNDS_FORMAT,
        "rounds": str(len(rounds)),
        # in module order (safetensors sorts its tensors by name), so a reload lists modules as the model does
        "shapes": json.dumps({k: list(m.shape) for k, m in masks.items()}),
        "sha256": _digest(masks),
    }
    path = Path(path)
    atomic_write_bytes(path, canonical_safetensors(save(packed, metadata=meta)))
    return path


def load_round_masks(path: str | Path) -> list[dict[str, torch.Tensor]]:
    """The IMP round masks saved by `save_round_masks`: [round 0 masks, round 1 masks, ...], bool tensors."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"IMP round masks {path} do not exist (runs made before round masks were saved lack them)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        packed = load(path.read_bytes())
        shapes = {k: tuple(v) for k, v in json.loads(meta.get("shapes", "{}")).items()}
        n_rounds = int(meta.get("rounds", "-1"))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"IMP round masks {path} are not a readable safetensors file: {err}") from err
    if meta.get("format") != ROUNDS_FORMAT:
        raise ArtifactError(f"{path} is not an sltlab IMP round-mask file (format {meta.get('format')!r}, "
                            f"want {ROUNDS_FORMAT})")
    if set(shapes) != set(packed):
        raise ArtifactError(f"IMP round masks {path}: the stored shapes do not name the stored masks")
    masks = {}
    for k in shapes:
        v = packed[k]
        n = int(np.prod(shapes[k], dtype=np.int64))
        # unpackbits pads a short array with zeros instead of failing, so a truncated mask must be caught here.
        if v.dtype != torch.uint8 or v.numel() != (n + 7) // 8:
            raise ArtifactError(f"IMP round masks {path}: {k} does not hold the {n} bits its shape {shapes[k]} needs")
        masks[k] = torch.from_numpy(np.unpackbits(v.numpy(), count=n).astype(bool)).reshape(shapes[k])
    if _digest(masks) != meta.get("sha256"):
        raise ArtifactError(f"IMP round masks {path} fail their SHA-256 check: the file is corrupted")
    rounds: list[dict[str, torch.Tensor]] = [{} for _ in range(max(n_rounds, 0))]
    for k, m in masks.items():
        head, name = k.split(".", 1)
        r = int(head[len("round"):])
        if not 0 <= r < len(rounds):
            raise ArtifactError(f"IMP round masks {path}: {k} is beyond the {n_rounds} rounds the file declares")
        rounds[r][name] = m
    return rounds
