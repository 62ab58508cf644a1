"""The int8 dense artifact: a trained dense model as int8 weights with per-row scales, zlib-compressed.

The competition's dense baselines ship this way (int8 + zlib inside the byte cap), so it is the reference a
supermask artifact (seed + coded masks + a few floats, `sltlab.tickets.artifact`) is compared with at equal bytes.

File layout (integers little-endian)::

    magic      8 bytes   b"SLTINT8\\0"
    version    u16       1; a reader refuses newer versions
    reserved   u16       0
    header_len u32       length of the header
    header     JSON      {"spec": ModelSpec dict, "tensors": [{"name", "shape", "kind", "aliases"}, ...]}
    payload    zlib      the tensors' bytes in header order
    sha256     32 bytes  SHA-256 of everything before it

Tensors (the model's state dict, a tensor shared by several names stored once under its first name, the others
listed as its aliases): a weight of two or more dimensions is "int8": per row r (first axis) an fp16 scale
s_r = max|w_r| / 127 and q = round(w / s_r) clamped to [-127, 127], stored as the rows' fp16 scales then the int8
values; anything smaller (norm gains, scales, biases) is "f32", bit-exact. Loading rebuilds the architecture from
the spec and fills it with s_r * q. Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sltlab.errors import ArtifactError
from sltlab.tickets.spec import ModelSpec, build_model

MAGIC = b"SLTINT8\0"
VERSION = 1
ZLIB_LEVEL = 9


def quantize_rows(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 per-row scales, int8 values) of a weight; rows are its first axis. An all-zero row has scale 0."""
    rows = w.detach().float().cpu().reshape(w.shape[0], -1)
    scale = (rows.abs().amax(1) / 127.0).half()
    # divide by the fp16 scale actually stored, so that the dequantised value is the nearest grid point to w
    s = scale.float().clamp_min(torch.finfo(torch.float16).tiny)[:, None]
    q = torch.round(rows / s).clamp_(-127, 127).to(torch.int8)
    return scale.numpy(), q.numpy()


def dequantize_rows(scale: np.ndarray, q: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.from_numpy(q.astype(np.float32)) * torch.from_numpy(scale.astype(np.float32))[:, None]
    return out.reshape(shape)


def _unique_state(model: nn.Module) -> list[tuple[str, torch.Tensor, list[str]]]:
    """(first name, tensor, other names) per distinct tensor of the state dict (tied weights once)."""
    seen: dict[tuple[int, tuple[int, ...]], int] = {}
    out: list[tuple[str, torch.Tensor, list[str]]] = []
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            out[seen[key]][2].append(name)
            continue
        seen[key] = len(out)
        out.append((name, t, []))
    return out


def export_int8(model: nn.Module, spec: ModelSpec, path: str | Path | None = None) -> bytes:
    """The int8 artifact of a dense `model` built from `spec` (its mask, if any, is ignored: dense weights are
    stored). Writes it to `path` if given; returns the bytes."""
    entries, chunks = [], []
    for name, t, aliases in _unique_state(model):
        if ".scores" in name or name.endswith("scores"):
            raise ArtifactError(f"{name}: the int8 artifact stores dense models; this one carries supermask scores "
                                "(export tickets with sltlab.tickets.artifact.export_ticket)")
        if t.ndim >= 2 and t.is_floating_point():
            scale, q = quantize_rows(t)
            chunks += [scale.astype("<f2").tobytes(), q.tobytes()]
            kind = "int8"
        else:
            chunks.append(t.detach().float().cpu().numpy().astype("<f4").tobytes())
            kind = "f32"
        entries.append({"name": name, "shape": list(t.shape), "kind": kind, "aliases": aliases})
    dense_spec = replace(spec, mask=None)
    header = json.dumps({"spec": dense_spec.to_dict(), "tensors": entries}, sort_keys=True).encode()
    body = MAGIC + struct.pack("<HHI", VERSION, 0, len(header)) + header
    body += zlib.compress(b"".join(chunks), ZLIB_LEVEL)
    blob = body + hashlib.sha256(body).digest()
    if path is not None:
        Path(path).write_bytes(blob)
    return blob


def load_int8(blob: bytes, source: str = "int8 artifact") -> nn.Module:
    """Rebuild the dense model of an int8 artifact (eval mode). ArtifactError for anything malformed."""
    if len(blob) < len(MAGIC) + 8 + 32 or blob[: len(MAGIC)] != MAGIC:
        raise ArtifactError(f"{source}: not an sltlab int8 artifact (bad magic or too short)")
    body, digest = blob[:-32], blob[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise ArtifactError(f"{source}: checksum mismatch; the file is damaged or truncated")
    version, _, header_len = struct.unpack_from("<HHI", body, len(MAGIC))
    if version > VERSION:
        raise ArtifactError(f"{source}: format version {version} is newer than this sltlab reads ({VERSION})")
    start = len(MAGIC) + 8
    try:
        header: dict[str, Any] = json.loads(body[start : start + header_len])
        spec = ModelSpec.from_dict(header["spec"])
        payload = zlib.decompress(body[start + header_len :])
        entries = header["tensors"]
    except (ValueError, KeyError, TypeError, zlib.error) as err:
        raise ArtifactError(f"{source}: unreadable header or payload ({err})") from None
    model = build_model(spec)
    state = model.state_dict()
    try:
        values = _read_tensors(payload, entries, state, source)
    except (ValueError, KeyError, TypeError) as err:  # a truncated payload or a malformed entry
        raise ArtifactError(f"{source}: malformed tensor table or payload ({err})") from None
    model.load_state_dict(values)
    return model.eval()


def _read_tensors(payload: bytes, entries: list[dict[str, Any]], state: dict[str, torch.Tensor],
                  source: str) -> dict[str, torch.Tensor]:
    values: dict[str, torch.Tensor] = {}
    pos = 0
    for e in entries:
        shape = tuple(int(s) for s in e["shape"])
        n = int(np.prod(shape)) if shape else 1
        if e["kind"] == "int8":
            rows = shape[0]
            scale = np.frombuffer(payload, "<f2", rows, pos)
            pos += 2 * rows
            q = np.frombuffer(payload, np.int8, n, pos)
            pos += n
            t = dequantize_rows(scale, q.reshape(rows, -1), shape)
        elif e["kind"] == "f32":
            t = torch.from_numpy(np.frombuffer(payload, "<f4", n, pos).copy()).reshape(shape)
            pos += 4 * n
        else:
            raise ArtifactError(f"{source}: tensor {e['name']!r} has unknown kind {e['kind']!r}")
        for name in [e["name"], *e["aliases"]]:
            if name not in state or tuple(state[name].shape) != shape:
                raise ArtifactError(f"{source}: tensor {name!r} {shape} does not fit the model its spec builds")
            values[name] = t
    if pos != len(payload) or set(values) != set(state):
        raise ArtifactError(f"{source}: the payload does not hold exactly the model's tensors")
    return values
