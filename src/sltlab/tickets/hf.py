"""Tickets of Hugging Face models: a folder that rebuilds any transformers model built from a config, bit for bit.

Why a folder and not a `.slt` file: a `.slt` header holds sltlab's own `ModelSpec`, which covers only sltlab's
architectures. A transformers model is described by its own `config.json`, which users already know how to read and
diff, so the ticket keeps it as it is and adds what the search chose::

    config.json          the model's own config (transformers' to_json_string)
    ticket.json          the manifest: model class (and the Auto class that builds it), init spec and seed, mask
                         config, mask table, files with their SHA-256, checksum of the regenerated weights, and
                         the manifest's own SHA-256 over everything else in it
    masks.bin            every mask range-coded in one stream (the `.slt` coder, `artifact.encode_masks`)
    floats.safetensors   the free floats: every tensor a fresh rebuild does not reproduce bit for bit (norm affine,
                         mask scales, a trained head); never a masked weight

No weight values are stored: `load_ticket` rebuilds the model with `AutoModel*.from_config` (the class recorded at
save), overwrites every parameter with `sltlab.nn.init.init_model` from the stored init spec (weights from the seed,
biases 0, norm gains 1), attaches the stored mask config with `apply_supermask`, fixes each mask to the stored one
(`artifact.fix_mask`), loads the free floats, and checks the SHA-256 of the regenerated weights against the one
recorded at save. The random init that `from_config` draws is thrown away (and runs under a forked RNG, so loading
never disturbs the caller's random state).

Why the weights must be the seeded init: a ticket's point is that the weights are a pure function of the seed. A
model whose masked weights are anything else (pretrained, trained) cannot be saved this way: `save_ticket` says so
and points at `save_pretrained`.

Nothing here unpickles: JSON, safetensors and the raw mask stream only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sltlab.errors import ArtifactError, ConfigError, SltlabError
from sltlab.nn.init import InitSpec, init_model
from sltlab.runs.store import atomic_write_bytes
from sltlab.tickets.artifact import (
    MASK_CODER,
    _bits_equal,
    code_supermasks,
    decode_supermasks,
    fix_mask,
    parse_mask_table,
    weights_checksum,
)
from sltlab.tickets.supermask import SupermaskConfig, apply_supermask, supermasks

FORMAT = "sltlab-hf-ticket"
FORMAT_VERSION = 1
MANIFEST = "ticket.json"
CONFIG = "config.json"
MASKS = "masks.bin"
FLOATS = "floats.safetensors"
#: Auto classes tried, in order, for the one whose `from_config` builds the saved model's class.
AUTO_CLASSES: tuple[str, ...] = (
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoModelForMaskedLM",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForSeq2SeqLM",
    "AutoModelForImageClassification",
    "AutoModel",
)
_MAX_MANIFEST = 64 * 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _mask_shim(cfg: SupermaskConfig) -> Any:
    """The artifact coder's variant functions read only `spec.mask`: hand them the mask config alone."""
    return types.SimpleNamespace(mask=cfg)


# -- which class builds the model ------------------------------------------------------------------------------
def _transformers() -> Any:
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a dependency
        raise ConfigError("model", "Hugging Face tickets need transformers", "pip install transformers") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _model_class(class_name: str) -> type:
    """The transformers model class called `class_name`; only PreTrainedModel subclasses are accepted."""
    tf = _transformers()
    cls = getattr(tf, class_name, None) if isinstance(class_name, str) and class_name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel)):
        raise ArtifactError(f"the ticket names model class {class_name!r}, which this transformers "
                            f"({tf.__version__}) does not have; install the transformers version it was saved with")
    return cls


def _auto_class_for(model: nn.Module, config: Any) -> str | None:
    """The first Auto class whose from_config builds exactly type(model) for this config, or None."""
    tf = _transformers()
    for auto_name in AUTO_CLASSES:
        auto = getattr(tf, auto_name, None)
        mapping = getattr(auto, "_model_mapping", None)
        try:
            built = mapping[type(config)] if mapping is not None else None
        except (KeyError, ValueError):
            continue
        if built is type(model):
            return auto_name
    return None


