"""Compact ticket artifacts: a seed, entropy-coded masks and a few floats that rebuild a model bit for bit.

A strong lottery ticket needs no stored weights: the base network is a pure function of its spec (seed, init
scheme, shapes), so the file holds only what the search chose.

File layout (all integers little-endian)::

    magic      8 bytes   b"SLTICKT\\0"
    version    u16       1, or 2 when the masks use a variant (below); a reader refuses newer versions
    reserved   u16       0
    header_len u32       length of the compressed header
    header     zlib(JSON) {"spec": ModelSpec dict, "masks": [...], "floats": [...], "probe": {...}, ...}
    payload    bytes     coded masks and raw floats, at the offsets the header gives
    sha256     32 bytes  SHA-256 of everything before it

Masks: one range-coded stream (constriction) holding every masked weight's mask in turn, each under a static
Bernoulli model whose parameter is p = ones / n; the counts `ones` are in the header, so the decoder needs
nothing else and checks them afterwards. A mask that is all zeros or all ones costs nothing. The stream lands
within a few bytes of sum n * H(p) for the whole file.

Mask variants (format version 2; a file without them is still written as version 1, byte for byte as before):
a multicoated layer is stored as its nested coats, coat 1 over the layer's weights, coat i over the weights coat
i-1 keeps, each a Bernoulli stream of the same coder, so a weight's coat count costs about sum_i n_i H(p_i) bits;
the header entry lists the streams' (n, ones) as "streams" and the coat count as "coats". A partially frozen layer
codes only its unfrozen weights: the frozen pattern regenerates from (spec.mask.frozen_seed, layer name, shape)
at decode, where it is checked against the streams' sizes. A version-1 reader refuses these files by their version.

Free floats: every tensor of the model's state that the seed does *not* regenerate bit for bit (norm affine,
scales, a trained head, or all weights of a dense run), as float32 (bit-exact, the default) or float16 ("exact
to the fp16 values"). Scores are never stored: the masks replace them.

Fixing masks on load (the mechanism): after `build_model(spec)` regenerates the weights, each Supermask's
scores are overwritten so that its deterministic `hard_mask()` reproduces the stored mask exactly (checked):
    edge-popup: scores = mask as 0.0/1.0. The top-k threshold of the scores (or of |scores|) is then 1.0,
                because the stored mask has at least k ones (ties only add ones), per layer or under one
                global threshold alike. Multicoated: scores = coat count, so coat i's threshold is i. Frozen
                weights rank at +-inf whatever their scores, so the same holds among the unfrozen ones;
    annealed:   scores = +1 where kept, -1 where pruned (hard_mask is scores > 0).
The model is returned in eval mode, where both methods use hard_mask(): its forward equals the exported one's.

Probe: at export the model's output on a seeded probe input is hashed (SHA-256 of the float32 output) and a
small sample is kept, so `sltlab inspect --verify` can rebuild the model and check it bit for bit (same
torch build and CPU kind; on another machine the sample shows how far apart the numerics are).

Folded sources (`ModelConfig.fold`, see sltlab.nn.transformer): the spec in the header records the folding (fold
and mask_sharing appear in spec.model only when the model is folded, so unfolded tickets keep their bytes), and
loading regenerates one copy of the random weights per stage. With mask_sharing "shared" the blocks of a stage hold
one Supermask, stored once under the name of the stage's first block; an alias of a tensor (a dense folded run's
tied weights) is stored once as a float, under its first name in the state dict.

Nothing here unpickles: the header is JSON, tensors are raw little-endian arrays.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sltlab.errors import ArtifactError, SltlabError
from sltlab.nn.init import canonical_name
from sltlab.runs.store import atomic_write_bytes
from sltlab.tickets.spec import ModelSpec, build_model, check_size, param_shapes
from sltlab.tickets.supermask import Supermask, frozen_pattern, supermasks

MAGIC = b"SLTICKT\x00"
FORMAT_VERSION = 2  # the newest version this sltlab reads; it writes 1 unless a mask variant needs 2
_PLAIN_VERSION = 1
_PREFIX = struct.Struct("<8sHHI")
_DIGEST_LEN = 32
MASK_CODER = "bernoulli-range-v1"
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROBE_SAMPLE = 32
_MAX_HEADER = 64 * 1024 * 1024
_MAX_ELEMENTS = 1 << 34


@dataclass
class TicketParts:
    """A decoded artifact: everything needed to rebuild the model, nothing built yet."""

    spec: ModelSpec
    masks: dict[str, torch.Tensor]
    floats: dict[str, torch.Tensor]
    probe: dict[str, Any]
    header: dict[str, Any]
    sizes: dict[str, int] = field(default_factory=dict)
    coats: dict[str, torch.Tensor] = field(default_factory=dict)  # multicoated layers: coat count per weight (uint8)
    version: int = _PLAIN_VERSION


# -- entropy coding of binary masks ------------------------------------------------------------------------
def _bernoulli(p: float):  # noqa: ANN202 - constriction's model type has no stub
    import constriction

    return constriction.stream.model.Bernoulli(p, perfect=False)


def encode_masks(masks: list[torch.Tensor]) -> tuple[bytes, list[int]]:
    """Range-code boolean masks (row-major) into one stream, each under its own static Bernoulli(ones / n).

    One stream, not one per tensor, so the coder's flush (up to two 32-bit words) is paid once per file and
    small tensors cost their entropy too. Constant masks (all 0 or all 1) cost nothing.
    Returns (bytes, ones per mask)."""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    counts = []
    for mask in masks:
        flat = mask.reshape(-1).to(torch.bool).numpy()
        n, ones = flat.size, int(flat.sum())
        counts.append(ones)
        if ones not in (0, n):
            enc.encode(flat.astype(np.int32), _bernoulli(ones / n))
    data = enc.get_compressed().astype("<u4").tobytes() if not enc.is_empty() else b""
    return data, counts


def decode_masks(data: bytes, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Inverse of encode_masks for masks of (n, ones); checks each decoded count. Returns flat bool masks."""
    import constriction

    if len(data) % 4:
        raise ArtifactError("the mask stream is not a whole number of 32-bit words; the file is corrupted")
    floor = sum(n * binary_entropy(ones / n) for n, ones in sizes if n)
    if 8 * len(data) + 64 < 0.5 * floor:  # refuse absurd claims before decoding many symbols from nothing
        raise ArtifactError("the mask stream is far shorter than its masks need; the file is corrupted")
    out = []
    try:
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        for n, ones in sizes:
            if ones in (0, n):
                out.append(torch.full((n,), ones == n, dtype=torch.bool))
                continue
            sym = torch.from_numpy(np.asarray(dec.decode(_bernoulli(ones / n), n), dtype=np.int32) != 0)
            if int(sym.sum()) != ones:
                raise ArtifactError(
                    "a decoded mask has the wrong number of kept weights; the file is corrupted"
                )
            out.append(sym)
    except ArtifactError:
        raise
    except Exception as err:  # the Rust side raises assorted types on garbage
        raise ArtifactError(
            f"the mask stream does not decode ({type(err).__name__}); the file is corrupted"
        ) from None
    return out


