"""What a PEFT run trained, saved and loaded back; export as a Hugging Face peft adapter or a state-dict diff."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sltlab.errors import ConfigError
from sltlab.runs.store import Store
from sltlab.tasks.glue import get_task
from sltlab.tasks.peft.config import DEFAULT_MASK_DENSITY, MASK_METHODS, PeftConfig
from sltlab.tasks.peft.masks import attach_masks, layernorm_names
from sltlab.tasks.peft.model import fresh_model, pristine
from sltlab.tasks.pretrained import load_pretrained, resolve_model_path
from sltlab.tickets.supermask import set_keep, supermasks

TRAINED = "trained.safetensors"


TRAINED_MASKS = "masks.bin"


TRAINED_MANIFEST = "trained.json"


def _sha_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def trained_tensors(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full tensors that hold a trained scalar (scores excluded: the masks replace them), by name."""
    named = dict(model.named_parameters())
    return {n: named[n].detach().cpu().clone().contiguous() for n, m in masks.items()
            if bool(m.any()) and not n.endswith(".scores")}


def save_run_artifact(model: nn.Module, masks: Mapping[str, torch.Tensor], cfg: PeftConfig,
                      out: Path) -> dict[str, Any]:
    """Write what a run trained to `out` and return what it must store: trained floats, mask bits and bytes.

    stored_floats: the trained scalars (a partial tensor counts its trained entries; the file holds the whole
    tensor, its untrained entries at their pretrained values). mask_bits: the coded size of the masks (the
    ticket artifact coder, `sltlab.tickets.artifact.encode_masks`). stored_bytes = 4 * stored_floats + mask bytes."""
    from safetensors.torch import save as st_save

    from sltlab.runs.store import atomic_write_bytes
    from sltlab.tickets.artifact import encode_masks
    from sltlab.tickets.supermask import get_masks

    tensors = trained_tensors(model, masks)
    data = st_save(tensors)
    files = {TRAINED: _sha_bytes(data)}
    atomic_write_bytes(out / TRAINED, data)
    mask_table: list[dict[str, Any]] = []
    stream = b""
    if supermasks(model):
        binary = get_masks(model)
        stream, ones = encode_masks(list(binary.values()))
        mask_table = [{"name": n, "shape": list(m.shape), "ones": k} for (n, m), k in zip(binary.items(), ones,
                                                                                         strict=True)]
        files[TRAINED_MASKS] = _sha_bytes(stream)
        atomic_write_bytes(out / TRAINED_MASKS, stream)
    stored_floats = sum(int(m.sum()) for n, m in masks.items() if not n.endswith(".scores"))
    n_mask = sum(math.prod(e["shape"]) for e in mask_table)
    manifest = {"format": "sltlab-peft-run", "version": 1, "method": cfg.method, "config": cfg.record(),
                "tensors": sorted(tensors), "masks": mask_table, "files": files}
    atomic_write_bytes(out / TRAINED_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
    return {
        "stored_floats": stored_floats,
        "mask_weights": n_mask,
        "mask_density": sum(e["ones"] for e in mask_table) / n_mask if n_mask else 1.0,
        "mask_bits": 8 * len(stream),
        "stored_bytes": 4 * stored_floats + len(stream),
    }


def _read_run_artifact(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], bytes]:
    from safetensors.torch import load as st_load

    from sltlab.errors import ArtifactError

    mf = folder / TRAINED_MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{folder} holds no {TRAINED_MANIFEST}: the run saved nothing it trained "
                            "(runs from before issue 13 did not); rerun it")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
        files = manifest["files"]
        blobs = {name: (folder / name).read_bytes() for name in files}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{folder}: the run's artifact is unreadable ({err}); rerun it") from None
    for name, digest in files.items():
        if _sha_bytes(blobs[name]) != digest:
            raise ArtifactError(f"{folder}: {name} fails its SHA-256 check; the run's artifact is corrupted")
    return manifest, st_load(blobs[TRAINED]), blobs.get(TRAINED_MASKS, b"")


def load_run_model(store: Store, run_id: str) -> nn.Module:
    """The model a finished peft run ended with, rebuilt from the pretrained model and the run's artifact: its
    dev metrics are those the run recorded, bit for bit. Masked runs come back with their supermasks (fixed to
    the stored masks); `sltlab.tickets.bake` turns them into plain weights."""
    from sltlab.errors import ArtifactError
    from sltlab.tickets.artifact import decode_masks, fix_mask

    rec = store.get(run_id)
    if rec.kind != "peft":
        raise ConfigError("run_id", f"{rec.run_id} is a {rec.kind} run", "the id of a peft run")
    cfg = PeftConfig(**{**rec.config, "fisher_tasks": tuple(rec.config["fisher_tasks"])})
    manifest, tensors, stream = _read_run_artifact(store.artifact_path(rec.run_id))
    model = fresh_model(pristine(cfg.model), get_task(cfg.task).n_outputs, cfg.seed, cfg.pooling)
    if cfg.method in MASK_METHODS:
        attach_masks(model)
        set_keep(model, float(cfg.fraction or DEFAULT_MASK_DENSITY))
        table = manifest.get("masks", [])
        sms = supermasks(model)
        if [e["name"] for e in table] != list(sms):
            raise ArtifactError(f"{rec.run_id}: the stored masks do not match the model's masked layers")
        decoded = decode_masks(stream, [(math.prod(e["shape"]), e["ones"]) for e in table])
        for e, flat in zip(table, decoded, strict=True):
            fix_mask(sms[e["name"]], flat.reshape(e["shape"]))
            if not torch.equal(sms[e["name"]].hard_mask().bool(), flat.reshape(e["shape"])):
                raise ArtifactError(f"{rec.run_id}: mask {e['name']!r} could not be reproduced")
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in tensors.items():
            if n not in named or named[n].shape != t.shape:
                raise ArtifactError(f"{rec.run_id}: stored tensor {n!r} is not a parameter of the model")
            named[n].copy_(t)
    model.eval()
    return model


