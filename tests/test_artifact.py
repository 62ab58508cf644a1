"""Ticket artifacts: bit-exact round trips, near-entropy mask coding, clear errors for every damaged file."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sltlab
import sltlab.tickets.artifact as art
from sltlab.cli import main as cli_main
from sltlab.errors import ArtifactError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.runs.store import Store
from sltlab.tickets.checkpoint import save_checkpoint
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, get_masks

GOLF_FREE = ("*attn_scale", "*mlp_scale", "logit_scale")


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Stand-in for a search: move every trainable tensor (scores, scales, affine) off its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    model.eval()


def lm_spec(
    method: str = "edge-popup",
    scope: str = "layer",
    keep: float = 0.3,
    norm: str = "pre-ln+affine",
    scales: bool = True,
) -> ModelSpec:
    cfg = ModelConfig(
        d_model=16,
        n_heads=2,
        n_layers=2,
        vocab_size=40,
        max_len=24,
        residual_scales=scales,
        norm=NormSpec.parse(norm),
    )
    mask = SupermaskConfig(
        method=method,
        keep=keep,
        scope=scope,
        scale="head" if scales else "none",  # type: ignore
        train_norm=True,
        free=GOLF_FREE if scales else (),
        seed=5,
    )
    return ModelSpec("causal-lm", cfg, InitSpec(seed=11), mask, {"logit_scale": scales})


def trained(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    model = build_model(spec)
    _perturb(model, seed)
    return model


@pytest.fixture(scope="module")
def ticket() -> tuple[bytes, torch.nn.Module, ModelSpec]:
    spec = lm_spec()
    model = trained(spec)
    return art.export_ticket(model, spec), model, spec


def _out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(x)
    return y[0] if isinstance(y, tuple) else y


# -- round trips -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "scope", "scales", "norm"),
    [
        ("edge-popup", "layer", True, "pre-ln+affine"),
        ("edge-popup", "global", False, "post-ln"),
        ("annealed", "layer", True, "pre-rms"),
        ("annealed", "layer", False, "none"),
    ],
)
def test_round_trip_is_bit_identical(tmp_path, method, scope, scales, norm):
    spec = lm_spec(method, scope, scales=scales, norm=norm)
    model = trained(spec, seed=3)
    path = tmp_path / "t.slt"
    art.export_ticket(model, spec, path)
    loaded = sltlab.load_ticket(path)
    x = torch.randint(0, 40, (3, 24), generator=torch.Generator().manual_seed(9))
    assert torch.equal(_out(model, x), _out(loaded, x))
    assert {k: torch.equal(v, get_masks(loaded)[k]) for k, v in get_masks(model).items()} == {
        k: True for k in get_masks(model)
    }
    parts = art.read_ticket(path)
    assert art.verify_parts(parts)["bit_identical"]
    # nothing the seed regenerates is stored: only scales / affine floats, far fewer than the weights
    n_weights = sum(t.numel() for t in parts.masks.values())
    assert sum(t.numel() for t in parts.floats.values()) < n_weights / 20
    assert not any(k.endswith((".scores", ".original")) for k in parts.floats)


@pytest.mark.parametrize("arch", ["mha", "stack", "encoder-classifier"])
def test_round_trip_other_archs(arch):
    cfg = ModelConfig(
        d_model=8,
        n_heads=2,
        n_layers=2,
        vocab_size=30,
        max_len=16,
        n_outputs=3,
        norm=NormSpec.parse("pre-ln+affine"),
    )
    free = ("head.*",) if arch == "encoder-classifier" else ()
    spec = ModelSpec(
        arch,
        cfg,
        InitSpec(seed=2),
        SupermaskConfig(keep=0.4, scale="layer", train_norm=True, free=free, seed=1),
    )
    model = trained(spec, seed=1)
    blob = art.export_ticket(model, spec)
    rebuilt = art.build_from_parts(art.decode_ticket(blob))
    x = art.probe_input(spec, seed=77)
    assert torch.equal(_out(model, x), _out(rebuilt, x))


def test_dense_model_stores_its_weights_and_round_trips():
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=1, vocab_size=20, max_len=8)
    spec = ModelSpec("causal-lm", cfg, InitSpec(seed=4))
    model = build_model(spec)
    _perturb(model)
    parts = art.decode_ticket(art.export_ticket(model, spec))
    assert not parts.masks and parts.floats
    assert torch.equal(art.probe_output(model, spec), art.probe_output(art.build_from_parts(parts), spec))


def test_fp16_floats_are_exact_to_the_rounded_values():
    spec = lm_spec()
    model = trained(spec, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parts = art.decode_ticket(art.export_ticket(model, spec, floats="float16"))
    assert all(e["dtype"] == "float16" for e in parts.header["floats"])
    state = model.state_dict()
    assert all(torch.equal(before[k], state[k]) for k in before)  # export leaves the model untouched
    for name, t in parts.floats.items():  # every stored float is the original rounded to fp16
        assert torch.equal(t, state[name].to(torch.float16).to(torch.float32))
    assert art.verify_parts(parts)["bit_identical"]  # the probe was recorded on the rounded model


def test_export_is_deterministic(ticket):
    blob, model, spec = ticket
    assert art.export_ticket(model, spec) == blob


# -- mask coding -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.5, 0.3, 0.1, 0.03])
def test_mask_coding_is_near_entropy(density):
    g = torch.Generator().manual_seed(int(density * 1000))
    mask = torch.rand(200_000, generator=g) < density
    data, ones = art.encode_mask(mask)
    p = ones / mask.numel()
    ratio = 8 * len(data) / mask.numel() / art.binary_entropy(p)
    assert ratio <= 1.02, ratio
    assert torch.equal(art.decode_mask(data, mask.numel(), ones), mask)


@pytest.mark.parametrize("value", [True, False])
def test_constant_masks_cost_nothing(value):
    mask = torch.full((7, 5), value)
    data, ones = art.encode_mask(mask)
    assert data == b"" and ones == (35 if value else 0)
    assert torch.equal(art.decode_mask(data, 35, ones).reshape(7, 5), mask)


def test_decoded_count_is_checked():
    mask = torch.rand(5000, generator=torch.Generator().manual_seed(0)) < 0.2
    data, ones = art.encode_mask(mask)
    with pytest.raises(ArtifactError, match="wrong number|does not decode"):
        art.decode_mask(data, 5000, ones + 1)


# -- damaged files -----------------------------------------------------------------------------------------
@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if any model gets built: a damaged file must be refused before construction starts."""
    calls = []
    monkeypatch.setattr(art, "build_model", lambda spec: calls.append(spec) or pytest.fail("model was built"))
    return calls