def encode_mask(mask: torch.Tensor) -> tuple[bytes, int]:
    """One mask on its own stream (benchmarks, tests). Returns (bytes, ones)."""
    data, counts = encode_masks([mask])
    return data, counts[0]


def decode_mask(data: bytes, n: int, ones: int) -> torch.Tensor:
    """Inverse of encode_mask: a flat bool tensor of n elements."""
    return decode_masks(data, [(n, ones)])[0]


def binary_entropy(p: float) -> float:
    """H(p) in bits: the information-theoretic cost per weight of a mask of density p under a static model."""
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


# -- probe --------------------------------------------------------------------------------------------------
def probe_input(spec: ModelSpec, seed: int = 1234) -> torch.Tensor:
    """A small seeded input the architecture accepts: token ids for LMs/classifiers, floats for mha/stack."""
    g = torch.Generator().manual_seed(seed)
    cfg = spec.model
    T = max(1, min(32, cfg.max_len))
    if spec.arch in ("causal-lm", "encoder-classifier"):
        return torch.randint(0, cfg.vocab_size, (2, T), generator=g)
    return torch.randn(2, T, cfg.d_model, generator=g)


@torch.no_grad()
def probe_output(model: nn.Module, spec: ModelSpec, seed: int = 1234) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        out = model(probe_input(spec, seed))
    finally:
        model.train(was_training)
    if isinstance(out, tuple | list):
        out = out[0]
    return out.detach().to(torch.float32).contiguous()


def _tensor_sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _probe_record(model: nn.Module, spec: ModelSpec, seed: int = 1234) -> dict[str, Any]:
    out = probe_output(model, spec, seed)
    sample = out.reshape(-1)[:PROBE_SAMPLE].contiguous().view(torch.uint8).numpy().tobytes()
    return {
        "seed": seed,
        "shape": list(out.shape),
        "sha256": _tensor_sha(out),
        "sample": base64.b64encode(sample).decode("ascii"),
    }


