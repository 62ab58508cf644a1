"""The norm spec: kind x placement x affine. Models that differ only in it are otherwise identical."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sltlab.errors import ConfigError

NormKind = Literal["none", "layernorm", "rmsnorm"]
Placement = Literal["pre", "post"]
Affine = Literal["frozen", "trainable", "none"]

_KIND_ALIASES = {"none": "none", "ln": "layernorm", "layernorm": "layernorm", "rms": "rmsnorm", "rmsnorm": "rmsnorm"}


@dataclass(frozen=True)
class NormSpec:
    """kind: none | layernorm | rmsnorm; placement: pre | post; affine: frozen (gain 1, bias 0) | trainable | none.

    "trainable" affine is what makes a LayerNorm-integrated ticket: the search learns the masks and the norm's
    gain/bias, nothing else. Frozen affine still creates the parameters (so names match across variants).
    "none" creates no parameter at all (the parameter-golf models' norms: `F.rms_norm(x, (d,))` with torch's
    default eps, the dtype's machine epsilon); it computes what "frozen" computes, up to that eps, but adds
    nothing to a state dict, a parameter count or an artifact. Spelled with the suffix "+noaffine".
    """

    kind: NormKind = "layernorm"
    placement: Placement = "pre"
    affine: Affine = "frozen"
    eps: float = 1e-5

    def validate(self) -> None:
        if self.kind not in ("none", "layernorm", "rmsnorm"):
            raise ConfigError("norm.kind", f"unknown norm kind {self.kind!r}", "none | layernorm | rmsnorm")
        if self.placement not in ("pre", "post"):
            raise ConfigError("norm.placement", f"unknown placement {self.placement!r}", "pre | post")
        if self.affine not in ("frozen", "trainable", "none"):
            raise ConfigError("norm.affine", f"unknown affine mode {self.affine!r}", "frozen | trainable | none")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def name(self) -> str:
        """Short label: none, pre-ln, post-rms, pre-ln+affine ..."""
        if self.kind == "none":
            return "none"
        base = f"{self.placement}-{'ln' if self.kind == 'layernorm' else 'rms'}"
        return base + {"trainable": "+affine", "none": "+noaffine", "frozen": ""}[self.affine]

    @classmethod
    def parse(cls, text: str, field: str = "norm") -> NormSpec:
        """Parse 'none', 'pre-ln', 'post-ln', 'pre-rms', 'rmsnorm', optionally with '+affine' (learned gain/bias)
        or '+noaffine' (no gain/bias parameter at all)."""
        t = text.strip().lower()
        affine: Affine = "frozen"
        if t.endswith("+affine"):
            affine, t = "trainable", t[: -len("+affine")]
        elif t.endswith("+noaffine"):
            affine, t = "none", t[: -len("+noaffine")]
        if t == "none":
            return cls(kind="none", affine=affine)
        placement: Placement = "pre"
        for p in ("pre-", "post-"):
            if t.startswith(p):
                placement, t = p[:-1], t[len(p):]  # type: ignore[assignment]
        kind = _KIND_ALIASES.get(t)
        if kind is None:
            raise ConfigError(
                field, f"unknown norm {text!r}",
                "none, pre-ln, post-ln, pre-rms, post-rms, layernorm, rmsnorm (append +affine to learn gain/bias, "
                "+noaffine for none)",
            )
        return cls(kind=kind, placement=placement, affine=affine)  # type: ignore[arg-type]


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class BareRMSNorm(nn.Module):
    """RMS norm without a gain: `F.rms_norm` over the last axis with torch's default eps (no parameters)."""

    def __init__(self, d: int):
        super().__init__()
        self.d = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.d,))


def make_norm(spec: NormSpec, d: int) -> nn.Module:
    if spec.kind == "none":
        return nn.Identity()
    if spec.affine == "none":
        return nn.LayerNorm(d, eps=spec.eps, elementwise_affine=False) if spec.kind == "layernorm" else BareRMSNorm(d)
    norm: nn.Module = nn.LayerNorm(d, eps=spec.eps) if spec.kind == "layernorm" else RMSNorm(d, eps=spec.eps)
    if spec.affine == "frozen":
        for p in norm.parameters():
            p.requires_grad_(False)
    return norm


def is_norm(module: nn.Module) -> bool:
    """LayerNorm-like modules, ours and Hugging Face's (which use nn.LayerNorm or *RMSNorm classes)."""
    return isinstance(module, nn.LayerNorm | RMSNorm | BareRMSNorm) or type(module).__name__.lower().endswith(
        ("layernorm", "rmsnorm")
    )