@pytest.mark.parametrize("keep_fraction", [0.0, 0.001, 0.3, 0.9, 0.999])
def test_truncated_file(tmp_path, ticket, no_build, keep_fraction):
    blob = ticket[0]
    path = tmp_path / "t.slt"
    path.write_bytes(blob[: int(len(blob) * keep_fraction)])
    with pytest.raises(ArtifactError, match="truncated|SHA-256|magic"):
        sltlab.load_ticket(path)


@pytest.mark.parametrize("where", [20, 0.25, 0.5, 0.75, -1])
def test_flipped_byte(ticket, no_build, where):
    blob = bytearray(ticket[0])
    i = where if isinstance(where, int) else int(len(blob) * where)
    blob[i] ^= 0x10
    with pytest.raises(ArtifactError, match="SHA-256") as err:
        art.decode_ticket(bytes(blob), "t.slt")
    assert "corrupted" in str(err.value) and "t.slt" in str(err.value)


def test_wrong_magic(tmp_path, ticket, no_build):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"NOTATICK" + ticket[0][8:])
    with pytest.raises(ArtifactError, match="not an sltlab ticket"):
        sltlab.load_ticket(path)


def test_newer_version(ticket, no_build):
    blob = bytearray(ticket[0])
    struct.pack_into("<H", blob, 8, art.FORMAT_VERSION + 1)
    body = bytes(blob[:-32])
    blob = body + hashlib.sha256(body).digest()  # a well-formed file from the future
    with pytest.raises(ArtifactError, match=rf"format version {art.FORMAT_VERSION + 1}, newer .* upgrade sltlab"):
        art.decode_ticket(blob)


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        sltlab.load_ticket(tmp_path / "nope.slt")


def _reseal(header: dict, payload: bytes) -> bytes:
    """A file whose checksum is right but whose content was altered: tests the checks behind the hash."""
    h = zlib.compress(json.dumps(header).encode())
    body = struct.pack("<8sHHI", art.MAGIC, art.FORMAT_VERSION, 0, len(h)) + h + payload
    return body + hashlib.sha256(body).digest()