def _sample_from_text(text: str) -> torch.Tensor:
    """The probe sample: base64 of little-endian float32 values."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return torch.empty(0)
    raw = raw[: len(raw) // 4 * 4]
    return torch.frombuffer(bytearray(raw), dtype=torch.float32) if raw else torch.empty(0)


# -- export -------------------------------------------------------------------------------------------------
def _bits_equal(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """Same shape, dtype and bytes (-0.0 != 0.0, NaNs compare by payload), as a bit-exact rebuild needs."""
    if a is None or a.shape != b.shape or a.dtype != b.dtype:
        return False
    return a.numel() == 0 or torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8),
        b.detach().cpu().contiguous().reshape(-1).view(torch.uint8),
    )


def stored_supermasks(model: nn.Module) -> dict[str, Supermask]:
    """Module name -> Supermask, each Supermask once (under its first module): the masks a ticket stores. A folded
    model with shared masks has one per stage; every other model one per masked module, as supermasks() gives."""
    seen: set[int] = set()
    out = {}
    for name, sm in supermasks(model).items():
        if id(sm) not in seen:
            seen.add(id(sm))
            out[name] = sm
    return out


def weights_checksum(state: dict[str, torch.Tensor], skip: set[str]) -> str:
    """SHA-256 over the regenerated tensors of a state dict (name, dtype, shape and bytes, in name order): every
    tensor but the scores and the stored free floats. Recorded at export (`.slt` and Hugging Face tickets alike) and
    checked at load: a seed edited in a file (its checksum recomputed), or a torch build that draws other numbers
    from the same seed, gives other weights, and the ticket is refused instead of loading a different model."""
    h = hashlib.sha256()
    for name in sorted(state):
        if name in skip or name.endswith(".scores"):
            continue
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _free_floats(model: nn.Module, spec: ModelSpec,
                 fresh: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """State tensors that a fresh build from the spec does not reproduce bit for bit (scores excluded). A tensor
    the state dict lists under several names (folded, tied weights) counts once, under its first name."""
    fresh = build_model(spec).state_dict() if fresh is None else fresh
    out = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        if name.endswith(".scores"):
            continue
        key = (t.data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            continue
        seen.add(key)
        if not t.is_floating_point():
            raise ArtifactError(f"tensor {name} has dtype {t.dtype}; only float tensors can be stored")
        if not _bits_equal(fresh.get(name), t):
            out[name] = t.detach().cpu().contiguous()
    missing = set(fresh) - set(model.state_dict())
    if missing:
        raise ArtifactError(
            f"the model lacks tensors its spec builds: {sorted(missing)[:5]}; spec and model disagree"
        )
    return out


def export_ticket(
    model: nn.Module,
    spec: ModelSpec,
    path: str | Path | None = None,
    floats: str = "float32",
    probe_seed: int = 1234,
) -> bytes:
    """Encode `model` (built from `spec`, masks set by its scores) as an artifact; write it atomically to
    `path` if given. floats: float32 (bit-exact) | float16 | bfloat16 (exact to those values).
    Returns the artifact's bytes."""
    if floats not in FLOAT_DTYPES:
        from sltlab.errors import ConfigError

        raise ConfigError("floats", f"unknown float format {floats!r}", " | ".join(FLOAT_DTYPES))
    model = model.cpu()
    sms = stored_supermasks(model)
    for name, sm in sms.items():
        if sm.is_plain and spec.mask is not None and not spec.mask.is_plain:
            raise ArtifactError(f"mask {name!r} is a plain supermask but the spec asks for coats or frozen parts; "
                                "export the model with the spec it was built from")
    stream, mask_entries = code_supermasks(sms, spec)
    version = _PLAIN_VERSION if all(sm.is_plain for sm in sms.values()) else FORMAT_VERSION
    payload = bytearray(stream)
    fresh = build_model(spec).state_dict()
    free = _free_floats(model, spec, fresh)
    float_entries = []
    stored: dict[str, torch.Tensor] = {}
    for name, t in free.items():
        q = t.to(FLOAT_DTYPES[floats])
        raw = q.reshape(-1).view(torch.uint8).numpy().tobytes() if q.numel() else b""
        float_entries.append(
            {
                "name": name,
                "shape": list(t.shape),
                "dtype": floats,
                "orig_dtype": str(t.dtype).removeprefix("torch."),
                "offset": len(payload),
                "nbytes": len(raw),
            }
        )
        payload += raw
        stored[name] = q.to(t.dtype)
    # The reference output is that of the model *as stored*: with fp16 floats, the rounded values.
    state = model.state_dict()
    saved = {k: state[k].detach().clone() for k in stored}
    try:
        with torch.no_grad():
            for k, v in stored.items():
                state[k].copy_(v)
        probe = _probe_record(model, spec, probe_seed)
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                state[k].copy_(v)
    from sltlab.version import __version__

    header = {
        "spec": spec.to_dict(),
        "masks": mask_entries,
        "mask_stream": {"coder": MASK_CODER, "offset": 0, "nbytes": len(stream)},
        "floats": float_entries,
        "probe": probe,
        "weights_sha256": weights_checksum(fresh, set(free)),
        "payload_bytes": len(payload),
        "sltlab_version": __version__,
        "torch_version": torch.__version__,
    }
    hbytes = zlib.compress(json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8"), 9)
    body = _PREFIX.pack(MAGIC, version, 0, len(hbytes)) + hbytes + bytes(payload)
    blob = body + hashlib.sha256(body).digest()
    if path is not None:
        atomic_write_bytes(path, blob)
    return blob


def code_supermasks(sms: dict[str, Supermask], spec: Any) -> tuple[bytes, list[dict[str, Any]]]:
    """Every supermask's mask range-coded in turn into one stream, and the mask table that describes it: per
    mask its name and shape, then "ones" (plain) or "coats", "frozen" and the (n, ones) of each coat's stream.

    The one layout of coded masks, shared by the `.slt` artifact and Hugging Face ticket folders (tickets/hf.py).
    `spec` regenerates frozen parts (a ModelSpec, or anything with `.mask` and `.init`)."""
    sequences: list[torch.Tensor] = []
    layouts: list[tuple[str, Supermask, int, int]] = []  # name, supermask, first sequence, number of sequences
    for name, sm in sms.items():
        seqs = [sm.hard_mask().bool()] if sm.is_plain else _variant_sequences(name, sm, spec)
        layouts.append((name, sm, len(sequences), len(seqs)))
        sequences += seqs
    stream, counts = encode_masks(sequences)
    entries: list[dict[str, Any]] = []
    for name, sm, start, n_seq in layouts:
        entry: dict[str, Any] = {"name": name, "shape": list(sm.scores.shape)}
        if sm.is_plain:
            entry["ones"] = counts[start]
        else:
            entry["coats"] = sm.coats
            entry["frozen"] = sm.unfrozen is not None
            entry["streams"] = [[sequences[j].numel(), counts[j]] for j in range(start, start + n_seq)]
        entries.append(entry)
    return stream, entries


def decode_supermasks(entries: list[tuple[str, tuple[int, ...], list[tuple[int, int]]]], data: bytes, spec: Any,
                      plain: bool, source: str) -> dict[str, torch.Tensor]:
    """Inverse of code_supermasks once the mask table is checked: `entries` = (name, shape, [(n, ones) per
    stream]). Name -> bool mask (plain) or per-weight coat count (uint8, variants)."""
    decoded = iter(decode_masks(data, [pair for _, _, pairs in entries for pair in pairs]))
    out: dict[str, torch.Tensor] = {}
    for name, shape, pairs in entries:
        seqs = [next(decoded) for _ in pairs]
        out[name] = seqs[0].reshape(shape) if plain else _coat_count_from_streams(spec, name, shape, seqs, source)
    return out


def _variant_sequences(name: str, sm: Supermask, spec: ModelSpec) -> list[torch.Tensor]:
    """The boolean streams that code a variant layer: coat i over the unfrozen weights coat i-1 keeps. Refuses a
    supermask whose coats or frozen parts are not what its spec regenerates: the decoder could not rebuild it."""
    cfg = spec.mask
    frozen = cfg is not None and (cfg.frozen_pruned > 0 or cfg.frozen_kept > 0)
    if cfg is None or cfg.is_plain or sm.coats != cfg.coats or frozen != (sm.unfrozen is not None):
        raise ArtifactError(f"mask {name!r} ({sm.coats} coats, {'' if sm.unfrozen is not None else 'not '}frozen) "
                            "disagrees with the spec's mask settings; export the model with the spec it was built from")
    count = sm.coat_count().reshape(-1)
    pos = torch.arange(count.numel())
    if frozen:
        assert cfg is not None and sm.frozen_pruned is not None and sm.frozen_kept is not None
        pruned, kept = frozen_pattern(cfg.frozen_seed, canonical_name(name), tuple(sm.scores.shape),
                                      cfg.frozen_pruned, cfg.frozen_kept, cfg.keep)
        if not (torch.equal(pruned, sm.frozen_pruned) and torch.equal(kept, sm.frozen_kept)):
            raise ArtifactError(f"mask {name!r}: its frozen parts are not the ones its spec draws; the supermask was "
                                "altered after it was built and cannot be stored exactly")
        if bool((count[kept.reshape(-1)] != sm.coats).any()) or bool((count[pruned.reshape(-1)] != 0).any()):
            raise ArtifactError(f"mask {name!r}: its frozen weights are not kept/pruned as its frozen pattern says")
        pos = (~(pruned | kept)).reshape(-1).nonzero().squeeze(1)
    out = []
    for i in range(1, sm.coats + 1):
        inside = count[pos] >= i
        out.append(inside)
        pos = pos[inside]
    return out


# -- decode -------------------------------------------------------------------------------------------------
def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ArtifactError(
            f"malformed ticket header: {what}; the file is corrupted or not written by sltlab"
        )


def _shape(entry: dict[str, Any], where: str, need: Callable[[bool, str], None] | None = None) -> tuple[int, ...]:
    need = need or _need
    shape = entry.get("shape")
    need(
        isinstance(shape, list) and len(shape) <= 8
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape),
        f"{where} has a bad shape",
    )
    need(math.prod(shape) <= _MAX_ELEMENTS, f"{where} is implausibly large")
    return tuple(shape)


