"""ModelSpec: everything needed to rebuild a (masked) model from nothing but JSON, and build_model() to do it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from sltlab.nn.init import InitSpec, init_model, random_norm_affine
from sltlab.nn.theory import AttentionChain, use_paired_mlp
from sltlab.nn.transformer import CausalLM, EncoderClassifier, ModelConfig, NormedAttention, Stack
from sltlab.runs.config import from_dict
from sltlab.tickets.supermask import SupermaskConfig, apply_supermask

Arch = Literal["encoder-classifier", "causal-lm", "mha", "stack", "attention-chain"]
ARCHS: tuple[str, ...] = ("encoder-classifier", "causal-lm", "mha", "stack", "attention-chain")


@dataclass(frozen=True)
class ModelSpec:
    """arch + shape + seeded init + (optional) supermask. `options`: arch extras, e.g. {"logit_scale": true}.

    arch "mha" is a NormedAttention (a bare multi-head attention under the norm spec, no residual); "stack" is
    cfg.n_layers residual blocks over continuous inputs ({"mlp_pairs": u} in options: each block's MLP is the
    theory's PairedMLP with u units per input coordinate, sltlab.nn.theory); "attention-chain" is cfg.n_layers
    bare attentions in a row, no residual (sltlab.nn.theory.AttentionChain). {"random_norm_affine": true}: the
    norms' gain and bias are drawn from the init seed instead of 1 and 0 (sltlab.nn.init.random_norm_affine).
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
        for name, default in RECIPE_DEFAULTS.items():  # likewise the golf recipe's options (GQA, ties, cap, ...)
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
RECIPE_DEFAULTS: dict[str, Any] = {"n_kv_heads": None, "tie_embeddings": False, "logit_softcap": None,
                                   "mlp_mult": None, "qk_norm": False, "embed_norm": False, "positions": "learned",
                                   "rope_base": 10000.0, "scale_groups": "none"}


#: The most parameters a model sltlab builds may have (4 GiB of float32 weights, as many scores again). A bound
#: checked before anything is allocated, so a typo in a config or a crafted artifact cannot take the machine's
#: memory; raise it with SLTLAB_MAX_PARAMS on a machine made for larger models.
MAX_PARAMS = 2**30


def max_params() -> int:
    import os

    text = os.environ.get("SLTLAB_MAX_PARAMS", "")
    return int(text) if text.isdigit() and int(text) > 0 else MAX_PARAMS


def _architecture(spec: ModelSpec) -> nn.Module:
    cfg = spec.model
    if spec.arch == "encoder-classifier":
        return EncoderClassifier(cfg)
    if spec.arch == "causal-lm":
        return CausalLM(cfg, logit_scale=bool(spec.options.get("logit_scale", False)))
    if spec.arch == "mha":
        return NormedAttention(cfg)
    if spec.arch == "attention-chain":
        return AttentionChain(cfg)
    stack = Stack(cfg)
    if spec.options.get("mlp_pairs"):
        use_paired_mlp(stack, cfg, int(spec.options["mlp_pairs"]))
    return stack


def param_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model's state (parameters and buffers) by name with its shape, from an architecture
    built on the meta device: no memory is allocated and no weight is drawn."""
    import torch

    with torch.device("meta"):
        model = _architecture(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}


def param_count(spec: ModelSpec) -> int:
    """Elements of the model's state; a tensor shared by several layers (folded, tied) counts once."""
    import torch

    with torch.device("meta"):
        model = _architecture(spec)
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[id(t)] = t.numel()
    return sum(seen.values())


def check_size(spec: ModelSpec, field: str) -> int:
    """ConfigError naming `field` when the model has more parameters than max_params(); returns the count."""
    from sltlab.errors import ConfigError

    n = param_count(spec)
    if n > max_params():
        raise ConfigError(field, f"the model would have {n:,} parameters, more than the {max_params():,} sltlab "
                          "builds", "smaller sizes (or SLTLAB_MAX_PARAMS=N on a machine made for it)")
    return n


def build_model(spec: ModelSpec) -> nn.Module:
    """Construct the architecture, draw its weights from the seed, attach the supermask if any.

    A folded model (spec.model.fold) allocates one copy of the random block weights per stage. With
    mask_sharing "shared" every block of a stage uses the Supermask of the stage's first block (its scores,
    seeded by that block's names, and its mask), so a stage has one mask; "unshared" gives each block its own."""
    model = _architecture(spec)
    init_model(model, spec.init)
    if spec.options.get("random_norm_affine"):
        random_norm_affine(model, spec.init.seed)
    if spec.mask is not None:
        # A stage's shared weight is a tied weight: with mask_sharing "shared" it gets one Supermask (its first
        # block's, seeded by that block's names); "unshared" blocks carry nn.transformer.OWN_MASK, one each.
        apply_supermask(model, spec.mask)
    return model
