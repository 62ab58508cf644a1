"""Supermasks as `torch.nn.utils.parametrize` parametrizations: W_eff = W_random * M(scores) * s.

`apply_supermask(model, SupermaskConfig(...))` attaches one to every matching nn.Linear / nn.Embedding of any
module (ours or a Hugging Face one), freezes everything else, and leaves trainable only the scores, the optional
scales, the norm affine for a LayerNorm-integrated ticket, and whatever `free` names. `bake(model)` writes the masked
weights back as plain tensors for inference.

Methods
- edge-popup (Ramanujan et al. 2020): M keeps the top `keep` fraction of the scores, per layer or with one global
  threshold; gradients pass straight through M to the scores (dL/ds = dL/dW_eff * W). We rank the scores
  themselves rather than |scores|: the same family of masks, one elementwise pass cheaper, and a score's gradient
  never flips with its sign. The threshold is a kthvalue (linear time), cached until the scores change, so repeated
  forwards (evaluation) cost nothing; the masked weight and its gradient are one fused autograd function.
- annealed: during search M is *sampled*, M ~ Bernoulli(sigmoid(scores / T)), with the straight-through gradient
  of sigmoid(scores / T). The temperature T therefore matters: a high T samples near-random masks (exploration), and
  as T is annealed toward 0 the samples concentrate on the deterministic mask 1[scores > 0], which is what
  evaluation (model.eval()) and `bake` use. (A deterministic `sigmoid(s/T) > 0.5` would be the same mask at every T.)
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from sltlab.errors import ConfigError
from sltlab.nn.init import canonical_name, seeded_uniform
from sltlab.nn.norm import is_norm

Method = Literal["edge-popup", "annealed"]
P = TypeVar("P", bound=nn.Module)


@dataclass(frozen=True)
class SupermaskConfig:
    """What to mask and how. `keep` is the kept fraction of weights (density), never a prune rate."""

    method: Method = "edge-popup"
    keep: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    targets: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    scale: Literal["none", "layer", "head"] = "none"
    train_norm: bool = False
    free: tuple[str, ...] = ()
    seed: int = 0
    temperature: float = 1.0

    def validate(self) -> None:
        if self.method not in ("edge-popup", "annealed"):
            raise ConfigError("mask.method", f"unknown method {self.method!r}", "edge-popup | annealed")
        if not (0.0 < self.keep <= 1.0):
            raise ConfigError("mask.keep", f"kept fraction {self.keep} is outside (0, 1]", "a number in (0, 1]")
        if self.scope not in ("layer", "global"):
            raise ConfigError("mask.scope", f"unknown scope {self.scope!r}", "layer | global")
        if self.scale not in ("none", "layer", "head"):
            raise ConfigError("mask.scale", f"unknown scale {self.scale!r}", "none | layer | head")
        if self.temperature <= 0:
            raise ConfigError("mask.temperature", f"{self.temperature} must be positive", "a number > 0")

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "free", tuple(self.free))
        self.validate()


class _MaskedWeight(torch.autograd.Function):
    """W * M with the straight-through gradient dL/ds = dL/d(W*M) * W, fused (edge-popup)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(w)
        return w * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (w,) = ctx.saved_tensors
        return None, grad * w, None