MaskEntry = tuple[str, tuple[int, ...], list[tuple[int, int]]]


def parse_mask_table(table: Any, cfg: Any, need: Callable[[bool, str], None],
                     shapes: dict[str, tuple[int, ...]] | None = None, version: int = FORMAT_VERSION
                     ) -> list[MaskEntry]:
    """The one reader of a coded mask table (`.slt` header, Hugging Face ticket.json), checked before a single
    mask is decoded: each entry names a distinct masked layer, with the shape the model gives it (`shapes`: layer
    name -> weight shape, from the spec or the rebuilt model), and counts that fit: "ones" per plain mask, or
    "coats", "frozen" and (n, ones) per coat's stream for the variants of `cfg` (a SupermaskConfig or None). So a
    few bytes of file cannot declare masks larger than the model (constant masks cost no bytes to store).
    `need(cond, what)` raises the caller's error. Returns [(name, shape, [(n, ones) per stream])]."""
    need(isinstance(table, list), "the mask table is not a list")
    variant = cfg is not None and not cfg.is_plain
    frozen = cfg is not None and (cfg.frozen_pruned > 0 or cfg.frozen_kept > 0)
    entries: list[MaskEntry] = []
    names: set[str] = set()
    for i, e in enumerate(table):
        need(isinstance(e, dict) and isinstance(e.get("name"), str), f"mask entry {i} has no name")
        where = f"mask {e['name']!r}"
        need(e["name"] not in names, f"{where} is listed twice")
        names.add(e["name"])
        shape = _shape(e, where, need)
        if shapes is not None:
            need(e["name"] in shapes, f"{where} is not a masked layer of the model")
            need(tuple(shapes[e["name"]]) == shape, f"{where} has shape {list(shape)}, the model's layer "
                 f"{list(shapes[e['name']])}")
        n = math.prod(shape)
        need(("streams" in e) == variant,
             f"{where} is coded {'plain' if variant else 'as coats'}, which its mask settings contradict")
        if not variant:
            ones = e.get("ones")
            need(_count_ok(ones, n), f"{where} has a bad count")
            entries.append((e["name"], shape, [(n, ones)]))
            continue
        need(version >= 2, f"{where} uses mask variants, which format version {version} cannot hold")
        streams = e.get("streams")
        need(isinstance(streams, list) and e.get("coats") == cfg.coats == len(streams) and e.get("frozen") == frozen,
             f"{where} disagrees with its mask settings' coats or frozen parts")
        pairs: list[tuple[int, int]] = []
        for j, pair in enumerate(streams):
            ok = isinstance(pair, list) and len(pair) == 2 and _count_ok(pair[0], n) and _count_ok(pair[1], pair[0])
            need(ok and (j == 0 or pair[0] == pairs[-1][1]), f"{where} has a bad count in coat {j + 1}")
            pairs.append((pair[0], pair[1]))
        entries.append((e["name"], shape, pairs))
    return entries


