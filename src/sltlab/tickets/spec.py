"""ModelSpec: everything needed to rebuild a (masked) model from nothing but JSON, and build_model() to do it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

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
        for name, default in RECIPE_DEFAULTS.items():  # likewise the golf recipe's options (GQA, ties, cap)
            if out["model"][name] == default:
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
RECIPE_DEFAULTS: dict[str, Any] = {"n_kv_heads": None, "tie_embeddings": False, "logit_softcap": None}


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
        # A stage's shared weight is a tied weight: with mask_sharing "shared" it gets one Supermask (its first
        # block's, seeded by that block's names); "unshared" blocks carry nn.transformer.OWN_MASK, one each.
        apply_supermask(model, spec.mask)
    return model
