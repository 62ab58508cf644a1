"""Supermasks as `torch.nn.utils.parametrize` parametrizations: W_eff = W_random * M(scores) * s.

`apply_supermask(model, SupermaskConfig(...))` attaches one to the weight of every matching layer of any module (ours
or a Hugging Face one), freezes everything else, and leaves trainable only the scores, the optional scales, the norm
affine for a LayerNorm-integrated ticket, and whatever `free` names. It returns a `MaskCoverage`: masked parameters
over all parameters, per layer kind. `bake(model)` writes the masked weights back as plain tensors for inference.

Layer kinds (`MASK_RULES`, extendable with `register_mask_rule`): nn.Linear, nn.Embedding, nn.Conv1d/2d/3d and
transformers' Conv1D (GPT-2's attention and MLP; its weight is stored transposed, [in, out], which only changes the
fan-in that scales the initial scores: the mask is elementwise over the stored tensor whatever its layout). A
targeted module of any other kind that holds a weight (a parameter of two or more dimensions, e.g.
nn.MultiheadAttention's in_proj_weight) raises ConfigError naming it: a weight is never skipped silently.

Tied weights (GPT-2's wte and lm_head are one Parameter): one mask per Parameter, never one per module. The first
module that uses it (module order) owns the Supermask; the same Supermask instance is registered on every other user
over the same `original` Parameter, so every use sees W * M with one set of scores, whose gradient sums over the uses.
If any user is targeted, all are masked; excluding one user of a tied weight while targeting another is a ConfigError.
An annealed mask that is tied draws one sample per scores update, so every use in a forward sees the same sample.

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
  `forward_mask = "threshold"` is that deterministic variant (DESIGN.md's "annealed straight-through": forward
  M = 1[sigmoid(s/T) > 0.5] = 1[s > 0], backward the sigmoid(s/T) gradient, so T shapes only the gradient, which
  it concentrates on scores near the boundary). The search then trains the very mask that is evaluated; on the
  byte LM at the quick budget the sampled forward's noise costs ~0.1 bpb (docs/results/lm.md).
  `score_init = c` (the parameter-golf submission's MASK_INIT_SCORE = 0): every score starts at c instead of the
  seeded draw, and the deterministic mask keeps ties, 1[s >= 0] (its sigmoid(s/T) >= 0.5), so a zero start keeps
  every weight at step 0 and the search prunes from there. Left at None, the rule stays 1[s > 0] bit for bit.

Variants of edge-popup (options of the same config; at their defaults the mask is plain edge-popup, bit for bit)
- multicoated (Okoshi et al. 2022, "Multicoated Supermasks Enhance Hidden Networks"): `coats = K` nested masks
  over the same scores. Coat i keeps the top `coat_keeps[i]` fraction (keep = coat_keeps[0] > ... > coat_keeps[K-1];
  by default evenly spaced, keep * (K - i) / K), so a weight's coat count c in 0..K is the number of thresholds its
  score passes, and W_eff = W * c / K * s. The paper's released code multiplies by the raw count c and a fixed
  layer scale; dividing by K is the same up to a per-layer constant (which `scale = "layer"` learns) and keeps a
  weight in every coat at its full value. Gradient: every coat passes its gradient straight through, so
  dL/ds = dL/dW_eff * W * K / K = dL/dW_eff * W, exactly edge-popup's. The K thresholds are linear-time
  selections (np.partition, each inner coat's on the outer coat's top part), cached like edge-popup's threshold.
- partially frozen source (Okoshi et al. 2024, "Partially frozen random networks contain compact strong lottery
  tickets"): before the search, a seeded random `frozen_pruned` fraction of each layer's weights is fixed as
  pruned and a disjoint `frozen_kept` fraction as kept; the search only chooses among the rest. `keep` stays the
  overall kept fraction of the layer, frozen-kept weights included: with n weights, k = round(keep * n) are kept,
  n_fk = round(frozen_kept * n) of them frozen, so with n_fp = round(frozen_pruned * n) the search keeps k - n_fk
  of the n - n_fp - n_fk free weights (a searched density of (keep - frozen_kept) / (1 - frozen_pruned -
  frozen_kept)); with scope "global" the same counts hold over all masked layers together. Hence frozen_kept <= keep
  and frozen_pruned <= 1 - keep (ConfigError otherwise). The pattern is a pure function of (frozen_seed, layer
  name, shape): never stored, bit-identical in every process (`frozen_pattern`). Ranking treats frozen-kept scores
  as +inf and frozen-pruned ones as -inf, so the same top-k selection applies, and frozen scores get no gradient
  (they cannot matter).
Both need method edge-popup; they combine (frozen-kept weights are then in every coat, so frozen_kept must not
exceed the innermost coat's keep). `get_masks` / `mask_density` see where any coat keeps a weight; `get_coat_counts`
gives the counts.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from sltlab.errors import ConfigError
from sltlab.nn.init import canonical_name, seeded_uniform
from sltlab.nn.norm import is_norm
from sltlab.nn.transformer import OWN_MASK

Method = Literal["edge-popup", "annealed"]
P = TypeVar("P", bound=nn.Module)


@dataclass(frozen=True)
class SupermaskConfig:
    """What to mask and how. `keep` is the kept fraction of weights (density), never a prune rate.

    Variants of edge-popup (see the module docstring), all off by default:
    coats: number of nested coats (1 = plain edge-popup); coat_keeps: their kept fractions, outermost (= keep)
    first, () = evenly spaced below keep. frozen_pruned / frozen_kept: fractions of every masked layer fixed as
    pruned / kept before the search (keep counts the frozen-kept ones); frozen_seed: draws that pattern, apart from
    the score seed so that several score seeds can search one partially frozen source.
    """

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
    coats: int = 1
    coat_keeps: tuple[float, ...] = ()
    frozen_pruned: float = 0.0
    frozen_kept: float = 0.0
    frozen_seed: int = 0
    forward_mask: Literal["sample", "threshold"] = "sample"  # annealed only: see the module docstring
    # annealed only: every score starts at this constant instead of the seeded draw (the parameter-golf
    # submission's MASK_INIT_SCORE = 0), and the mask keeps ties, 1[s >= 0] (its sigmoid(s/T) >= 0.5), so a zero
    # start keeps every weight; None = the seeded uniform draw centred on the kept fraction, mask 1[s > 0].
    score_init: float | None = None

    def resolved_coat_keeps(self) -> tuple[float, ...]:
        """The kept fraction of every coat, outermost (= keep) first."""
        if self.coat_keeps:
            return tuple(float(k) for k in self.coat_keeps)
        return tuple(self.keep * (self.coats - i) / self.coats for i in range(self.coats))

    @property
    def is_plain(self) -> bool:
        """True when no variant option is on: the mask is plain edge-popup or annealed."""
        return self.coats == 1 and self.frozen_pruned == 0 and self.frozen_kept == 0

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, without the variant options that sit at their defaults, so that configs written
        before the variants existed keep their hashes (run ids) and their stored spec JSON, byte for byte."""
        out = dataclasses.asdict(self)
        for name, default in VARIANT_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out

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
        if self.forward_mask not in ("sample", "threshold"):
            raise ConfigError("mask.forward_mask", f"unknown forward mask {self.forward_mask!r}",
                              "sample (M ~ Bernoulli(sigmoid(s/T))) | threshold (M = 1[s > 0])")
        if self.score_init is not None:
            if self.method != "annealed":
                raise ConfigError("mask.score_init", f"a constant start ties every score; {self.method!r} ranks them",
                                  "method = 'annealed', or score_init omitted")
            if not math.isfinite(self.score_init):
                raise ConfigError("mask.score_init", f"{self.score_init!r} is not a finite number",
                                  "a number (e.g. 0.0), or omitted for the seeded draw")
        self._validate_variants()

    def _validate_variants(self) -> None:
        if isinstance(self.coats, bool) or not isinstance(self.coats, int) or self.coats < 1:
            raise ConfigError("mask.coats", f"{self.coats!r} coats", "an integer >= 1 (1 = plain edge-popup)")
        if self.coats > 1 and self.method != "edge-popup":
            raise ConfigError("mask.coats", f"multicoated masks threshold scores; method {self.method!r} samples them",
                              "method = 'edge-popup' with coats > 1, or coats = 1")
        if self.coat_keeps:
            ck = self.coat_keeps
            if len(ck) != self.coats:
                raise ConfigError("mask.coat_keeps", f"has {len(ck)} fractions for {self.coats} coats",
                                  "one kept fraction per coat, outermost first, or [] for evenly spaced below keep")
            if abs(ck[0] - self.keep) > 1e-12:
                raise ConfigError("mask.coat_keeps", f"the outermost coat keeps {ck[0]} but keep is {self.keep}",
                                  "coat_keeps[0] == keep (keep is the fraction any coat keeps)")
            if any(not (0 < b < a) for a, b in zip(ck, ck[1:], strict=False)):
                raise ConfigError("mask.coat_keeps", f"{list(ck)} is not strictly decreasing and positive",
                                  "nested coats, e.g. [0.5, 0.3, 0.1]")
        for name in ("frozen_pruned", "frozen_kept"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise ConfigError(f"mask.{name}", f"fraction {v} is outside [0, 1)", "a number in [0, 1)")
            if v > 0 and self.method != "edge-popup":
                raise ConfigError(f"mask.{name}", f"a partially frozen source needs top-k masks, not {self.method!r}",
                                  f"method = 'edge-popup', or {name} = 0")
        innermost = self.resolved_coat_keeps()[-1]
        if self.frozen_kept > innermost + 1e-12:
            what = "keep" if self.coats == 1 else f"the innermost coat's keep ({innermost:g})"
            raise ConfigError("mask.frozen_kept",
                              f"{self.frozen_kept} of the weights frozen as kept is more than {what}",
                              f"frozen_kept <= {innermost:g}: keep counts the frozen-kept weights too")
        if self.frozen_pruned > 1 - self.keep + 1e-12:
            raise ConfigError("mask.frozen_pruned",
                              f"{self.frozen_pruned} frozen as pruned leaves less than keep={self.keep} to keep",
                              f"frozen_pruned <= 1 - keep = {1 - self.keep:g}")
        if not (0 <= self.frozen_seed < 2**63):
            raise ConfigError("mask.frozen_seed", f"{self.frozen_seed} is out of range", "an integer in [0, 2^63)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "free", tuple(self.free))
        object.__setattr__(self, "coat_keeps", tuple(self.coat_keeps))
        self.validate()


# The variant options and their "off" values: SupermaskConfig.to_dict leaves them out when they sit here.
VARIANT_DEFAULTS: dict[str, Any] = {"coats": 1, "coat_keeps": (), "frozen_pruned": 0.0, "frozen_kept": 0.0,
                                    "frozen_seed": 0, "forward_mask": "sample", "score_init": None}


class _MaskedWeight(torch.autograd.Function):
    """W * M with the straight-through gradient dL/ds = dL/d(W*M) * W, fused (edge-popup).

    `unfrozen` (optional, float 0/1): where the scores can matter at all; the gradient of frozen scores is zeroed so an
    optimiser never moves them."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,  # type: ignore[override]
                unfrozen: torch.Tensor | None = None) -> torch.Tensor:
        ctx.save_for_backward(w, unfrozen)
        return w * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        w, unfrozen = ctx.saved_tensors
        g = grad * w
        if unfrozen is not None:
            g.mul_(unfrozen)
        return None, g, None, None


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
        return torch.tensor(np.partition(flat.numpy(), n - k)[n - k], dtype=flat.dtype, device=flat.device)
    return flat.kthvalue(n - k + 1).values


def _keep_count(keep: float, n: int) -> int:
    """How many of n weights a kept fraction keeps: edge-popup's rule (at least one)."""
    return max(1, min(n, round(keep * n)))


def _kth_largest_values(flat: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """The k-th largest value of `flat` for every k in ks (1 <= k <= n): single-pivot selections, never a sort.

    Largest k first, each on the top part the previous one left (the next coat's threshold lies in it), so K coats
    cost about n + k_1 + k_2 + ... element visits. (np.partition with K pivots at once was 10x slower at K=3.)"""
    flat = flat.detach().reshape(-1)
    out: list[torch.Tensor | None] = [None] * len(ks)
    if flat.device.type == "cpu":
        top = flat.numpy()
        for i in sorted(range(len(ks)), key=lambda j: -ks[j]):
            top = np.partition(top, top.size - ks[i])[top.size - ks[i]:]
            out[i] = torch.tensor(top[0], dtype=flat.dtype, device=flat.device)
        return torch.stack(out)  # type: ignore[arg-type]
    n = flat.numel()
    return torch.stack([flat.kthvalue(n - k + 1).values for k in ks])


def _coat_counts(n: int, keeps: Sequence[float], n_frozen_kept: int, n_frozen_pruned: int) -> list[int]:
    """Weights each coat keeps among n: the keep rule, never fewer than the frozen-kept weights (they are in every
    coat) nor more than the weights not frozen as pruned."""
    return [min(max(_keep_count(k, n), n_frozen_kept), n - n_frozen_pruned) for k in keeps]


def frozen_pattern(seed: int, name: str, shape: tuple[int, ...], frozen_pruned: float, frozen_kept: float,
                   keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned, kept): the boolean frozen parts of the weight `name` of this shape, a pure function of the
    arguments. Exactly round(frozen_pruned * n) and round(frozen_kept * n) weights (clamped so that the layer's
    k = round(keep * n) kept weights fit: n_fk <= k, n_fp <= n - k), drawn from their own seeded stream: the
    ranks of a seeded uniform draw (a stable sort, once per build, so counts are exact even with tied draws)."""
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    k = _keep_count(keep, n)
    n_fk = min(round(frozen_kept * n), k)
    n_fp = min(round(frozen_pruned * n), n - k)
    order = seeded_uniform(seed, name, shape, "frozen", 0.0, 1.0).reshape(-1).argsort(stable=True)
    pruned = torch.zeros(n, dtype=torch.bool)
    kept = torch.zeros(n, dtype=torch.bool)
    pruned[order[:n_fp]] = True
    kept[order[n - n_fk:]] = True
    return pruned.reshape(shape), kept.reshape(shape)


class GlobalThreshold:
    """One threshold (one per coat) over the scores of many layers, recomputed only when some score changed."""

    def __init__(self, keep: float, coat_keeps: tuple[float, ...] = ()):
        self.keep = keep
        self.coat_keeps = coat_keeps or (keep,)
        self.members: list[Supermask] = []
        self._key: tuple[int, ...] | None = None
        self._value: torch.Tensor | None = None
        self._values_key: tuple[int, ...] | None = None
        self._values: torch.Tensor | None = None

    def values(self) -> torch.Tensor:
        """The coats' thresholds over every member's ranked scores (frozen ones at +-inf)."""
        key = tuple(m.scores._version for m in self.members)
        if key != self._values_key or self._values is None:
            with torch.no_grad():
                flat = torch.cat([m.ranked_scores().reshape(-1) for m in self.members])
                fk = sum(m.n_frozen_kept for m in self.members)
                fp = sum(m.n_frozen_pruned for m in self.members)
                self._values = _kth_largest_values(flat, _coat_counts(flat.numel(), self.coat_keeps, fk, fp))
            self._values_key = key
        return self._values

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
        coat_keeps: tuple[float, ...] = (),
        frozen: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """coat_keeps: the coats' kept fractions, outermost (= keep) first; () = one coat. frozen: the (pruned,
        kept) boolean parts fixed before the search, see `frozen_pattern`."""
        super().__init__()
        self.method = method
        self.keep = keep
        self.coat_keeps = tuple(coat_keeps) or (keep,)
        self.coats = len(self.coat_keeps)
        self.scores = nn.Parameter(scores)
        # Not persistent: the pattern regenerates from the seed, so state dicts, checkpoints and tickets never hold it.
        # One additive offset (0 free, +inf kept, -inf pruned) ranks the scores in a single pass per step.
        self.n_frozen_pruned = self.n_frozen_kept = 0
        self.frozen_offset: torch.Tensor | None
        self.unfrozen: torch.Tensor | None
        if frozen is None:
            self.register_buffer("frozen_offset", None, persistent=False)
            self.register_buffer("unfrozen", None, persistent=False)
        else:
            pruned, kept = (t.to(torch.bool).reshape(shape) for t in frozen)
            if bool((pruned & kept).any()):
                raise ConfigError("mask.frozen_kept", "a weight is frozen both as kept and as pruned",
                                  "disjoint frozen parts (see frozen_pattern)")
            offset = torch.zeros(shape, dtype=scores.dtype).masked_fill_(pruned, -math.inf)
            self.register_buffer("frozen_offset", offset.masked_fill_(kept, math.inf), persistent=False)
            self.register_buffer("unfrozen", (~(pruned | kept)).to(scores.dtype), persistent=False)
            self.n_frozen_pruned, self.n_frozen_kept = int(pruned.sum()), int(kept.sum())
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
        self._sample_seed = sample_seed
        self._device_gen: torch.Generator | None = None
        self._cache_key: tuple[int, bool] | None = None
        self._cache: torch.Tensor | None = None
        # Modules whose weight this supermask parametrizes (more than one for a tied weight).
        self.users = 1
        self._sample_key: int | None = None
        self._sample: tuple[torch.Tensor, torch.Tensor] | None = None
        self.threshold_forward = False  # annealed: train on 1[s > 0] instead of a sample (SupermaskConfig.forward_mask)
        self.keep_ties = False  # annealed: 1[s >= 0] rather than 1[s > 0] (SupermaskConfig.score_init)

    # -- the binary mask ------------------------------------------------------------------------------
    @property
    def is_plain(self) -> bool:
        """One coat and nothing frozen: the original edge-popup / annealed code path."""
        return self.coats == 1 and self.unfrozen is None

    def threshold(self) -> torch.Tensor:
        if self.global_threshold is not None:
            return self.global_threshold.value()
        return _kth_largest_threshold(self.scores, self.keep)

    @property
    def frozen_pruned(self) -> torch.Tensor | None:
        """Where the weights are frozen as pruned (bool), or None when nothing is frozen."""
        return None if self.frozen_offset is None else self.frozen_offset == -math.inf

    @property
    def frozen_kept(self) -> torch.Tensor | None:
        """Where the weights are frozen as kept (bool), or None when nothing is frozen."""
        return None if self.frozen_offset is None else self.frozen_offset == math.inf

    def ranked_scores(self) -> torch.Tensor:
        """The scores as the top-k sees them: frozen-kept at +inf, frozen-pruned at -inf (detached)."""
        s = self.scores.detach()
        return s if self.frozen_offset is None else s + self.frozen_offset

    def _coat_sum(self, dtype: torch.dtype) -> torch.Tensor:
        ranked = self.ranked_scores()
        t = self.thresholds()
        count = (ranked >= t[0]).to(dtype)
        for i in range(1, self.coats):
            count.add_(ranked >= t[i])
        return count

    def thresholds(self) -> torch.Tensor:
        """One threshold per coat, outermost (lowest) first."""
        if self.global_threshold is not None:
            return self.global_threshold.values()
        ks = _coat_counts(self.scores.numel(), self.coat_keeps, self.n_frozen_kept, self.n_frozen_pruned)
        return _kth_largest_values(self.ranked_scores(), ks)

    def coat_count(self) -> torch.Tensor:
        """Per weight, how many coats keep it (uint8, 0..coats); 0/1 for a single-coat mask."""
        if self.is_plain:
            return self.hard_mask().to(torch.uint8)
        with torch.no_grad():
            return self._coat_sum(torch.uint8)

    def hard_mask(self) -> torch.Tensor:
        """The deterministic mask: what evaluation, bake and export use. Float 0/1, or for a multicoated mask
        the coat count / coats in {0, 1/K, ..., 1}; nonzero exactly where the outermost coat keeps a weight."""
        key = (self.scores._version, self.global_threshold is None)
        if self._cache_key == key and self._cache is not None and self.global_threshold is None:
            return self._cache
        with torch.no_grad():
            if self.method == "edge-popup" and self.is_plain:
                m = (self.scores.detach() >= self.threshold()).to(self.scores.dtype)
            elif self.method == "edge-popup":
                m = self._coat_sum(self.scores.dtype)
                if self.coats > 1:
                    m.div_(self.coats)
            else:
                m = ((self.scores >= 0) if self.keep_ties else (self.scores > 0)).to(self.scores.dtype)
        self._cache_key, self._cache = key, m
        return m

    def mask_for_forward(self) -> torch.Tensor:
        """The mask as the forward sees it, with its straight-through gradient (for inspection and tests)."""
        if self.method == "edge-popup":
            return _MaskedWeight.apply(torch.ones_like(self.scores), self.scores, self.hard_mask(), self.unfrozen)
        if not self.training:
            return self.hard_mask()
        p = torch.sigmoid(self.scores / self.temperature)
        with torch.no_grad():
            if self.threshold_forward:
                sample = self.hard_mask()
            else:
                sample = (torch.rand(p.shape, generator=self._sampler(p.device), device=p.device) < p).to(p.dtype)
        return p + (sample - p).detach()

    def masked(self, w: torch.Tensor) -> torch.Tensor:
        if self.method == "edge-popup":
            return _MaskedWeight.apply(w, self.scores, self.hard_mask(), self.unfrozen)
        if not self.training:
            return w * self.hard_mask()
        if self.threshold_forward:
            with torch.no_grad():
                p = (self.scores / self.temperature).sigmoid_()
            return _SampledWeight.apply(w, self.scores, self.hard_mask(), p, self.temperature)
        if self.users > 1 and self._sample_key == self.scores._version and self._sample is not None:
            sample, p = self._sample  # a tied weight: every use within one step sees the same sample
        else:
            with torch.no_grad():
                # in place where possible: each pass over all weights costs as much as a dense layer's bias step
                p = (self.scores / self.temperature).sigmoid_()
                # float 0/1, same draws as `rand < p`
                sample = torch.rand(p.shape, generator=self._sampler(p.device), device=p.device).lt_(p)
            if self.users > 1:
                self._sample_key, self._sample = self.scores._version, (sample, p)
        return _SampledWeight.apply(w, self.scores, sample, p, self.temperature)

    def _sampler(self, device: torch.device) -> torch.Generator:
        """The sampling stream on the scores' device: the seeded CPU generator on the CPU; on a GPU one of its own
        seeded alike (a different stream: annealed masks on a GPU are reproducible there, not equal to the CPU's)."""
        if device.type == "cpu":
            return self._gen
        if self._device_gen is None or self._device_gen.device != device:
            self._device_gen = torch.Generator(device=device).manual_seed(self._sample_seed)
        return self._device_gen

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
        """Fraction of weights kept by any coat."""
        return float((self.hard_mask() != 0).float().mean())


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class MaskRule:
    """How one layer kind carries a mask over its `weight`: its label in coverage summaries and its fan-in (the
    number of inputs each output sums over, which scales the initial scores)."""

    kind: str
    fan_in: Callable[[tuple[int, ...]], int]


def _fan_in_trailing(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:]) if len(shape) > 1 else 1


#: Layer class -> its mask rule (subclasses match too). transformers' Conv1D is matched by name in `mask_rule` so
#: that sltlab never imports transformers for a model that has none.
MASK_RULES: dict[type, MaskRule] = {
    nn.Linear: MaskRule("Linear", _fan_in_trailing),
    nn.Embedding: MaskRule("Embedding", _fan_in_trailing),
    nn.Conv1d: MaskRule("Conv1d", _fan_in_trailing),
    nn.Conv2d: MaskRule("Conv2d", _fan_in_trailing),
    nn.Conv3d: MaskRule("Conv3d", _fan_in_trailing),
}
_HF_CONV1D = MaskRule("Conv1D", lambda shape: shape[0])  # weight [in, out]: y = x @ W + b


def register_mask_rule(cls: type[nn.Module], rule: MaskRule) -> None:
    """Let supermasks and IMP masks attach to the `weight` of another layer class (and its subclasses)."""
    MASK_RULES[cls] = rule


def mask_rule(module: nn.Module) -> MaskRule | None:
    """The mask rule of a module's kind, or None when sltlab has none."""
    for cls in type(module).__mro__:
        if cls in MASK_RULES:
            return MASK_RULES[cls]
        if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers."):
            return _HF_CONV1D
    return None


def _holds_weight(module: nn.Module) -> str | None:
    """The name of a parameter of two or more dimensions the module holds itself (a weight), or None."""
    for name, p in module.named_parameters(recurse=False):
        if p.ndim >= 2:
            return name
    return None


def _original(module: nn.Module) -> nn.Parameter | None:
    """The unparametrized weight Parameter of a parametrized module."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return module.parametrizations.weight.original


def maskable_groups(
    model: nn.Module, targets: tuple[str, ...], exclude: tuple[str, ...]
) -> list[list[tuple[str, nn.Module]]]:
    """The weights to mask, one group per weight Parameter: its users (name, module) in module order, the first
    being the owner (whose name names the mask). A group is chosen when any user matches `targets` and not
    `exclude` (fnmatch over module names); its tied users come along. Weights already parametrized are skipped.

    Raises ConfigError for a targeted module of a kind without a mask rule that holds a weight, for a tied weight
    that is targeted through one user and excluded through another, and for a targeted weight tied to one that an
    earlier call already masked."""
    groups: dict[Any, list[tuple[str, nn.Module]]] = {}
    chosen: set[Any] = set()
    excluded: dict[Any, str] = {}
    masked_originals = {id(o): n for n, m in model.named_modules() if (o := _original(m)) is not None}
    for name, m in model.named_modules():
        if "parametrizations" in name.split("."):
            continue  # the inside of an existing parametrization (its scores are not a weight)
        targeted = _matches(name, targets) and not _matches(name, exclude)
        rule = mask_rule(m)
        if rule is None:
            held = _holds_weight(m) if targeted and not is_norm(m) else None
            if held is not None:
                raise ConfigError(
                    "mask.targets",
                    f"module {name or '(the model itself)'!r} is a {type(m).__name__}, a layer kind with no mask "
                    f"rule, and holds the weight {held!r}",
                    f"exclude it (exclude=['{name}']), narrow targets, or register_mask_rule({type(m).__name__}, ...)",
                )
            continue
        if parametrize.is_parametrized(m, "weight"):
            continue
        w = m.weight
        if id(w) in masked_originals:
            if targeted:
                raise ConfigError(
                    "mask.targets",
                    f"{name!r} shares its weight with {masked_originals[id(w)]!r}, which is already masked",
                    "mask all users of a tied weight in one call (a tied weight has one mask)",
                )
            continue
        # a folded layer (nn.transformer.OWN_MASK) shares its owner's weight but wants its own mask
        key = (id(w), name) if getattr(m, OWN_MASK, False) else id(w)
        groups.setdefault(key, []).append((name, m))
        if targeted:
            chosen.add(key)
        elif _matches(name, exclude):
            excluded[key] = name
    for key in chosen & set(excluded):
        raise ConfigError(
            "mask.exclude",
            f"{excluded[key]!r} is excluded but shares its weight with {groups[key][0][0]!r}, which is targeted",
            "a tied weight has one mask: target or exclude all of its users",
        )
    return [users for key, users in groups.items() if key in chosen]


def maskable_layers(
    model: nn.Module, targets: tuple[str, ...], exclude: tuple[str, ...]
) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers whose weights `maskable_groups` chooses, the owner of each tied weight only:
    the one rule supermasks and IMP's prune masks both attach by."""
    return [users[0] for users in maskable_groups(model, targets, exclude)]


def register_weight_mask(users: Sequence[tuple[str, nn.Module]], mask: nn.Module) -> None:
    """Parametrize the weight of every user of one (possibly tied) weight with the same `mask` module."""
    for _, module in users:
        parametrize.register_parametrization(module, "weight", mask, unsafe=True)
    if isinstance(mask, Supermask):
        mask.users = len(users)


@dataclass(frozen=True)
class KindCoverage:
    """One layer kind's weights in a model: how many layers and scalars, and how many of them carry a mask."""

    layers: int
    masked_layers: int
    weights: int
    masked_weights: int


@dataclass(frozen=True)
class MaskCoverage:
    """What carries a mask: `masked` of the model's `total` parameters (scores and scales not counted; a tied
    weight counted once), per layer kind, and the tied weights (owner -> the other users)."""

    masked: int
    total: int
    kinds: dict[str, KindCoverage]
    tied: dict[str, tuple[str, ...]]

    @property
    def share(self) -> float:
        return self.masked / max(self.total, 1)

    def __str__(self) -> str:
        parts = [
            f"{k} {c.masked_weights:,}/{c.weights:,} ({c.masked_layers}/{c.layers} layers)"
            for k, c in sorted(self.kinds.items())
        ]
        line = f"masked {self.masked:,} of {self.total:,} parameters ({100 * self.share:.1f}%): " + ", ".join(parts)
        if self.tied:
            line += "; tied, one mask each: " + ", ".join(f"{o} = {', '.join(u)}" for o, u in self.tied.items())
        return line


def mask_coverage(model: nn.Module) -> MaskCoverage:
    """Which weights of `model` carry a weight parametrization (a supermask or an IMP prune mask), per kind."""
    mask_params = {id(p) for m in model.modules() if isinstance(m, Supermask) for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters() if id(p) not in mask_params)
    seen: dict[int, str] = {}
    tied: dict[str, list[str]] = {}
    acc: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        rule = mask_rule(m)
        if rule is None:
            continue
        orig = _original(m)
        w = orig if orig is not None else m.weight
        if id(w) in seen:
            tied.setdefault(seen[id(w)], []).append(name)
            continue
        seen[id(w)] = name
        a = acc.setdefault(rule.kind, [0, 0, 0, 0])
        a[0] += 1
        a[2] += w.numel()
        if orig is not None:
            a[1] += 1
            a[3] += w.numel()
    kinds = {k: KindCoverage(*v) for k, v in acc.items()}
    return MaskCoverage(sum(c.masked_weights for c in kinds.values()), total, kinds,
                        {k: tuple(v) for k, v in tied.items()})


def _init_scores(cfg: SupermaskConfig, name: str, shape: tuple[int, ...], fan_in: int | None = None) -> torch.Tensor:
    if cfg.score_init is not None:
        return torch.full(shape, float(cfg.score_init), dtype=torch.float32)
    if fan_in is None:
        fan_in = _fan_in_trailing(shape)
    bound = 1.0 / math.sqrt(fan_in)
    s = seeded_uniform(cfg.seed, name, shape, "scores", -bound, bound)
    if cfg.method == "annealed":
        # Centre the scores so that sigmoid(s / T0) starts at the kept fraction: the first samples have density keep.
        keep = min(max(cfg.keep, 1e-4), 1 - 1e-4)
        s = s / bound * 0.5 * cfg.temperature + cfg.temperature * math.log(keep / (1 - keep))
    return s


def apply_supermask(model: nn.Module, cfg: SupermaskConfig) -> MaskCoverage:
    """Attach supermasks to the weights of the layers of `model` whose names match cfg.targets (fnmatch), minus
    cfg.exclude; one mask per tied weight. Freezes every parameter, then frees scores, scales, norm affine
    (cfg.train_norm) and the parameters whose names match cfg.free. Modifies `model` in place and returns its
    coverage (masked / all parameters, per layer kind)."""
    for p in model.parameters():
        p.requires_grad_(False)
    groups = maskable_groups(model, cfg.targets, cfg.exclude)
    if not groups:
        raise ConfigError("mask.targets", f"no maskable layer (Linear, Embedding, Conv) matches {list(cfg.targets)}",
                          "fnmatch patterns over module names, e.g. '*attn*' or 'stack.blocks.*'")
    coat_keeps = cfg.resolved_coat_keeps() if cfg.coats > 1 else ()
    shared = (GlobalThreshold(cfg.keep, coat_keeps) if cfg.scope == "global" and cfg.method == "edge-popup"
              else None)
    for i, users in enumerate(groups):
        name, module = users[0]
        w = module.weight
        heads = getattr(module, "_sltlab_heads", None)
        rule = mask_rule(module)
        assert rule is not None
        scores = _init_scores(cfg, canonical_name(name), tuple(w.shape), rule.fan_in(tuple(w.shape)))
        frozen = None
        if cfg.frozen_pruned > 0 or cfg.frozen_kept > 0:
            frozen = frozen_pattern(cfg.frozen_seed, canonical_name(name), tuple(w.shape), cfg.frozen_pruned,
                                    cfg.frozen_kept, cfg.keep)
        sm = Supermask(w.shape, cfg.method, cfg.keep, scores, cfg.scale if cfg.scale != "head" or heads else "layer",
                       heads, cfg.temperature, sample_seed=cfg.seed * 1_000_003 + i, coat_keeps=coat_keeps,
                       frozen=frozen)
        sm.threshold_forward = cfg.method == "annealed" and cfg.forward_mask == "threshold"
        sm.keep_ties = cfg.score_init is not None
        if shared is not None:
            sm.global_threshold = shared
            shared.members.append(sm)
        register_weight_mask(users, sm)
        module.parametrizations.weight.original.requires_grad_(False)
    for module in model.modules():
        if cfg.train_norm and is_norm(module):
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
    if cfg.free:
        for name, p in model.named_parameters():
            if _matches(canonical_name(name), cfg.free):
                p.requires_grad_(True)
    # Recorded so that a Hugging Face ticket (sltlab.tickets.hf.save_ticket) can rebuild the same masks.
    model._sltlab_supermask = cfg
    return mask_coverage(model)


@torch.no_grad()
def set_keep(model: nn.Module, keep: float) -> None:
    """Change the kept fraction of every edge-popup supermask of `model` (a density schedule), invalidating the
    cached thresholds and masks. Plain single-coat masks only."""
    if not (0.0 < keep <= 1.0):
        raise ConfigError("mask.keep", f"kept fraction {keep} is outside (0, 1]", "a number in (0, 1]")
    for sm in supermasks(model).values():
        if sm.method != "edge-popup" or not sm.is_plain:
            raise ConfigError("mask.keep", "a density schedule needs plain edge-popup masks", "method = 'edge-popup'")
        sm.keep = keep
        sm.coat_keeps = (keep,)
        sm._cache_key = None
        if sm.global_threshold is not None:
            sm.global_threshold.keep = keep
            sm.global_threshold.coat_keeps = (keep,)
            sm.global_threshold._key = sm.global_threshold._values_key = None


def weight_parametrizations(model: nn.Module, kind: type[P]) -> dict[str, P]:
    """Module name -> its weight parametrization of type `kind` (Supermask, IMP's PruneMask), in module order; a
    tied weight's appears once, under its owner's name."""
    out: dict[str, P] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, kind) and id(p) not in seen:  # a tied weight's mask is listed once, by its owner
                    seen.add(id(p))
                    out[name] = p
    return out


def supermasks(model: nn.Module) -> dict[str, Supermask]:
    """Module name -> its Supermask, in module order."""
    return weight_parametrizations(model, Supermask)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> boolean mask (the deterministic one; for a multicoated mask, where any coat keeps)."""
    return {name: sm.hard_mask().bool() for name, sm in supermasks(model).items()}


def get_coat_counts(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> how many coats keep each weight (uint8; 0/1 for single-coat masks)."""
    return {name: sm.coat_count() for name, sm in supermasks(model).items()}


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
    remove_weight_parametrizations(model)
    model.train(was_training)
    return model


@torch.no_grad()
def remove_weight_parametrizations(model: nn.Module, freeze: bool = True) -> None:
    """Write every parametrized weight as a plain tensor (frozen if `freeze`) and drop the parametrizations, in
    place. A tied
    weight stays tied: its other users are unhooked first (so the mask is applied once, not once per user) and end
    up holding the owner's Parameter."""
    owners: dict[int, nn.Module] = {}
    followers: list[tuple[nn.Module, int]] = []
    for module in list(model.modules()):
        orig = _original(module)
        if orig is None:
            continue
        if id(orig) in owners:
            followers.append((module, id(orig)))
        else:
            owners[id(orig)] = module
    for module, _ in followers:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    for module in owners.values():
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        if freeze:
            module.weight.requires_grad_(False)
    for module, key in followers:
        module.weight = owners[key].weight