def masked_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Layer name -> weight shape of every layer of the spec's architecture that can carry a mask (built on the meta
    device: nothing allocated)."""
    return {k[: -len(".weight")]: v for k, v in param_shapes(spec).items() if k.endswith(".weight") and len(v) >= 2}


def _slice(payload: bytes, entry: dict[str, Any], where: str) -> bytes:
    off, nb = entry.get("offset"), entry.get("nbytes")
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (off, nb))
    _need(ok and off + nb <= len(payload), f"{where} points outside the payload")
    return payload[off : off + nb]


def decode_ticket(blob: bytes, source: str = "ticket") -> TicketParts:
    """Check and decode an artifact fully in memory (no model is built). ArtifactError on any defect."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ArtifactError(f"{source}: expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _PREFIX.size + _DIGEST_LEN:
        if not MAGIC.startswith(blob[: len(MAGIC)]):
            raise ArtifactError(f"{source} is not an sltlab ticket (wrong magic bytes; expected a .slt file)")
        raise ArtifactError(f"{source} is truncated: {len(blob)} bytes is shorter than any ticket")
    magic, version, _reserved, hlen = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise ArtifactError(f"{source} is not an sltlab ticket (wrong magic bytes; expected a .slt file)")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{source} has format version {version}, newer than this sltlab reads "
            f"(<= {FORMAT_VERSION}); upgrade sltlab to load it"
        )
    if version < 1:
        raise ArtifactError(f"{source} has an invalid format version {version}; the file is corrupted")
    body, digest = blob[:-_DIGEST_LEN], blob[-_DIGEST_LEN:]
    if hashlib.sha256(body).digest() != digest:
        if _PREFIX.size + hlen + _DIGEST_LEN > len(blob):
            raise ArtifactError(
                f"{source} is truncated: its header says {hlen} header bytes but the file is "
                f"{len(blob)} bytes long; re-export or re-copy it"
            )
        raise ArtifactError(
            f"{source} fails its SHA-256 check: the file is corrupted or truncated; re-export it"
        )
    _need(hlen <= min(_MAX_HEADER, len(body) - _PREFIX.size), "header length exceeds the file")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body[_PREFIX.size : _PREFIX.size + hlen], _MAX_HEADER)
        _need(inflater.eof and not inflater.unconsumed_tail, "the header does not inflate completely")
        header = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ArtifactError(f"{source}: malformed ticket header ({err})") from None
    _need(isinstance(header, dict), "the header is not a JSON object")
    payload = body[_PREFIX.size + hlen :]
    _need(header.get("payload_bytes") == len(payload), "payload length disagrees with the header")
    spec = _header_spec(header, source)
    masks_h, floats_h, probe = header.get("masks"), header.get("floats"), header.get("probe")
    _need(
        isinstance(masks_h, list) and isinstance(floats_h, list) and isinstance(probe, dict),
        "missing masks/floats/probe tables",
    )
    sizes = {"header": _PREFIX.size + hlen, "masks": 0, "floats": 0, "checksum": _DIGEST_LEN}
    variant = spec.mask is not None and not spec.mask.is_plain
    entries = parse_mask_table(masks_h, spec.mask, _need, masked_shapes(spec), version)
    stream_h = header.get("mask_stream")
    _need(isinstance(stream_h, dict), "no mask stream record")
    _need(stream_h.get("coder") == MASK_CODER, f"the masks use an unknown coder {stream_h.get('coder')!r}")
    data = _slice(payload, stream_h, "the mask stream")
    masks = decode_supermasks(entries, data, spec, not variant, source)
    coats: dict[str, torch.Tensor] = {}
    if variant:
        if spec.mask.coats > 1:  # type: ignore[union-attr]
            coats = dict(masks)
        masks = {name: count.bool() for name, count in masks.items()}
    sizes["masks"] = len(data)
    floats: dict[str, torch.Tensor] = {}
    for i, e in enumerate(floats_h):
        _need(isinstance(e, dict) and isinstance(e.get("name"), str), f"float entry {i} has no name")
        where = f"float tensor {e['name']!r}"
        shape = _shape(e, where)
        dt, odt = e.get("dtype"), e.get("orig_dtype")
        _need(dt in FLOAT_DTYPES and odt in FLOAT_DTYPES, f"{where} has an unknown dtype")
        data = _slice(payload, e, where)
        itemsize = torch.empty((), dtype=FLOAT_DTYPES[dt]).element_size()
        _need(len(data) == math.prod(shape) * itemsize, f"{where} has {len(data)} bytes for {list(shape)}")
        if data:
            t = torch.frombuffer(bytearray(data), dtype=FLOAT_DTYPES[dt])
        else:
            t = torch.empty(0, dtype=FLOAT_DTYPES[dt])
        floats[e["name"]] = t.reshape(shape).to(FLOAT_DTYPES[odt])
        sizes["floats"] += len(data)
    seed = probe.get("seed")
    ok = isinstance(probe.get("sha256"), str) and isinstance(seed, int) and not isinstance(seed, bool)
    _need(ok and 0 <= seed < 2**63 and isinstance(probe.get("sample", ""), str), "the probe record is bad")
    fp = header.get("weights_sha256")
    _need(fp is None or (isinstance(fp, str) and len(fp) == 64), "the weights fingerprint is bad")
    sizes["total"] = len(blob)
    return TicketParts(spec, masks, floats, probe, header, sizes, coats, version)