def test_checks_behind_the_checksum(ticket):
    parts = art.decode_ticket(ticket[0])
    header, payload = parts.header, ticket[0][parts.sizes["header"] : -32]
    bad_offset = json.loads(json.dumps(header))
    bad_offset["mask_stream"]["offset"] = len(payload) + 5
    bad_coder = json.loads(json.dumps(header))
    bad_coder["mask_stream"]["coder"] = "zip"
    off_by_one = json.loads(json.dumps(header))
    off_by_one["masks"][1]["ones"] += 1
    bad_count = json.loads(json.dumps(header))
    bad_count["masks"][0]["ones"] = 10**9
    bad_spec = json.loads(json.dumps(header))
    bad_spec["spec"]["model"]["d_model"] = -3
    bad_dtype = json.loads(json.dumps(header))
    bad_dtype["floats"][0]["dtype"] = "object"
    cases = [
        (bad_offset, "outside the payload"),
        (bad_count, "bad count"),
        (bad_spec, "spec is invalid"),
        (bad_dtype, "unknown dtype"),
        (bad_coder, "unknown coder"),
        (off_by_one, "wrong number|does not decode"),
    ]
    for h, pattern in cases:
        with pytest.raises(ArtifactError, match=pattern):
            art.decode_ticket(_reseal(h, payload))


def test_a_mask_that_the_spec_cannot_reproduce_is_refused(ticket):
    parts = art.decode_ticket(ticket[0])
    name = next(iter(parts.masks))
    m = parts.masks[name].clone().reshape(-1)
    m[m.nonzero()[0]] = False  # one kept weight fewer than keep allows: edge-popup cannot express it
    parts.masks[name] = m.reshape(parts.masks[name].shape)
    with pytest.raises(ArtifactError, match="could not be reproduced"):
        art.build_from_parts(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    with pytest.raises(ArtifactError):
        art.decode_ticket(data)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_fuzz_mutated_and_resealed(data):
    """Random edits to a real ticket, with the checksum recomputed so the parser itself is exercised."""
    spec = lm_spec(scales=False, norm="pre-ln")
    blob = bytearray(_small_blob(spec))
    n_edits = data.draw(st.integers(1, 8))
    for _ in range(n_edits):
        i = data.draw(st.integers(0, len(blob) - 33))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(blob) - 32))
        blob = blob[:cut] + blob[-32:]
    body = bytes(blob[:-32])
    sealed = body + hashlib.sha256(body).digest()
    try:
        parts = art.decode_ticket(sealed)
        art.build_from_parts(parts)
    except ArtifactError:
        pass


_BLOBS: dict[str, bytes] = {}


def _small_blob(spec: ModelSpec) -> bytes:
    key = spec.to_json()
    if key not in _BLOBS:
        _BLOBS[key] = art.export_ticket(trained(spec), spec)
    return _BLOBS[key]


# -- CLI: export and inspect -------------------------------------------------------------------------------
def test_cli_export_inspect_verify(tmp_path, capsys):
    db = tmp_path / "runs.db"
    spec = lm_spec()
    model = trained(spec, seed=8)
    with Store(db) as store:
        run_id = store.start("lm", {"test": 1}, 0)
        save_checkpoint(store.artifact_dir(run_id) / "ticket.safetensors", model, spec)
        store.finish(run_id, {"val_bpb": 1.0})
    out = tmp_path / "t.slt"
    assert cli_main(["export", run_id[:7], "-o", str(out), "--store", str(db)]) == 0
    assert "wrote" in capsys.readouterr().out
    x = art.probe_input(spec, 5)
    assert torch.equal(_out(model, x), _out(sltlab.load_ticket(out), x))
    assert cli_main(["inspect", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "bits/weight" in text and "H(density)" in text and "bit-identical" in text
    # a ticket whose recorded probe disagrees with the rebuilt model fails verification with exit 1
    parts = art.read_ticket(out)
    header = json.loads(json.dumps(parts.header))
    header["probe"]["sha256"] = "0" * 64
    bad = tmp_path / "bad.slt"
    bad.write_bytes(_reseal(header, out.read_bytes()[parts.sizes["header"] : -32]))
    assert cli_main(["inspect", str(bad), "--verify"]) == 1
    assert "FAILED" in capsys.readouterr().out
    # damaged file: one line on stderr, exit 2
    out.write_bytes(out.read_bytes()[:-5])
    assert cli_main(["inspect", str(out)]) == 2
    assert "sltlab: error:" in capsys.readouterr().err


def test_cli_export_errors(tmp_path, capsys):
    db = tmp_path / "runs.db"
    with Store(db) as store:
        run_id = store.start("lm", {"no": "checkpoint"}, 0)
        store.finish(run_id, {})
    assert cli_main(["export", run_id, "-o", str(tmp_path / "x.slt"), "--store", str(db)]) == 2
    assert "saved no checkpoint" in capsys.readouterr().err
    assert cli_main(["export", "lm-unknown", "-o", str(tmp_path / "x.slt"), "--store", str(db)]) == 2
    assert "no run" in capsys.readouterr().err