def _build(config: Any, class_name: str, auto_name: str | None, init: InitSpec, cfg: SupermaskConfig) -> nn.Module:
    """from_config (the recorded Auto class, else the class itself) + the seeded init + the mask config."""
    tf = _transformers()
    cls = _model_class(class_name)
    with torch.random.fork_rng(devices=[]):
        if auto_name is not None:
            if auto_name not in AUTO_CLASSES:
                raise ArtifactError(f"the ticket names Auto class {auto_name!r}; expected one of {AUTO_CLASSES}")
            model = getattr(tf, auto_name).from_config(config)
        else:
            model = cls._from_config(config)
        if type(model) is not cls:
            raise ArtifactError(f"{auto_name}.from_config built a {type(model).__name__}, the ticket wants "
                                f"{class_name}; the ticket and this transformers version disagree")
        init_model(model, init)
        apply_supermask(model, cfg)
    return model


# -- save ------------------------------------------------------------------------------------------------------
def _prepare_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError("path", f"{path} exists and is a file", "a new or empty folder for the ticket")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise ConfigError("path", f"{path} is a non-empty folder that holds no ticket",
                          "a new or empty folder (an existing ticket folder is overwritten)")
    path.mkdir(parents=True, exist_ok=True)


def save_ticket(model: nn.Module, path: str | Path, *, init: InitSpec | None = None,
                mask: SupermaskConfig | None = None) -> Path:
    """Save a supermasked transformers model as a ticket folder (see the module docstring); returns the folder.

    init: the InitSpec its weights were drawn with by `init_model` (default: the one recorded on the model, if
    any). mask: the SupermaskConfig given to `apply_supermask` (default: the one it recorded on the model).
    ConfigError when the model is not a transformers model, has no supermask, or its weights are not the seeded
    init; an existing ticket folder is overwritten."""
    tf = _transformers()
    if not isinstance(model, tf.PreTrainedModel):
        raise ConfigError("model", f"a {type(model).__name__} is not a transformers model built from a config",
                          "sltlab.tickets.artifact.export_ticket(model, spec, path) for sltlab's own models")
    init = init if init is not None else getattr(model, "_sltlab_init", None)
    if not isinstance(init, InitSpec):
        raise ConfigError("init", "save_ticket needs the InitSpec the weights were drawn with",
                          "save_ticket(model, path, init=InitSpec(...)) as given to init_model")
    cfg = mask if mask is not None else getattr(model, "_sltlab_supermask", None)
    sms = supermasks(model)
    if not isinstance(cfg, SupermaskConfig) or not sms:
        raise ConfigError("model", "has no supermasks to save", "apply_supermask(model, SupermaskConfig(...)) first")
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ConfigError("model", f"has parameters on {sorted(devices)}; a ticket is written from the CPU",
                          "save_ticket(model.cpu(), ...)")
    class_name = type(model).__name__
    if getattr(tf, class_name, None) is not type(model):
        raise ConfigError("model", f"its class {class_name} is not one transformers exports by that name",
                          "a model class from the transformers package")
    auto_name = _auto_class_for(model, model.config)
    config_bytes = model.config.to_json_string(use_diff=False).encode("utf-8")
    config = type(model.config).from_dict(json.loads(config_bytes))
    model_cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fresh = _build(config, class_name, auto_name, init, cfg)
    fresh_state = fresh.state_dict()
    if set(fresh_state) != set(model_cpu_state):
        extra = sorted(set(model_cpu_state) ^ set(fresh_state))[:3]
        raise ConfigError("mask", f"rebuilding from the config and mask settings gives other tensors ({extra})",
                          "pass the SupermaskConfig given to apply_supermask (mask=...)")
    floats: dict[str, torch.Tensor] = {}
    for name, t in model_cpu_state.items():
        if name.endswith(".scores") or _bits_equal(t, fresh_state[name]):
            continue
        if name.endswith("parametrizations.weight.original"):
            raise ConfigError("init", f"the masked weight {name} is not what {init} draws: a ticket stores no "
                              "weights", "call init_model(model, init) before apply_supermask, pass that init, "
                              "or save a model with trained weights with save_pretrained")
        if not t.is_floating_point():
            raise ConfigError("model", f"tensor {name} has dtype {t.dtype}; only float tensors can be stored",
                              "a model whose state beyond the seed is float")
        floats[name] = t.clone().contiguous()
    for name, sm in sms.items():
        if sm.is_plain != cfg.is_plain:
            raise ConfigError("mask", f"mask {name!r} does not match the SupermaskConfig's variant settings",
                              "pass the SupermaskConfig given to apply_supermask (mask=...)")
    stream, entries = code_supermasks(sms, _mask_shim(cfg))
    from safetensors.torch import save as st_save

    floats_bytes = st_save(floats) if floats else st_save({})
    from sltlab import __version__

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_class": class_name,
        "auto_class": auto_name,
        "init": dataclasses.asdict(init),
        "mask": cfg.to_dict(),
        "masks": entries,
        "mask_coder": MASK_CODER,
        "files": {CONFIG: _sha(config_bytes), MASKS: _sha(stream), FLOATS: _sha(floats_bytes)},
        "weights_sha256": weights_checksum(fresh_state, set(floats)),
        "sltlab_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": tf.__version__,
    }
    manifest["manifest_sha256"] = _sha(_canonical(manifest))
    out = Path(path)
    _prepare_dir(out)
    atomic_write_bytes(out / CONFIG, config_bytes)
    atomic_write_bytes(out / MASKS, stream)
    atomic_write_bytes(out / FLOATS, floats_bytes)
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
    return out