PEFT_BASE = "sltlab_base.json"


DIFF = "diff.safetensors"


DIFF_MASKS = "masks.safetensors"


def exported_base(folder: str | Path) -> nn.Module:
    """The base model an exported run applies to: the pretrained encoder and the run's initial head (pooling as
    the run had it), as `sltlab_base.json` in the export folder describes it."""
    from sltlab.errors import ArtifactError

    path = Path(folder) / PEFT_BASE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return load_pretrained(info["model_path"], int(info["n_outputs"]), int(info["seed"]),
                               pooling=info["pooling"]).model
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{path} is missing or unreadable ({err}); export the run again") from None


def export_run(store: Store, run_id: str, out: str | Path) -> tuple[str, Path]:
    """Write a finished run for use outside sltlab. ln / ln-fisher: a Hugging Face peft LN-tuning adapter
    (LNTuningConfig over every LayerNorm, full tensors with the untrained scalars at their pretrained values, the
    head as a module to save): `peft.PeftModel.from_pretrained(exported_base(out), out)`. Other methods: a plain
    state-dict diff (`diff.safetensors`, and `masks.safetensors` for masked runs): `load_diff(out)`.
    Returns (what was written, folder)."""
    from sltlab.runs.store import atomic_write_bytes

    rec = store.get(run_id)
    model = load_run_model(store, rec.run_id)
    cfg = PeftConfig(**{**rec.config, "fisher_tasks": tuple(rec.config["fisher_tasks"])})
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    base_info = {"model_path": str(resolve_model_path(None if cfg.model in ("", "default") else cfg.model)),
                 "n_outputs": get_task(cfg.task).n_outputs, "seed": cfg.seed, "pooling": cfg.pooling,
                 "task": cfg.task, "method": cfg.label, "run_id": rec.run_id}
    atomic_write_bytes(folder / PEFT_BASE, json.dumps(base_info, indent=1).encode("utf-8"))
    if cfg.method in ("ln", "ln-fisher"):
        _export_ln_adapter(model, exported_base(folder), folder, base_info["model_path"])
        return "a Hugging Face peft LN-tuning adapter", folder
    from safetensors.torch import save as st_save

    from sltlab.tickets.supermask import bake, get_masks

    manifest, tensors, _ = _read_run_artifact(store.artifact_path(rec.run_id))
    binary = {f"{n}.weight": m.contiguous() for n, m in get_masks(model).items()}
    bake(model)
    state = model.state_dict()
    diff = {n: state[n].clone().contiguous() for n in tensors}
    atomic_write_bytes(folder / DIFF, st_save(diff))
    if binary:
        atomic_write_bytes(folder / DIFF_MASKS, st_save(binary))
    return "a state-dict diff (load it with sltlab.tasks.peft.load_diff)", folder


def _export_ln_adapter(trained: nn.Module, base: nn.Module, folder: Path, model_path: str) -> None:
    try:
        import peft as hf_peft
    except ImportError:
        raise ConfigError("--peft", "writing a peft adapter needs the peft package", "pip install peft") from None
    ln_modules = sorted({n.rsplit(".", 1)[0] for n in layernorm_names(base)})
    pcfg = hf_peft.LNTuningConfig(target_modules=ln_modules, modules_to_save=["head"],
                                  base_model_name_or_path=model_path)
    with warnings.catch_warnings():
        # peft warns that LayerNorm is an "unsupported layer type" of a custom model; LN tuning copies it whole
        warnings.simplefilter("ignore", UserWarning)
        pm = hf_peft.get_peft_model(base, pcfg)
    pm.peft_config["default"].base_model_name_or_path = model_path  # get_peft_model resets it for custom models
    inner = pm.base_model.model
    named = dict(trained.named_parameters())
    with torch.no_grad():
        for mod in ln_modules:
            layer = inner.get_submodule(mod).ln_tuning_layers["default"]
            for leaf, p in layer.named_parameters():
                p.copy_(named[f"{mod}.{leaf}"])
        for leaf, p in inner.head.modules_to_save["default"].named_parameters():
            p.copy_(named[f"head.{leaf}"])
    pm.save_pretrained(str(folder))


def load_diff(folder: str | Path) -> nn.Module:
    """The model of a run exported as a state-dict diff: the base (`exported_base`), the diff's tensors loaded
    over it, and the masks (if any) multiplied into their weights. A plain model in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from sltlab.errors import ArtifactError

    folder = Path(folder)
    model = exported_base(folder)
    try:
        diff = load_file(str(folder / DIFF))
        binary = load_file(str(folder / DIFF_MASKS)) if (folder / DIFF_MASKS).is_file() else {}
    except (OSError, SafetensorError) as err:
        raise ArtifactError(f"{folder}: the diff does not load ({err}); export the run again") from None
    state = model.state_dict()
    with torch.no_grad():
        for n, t in {**diff, **binary}.items():
            if n not in state or state[n].shape != t.shape:
                raise ArtifactError(f"{folder}: {n!r} is not a tensor of the base model")
        for n, t in diff.items():
            state[n].copy_(t)
        for n, m in binary.items():
            state[n].mul_(m.to(state[n].dtype))
    model.eval()
    return model
