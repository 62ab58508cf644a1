"""Rebuild the models a stored run compares (its ticket, its random source, its dense counterpart) and the inputs
they share. This replays runs of the studies, so it lives with them in `tasks/`; `analysis/` stays pure functions
over tensors and records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sltlab.analysis.attention import synthetic_inputs
from sltlab.errors import ConfigError

# -- a stored run's ticket, its random source and its dense counterpart --------------------------------------


@dataclass
class RunModels:
    """The models one run's attention analysis compares, the inputs they share, and what could not be had."""

    models: dict[str, nn.Module]
    inputs: dict[str, torch.Tensor]
    input_source: str
    notes: list[str] = field(default_factory=list)


def approx_target_spec(config: Mapping[str, Any]) -> Any:
    """The target ModelSpec of an approximation run, rebuilt from its stored config (None if it cannot be)."""
    import dataclasses

    from sltlab.tasks.approx import ApproxRun, ApproxStudy

    names = {f.name for f in dataclasses.fields(ApproxStudy)}
    kw = {k: v for k, v in config.items() if k in names and k not in ("search", "store", "out_dir", "construct")}
    kw.update(
        name=str(config.get("study", "approx")),
        heads=(int(config["n_heads"]),),
        widths=(int(config["width"]),),
        variants=(str(config["variant"]),),
        methods=(str(config.get("method", "edge-popup")),),
        seeds=(int(config["seed"]),),
        score_seeds=(int(config.get("score_seed", 0)),),
        # a run records target_norm only when its target's norm is not its own
        target="shared" if "target_norm" in config else "own",
        target_variant=str(config.get("target_norm", "none")),
    )
    try:
        study = ApproxStudy(**kw)
        run = ApproxRun(
            study,
            int(config["n_heads"]),
            str(config["variant"]),
            str(config.get("method", "edge-popup")),
            int(config["width"]),
            int(config["seed"]),
            int(config.get("score_seed", 0)),
        )
        return run.target_spec()
    except (TypeError, ValueError, KeyError):
        return None


def _glue_encoder(config: Mapping[str, Any], artifact_dir: Any, data_dir: Any) -> Any:
    """The run's tokenizer: a tokenizer.json beside its checkpoint, else the one its config names or was
    trained with (the GLUE runner trains WordPiece on the same train subsample and caches it, so this is a
    cache hit when the report runs where the sweep ran)."""
    from pathlib import Path

    import numpy as np

    from sltlab.tasks.glue import load_split
    from sltlab.tasks.tokenize import TokenizerSpec, load_pretrained, make_encoder

    tok_path = Path(artifact_dir) / "tokenizer.json"
    if tok_path.is_file():
        return load_pretrained(str(tok_path))
    if config.get("tokenizer"):
        return load_pretrained(str(config["tokenizer"]))
    if "vocab_size" not in config:
        raise ConfigError("config.vocab_size", "the run's config does not say how its tokenizer was trained")
    train = load_split(str(config["task"]), "train", data_dir, source=str(config.get("source", "local")))
    limit = int(config.get("train_limit") or 0)
    if limit and len(train) > limit:
        rng = np.random.default_rng(int(config.get("data_seed", 0)))
        train = train.subset(np.sort(rng.choice(len(train), limit, replace=False)))
    texts = list(train.texts_a) + (list(train.texts_b) if train.texts_b is not None else [])
    return make_encoder(texts, TokenizerSpec(vocab_size=int(config["vocab_size"])))