# -- load ------------------------------------------------------------------------------------------------------
def _need(cond: bool, source: str, what: str) -> None:
    if not cond:
        raise ArtifactError(f"{source}: {what}; the ticket folder is corrupted or not written by sltlab")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of a ticket folder: its own checksum and every file's SHA-256 verified."""
    root = Path(path)
    source = str(root)
    mf = root / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{source} holds no {MANIFEST}: not a Hugging Face ticket folder "
                            "(write one with sltlab.save_ticket(model, folder))")
    raw = _read(root, MANIFEST, _MAX_MANIFEST, source)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ArtifactError(f"{source}: {MANIFEST} is not valid JSON ({err}); the ticket folder is corrupted") from None
    _need(isinstance(manifest, dict) and manifest.get("format") == FORMAT, source, f"{MANIFEST} is not an sltlab "
          "Hugging Face ticket manifest")
    version = manifest.get("version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ArtifactError(f"{source} has ticket format version {version}, newer than this sltlab reads "
                            f"(<= {FORMAT_VERSION}); upgrade sltlab to load it")
    _need(version == FORMAT_VERSION, source, f"bad format version {version!r}")
    claimed = manifest.get("manifest_sha256")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if claimed != _sha(_canonical(body)):
        raise ArtifactError(f"{source}: {MANIFEST} fails its SHA-256 check: the manifest was altered or corrupted")
    files = manifest.get("files")
    _need(isinstance(files, dict) and set(files) == {CONFIG, MASKS, FLOATS}, source, "the file table is bad")
    for name, digest in files.items():
        f = root / name
        if not f.is_file():
            raise ArtifactError(f"{source} lacks {name}; copy the whole ticket folder")
        if _file_sha(f, source) != digest:
            raise ArtifactError(f"{source}: {name} fails its SHA-256 check: the file is corrupted or was edited")
    return manifest


def _file_sha(path: Path, source: str) -> str:
    """SHA-256 of a file read in 1 MiB chunks (never whole in memory)."""
    from sltlab.paths import sha256_file

    try:
        return sha256_file(path)
    except OSError as err:
        raise ArtifactError(f"{source}: cannot read {path.name} ({err.strerror or err})") from None


def _decode_masks(manifest: dict[str, Any], data: bytes, cfg: SupermaskConfig, shapes: dict[str, tuple[int, ...]],
                  source: str) -> dict[str, torch.Tensor]:
    """Name -> bool mask (plain) or coat count (variants), from the mask table (checked against the rebuilt model's
    masked layers before anything is decoded: artifact.parse_mask_table, the `.slt` reader's) and the stream."""
    _need(manifest.get("mask_coder") == MASK_CODER, source, "the mask table is bad")
    entries = parse_mask_table(manifest.get("masks"), cfg, lambda ok, what: _need(ok, source, what), shapes)
    out = decode_supermasks(entries, data, _mask_shim(cfg), cfg.is_plain, source)
    return out if cfg.is_plain or cfg.coats > 1 else {name: count.bool() for name, count in out.items()}


def _read(root: Path, name: str, limit: int, source: str) -> bytes:
    """One file of the ticket folder, refused past `limit` bytes before it is read (a regular file only)."""
    from sltlab.runs.io import read_limited

    try:
        return read_limited(root / name, limit, name)
    except ValueError as err:
        raise ArtifactError(f"{source}: {err}") from None
    except OSError as err:
        raise ArtifactError(f"{source}: cannot read {name} ({err.strerror or err})") from None