class _SampledWeight(torch.autograd.Function):
    """W * sample with the straight-through gradient of p = sigmoid(s / T): dL/ds = dL/d(W*M) * W * p (1 - p) / T."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, scores: torch.Tensor, sample: torch.Tensor, p: torch.Tensor,  # type: ignore[override]
                temperature: float) -> torch.Tensor:
        ctx.save_for_backward(w, p)
        ctx.temperature = temperature
        return w * sample

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        w, p = ctx.saved_tensors
        # sigmoid_backward computes g * p * (1 - p) in one pass: the step's cost is a few passes over every weight
        return None, torch.ops.aten.sigmoid_backward(grad * w, p).div_(ctx.temperature), None, None, None


def _kth_largest_threshold(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """The k-th largest score, k = round(keep * n): a linear-time selection, never a sort.

    On the CPU numpy's introselect (np.partition) is about 10x faster than torch.kthvalue (see
    docs/BENCHMARKS.md); both return the same element, so the mask does not depend on which one ran.
    """
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    k = max(1, min(n, round(keep * n)))
    if flat.device.type == "cpu":
        import numpy as np

        return torch.tensor(np.partition(flat.numpy(), n - k)[n - k], dtype=flat.dtype)
    return flat.kthvalue(n - k + 1).values


class GlobalThreshold:
    """One threshold over the scores of many layers, recomputed only when some score tensor changed."""

    def __init__(self, keep: float):
        self.keep = keep
        self.members: list[Supermask] = []
        self._key: tuple[int, ...] | None = None
        self._value: torch.Tensor | None = None

    def value(self) -> torch.Tensor:
        key = tuple(m.scores._version for m in self.members)
        if key != self._key or self._value is None:
            with torch.no_grad():
                flat = torch.cat([m.scores.detach().reshape(-1) for m in self.members])
                self._value = _kth_largest_threshold(flat, self.keep)
            self._key = key
        return self._value


class Supermask(nn.Module):
    """The parametrization W -> W * M(scores) * scale for one weight tensor."""

    def __init__(
        self,
        shape: torch.Size,
        method: Method,
        keep: float,
        scores: torch.Tensor,
        scale: Literal["none", "layer", "head"] = "none",
        heads: tuple[int, int] | None = None,
        temperature: float = 1.0,
        sample_seed: int = 0,
    ):
        super().__init__()
        self.method = method
        self.keep = keep
        self.scores = nn.Parameter(scores)
        self.temperature = temperature
        self.global_threshold: GlobalThreshold | None = None
        self.heads = heads
        if scale == "layer":
            self.scale = nn.Parameter(torch.ones(()))
        elif scale == "head":
            if heads is None:
                raise ConfigError("mask.scale", "per-head scales need a module that declares its heads", "layer")
            self.scale = nn.Parameter(torch.ones(heads[0]))
        else:
            self.scale = None
        self._gen = torch.Generator().manual_seed(sample_seed)
        self._cache_key: tuple[int, bool] | None = None
        self._cache: torch.Tensor | None = None

    # -- the binary mask ------------------------------------------------------------------------------
    def threshold(self) -> torch.Tensor:
        if self.global_threshold is not None:
            return self.global_threshold.value()
        return _kth_largest_threshold(self.scores, self.keep)

    def hard_mask(self) -> torch.Tensor:
        """The deterministic binary mask (float 0/1): what evaluation, bake and export use."""
        key = (self.scores._version, self.global_threshold is None)
        if self._cache_key == key and self._cache is not None and self.global_threshold is None:
            return self._cache
        with torch.no_grad():
            if self.method == "edge-popup":
                m = (self.scores.detach() >= self.threshold()).to(self.scores.dtype)
            else:
                m = (self.scores > 0).to(self.scores.dtype)
        self._cache_key, self._cache = key, m
        return m

    def mask_for_forward(self) -> torch.Tensor:
        """The mask as the forward sees it, with its straight-through gradient (for inspection and tests)."""
        if self.method == "edge-popup":
            return _MaskedWeight.apply(torch.ones_like(self.scores), self.scores, self.hard_mask())
        if not self.training:
            return self.hard_mask()
        p = torch.sigmoid(self.scores / self.temperature)
        with torch.no_grad():
            sample = (torch.rand(p.shape, generator=self._gen) < p).to(p.dtype)
        return p + (sample - p).detach()

    def masked(self, w: torch.Tensor) -> torch.Tensor:
        if self.method == "edge-popup":
            return _MaskedWeight.apply(w, self.scores, self.hard_mask())
        if not self.training:
            return w * self.hard_mask()
        with torch.no_grad():
            # in place where possible: each pass over all weights costs as much as a dense layer's bias step
            p = (self.scores / self.temperature).sigmoid_()
            sample = torch.rand(p.shape, generator=self._gen).lt_(p)  # float 0/1, same draws as `rand < p`
        return _SampledWeight.apply(w, self.scores, sample, p, self.temperature)

    def _apply_scale(self, w: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return w
        if self.scale.ndim == 0:
            return w * self.scale
        n_heads, axis = self.heads  # type: ignore[misc]
        shape = [1] * w.ndim
        shape[axis] = n_heads
        grouped = w.unflatten(axis, (n_heads, w.shape[axis] // n_heads))
        view = [1] * grouped.ndim
        view[axis] = n_heads
        return (grouped * self.scale.view(view)).flatten(axis, axis + 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self._apply_scale(self.masked(w))

    def density(self) -> float:
        return float(self.hard_mask().mean())


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _init_scores(cfg: SupermaskConfig, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    bound = 1.0 / math.sqrt(fan_in)
    s = seeded_uniform(cfg.seed, name, shape, "scores", -bound, bound)
    if cfg.method == "annealed":
        # Centre the scores so that sigmoid(s / T0) starts at the kept fraction: the first samples have density keep.
        keep = min(max(cfg.keep, 1e-4), 1 - 1e-4)
        s = s / bound * 0.5 * cfg.temperature + cfg.temperature * math.log(keep / (1 - keep))
    return s


def apply_supermask(model: nn.Module, cfg: SupermaskConfig) -> nn.Module:
    """Attach supermasks to the Linear/Embedding layers of `model` whose names match cfg.targets (fnmatch),
    minus cfg.exclude. Freezes every parameter, then frees scores, scales, norm affine (cfg.train_norm) and the
    parameters whose names match cfg.free. Modifies and returns `model`."""
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Embedding)
        and _matches(name, cfg.targets)
        and not _matches(name, cfg.exclude)
        and not parametrize.is_parametrized(m, "weight")
    ]
    if not chosen:
        raise ConfigError("mask.targets", f"no Linear or Embedding layer matches {list(cfg.targets)}",
                          "fnmatch patterns over module names, e.g. '*attn*' or 'stack.blocks.*'")
    shared = GlobalThreshold(cfg.keep) if cfg.scope == "global" and cfg.method == "edge-popup" else None
    for i, (name, module) in enumerate(chosen):
        w = module.weight
        heads = getattr(module, "_sltlab_heads", None)
        scores = _init_scores(cfg, canonical_name(name), tuple(w.shape))
        sm = Supermask(w.shape, cfg.method, cfg.keep, scores, cfg.scale if cfg.scale != "head" or heads else "layer",
                       heads, cfg.temperature, sample_seed=cfg.seed * 1_000_003 + i)
        if shared is not None:
            sm.global_threshold = shared
            shared.members.append(sm)
        parametrize.register_parametrization(module, "weight", sm, unsafe=True)
        module.parametrizations.weight.original.requires_grad_(False)
    for module in model.modules():
        if cfg.train_norm and is_norm(module):
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
    if cfg.free:
        for name, p in model.named_parameters():
            if _matches(canonical_name(name), cfg.free):
                p.requires_grad_(True)
    return model


def weight_parametrizations(model: nn.Module, kind: type[P]) -> dict[str, P]:
    """Module name -> its weight parametrization of type `kind` (Supermask, IMP's PruneMask), in module order."""
    out: dict[str, P] = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, kind):
                    out[name] = p
    return out


def supermasks(model: nn.Module) -> dict[str, Supermask]:
    """Module name -> its Supermask, in module order."""
    return weight_parametrizations(model, Supermask)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> boolean mask (the deterministic one)."""
    return {name: sm.hard_mask().bool() for name, sm in supermasks(model).items()}


def set_temperature(model: nn.Module, temperature: float) -> None:
    for sm in supermasks(model).values():
        sm.temperature = float(temperature)


def mask_density(model: nn.Module) -> float:
    masks = get_masks(model)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / max(total, 1)


def free_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def free_parameter_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@torch.no_grad()
def bake(model: nn.Module) -> nn.Module:
    """Replace every supermask parametrization by its plain masked (and scaled) weight, in place, for inference."""
    was_training = model.training
    model.eval()
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(False)
    model.train(was_training)
    return model
