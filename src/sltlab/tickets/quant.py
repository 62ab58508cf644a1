"""The int8 dense artifact: a trained dense model as int8 weights, zlib-compressed, under the parameter-golf
challenge's export rules (openai/parameter-golf, train_gpt.py, "int8_clean_per_row_v1").

The challenge's dense baselines ship this way (int8 + zlib inside the 16,000,000-byte cap), so it is the reference
a supermask artifact (seed + coded masks + a few floats, `sltlab.tickets.artifact`) is compared with at equal bytes.

The rules, one per state-dict tensor (a tensor shared by several names, a tied embedding, counts once: the
challenge's tied model has one name for it), in this order:
    1. not floating point                      stored as is
    2. at most 65,536 elements                 kept as a float: fp32 if its name contains a control pattern
                                               (CONTROL_PATTERNS: attn_scale, mlp_scale, resid_mix, q_gain,
                                               skip_weight and plurals), else fp16
    3. two-dimensional                         per row r: c_r = quantile(|w_r|, 0.9999984) (linear
                                               interpolation), s_r = max(c_r / 127, 1/127), q = round(clip(w, -c_r,
                                               c_r) / s_r) clamped to [-127, 127]; s_r stored as fp16
    4. anything else                           one scale: c = quantile(|w|, 0.9999984), s = c / 127 (1 if c = 0),
                                               stored fp32; q as in 3
and the whole is zlib-compressed at level 9. Dequantised weights are q x s with the stored (fp16 or fp32) scale.
The floor s_r >= 1/127 is the challenge's: a row whose weights are all below 1 in magnitude gets the grid 1/127,
so small weights cost few distinct values (cheap to compress) and lose their precision below 1/254.

The container is sltlab's (the challenge torch.saves a dict of tensors; nothing here pickles or unpickles). Its
byte count is within 1% of the challenge's own serialisation of the same tensors (tests/test_golf_int8.py checks
it against an independent implementation of these rules through torch.save + zlib). File layout (integers
little-endian)::

    magic      8 bytes   b"SLTINT8\\0"
    version    u16       2 (the challenge's rules); 1 = sltlab's first format (max|w| / 127 per row, every
                         tensor of 2+ dimensions int8, others fp32), still read
    reserved   u16       0
    header_len u32       length of the header
    header     JSON      {"spec": ModelSpec dict, "tensors": [{"name", "shape", "kind", "aliases"}, ...]}
    payload    zlib      the tensors' bytes in header order
    sha256     32 bytes  SHA-256 of everything before it

Tensor kinds: "int8" (v1: fp16 row scales, then int8), "row" (v2 rule 3: fp16 row scales, then int8), "tensor"
(v2 rule 4: one fp32 scale, then int8), "f16", "f32" (kept floats). Loading rebuilds the architecture from the
spec and fills it; every malformed input is an ArtifactError.
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
VERSION = 2
ZLIB_LEVEL = 9
# The challenge's constants (train_gpt.py): tensors this small stay floats; the clip quantile of |w|.
KEEP_FLOAT_MAX_NUMEL = 65_536
CLIP_Q = 99.99984 / 100.0
CONTROL_PATTERNS = ("attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes", "q_gain",
                    "skip_weight", "skip_weights")


def quantile_rows(a: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of every row of a 2-D float32 tensor, by linear interpolation between order statistics
    (torch.quantile's default, its rank q (n - 1) computed in float32 as it does, so the values are its bits),
    computed by a sort: torch.quantile refuses tensors above 2^24 elements."""
    n = a.shape[1]
    s = a.sort(dim=1).values
    rank = torch.tensor(q, dtype=torch.float32) * (n - 1)
    lo, hi = int(rank.floor()), int(rank.ceil())
    return torch.lerp(s[:, lo], s[:, hi], rank - rank.floor())