def _header_spec(header: dict[str, Any], source: str) -> ModelSpec:
    """The header's model spec, checked (the config schema) and within the parameter budget, before anything the
    spec describes is allocated."""
    try:
        spec = ModelSpec.from_dict(header.get("spec"))  # type: ignore[arg-type]
    except SltlabError as err:
        raise ArtifactError(f"{source}: the stored model spec is invalid ({err})") from None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as err:
        raise ArtifactError(
            f"{source}: the stored model spec is invalid ({type(err).__name__}: {err})"
        ) from None
    try:
        check_size(spec, "spec.model")
    except SltlabError as err:
        raise ArtifactError(f"{source}: {err}") from None
    return spec


def _count_ok(v: Any, n: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= n


def _coat_count_from_streams(spec: ModelSpec, name: str, shape: tuple[int, ...], seqs: list[torch.Tensor],
                             source: str) -> torch.Tensor:
    """Inverse of _variant_sequences: the per-weight coat count (uint8), frozen parts regenerated from the spec."""
    cfg = spec.mask
    assert cfg is not None
    n = math.prod(shape)
    count = torch.zeros(n, dtype=torch.uint8)
    pos = torch.arange(n)
    if cfg.frozen_pruned > 0 or cfg.frozen_kept > 0:
        pruned, kept = frozen_pattern(cfg.frozen_seed, canonical_name(name), shape, cfg.frozen_pruned,
                                      cfg.frozen_kept, cfg.keep)
        count[kept.reshape(-1)] = cfg.coats
        pos = (~(pruned | kept)).reshape(-1).nonzero().squeeze(1)
    if seqs[0].numel() != pos.numel():
        raise ArtifactError(f"{source}: mask {name!r} codes {seqs[0].numel()} weights but its regenerated frozen "
                            f"pattern leaves {pos.numel()} unfrozen; the file is corrupted or from another sltlab")
    for i, seq in enumerate(seqs, start=1):
        pos = pos[seq]
        count[pos] = i
    return count.reshape(shape)


def read_ticket(path: str | Path) -> TicketParts:
    """Read and decode a ticket file (nothing built).

    Bounded before the file is read: the prefix and the header (at most 64 MiB inflated) come first; the header's
    payload length must account for the file's length exactly and its spec must be within the parameter budget;
    only then is the rest read, in 1 MiB chunks. A multi-gigabyte file that is not a ticket is refused after a few
    bytes, and one whose header lies is refused before its payload is read."""
    p = Path(path)
    if p.is_dir():
        raise ArtifactError(f"ticket {p} is a directory, not a .slt file")
    if p.exists() and not p.is_file():
        raise ArtifactError(f"ticket {p} is not a regular file (a FIFO or a device?); pass a .slt file")
    if not p.is_file():
        raise ArtifactError(
            f"ticket file {p} does not exist; create one with `sltlab export RUN_ID -o {p.name}`"
        )
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_PREFIX.size)
            if len(head) < _PREFIX.size or head[: len(MAGIC)] != MAGIC:
                decode_ticket(head, source=str(p))  # not a ticket: said from its first bytes, the rest unread
            _, version, _, hlen = _PREFIX.unpack(head)
            if not 1 <= version <= FORMAT_VERSION:
                decode_ticket(head + bytes(_DIGEST_LEN), source=str(p))  # says which version, reads no further
            if _PREFIX.size + hlen + _DIGEST_LEN > size:
                raise ArtifactError(f"{p} is truncated: its header says {hlen} header bytes but the file is {size} "
                                    "bytes long; re-export or re-copy it")
            _check_declared(f, hlen, size, str(p))
            f.seek(0)
            blob = _read_chunks(f, size, str(p))
    except OSError as err:
        raise ArtifactError(f"cannot read ticket {p}: {err.strerror or err}") from None
    return decode_ticket(blob, source=str(p))


