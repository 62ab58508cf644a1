import pytest
import torch

from sltlab.errors import ArtifactError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.tickets.checkpoint import checkpoint_extras, load_checkpoint, save_checkpoint
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, get_masks


def _trained(tiny_cfg):
    spec = ModelSpec("encoder-classifier", tiny_cfg.with_norm(NormSpec.parse("pre-ln+affine")), InitSpec(seed=4),
                     SupermaskConfig(keep=0.3, scale="head", train_norm=True))
    model = build_model(spec)
    with torch.no_grad():  # stand-in for a search: move every trainable tensor
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model.eval(), spec


def test_round_trip_is_bit_identical(tmp_path, tiny_cfg):
    model, spec = _trained(tiny_cfg)
    path = save_checkpoint(tmp_path / "t.safetensors", model, spec, extra={"note": torch.arange(3)})
    loaded, spec2 = load_checkpoint(path)
    assert spec2 == spec
    x = torch.randint(0, 50, (3, 9))
    assert torch.equal(loaded(x), model(x))
    assert all(torch.equal(a, b) for a, b in zip(get_masks(loaded).values(), get_masks(model).values(), strict=True))
    assert torch.equal(checkpoint_extras(path)["note"], torch.arange(3))
    # only trained tensors are stored, never the seeded weights
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert not any(k.endswith(".original") for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)


def test_corruption_is_detected(tmp_path, tiny_cfg):
    model, spec = _trained(tiny_cfg)
    path = save_checkpoint(tmp_path / "t.safetensors", model, spec)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_checkpoint(bad)
    (tmp_path / "trunc.safetensors").write_bytes(bytes(data[:40]))
    with pytest.raises(ArtifactError):
        load_checkpoint(tmp_path / "trunc.safetensors")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


_SAVE_IN_A_PROCESS = r"""
import sys, torch
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.nn.transformer import ModelConfig
from sltlab.tickets.checkpoint import save_checkpoint, save_round_masks
from sltlab.tickets.supermask import SupermaskConfig, get_masks
cfg = ModelConfig(d_model=16, n_heads=2, n_layers=2, vocab_size=50, max_len=16, n_outputs=3,
                  norm=NormSpec.parse("pre-ln+affine"))
spec = ModelSpec("encoder-classifier", cfg, InitSpec(seed=4), SupermaskConfig(keep=0.3, scale="head", train_norm=True))
model = build_model(spec)
save_checkpoint(sys.argv[1] + "/t.safetensors", model, spec, extra={"note": torch.arange(3)})
save_round_masks(sys.argv[1] + "/r.safetensors", [get_masks(model), get_masks(model)])
"""


def test_checkpoint_files_are_byte_identical_across_processes(tmp_path):
    """Equal tensors and spec give equal files, whichever process wrote them (safetensors' metadata order is not
    fixed from one process to the next; the header is rewritten with sorted keys)."""
    import subprocess
    import sys
    from pathlib import Path

    import sltlab

    src = str(Path(sltlab.__file__).resolve().parents[1])
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        subprocess.run([sys.executable, "-c", _SAVE_IN_A_PROCESS, str(tmp_path / name)], check=True,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": src})
    for f in ("t.safetensors", "r.safetensors"):
        blobs = {(tmp_path / n / f).read_bytes() for n in ("a", "b", "c")}
        assert len(blobs) == 1, f
    model, _ = load_checkpoint(tmp_path / "a" / "t.safetensors")
    assert torch.equal(checkpoint_extras(tmp_path / "a" / "t.safetensors")["note"], torch.arange(3))
    from sltlab.tickets.checkpoint import load_round_masks

    assert len(load_round_masks(tmp_path / "a" / "r.safetensors")) == 2
