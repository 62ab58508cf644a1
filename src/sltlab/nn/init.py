"""Seeded initialisation: every tensor is a pure function of (seed, parameter name, shape, scheme).

The weights of a base network are never stored: generating a parameter draws from its own torch.Generator whose
seed is a SHA-256 of those four things, on the CPU in float32, so the result does not depend on the order in which
parameters are created, on the process, or on the machine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sltlab.errors import ConfigError

Scheme = Literal[
    "kaiming-uniform", "kaiming-normal", "xavier-uniform", "signed-constant", "scaled-signed-constant", "theory",
    "golf",
]
INIT_SCHEMES: tuple[str, ...] = (
    "kaiming-uniform", "kaiming-normal", "xavier-uniform", "signed-constant", "scaled-signed-constant", "theory",
    "golf",
)


@dataclass(frozen=True)
class InitSpec:
    """How the random base network is drawn.

    scheme: kaiming-uniform | kaiming-normal | xavier-uniform | signed-constant | scaled-signed-constant | theory
    gain: multiplies every weight (the init scale; the theory's subset sums depend on it).
      The kaiming schemes use std = gain / sqrt(fan_in) (linear/GELU convention; gain=sqrt(2) gives He's ReLU one).
    density: for scaled-signed-constant, the kept fraction k of the ticket; weights are divided by sqrt(k) so the
      ticket's activations keep their scale (Ramanujan et al. 2020).
    theory: query/key ~ U[-n_k^(1/4), n_k^(1/4)], value/output ~ U[-1, 1] (Otsuka et al. 2025); the attention
      scales logits by 1/sqrt(n_k) as always; the layers of a PairedMLP (sltlab.nn.theory, the SubsetSum source
      of a ReLU MLP) ~ U[-1, 1] as in Pensia et al. (2020); other weights fall back to kaiming-uniform.
    golf: the parameter-golf supermask submission's init. Xavier-uniform, U[-b, b] with b = gain * sqrt(6 /
      (fan_in + fan_out)), for embeddings (fan_in = width, fan_out = vocabulary or positions, torch's convention for
      an [out, in] table), attention and every other projection; He-uniform, b = gain * sqrt(6 / fan_in), for the
      MLP's pre-activation layer (mlp.fc1); 1-D parameters other than norm gains (biases) zero. Norm gains stay 1:
      the submission's norms have no gain, and a zero gain would silence the network. Drawn, like every scheme,
      on the CPU in float32 from a generator keyed by (seed, name, shape, scheme).
    """

    scheme: Scheme = "kaiming-uniform"
    seed: int = 0
    gain: float = 1.0
    density: float = 1.0

    def validate(self) -> None:
        if self.scheme not in INIT_SCHEMES:
            raise ConfigError("init.scheme", f"unknown scheme {self.scheme!r}", " | ".join(INIT_SCHEMES))
        if not (0 < self.density <= 1):
            raise ConfigError("init.density", f"{self.density} is out of range", "a number in (0, 1]")
        if self.gain <= 0:
            raise ConfigError("init.gain", f"{self.gain} must be positive", "a number > 0")
        if not (0 <= self.seed < 2**63):
            raise ConfigError("init.seed", f"{self.seed} is out of range", "an integer in [0, 2^63)")

    def __post_init__(self) -> None:
        self.validate()


def _generator(seed: int, name: str, shape: tuple[int, ...], scheme: str) -> torch.Generator:
    key = f"sltlab-v1|{seed}|{name}|{'x'.join(map(str, shape))}|{scheme}".encode()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1))
    return g


def seeded_uniform(seed: int, name: str, shape: tuple[int, ...], tag: str, low: float, high: float) -> torch.Tensor:
    g = _generator(seed, name, shape, tag)
    return torch.rand(shape, generator=g, dtype=torch.float32) * (high - low) + low


def seeded_normal(seed: int, name: str, shape: tuple[int, ...], tag: str, std: float) -> torch.Tensor:
    g = _generator(seed, name, shape, tag)
    return torch.randn(shape, generator=g, dtype=torch.float32) * std


def param_role(name: str) -> str:
    """q, k, v, o, mlp-in (an MLP's pre-activation layer), mlp-pair (a layer of a PairedMLP: mlp.fc1.a ...),
    embedding or other, from our naming (blocks.N.attn.q.weight ...)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-3] in ("fc1", "fc2") and parts[-2] in ("a", "b"):
        return "mlp-pair"
    in_attention = "attn" in parts or len(parts) == 2  # a standalone MultiHeadAttention names them q.weight ...
    if len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in ("q", "k", "v", "o") and in_attention:
        return parts[-2]
    if "emb" in name:
        return "embedding"
    if len(parts) >= 3 and parts[-3] == "mlp" and parts[-2] == "fc1":
        return "mlp-in"
    return "other"


def canonical_name(name: str) -> str:
    """Strip parametrization plumbing so a masked model draws the same weights as a plain one."""
    return name.replace(".parametrizations.", ".").replace(".original", "")


def seeded_tensor(
    spec: InitSpec, name: str, shape: tuple[int, ...], *, n_k: int | None = None, in_first: bool = False
) -> torch.Tensor:
    """The weight tensor called `name` of this shape, under `spec`. Biases and norms are handled by init_model.

    in_first: the weight is stored [in, out] (transformers' Conv1D, y = x @ W), so its fan-in is shape[0], not
    the trailing dimensions (torch's [out, in, ...] layout). Only the bound changes: the draws are the same."""
    shape = tuple(int(s) for s in shape)
    role = param_role(name)
    g = spec.gain
    scheme = spec.scheme
    if scheme == "golf" and len(shape) >= 2:
        fan_in = shape[0] if in_first else math.prod(shape[1:])
        fan_out = math.prod(shape[1:]) if in_first else shape[0]
        b = g * (math.sqrt(6.0 / fan_in) if role == "mlp-in" else math.sqrt(6.0 / (fan_in + fan_out)))
        return seeded_uniform(spec.seed, name, shape, scheme, -b, b)
    if role == "embedding" or len(shape) == 1:
        fan_in = fan_out = 1
    elif in_first:
        fan_in, fan_out = shape[0], math.prod(shape[1:])
    else:
        fan_in = math.prod(shape[1:])
        fan_out = shape[0]
    if scheme == "theory":
        if role in ("q", "k"):
            if n_k is None:
                raise ConfigError("init.scheme", f"'theory' needs the per-head width n_k for {name}")
            b = g * n_k ** 0.25
            return seeded_uniform(spec.seed, name, shape, scheme, -b, b)
        if role in ("v", "o", "mlp-pair"):
            return seeded_uniform(spec.seed, name, shape, scheme, -g, g)
        scheme = "kaiming-uniform"
    if scheme == "golf":  # a 1-D weight (none in our models): Xavier's bound for a vector, as xavier-uniform does
        scheme = "xavier-uniform"
    if scheme == "kaiming-uniform":
        b = g * math.sqrt(3.0 / fan_in)
        return seeded_uniform(spec.seed, name, shape, scheme, -b, b)
    if scheme == "kaiming-normal":
        return seeded_normal(spec.seed, name, shape, scheme, g / math.sqrt(fan_in))
    if scheme == "xavier-uniform":
        b = g * math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out > 2 else g * math.sqrt(3.0)
        return seeded_uniform(spec.seed, name, shape, scheme, -b, b)
    if scheme in ("signed-constant", "scaled-signed-constant"):
        std = g / math.sqrt(fan_in)
        if scheme == "scaled-signed-constant":
            std /= math.sqrt(spec.density)
        draw = seeded_normal(spec.seed, name, shape, "kaiming-normal", 1.0)
        return torch.where(draw >= 0, std, -std).to(torch.float32)
    raise ConfigError("init.scheme", f"unknown scheme {scheme!r}", " | ".join(INIT_SCHEMES))


@torch.no_grad()
def init_model(model: nn.Module, spec: InitSpec) -> nn.Module:
    """Overwrite every parameter of `model` from `spec`: weights by the scheme, biases 0, norm gains and scales 1.

    Works on any nn.Module (ours or a Hugging Face one). Supermask scores are left alone: they have their own seed.
    The spec is recorded on the model (`model._sltlab_init`), where `sltlab.save_ticket` finds it.
    Scheme golf sets biases 0 as every scheme does (its "zeros for 1-D parameters"); norm gains and scales 1.
    """
    n_k_of = {name: getattr(m, "head_dim_qk", None) for name, m in model.named_modules()}
    # transformers' Conv1D stores its weight [in, out]; matched by class name so nn/ never imports transformers
    in_first = {name for name, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    for raw_name, p in model.named_parameters():
        if raw_name.endswith("scores"):
            continue
        name = canonical_name(raw_name)
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim >= 2:
            attn_name = name.rsplit(".", 2)[0] if name.count(".") >= 2 else ""
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            p.copy_(seeded_tensor(spec, name, tuple(p.shape), n_k=n_k_of.get(attn_name), in_first=owner in in_first))
        elif leaf == "bias":
            p.zero_()
        else:
            p.fill_(1.0)
    # remembered, so sltlab.save_ticket(model, path) need not be told again what drew the weights
    model._sltlab_init = spec
    return model


@torch.no_grad()
def random_norm_affine(model: nn.Module, seed: int, gain: tuple[float, float] = (0.5, 1.5),
                       bias: tuple[float, float] = (-0.5, 0.5)) -> nn.Module:
    """Draw every norm's gain ~ U[gain] and bias ~ U[bias] from (seed, parameter name): a target whose norms are
    not the identity, for studies of what a ticket must do about a norm's affine (sltlab.tickets.construct)."""
    from sltlab.nn.norm import is_norm

    for mname, m in model.named_modules():
        if not is_norm(m):
            continue
        for pname, p in m.named_parameters(recurse=False):
            name = canonical_name(f"{mname}.{pname}" if mname else pname)
            lo, hi = gain if pname == "weight" else bias
            p.copy_(seeded_uniform(seed, name, tuple(p.shape), "norm-affine", lo, hi))
    return model