def _check_declared(f: Any, hlen: int, size: int, source: str) -> None:
    """Before the payload is read: the header inflates within bounds, accounts for the file's length, and names a
    model within the parameter budget. (The full checks, the checksum first, follow in decode_ticket.)"""
    if hlen > _MAX_HEADER:
        raise ArtifactError(f"{source}: malformed ticket header: header length exceeds {_MAX_HEADER:,} bytes")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(f.read(hlen), _MAX_HEADER)
        header = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return  # decode_ticket says what is wrong once the checksum has been checked
    if not isinstance(header, dict):
        return
    payload = header.get("payload_bytes")
    if isinstance(payload, int) and _PREFIX.size + hlen + payload + _DIGEST_LEN != size:
        raise ArtifactError(f"{source} is {size:,} bytes but its header accounts for "
                            f"{_PREFIX.size + hlen + payload + _DIGEST_LEN:,}: the file is truncated or padded; "
                            "re-export or re-copy it")
    if "spec" in header:
        _header_spec(header, source)


def _read_chunks(f: Any, size: int, source: str) -> bytes:
    """The whole file in 1 MiB reads, refusing one that grows past the length it had when opened."""
    buf = bytearray()
    while chunk := f.read(min(1 << 20, size + 1 - len(buf))):
        buf += chunk
        if len(buf) > size:
            raise ArtifactError(f"{source} grew while it was read; read it once it is complete")
    return bytes(buf)