def _glue_dev_inputs(
    config: Mapping[str, Any], artifact_dir: Any, max_len: int, vocab: int, n: int, data_dir: Any
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The first n GLUE dev examples encoded with the run's own tokenizer; (None, reason) when that fails."""
    try:
        from sltlab.tasks.glue import load_split

        enc = _glue_encoder(config, artifact_dir, data_dir)
        if enc.vocab_size > vocab:
            return None, f"its tokenizer has {enc.vocab_size} tokens, the model {vocab}"
        split = load_split(str(config["task"]), "dev", data_dir=data_dir, limit=n)
        batch = enc.encode(split.texts_a, split.texts_b, max_len=max_len)
        return batch, f"GLUE {config['task']} dev, first {len(split)} examples"
    except Exception as err:  # noqa: BLE001 - any data problem falls back to synthetic inputs, with the reason
        return None, f"GLUE dev inputs unavailable ({err})"


# A dense GLUE run is the counterpart of a ticket when it agrees on these (the ticket's method options aside).
DENSE_MATCH_KEYS = (
    "task",
    "norm",
    "seed",
    "d_model",
    "n_heads",
    "n_layers",
    "d_ff",
    "vocab_size",
    "max_len",
    "tokenizer",
    "train_limit",
    "data_seed",
)


def run_models(store: Any, rec: Any, n_inputs: int = 128, data_dir: Any = None) -> RunModels:
    """Ticket, random source (the same seeded weights, unmasked) and dense counterpart of a stored run.

    approx runs: the dense counterpart is the run's target module; inputs are Gaussian, like the study's.
    glue runs: the dense counterpart is the finished `method=dense` run with the same task, norm and seed, if
    any; inputs are GLUE dev sentences when the run's tokenizer is at hand, else seeded random token
    sequences. Raises ArtifactError when the run has no checkpoint.
    """
    from dataclasses import replace

    from sltlab.errors import ArtifactError
    from sltlab.tickets.checkpoint import load_checkpoint
    from sltlab.tickets.spec import build_model

    path = store.artifact_path(rec.run_id) / "ticket.safetensors"
    if not path.is_file():
        raise ArtifactError(f"run {rec.run_id} has no checkpoint at {path}; attention needs the ticket")
    ticket, spec = load_checkpoint(path)
    notes: list[str] = []
    # A dense run has no ticket: its own trained model is then the one analysed.
    models: dict[str, nn.Module] = {"model" if rec.config.get("method") == "dense" else "ticket": ticket}
    if spec.mask is not None:
        models["random"] = build_model(replace(spec, mask=None)).eval()
    cfg = rec.config
    seed = int(cfg.get("seed", rec.seed or 0))
    if rec.kind in ("approx", "theory"):
        tspec = approx_target_spec(cfg)
        if tspec is not None:
            models["target"] = build_model(tspec).eval()
        else:
            notes.append("target spec could not be rebuilt from the run's config")
        from sltlab.tasks.approx import random_inputs

        x = random_inputs(seed, n_inputs, int(cfg.get("seq_len", 8)), spec.model.d_model, "analysis")
        return RunModels(models, {"x": x}, f"{n_inputs} Gaussian sequences (seed {seed})", notes)
    if rec.kind == "glue" and cfg.get("method") != "dense":
        for other in store.runs("glue"):
            oc = other.config
            if oc.get("method") == "dense" and all(oc.get(k) == cfg.get(k) for k in DENSE_MATCH_KEYS):
                dpath = store.artifact_path(other.run_id) / "ticket.safetensors"
                if dpath.is_file():
                    models["dense"] = load_checkpoint(dpath)[0]
                    break
        if "dense" not in models:
            notes.append("no finished dense run of the same task, shape, norm and seed (or no checkpoint)")
    m = spec.model
    inputs, why = None, "not a GLUE run"
    if rec.kind == "glue" and "task" in cfg:
        inputs, why = _glue_dev_inputs(cfg, path.parent, m.max_len, m.vocab_size, n_inputs, data_dir)
        if inputs is not None:
            return RunModels(models, inputs, why, notes)
    arch = spec.arch
    if arch in ("mha", "stack"):
        seq = int(cfg.get("seq_len", 8))
        return RunModels(
            models,
            synthetic_inputs(arch, n_inputs, seq, m.d_model, seed=seed),
            f"{n_inputs} Gaussian sequences",
            notes,
        )
    notes.append(f"inputs are random tokens: {why}")
    return RunModels(
        models,
        synthetic_inputs(arch, n_inputs, min(m.max_len, 64), vocab_size=m.vocab_size, seed=seed),
        f"{n_inputs} random token sequences",
        notes,
    )