def quantize_rows_clipped(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rule 3: (fp16 per-row scales, int8 values) of a 2-D weight."""
    t = w.detach().float().cpu()
    clip = quantile_rows(t.abs(), CLIP_Q) if t.numel() else torch.zeros(t.shape[0])
    clipped = torch.maximum(torch.minimum(t, clip[:, None]), -clip[:, None])
    scale = (clip / 127.0).clamp_min(1.0 / 127.0)
    q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
    return scale.half().numpy(), q.numpy()


def quantize_tensor_clipped(w: torch.Tensor) -> tuple[float, np.ndarray]:
    """Rule 4: (fp32 scale, int8 values) of a tensor that is not 2-D."""
    t = w.detach().float().cpu()
    clip = float(quantile_rows(t.abs().reshape(1, -1), CLIP_Q)[0]) if t.numel() else 0.0
    scale = float(np.float32(clip / 127.0)) if clip > 0 else 1.0
    q = torch.clamp(torch.round(torch.clamp(t, -clip, clip) / scale), -127, 127).to(torch.int8)
    return scale, q.numpy()


def quantize_rows(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Format 1's rule: (fp16 per-row scales max|w_r| / 127, int8 values). An all-zero row has scale 0."""
    rows = w.detach().float().cpu().reshape(w.shape[0], -1)
    scale = (rows.abs().amax(1) / 127.0).half()
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


def rule_of(name: str, t: torch.Tensor, keep_float_max_numel: int = KEEP_FLOAT_MAX_NUMEL) -> str:
    """Which of the challenge's rules stores this tensor: raw | f32 | f16 | row | tensor."""
    if not t.is_floating_point():
        return "raw"
    if t.numel() <= keep_float_max_numel or (t.ndim < 2 and keep_float_max_numel < KEEP_FLOAT_MAX_NUMEL):
        return "f32" if any(p in name for p in CONTROL_PATTERNS) else "f16"
    return "row" if t.ndim == 2 else "tensor"


def export_int8(model: nn.Module, spec: ModelSpec, path: str | Path | None = None,
                keep_float_max_numel: int = KEEP_FLOAT_MAX_NUMEL) -> bytes:
    """The int8 artifact of a dense `model` built from `spec`, under the challenge's rules (its mask, if any, is
    ignored: dense weights are stored). Writes it to `path` if given; returns the bytes.

    keep_float_max_numel: rule 2's size limit (the challenge's 65,536). Below it, a small model's matrices all stay
    fp16; 0 stores every matrix by rule 3 (int8 rows) and keeps only vectors as floats, the variant that shows
    what int8 itself costs at that size."""
    entries, chunks = [], []
    for name, t, aliases in _unique_state(model):
        if ".scores" in name or name.endswith("scores"):
            raise ArtifactError(f"{name}: the int8 artifact stores dense models; this one carries supermask scores "
                                "(export tickets with sltlab.tickets.artifact.export_ticket)")
        kind = rule_of(name, t, keep_float_max_numel)
        if kind == "raw":
            raise ArtifactError(f"{name}: dtype {t.dtype} is not a float; sltlab's models hold only float tensors")
        if kind == "row":
            scale, q = quantize_rows_clipped(t)
            chunks += [scale.astype("<f2").tobytes(), q.tobytes()]
        elif kind == "tensor":
            s, q = quantize_tensor_clipped(t)
            chunks += [np.array([s], "<f4").tobytes(), q.tobytes()]
        else:
            chunks.append(t.detach().float().cpu().numpy().astype("<f4" if kind == "f32" else "<f2").tobytes())
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
        kind = e["kind"]
        if kind in ("int8", "row"):
            rows = shape[0]
            scale = np.frombuffer(payload, "<f2", rows, pos)
            pos += 2 * rows
            q = np.frombuffer(payload, np.int8, n, pos)
            pos += n
            t = dequantize_rows(scale, q.reshape(rows, -1), shape)
        elif kind == "tensor":
            s = float(np.frombuffer(payload, "<f4", 1, pos)[0])
            pos += 4
            t = torch.from_numpy(np.frombuffer(payload, np.int8, n, pos).astype(np.float32)).reshape(shape) * s
            pos += n
        elif kind in ("f32", "f16"):
            width = 4 if kind == "f32" else 2
            arr = np.frombuffer(payload, "<f4" if kind == "f32" else "<f2", n, pos)
            t = torch.from_numpy(arr.astype(np.float32)).reshape(shape)
            pos += width * n
        else:
            raise ArtifactError(f"{source}: tensor {e['name']!r} has unknown kind {kind!r}")
        for name in [e["name"], *e["aliases"]]:
            if name not in state or tuple(state[name].shape) != shape:
                raise ArtifactError(f"{source}: tensor {name!r} {shape} does not fit the model its spec builds")
            values[name] = t
    if pos != len(payload) or set(values) != set(state):
        raise ArtifactError(f"{source}: the payload does not hold exactly the model's tensors")
    return values
