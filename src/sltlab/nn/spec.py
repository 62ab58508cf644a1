"""ModelSpec: everything needed to rebuild a (masked) model from nothing but JSON, and build_model() to do it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn
from torch.nn.utils import parametrize

from sltlab.nn.init import InitSpec, init_model
from sltlab.nn.transformer import CausalLM, EncoderClassifier, ModelConfig, NormedAttention, Stack
from sltlab.runs.config import from_dict
from sltlab.tickets.supermask import SupermaskConfig, apply_supermask

Arch = Literal["encoder-classifier", "causal-lm", "mha", "stack"]
ARCHS: tuple[str, ...] = ("encoder-classifier", "causal-lm", "mha", "stack")


@dataclass(frozen=True)
class ModelSpec:
    """arch + shape + seeded init + (optional) supermask. `options`: arch extras, e.g. {"logit_scale": true}.

    arch "mha" is a NormedAttention (a bare multi-head attention under the norm spec, no residual); "stack" is
    cfg.n_layers residual blocks over continuous inputs.
    """

    arch: Arch
    model: ModelConfig
    init: InitSpec = field(default_factory=InitSpec)
    mask: SupermaskConfig | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # Folding fields stay out when they change nothing (unfolded), so older specs keep their JSON and bytes.
        for name, default in FOLD_DEFAULTS.items():
            if not self.model.folded or out["model"][name] == default:
                del out["model"][name]
        if self.mask is not None:
            # Variant options at their defaults stay out, so older specs keep their JSON (and file bytes).
            out["mask"] = self.mask.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return from_dict(cls, data, prefix="spec")

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))


FOLD_DEFAULTS: dict[str, Any] = {"fold": None, "mask_sharing": "unshared"}


def build_model(spec: ModelSpec) -> nn.Module:
    """Construct the architecture, draw its weights from the seed, attach the supermask if any.

    A folded model (spec.model.fold) allocates one copy of the random block weights per stage. With
    mask_sharing "shared" every block of a stage uses the Supermask of the stage's first block (its scores,
    seeded by that block's names, and its mask), so a stage has one mask; "unshared" gives each block its own."""
    cfg = spec.model
    model: nn.Module
    if spec.arch == "encoder-classifier":
        model = EncoderClassifier(cfg)
    elif spec.arch == "causal-lm":
        model = CausalLM(cfg, logit_scale=bool(spec.options.get("logit_scale", False)))
    elif spec.arch == "mha":
        model = NormedAttention(cfg)
    else:
        model = Stack(cfg)
    init_model(model, spec.init)
    if spec.mask is not None:
        tied = _tied_modules(model) if cfg.folded and cfg.mask_sharing == "shared" else {}
        if not tied:
            apply_supermask(model, spec.mask)
        else:
            # Followers are left out of the search (so a global threshold counts a stage's mask once), then
            # take their owner's Supermask module itself.
            apply_supermask(model, dataclasses.replace(spec.mask, exclude=(*spec.mask.exclude, *sorted(tied))))
            modules = dict(model.named_modules())
            for follower, owner in tied.items():
                if parametrize.is_parametrized(modules[owner], "weight"):
                    sm = modules[owner].parametrizations.weight[0]
                    parametrize.register_parametrization(modules[follower], "weight", sm, unsafe=True)
    return model


def _tied_modules(model: nn.Module) -> dict[str, str]:
    """Follower Linear name -> owner Linear name, for every block of a folded Stack that is not its stage's first."""
    out: dict[str, str] = {}
    for prefix, stack in model.named_modules():
        if not isinstance(stack, Stack):
            continue
        head = f"{prefix}.blocks" if prefix else "blocks"
        for i, block in enumerate(stack.blocks):
            owner = stack.stage_owner(i)
            if owner == i:
                continue
            for name, m in block.named_modules():
                if isinstance(m, nn.Linear):
                    out[f"{head}.{i}.{name}"] = f"{head}.{owner}.{name}"
    return out