# -- rebuild ------------------------------------------------------------------------------------------------
@torch.no_grad()
def fix_mask(sm: Supermask, mask: torch.Tensor) -> None:
    """Overwrite a supermask's scores so that hard_mask() equals `mask` exactly (see the module docstring).
    `mask`: boolean, or for a multicoated supermask the coat count per weight."""
    if tuple(mask.shape) != tuple(sm.scores.shape):
        raise ArtifactError(
            f"a stored mask has shape {list(mask.shape)}, the model wants {list(sm.scores.shape)}"
        )
    m = mask.to(sm.scores.dtype)
    sm.scores.copy_(m if sm.method == "edge-popup" else m * 2 - 1)


def build_from_parts(parts: TicketParts, source: str = "ticket") -> nn.Module:
    """Build the spec's model, fix its masks, load its free floats; every check runs before it is returned."""
    try:
        model = build_model(parts.spec)
    except SltlabError as err:
        raise ArtifactError(f"{source}: cannot build the stored model spec ({err})") from None
    sms = stored_supermasks(model)
    if set(sms) != set(parts.masks):
        raise ArtifactError(
            f"{source}: stored masks {sorted(parts.masks)[:3]}... do not match the spec's masked layers "
            f"{sorted(sms)[:3]}...; the file is corrupted or from another model"
        )
    state = model.state_dict()
    expected = parts.header.get("weights_sha256")
    if expected is not None and weights_checksum(state, set(parts.floats)) != expected:
        # tickets exported before the fingerprint existed have none: they load unchecked, as they always did
        raise ArtifactError(
            f"{source}: the weights regenerated from its seed fail their SHA-256 check (exported with torch "
            f"{parts.header.get('torch_version')}, here {torch.__version__}): its seed or spec was edited, or this "
            "torch draws other numbers from the same seed"
        )
    for name, t in parts.floats.items():
        if name not in state or name.endswith(".scores"):
            raise ArtifactError(f"{source}: stored tensor {name!r} is not a tensor of the model")
        if tuple(state[name].shape) != tuple(t.shape) or state[name].dtype != t.dtype:
            raise ArtifactError(
                f"{source}: stored tensor {name!r} has shape {list(t.shape)} {t.dtype}, the model wants "
                f"{list(state[name].shape)} {state[name].dtype}"
            )
    for name, sm in sms.items():
        fix_mask(sm, parts.coats.get(name, parts.masks[name]))
    with torch.no_grad():
        for name, t in parts.floats.items():
            state[name].copy_(t)
    for name, sm in sms.items():
        if name in parts.coats:
            same = torch.equal(sm.coat_count(), parts.coats[name])
        else:
            same = torch.equal(sm.hard_mask().bool(), parts.masks[name])
        if not same:
            raise ArtifactError(
                f"{source}: mask {name!r} could not be reproduced (its keep/threshold setting disagrees "
                "with the stored mask)"
            )
    model.eval()
    return model


def load_ticket(path: str | Path) -> nn.Module:
    """Rebuild the exported model from a ticket file: weights from the seed, stored masks and floats.

    Its forward is bit-identical to the exported model's (same torch build and CPU kind). Any defect raises
    ArtifactError before a model is returned. The model is in eval mode; `sltlab.tickets.supermask.bake` turns
    it into plain weights."""
    parts = read_ticket(path)
    return build_from_parts(parts, str(path))


def verify_parts(parts: TicketParts, source: str = "ticket") -> dict[str, Any]:
    """Rebuild and compare the probe output with the one recorded at export.

    Returns {"bit_identical": bool, "max_abs_diff": over the stored sample (how far apart another machine's
    numerics are), "model": the rebuilt model}."""
    model = build_from_parts(parts, source)
    probe = parts.probe
    out = probe_output(model, parts.spec, int(probe["seed"]))
    sample = _sample_from_text(probe.get("sample", ""))
    got = out.reshape(-1)[: sample.numel()]
    ok = sample.numel() and got.numel() == sample.numel()
    diff = float((got - sample).abs().max()) if ok else float("nan")
    same_shape = list(out.shape) == list(probe.get("shape", []))
    return {
        "bit_identical": same_shape and _tensor_sha(out) == probe["sha256"],
        "max_abs_diff": diff,
        "model": model,
    }