def _check_model_size(config: Any, class_name: Any, auto_name: Any, source: str) -> None:
    """The model the config describes, built on the meta device (nothing allocated), within sltlab's parameter
    budget: a config.json with n_embd = 2^22 is refused before a byte of it is allocated."""
    from sltlab.tickets.spec import max_params

    tf = _transformers()
    try:
        with torch.device("meta"):
            if isinstance(auto_name, str) and auto_name in AUTO_CLASSES:
                model = getattr(tf, auto_name).from_config(config)
            else:
                model = _model_class(class_name)._from_config(config)
    except ArtifactError:
        raise
    except Exception as err:  # noqa: BLE001 - transformers raises what the config's values provoke
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ArtifactError(f"{source}: {CONFIG} does not build a model ({type(err).__name__}: {first})") from None
    n = sum({id(t): t.numel() for t in [*model.parameters(), *model.buffers()]}.values())
    if n > max_params():
        raise ArtifactError(f"{source}: {CONFIG} describes a model of {n:,} parameters, more than the "
                            f"{max_params():,} sltlab builds (SLTLAB_MAX_PARAMS raises it)")


def load_ticket(path: str | Path) -> nn.Module:
    """Rebuild a transformers model from a ticket folder written by `save_ticket`: weights from the seed, stored
    masks and free floats, every checksum verified. Returns the supermasked model in eval mode (its forward
    equals the saved model's, bit for bit, on the same torch build and CPU kind); ArtifactError on any defect."""
    root = Path(path)
    source = str(root)
    manifest = read_manifest(root)
    tf = _transformers()
    try:
        config_dict = json.loads(_read(root, CONFIG, _MAX_MANIFEST, source).decode("utf-8"))
        _need(isinstance(config_dict, dict) and isinstance(config_dict.get("model_type"), str), source,
              f"{CONFIG} names no model_type")
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        config = CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{source}: {CONFIG} is not a config this transformers reads ({err})") from None
    try:
        init = InitSpec(**manifest["init"])
        cfg = SupermaskConfig(**manifest["mask"])
    except (SltlabError, TypeError, KeyError) as err:
        raise ArtifactError(f"{source}: the stored init or mask settings are invalid ({err})") from None
    class_name, auto_name = manifest.get("model_class"), manifest.get("auto_class")
    _need(isinstance(class_name, str) and (auto_name is None or isinstance(auto_name, str)), source,
          "the model class is not named")
    _check_model_size(config, class_name, auto_name, source)
    model = _build(config, class_name, auto_name, init, cfg)
    sms = supermasks(model)
    n_weights = sum(sm.scores.numel() for sm in sms.values())
    # a coded mask costs about H(p) <= 1 bit per weight of each coat's stream: 2 bits is a generous bound
    stream = _read(root, MASKS, n_weights // 4 * max(1, cfg.coats) + 4096, source)
    masks = _decode_masks(manifest, stream, cfg, {k: tuple(sm.scores.shape) for k, sm in sms.items()}, source)
    if set(sms) != set(masks):
        raise ArtifactError(f"{source}: stored masks {sorted(masks)[:3]} do not match the rebuilt model's masked "
                            f"layers {sorted(sms)[:3]}; the ticket is from another model or transformers version")
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    try:
        floats = st_load(_read(root, FLOATS, state_bytes + _MAX_MANIFEST, source))
    except (SafetensorError, ValueError) as err:
        raise ArtifactError(f"{source}: {FLOATS} does not parse ({err})") from None
    state = model.state_dict()
    for name, t in floats.items():
        if name not in state or name.endswith(".scores") or name.endswith("parametrizations.weight.original"):
            raise ArtifactError(f"{source}: stored tensor {name!r} is not a free float of the model")
        if tuple(state[name].shape) != tuple(t.shape) or state[name].dtype != t.dtype:
            raise ArtifactError(f"{source}: stored tensor {name!r} is {list(t.shape)} {t.dtype}, the model wants "
                                f"{list(state[name].shape)} {state[name].dtype}")
    if weights_checksum(state, set(floats)) != manifest.get("weights_sha256"):
        raise ArtifactError(f"{source}: the regenerated weights fail their SHA-256 check (saved with torch "
                            f"{manifest.get('torch_version')}, transformers {manifest.get('transformers_version')}; "
                            f"here {torch.__version__}, {tf.__version__}): the seeded init differs")
    for name, sm in sms.items():
        fix_mask(sm, masks[name])
    with torch.no_grad():
        for name, t in floats.items():
            state[name].copy_(t)
    for name, sm in sms.items():
        got = sm.coat_count() if masks[name].dtype == torch.uint8 else sm.hard_mask().bool()
        if not torch.equal(got, masks[name]):
            raise ArtifactError(f"{source}: mask {name!r} could not be reproduced (its keep setting disagrees with "
                                "the stored mask)")
    model._sltlab_init = init
    model.eval()
    return model
