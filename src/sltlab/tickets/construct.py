"""Constructed tickets: the proof's recipe (Otsuka et al. 2025) for a mask inside a wider random attention.

Why construct at all: gradient search (edge-popup, annealed) finds masks whose error usually falls like a
power of the source width. The theory instead *builds* a ticket whose error falls exponentially once the width
passes a threshold. Building it with open tools lets a study put the two curves side by side.

The building block is the two-layers-for-one construction for a linear map W (out x in) by a product of two
pruned random matrices, W ~ (B * M_B) @ (A * M_A) * scale, with A: n x in and B: out x n:
1. each input coordinate j gets a block of n' = n // in hidden units; the first mask M_A keeps exactly one
   connection per hidden unit (unit i of block j keeps A[i, j]); units past d * n' are pruned entirely;
2. output entry (l, j) then is sum_{i in block j} M_B[l, i] * B[l, i] * A[i, j] * scale: a subset-sum over
   the n' candidate products of block j, solved per entry, independently of every other entry.

Attention has two such products per head, the merged matrices of the proof:
- W_QK,h = W_Q,h^T W_K,h / sqrt(n_k) (d x d; q-side is A, k-side is B, scale 1 / sqrt(width) in the source);
- W_VO,h = W_O,h W_V,h (d x d; v-side is A, o-side is B).
The source's attention logits and values then equal the target's up to the subset-sum errors, for any input.

Subset-sum solvers (one per entry; the one used is recorded):
- "mitm": exact meet-in-the-middle (all 2^(n'/2) half sums, sorted, nearest match), fast to n' ~ 24;
- "milp": exact mixed-integer programme with scipy's HiGHS (min |c.z - t|, z binary, two slacks) under a
  time limit per entry; a time-limited incumbent is kept ("milp-timelimit") unless greedy is closer, and with
  no incumbent the vectorised greedy answers ("greedy-fallback");
- "greedy": vectorised largest-first greedy plus single-flip improvement (no optimality guarantee);
- "auto": mitm up to `mitm_max` candidates, milp beyond.

The ReLU MLP (Pensia et al. 2020; da Cunha et al. 2022; Burkholz 2022). A target linear map W (out x in) is
realised by two pruned random layers with a ReLU between, b(relu(a x)), through W x = W relu(x) - W relu(-x):
hidden unit i of input block j keeps only a[i, j]; if a[i, j] > 0 it carries a[i, j] relu(x_j), if < 0 it
carries |a[i, j]| relu(-x_j). Entry (l, j) is then two subset-sums with the same target W[l, j] over the
candidates b[l, i] a[i, j]: one over block j's positive units (S+), one over its negative units (S-), and the
pair computes exactly S+ relu(x) - S- relu(-x) (`construct_relu_pair`). After a ReLU the input is >= 0, so the
second map of the MLP needs S+ only (negative units are pruned: they always output 0). The target's MLP
W2 relu(W1 x) therefore needs the source's PairedMLP (sltlab.nn.theory: two random layers per target layer,
`construct_mlp`); a standard random MLP of one hidden layer holds no such ticket and is refused.

Blocks and norms (`construct_ticket`). A block's ticket is its attention's ticket and its MLP's ticket; the
residuals are shared arithmetic. A norm in the target (none / pre / post, LayerNorm or RMSNorm) is the same
function in the source, so nothing is constructed for it when its affine is the identity. With a target gain and
bias: an LN-integrated ticket (the source's norm affine is free) copies them, exactly; a frozen source norm takes
a pre-norm's gain in closed form, folded into the maps that read the norm (W_QK -> diag(g) W_QK diag(g),
W_VO -> W_VO diag(g), W1 -> W1 diag(g)); a bias, or a post-norm's affine, has no closed form in a bias-free
source and is refused with the variant that holds it ("+affine").

What the construction guarantees through a LayerNorm, and what it does not. It realises every sublayer's
*weights* to the subset-sum error, whatever the input: the source's merged attention matrices and MLP maps equal
the target's up to per-entry errors that fall exponentially with the width once every entry is in range. It does
not make the *block's output* error small by itself: a norm's Jacobian at x is g/sigma(x) times a projection
(norm <= max|g| / sqrt(sigma(x)^2 + eps), sigma the input's standard deviation, its RMS for RMSNorm), so an error
e reaching a norm leaves it at most max|g| |e| / sqrt((sigma(x) - |e|/sqrt(d))_+^2 + eps). On inputs of bounded
variance (sigma >= s0 > 0) that is a constant factor per norm; near sigma = 0 (a token whose coordinates are
almost equal, e.g. after rank collapse) one norm multiplies the error by up to |g|/sqrt(eps) ~ 300x. Attention is
not globally Lipschitz either (its logits are quadratic in the input), so the error after B blocks obeys
e_b <= delta_b + L_b e_(b-1): the block's own construction error delta_b plus the target block's local
amplification L_b of the error it receives, both bounded in closed form from the construction's matrix errors,
the target's weights and activations (sltlab.tickets.bound states and evaluates the bound).
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from sltlab.errors import ConfigError
from sltlab.tickets.supermask import Supermask, supermasks

SOLVERS = ("auto", "mitm", "milp", "greedy")


class NormAssumptionWarning(UserWarning):
    """The target's weights exceed what the theory's norm assumption allows for this source's init scale."""


@dataclass(frozen=True)
class ConstructConfig:
    """How the per-entry subset-sum problems are solved.

    solver: auto | mitm | milp | greedy (see the module docstring).
    time_limit: seconds per entry for the MILP solver; 0 makes every MILP call fall back (used by tests).
    mitm_max: with solver auto, the most candidates solved by exact meet-in-the-middle (2^(n/2) memory).
    warn: emit NormAssumptionWarning when target entries exceed the theory's bound for the source scale.
    """

    solver: str = "auto"
    time_limit: float = 1.0
    mitm_max: int = 24
    warn: bool = True

    def validate(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError("construct.solver", f"unknown solver {self.solver!r}", " | ".join(SOLVERS))
        if not (self.time_limit >= 0 and math.isfinite(self.time_limit)):
            raise ConfigError(
                "construct.time_limit",
                f"{self.time_limit} is not a usable time limit",
                "seconds >= 0 per entry, e.g. 1.0",
            )
        if not (1 <= self.mitm_max <= 40):
            raise ConfigError(
                "construct.mitm_max",
                f"{self.mitm_max} is out of range",
                "an integer in [1, 40] (memory grows as 2^(mitm_max/2) per entry)",
            )

    def __post_init__(self) -> None:
        self.validate()


# ----------------------------------------------------------------------------------------------------
# Subset-sum solvers. C: (E, m) candidates, T: (E,) targets. Each returns Z: (E, m) bool.
# ----------------------------------------------------------------------------------------------------


def greedy_subset_sums(C: np.ndarray, T: np.ndarray, improve: bool = True) -> np.ndarray:
    """Largest |c| first, take a candidate when it brings the sum closer; then single flips while they help.

    Vectorised over all entries at once, so it is the cheap baseline and the fallback when MILP gives nothing.
    """
    C = np.asarray(C, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    E, m = C.shape
    Z = np.zeros((E, m), dtype=bool)
    if m == 0:
        return Z
    rows = np.arange(E)
    order = np.argsort(-np.abs(C), axis=1)
    s = np.zeros(E)
    for k in range(m):
        col = order[:, k]
        new = s + C[rows, col]
        take = np.abs(T - new) < np.abs(T - s)
        s = np.where(take, new, s)
        Z[rows[take], col[take]] = True
    if improve:
        for _ in range(m):
            delta = np.where(Z, -C, C)  # change of the sum if entry i flips
            err_new = np.abs(T[:, None] - s[:, None] - delta)
            best = err_new.argmin(axis=1)
            better = err_new[rows, best] < np.abs(T - s) - 1e-15
            if not better.any():
                break
            r = rows[better]
            s[r] += delta[r, best[better]]
            Z[r, best[better]] ^= True
    return Z


def _half_sums(c: np.ndarray) -> np.ndarray:
    """All 2^k subset sums of c (k = len(c)); entry `code` is the sum of the c[i] whose bit i is set in code."""
    sums = np.zeros(1)
    for v in c:  # doubling: the sums without c[i], then with it (bit i set)
        sums = np.concatenate([sums, sums + v])
    return sums


def _bits(code: int, k: int) -> np.ndarray:
    return ((code >> np.arange(k)) & 1).astype(bool)


def mitm_subset_sum(c: np.ndarray, t: float) -> np.ndarray:
    """The exact optimum of min_z |c.z - t| by meet-in-the-middle: O(2^(m/2) log) time and memory."""
    c = np.asarray(c, dtype=np.float64)
    m = len(c)
    if m == 0:
        return np.zeros(0, dtype=bool)
    h = m // 2
    sa = _half_sums(c[:h])
    sb = _half_sums(c[h:])
    order = np.argsort(sb)
    sb_sorted = sb[order]
    need = t - sa
    idx = np.searchsorted(sb_sorted, need)
    lo = np.clip(idx - 1, 0, len(sb_sorted) - 1)
    hi = np.clip(idx, 0, len(sb_sorted) - 1)
    err_lo = np.abs(need - sb_sorted[lo])
    err_hi = np.abs(need - sb_sorted[hi])
    pick = np.where(err_lo <= err_hi, lo, hi)
    err = np.minimum(err_lo, err_hi)
    a = int(err.argmin())
    b = int(order[pick[a]])
    return np.concatenate([_bits(a, h), _bits(b, m - h)])


def milp_subset_sum(c: np.ndarray, t: float, time_limit: float) -> tuple[np.ndarray | None, bool]:
    """min e+ + e- s.t. c.z - e+ + e- = t, z binary, with HiGHS. Returns (z or None, proven optimal).

    The problem is rescaled to unit-size candidates first: HiGHS's absolute tolerances (1e-6) would otherwise
    floor the error of small targets.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    c = np.asarray(c, dtype=np.float64)
    m = len(c)
    if m == 0:
        return np.zeros(0, dtype=bool), True
    s = 1.0 / max(float(np.abs(c).max()), abs(t), 1e-300)
    obj = np.r_[np.zeros(m), 1.0, 1.0]
    a = np.r_[c * s, -1.0, 1.0][None, :]
    res = milp(
        obj,
        constraints=LinearConstraint(a, t * s, t * s),
        integrality=np.r_[np.ones(m), 0, 0],
        bounds=Bounds(np.zeros(m + 2), np.r_[np.ones(m), np.inf, np.inf]),
        options={"time_limit": float(time_limit), "mip_rel_gap": 0.0},
    )
    if res.x is None:
        return None, False
    return np.round(res.x[:m]).astype(bool), res.status == 0


def solve_subset_sums(
    C: np.ndarray, T: np.ndarray, cfg: ConstructConfig, progress: bool = False, desc: str = "subset-sum"
) -> tuple[np.ndarray, list[str]]:
    """Solve every entry's subset-sum. Returns (Z (E, m) bool, the solver label of each entry)."""
    C = np.asarray(C, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    E, m = C.shape
    solver = cfg.solver
    if solver == "auto":
        solver = "mitm" if m <= cfg.mitm_max else "milp"
    if solver == "greedy" or m == 0:
        return greedy_subset_sums(C, T), ["greedy"] * E
    Z = np.zeros((E, m), dtype=bool)
    labels: list[str] = []
    greedy = greedy_subset_sums(C, T) if solver == "milp" else None
    for e in tqdm(range(E), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        if solver == "mitm":
            Z[e] = mitm_subset_sum(C[e], T[e])
            labels.append("mitm")
            continue
        z, optimal = milp_subset_sum(C[e], T[e], cfg.time_limit)
        assert greedy is not None
        if z is None:
            Z[e], label = greedy[e], "greedy-fallback"
        elif optimal:
            Z[e], label = z, "milp"
        else:
            # A time-limited incumbent is not proven optimal: keep whichever of it and greedy is closer.
            better = abs(C[e] @ greedy[e] - T[e]) < abs(C[e] @ z - T[e])
            Z[e], label = (greedy[e], "greedy-fallback") if better else (z, "milp-timelimit")
        labels.append(label)
    return Z, labels


# ----------------------------------------------------------------------------------------------------
# The linear-layer construction (the building block).
# ----------------------------------------------------------------------------------------------------


@dataclass
class LinearConstruction:
    """Masks realising target W (out x in) as (B * mask_b) @ (A * mask_a) * scale, and how well they do it."""

    mask_a: torch.Tensor  # (n, in) bool
    mask_b: torch.Tensor  # (out, n) bool
    approx: torch.Tensor  # (out, in) the realised product
    labels: list[str]
    max_abs_error: float
    rel_error: float  # Frobenius, relative to the target
    unreachable: int  # entries outside [sum of negative candidates, sum of positive candidates]


def _chain(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor, hidden: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """target (out x in), first layer a (h x in), second b (out x h) as float64 arrays, checked to chain; the hidden
    unit of (input block j, slot i), h // in units per input coordinate, and a's entry that feeds it."""
    W = target.detach().double().cpu().numpy()
    A = a.detach().double().cpu().numpy()
    B = b.detach().double().cpu().numpy()
    out_dim, in_dim = W.shape
    h = A.shape[0]
    if A.shape[1] != in_dim or B.shape != (out_dim, h):
        raise ConfigError(
            "construct.shapes",
            f"target {W.shape}, first {A.shape}, second {B.shape} do not chain",
            f"target (out, in), first ({hidden}, in), second (out, {hidden})",
        )
    per = h // in_dim
    unit = np.arange(in_dim)[:, None] * per + np.arange(per)[None, :]  # (in, per)
    return W, A, B, unit, A[unit, np.arange(in_dim)[:, None]]


def construct_linear(
    target: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float = 1.0,
    cfg: ConstructConfig | None = None,
    progress: bool = False,
    desc: str = "linear",
) -> LinearConstruction:
    """Masks on A (n x in) and B (out x n) so that (B*Mb) @ (A*Ma) * scale approximates target (out x in)."""
    cfg = cfg or ConstructConfig()
    W, A, B, idx, a_sel = _chain(target, a, b, "n")
    out_dim, in_dim = W.shape
    n, m = A.shape[0], idx.shape[1]  # m = n': hidden units per input coordinate
    # Candidates C[l, j, i] = B[l, j*m + i] * A[j*m + i, j] * scale.
    C = B[:, idx] * a_sel[None] * scale  # (out, in, m)
    Cf, Tf = C.reshape(out_dim * in_dim, m), W.reshape(-1)
    Z, labels = solve_subset_sums(Cf, Tf, cfg, progress=progress, desc=desc)
    approx = (Cf * Z).sum(1).reshape(out_dim, in_dim)
    lo = np.where(Cf < 0, Cf, 0).sum(1)
    hi = np.where(Cf > 0, Cf, 0).sum(1)
    unreachable = int(((Tf < lo - 1e-12) | (Tf > hi + 1e-12)).sum())
    mask_a = np.zeros((n, in_dim), dtype=bool)
    mask_a[idx, np.arange(in_dim)[:, None]] = True
    mask_b = np.zeros((out_dim, n), dtype=bool)
    mask_b[:, idx.reshape(-1)] = Z.reshape(out_dim, in_dim * m)
    err = approx - W
    return LinearConstruction(
        mask_a=torch.from_numpy(mask_a),
        mask_b=torch.from_numpy(mask_b),
        approx=torch.from_numpy(approx),
        labels=labels,
        max_abs_error=float(np.abs(err).max()),
        rel_error=float(np.linalg.norm(err) / max(np.linalg.norm(W), 1e-300)),
        unreachable=unreachable,
    )


@dataclass
class PairConstruction:
    """Masks realising target W (out x in) as b(relu(a x)) * scale, and how well: the pair computes exactly
    plus @ relu(x) - minus @ relu(-x) (for input >= 0 only `plus` matters; `minus` is then the target)."""

    mask_a: torch.Tensor  # (p, in) bool: at most one kept entry per hidden unit
    mask_b: torch.Tensor  # (out, p) bool
    plus: torch.Tensor  # (out, in) realised map on relu(x)
    minus: torch.Tensor  # (out, in) realised map on -relu(-x)
    labels: list[str]
    max_abs_error: float
    rel_error: float  # Frobenius over both halves (signed) or the plus half, relative to the target
    unreachable: int


def construct_relu_pair(
    target: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    signed: bool = True,
    scale: float = 1.0,
    cfg: ConstructConfig | None = None,
    progress: bool = False,
    desc: str = "relu pair",
) -> PairConstruction:
    """Masks on a (p x in) and b (out x p) so that b relu(a x) * scale ~ target x (see the module docstring).

    signed: the input takes both signs (two subset-sums per entry, over the positive and the negative units of
    the coordinate's block); False: the input is >= 0 (after a ReLU), so only the positive units are kept.
    """
    cfg = cfg or ConstructConfig()
    W, A, B, unit, a_sel = _chain(target, a, b, "p")
    out_dim, in_dim = W.shape
    p = A.shape[0]
    signs = (1, -1) if signed else (1,)
    mask_a = np.zeros((p, in_dim), dtype=bool)
    mask_b = np.zeros((out_dim, p), dtype=bool)
    realised = {1: np.zeros_like(W), -1: W.copy()}  # without a negative half, minus is the target by definition
    labels: list[str] = []
    unreachable = 0
    for sign in signs:
        realised[sign] = np.zeros_like(W)
        for j in range(in_dim):
            # Block j's units of this sign: one subset-sum per output row over their candidates b[l, i] a[i, j].
            # Each block is solved with its own candidate count (no padding: meet-in-the-middle costs 2^(m/2)).
            units = unit[j][(a_sel[j] > 0) if sign > 0 else (a_sel[j] < 0)]
            C = B[:, units] * A[units, j][None, :] * scale  # (out, m)
            Z, lab = solve_subset_sums(C, W[:, j], cfg, progress=progress,
                                       desc=f"{desc} {'+' if sign > 0 else '-'}{j}")
            labels += lab
            realised[sign][:, j] = (C * Z).sum(1)
            lo, hi = np.where(C < 0, C, 0).sum(1), np.where(C > 0, C, 0).sum(1)
            unreachable += int(((W[:, j] < lo - 1e-12) | (W[:, j] > hi + 1e-12)).sum())
            mask_a[units, j] = True
            mask_b[:, units] = Z
    errs = [realised[sg] - W for sg in signs]
    max_abs = max(float(np.abs(e).max()) if e.size else 0.0 for e in errs)
    rel = float(np.sqrt(sum((e**2).sum() for e in errs) / len(signs)) / max(np.linalg.norm(W), 1e-300))
    return PairConstruction(
        mask_a=torch.from_numpy(mask_a),
        mask_b=torch.from_numpy(mask_b),
        plus=torch.from_numpy(realised[1]),
        minus=torch.from_numpy(realised[-1]),
        labels=labels,
        max_abs_error=max_abs,
        rel_error=rel,
        unreachable=unreachable,
    )


# ----------------------------------------------------------------------------------------------------
# Fixed masks on supermask parametrizations.
# ----------------------------------------------------------------------------------------------------


def raw_weight(linear: nn.Module) -> torch.Tensor:
    """The unmasked random weight of a (possibly parametrized) Linear."""
    if parametrize.is_parametrized(linear, "weight"):
        return linear.parametrizations.weight.original.detach()
    return linear.weight.detach()


@torch.no_grad()
def set_fixed_mask(sm: Supermask, mask: torch.Tensor) -> None:
    """Make `sm.hard_mask()` return exactly `mask` (the "fixed mask" facility for constructed tickets).

    edge-popup keeps the top `keep` fraction of |scores|: scores = mask (1 kept, 0 pruned) with keep = density
    puts the threshold at 1. An all-zero mask cannot be expressed that way (edge-popup keeps at least one
    weight): one weight is kept and the supermask's scale set to 0, the same effective weight (refused if the
    supermask has no scale). annealed keeps scores > 0: scores = 2*mask - 1. A search started from here (warm
    start) moves the scores as usual.
    """
    mask = mask.to(torch.bool)
    if sm.global_threshold is not None:
        raise ConfigError("mask.scope", "a constructed mask needs per-layer thresholds", "layer")
    if not sm.is_plain:
        # a constructed mask is binary and free everywhere; coats or frozen parts would silently change it
        raise ConfigError("mask.coats" if sm.coats > 1 else "mask.frozen_pruned",
                          "a constructed mask cannot be fixed on a multicoated or partially frozen supermask",
                          "coats = 1 and frozen_pruned = frozen_kept = 0")
    if mask.shape != sm.scores.shape:
        raise ConfigError(
            "construct.mask", f"mask shape {tuple(mask.shape)} != weight {tuple(sm.scores.shape)}"
        )
    if sm.method == "annealed":
        sm.scores.copy_(mask.to(sm.scores.dtype) * 2 - 1)
    else:
        k = int(mask.sum())
        if k == 0:
            # edge-popup keeps at least one weight; an empty layer is "keep one, scale it to zero" instead.
            if sm.scale is None:
                raise ConfigError(
                    "mask.scale",
                    "an all-zero constructed mask needs a supermask scale to zero (edge-popup keeps one)",
                    "layer | head (study.scale), or the annealed method",
                )
            sm.scores.zero_()
            sm.scores.view(-1)[0] = 1.0
            sm.keep = 1 / mask.numel()
            sm.scale.zero_()
            sm._cache_key = None
            return
        sm.scores.copy_(mask.to(sm.scores.dtype))
        sm.keep = k / mask.numel()
    sm._cache_key = None
    got = sm.hard_mask().bool()
    if not torch.equal(got, mask):
        raise ConfigError(
            "construct.mask",
            "the supermask did not reproduce the constructed mask",
            "per-layer scope (study.scope = 'layer') for constructed tickets",
        )


def set_fixed_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Set every named module's supermask to the given boolean mask; unnamed supermasks keep everything."""
    sms = supermasks(model)
    unknown = sorted(set(masks) - set(sms))
    if unknown:
        raise ConfigError("construct.mask", f"no supermask on {unknown}", ", ".join(sms) or "a masked model")
    for name, sm in sms.items():
        set_fixed_mask(sm, masks[name] if name in masks else torch.ones_like(sm.scores, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------
# Attention.
# ----------------------------------------------------------------------------------------------------


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> MultiHeadAttention for a NormedAttention, a Stack, or anything holding such modules."""
    from sltlab.nn.transformer import MultiHeadAttention

    return {n: m for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)}


def merged_matrices(attn: nn.Module, effective: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per head, the two d x d matrices an attention really computes with, oriented for `construct_linear`:
    QK = W_K,h^T W_Q,h / sqrt(n_k) (entry (l, j) couples key coordinate l with query coordinate j; logit of
    tokens x, x' is sum_jl x_j QK[l, j] x'_l) and VO = W_O,h W_V,h (out x in: a head's output is A (x VO^T)).
    effective: from the weights the forward uses (masked and scaled), not the raw random ones.
    """
    H, nk, nv = attn.n_heads, attn.head_dim_qk, attn.head_dim_v
    pick = (lambda m: m.weight.detach()) if effective else raw_weight
    wq, wk, wv, wo = (pick(getattr(attn, n)).double() for n in "qkvo")
    qk, vo = [], []
    for h in range(H):
        q_h, k_h = wq[h * nk : (h + 1) * nk], wk[h * nk : (h + 1) * nk]
        v_h, o_h = wv[h * nv : (h + 1) * nv], wo[:, h * nv : (h + 1) * nv]
        qk.append(k_h.T @ q_h / math.sqrt(nk))
        vo.append(o_h @ v_h)
    return qk, vo


def candidate_scale(attn: nn.Module) -> tuple[float, float]:
    """The largest candidate product of the source's QK and VO sides (max|q| max|k| / sqrt(n), max|v| max|o|):
    the unit in which the theory bounds the target's merged entries (|entry| <= 1 in these units)."""
    wq, wk, wv, wo = (raw_weight(getattr(attn, n)).abs().max().item() for n in "qkvo")
    return wq * wk / math.sqrt(attn.head_dim_qk), wv * wo


def folded_merged(attn: nn.Module, gain: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The target's merged matrices with an input gain g folded in (a pre-norm's gain, see the module
    docstring): QK -> diag(g) QK diag(g), VO -> VO diag(g). gain None: `merged_matrices` unchanged."""
    qk, vo = merged_matrices(attn)
    if gain is None:
        return qk, vo
    g = gain.detach().double().cpu()
    return [g[:, None] * m * g[None, :] for m in qk], [m * g[None, :] for m in vo]


def check_norm_assumptions(
    target_attn: nn.Module, source_attn: nn.Module, where: str = "attn", gain: torch.Tensor | None = None
) -> dict[str, float]:
    """Warn when the target's merged entries exceed the theory's bound for this source's init scale.

    The subset-sum lemma approximates any value in [-1, 1] by sums of products of U[-1, 1] variables; in the
    source's units that is |entry| <= the largest candidate product. Beyond it the error need not fall with
    width as the theory says (with a too-small init scale, not until the width can add up to the entry).
    """
    qk, vo = folded_merged(target_attn, gain)
    s_qk, s_vo = candidate_scale(source_attn)
    r_qk = max(float(m.abs().max()) for m in qk) / max(s_qk, 1e-300)
    r_vo = max(float(m.abs().max()) for m in vo) / max(s_vo, 1e-300)
    if max(r_qk, r_vo) > 1.0:
        warnings.warn(
            f"{where}: target merged weights exceed the theory's norm assumption for this source scale "
            f"(max |W_QK| = {r_qk:.3g}, max |W_VO| = {r_vo:.3g} in units of the largest source product; "
            "the theory "
            "needs <= 1). The constructed error may stay high; raise source_gain or shrink the target.",
            NormAssumptionWarning,
            stacklevel=2,
        )
    return {"qk_norm_ratio": r_qk, "vo_norm_ratio": r_vo}


def construct_attention(
    target_attn: nn.Module,
    source_attn: nn.Module,
    cfg: ConstructConfig | None = None,
    progress: bool = False,
    name: str = "attn",
    gain: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Masks for the source's q, k, v, o realising the target's merged matrices, head by head (with a pre-norm
    gain folded in when `gain` is given)."""
    cfg = cfg or ConstructConfig()
    H, d = target_attn.n_heads, target_attn.q.in_features
    if source_attn.n_heads != H or source_attn.q.in_features != d:
        raise ConfigError(
            "construct.source",
            f"source has {source_attn.n_heads} heads and d={source_attn.q.in_features}"
            f", target {H} heads and d={d}",
            "the same heads and d_model",
        )
    n = source_attn.head_dim_qk
    if source_attn.head_dim_v != n:
        raise ConfigError("construct.source", "query/key and value widths differ", "n_k == n_v in the source")
    if n < d:
        # No hidden unit per input coordinate: the construction's ticket is empty (output 0), reported as such.
        warnings.warn(
            f"{name}: source width {n} < d_model {d} gives the construction no unit per coordinate; "
            "the constructed ticket is empty",
            stacklevel=2,
        )
    ratios = check_norm_assumptions(target_attn, source_attn, name, gain) if cfg.warn else {}
    qk_t, vo_t = folded_merged(target_attn, gain)
    wq, wk, wv, wo = (raw_weight(getattr(source_attn, x)) for x in "qkvo")
    masks = {x: torch.zeros_like(w, dtype=torch.bool) for x, w in zip("qkvo", (wq, wk, wv, wo), strict=True)}
    labels: list[str] = []
    errs: dict[str, list[float]] = {"qk_max": [], "qk_rel": [], "vo_max": [], "vo_rel": []}
    unreachable = 0
    for h in range(H):
        rows = slice(h * n, (h + 1) * n)
        c = construct_linear(
            qk_t[h], wq[rows], wk[rows].T, 1.0 / math.sqrt(n), cfg, progress, f"{name} qk h{h}"
        )
        masks["q"][rows] = c.mask_a
        masks["k"][rows] = c.mask_b.T
        labels += c.labels
        errs["qk_max"].append(c.max_abs_error)
        errs["qk_rel"].append(c.rel_error)
        unreachable += c.unreachable
        c = construct_linear(vo_t[h], wv[rows], wo[:, rows], 1.0, cfg, progress, f"{name} vo h{h}")
        masks["v"][rows] = c.mask_a
        masks["o"][:, rows] = c.mask_b
        labels += c.labels
        errs["vo_max"].append(c.max_abs_error)
        errs["vo_rel"].append(c.rel_error)
        unreachable += c.unreachable
    info = {
        "qk_max_abs_error": max(errs["qk_max"]),
        "vo_max_abs_error": max(errs["vo_max"]),
        "qk_rel_error": float(np.mean(errs["qk_rel"])),
        "vo_rel_error": float(np.mean(errs["vo_rel"])),
        "unreachable_entries": unreachable,
        "solver_counts": dict(Counter(labels)),
        "n_entries": len(labels),
        **ratios,
    }
    return masks, info


# ----------------------------------------------------------------------------------------------------
# The ReLU MLP, norms, and whole blocks.
# ----------------------------------------------------------------------------------------------------


def mlp_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> MLP: the transformer's standard MLP and the theory's PairedMLP."""
    from sltlab.nn.theory import PairedMLP
    from sltlab.nn.transformer import MLP

    return {n: m for n, m in model.named_modules() if isinstance(m, MLP | PairedMLP)}


def construct_mlp(
    target_mlp: nn.Module,
    source_mlp: nn.Module,
    cfg: ConstructConfig | None = None,
    progress: bool = False,
    name: str = "mlp",
    gain: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Masks for a PairedMLP source realising a ReLU MLP target W2 relu(W1 x): fc1's pair for W1 (signed input;
    with a pre-norm gain g folded in, W1 diag(g)), fc2's pair for W2 (input >= 0 after the ReLU)."""
    from sltlab.nn.theory import PairedMLP

    cfg = cfg or ConstructConfig()
    if not isinstance(source_mlp, PairedMLP):
        raise ConfigError(
            "construct.source",
            f"{name}: a random MLP of one hidden layer holds no subset-sum ticket for a ReLU MLP of the same depth",
            "the theory's PairedMLP source (study.source_mlp = 'paired'): two random layers per target layer",
        )
    act = getattr(target_mlp, "act", None)
    if not isinstance(act, nn.ReLU) or getattr(target_mlp, "square", False):
        raise ConfigError(
            "construct.target", f"{name}: the MLP construction realises a ReLU MLP, the target's activation is "
            f"{type(act).__name__}", "a target with activation = 'relu' (study.activation)",
        )
    w1, w2 = raw_weight(target_mlp.fc1).double(), raw_weight(target_mlp.fc2).double()
    if gain is not None:
        w1 = w1 * gain.detach().double().cpu()[None, :]
    if source_mlp.fc1.b.out_features != w1.shape[0] or source_mlp.fc1.a.in_features != w1.shape[1]:
        raise ConfigError("construct.source", f"{name}: source d / d_ff differ from the target's",
                          "a source of the target's d_model and d_ff")
    src = {f"{f}.{x}": raw_weight(getattr(getattr(source_mlp, f), x)) for f in ("fc1", "fc2") for x in "ab"}
    c1 = construct_relu_pair(w1, src["fc1.a"], src["fc1.b"], True, 1.0, cfg, progress, f"{name} fc1")
    c2 = construct_relu_pair(w2, src["fc2.a"], src["fc2.b"], False, 1.0, cfg, progress, f"{name} fc2")
    masks = {"fc1.a": c1.mask_a, "fc1.b": c1.mask_b, "fc2.a": c2.mask_a, "fc2.b": c2.mask_b}
    info = {
        "fc1_max_abs_error": c1.max_abs_error,
        "fc2_max_abs_error": c2.max_abs_error,
        "fc1_rel_error": c1.rel_error,
        "fc2_rel_error": c2.rel_error,
        "unreachable_entries": c1.unreachable + c2.unreachable,
        "solver_counts": dict(Counter(c1.labels + c2.labels)),
        "n_entries": len(c1.labels) + len(c2.labels),
    }
    return masks, info


def _is_identity_affine(norm: nn.Module) -> bool:
    w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)
    return (w is None or bool((w == 1).all())) and (b is None or bool((b == 0).all()))


@torch.no_grad()
def plan_norms(source: nn.Module, target: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """How every norm of the target is carried into the source (see the module docstring).

    Returns (gains to fold: name of the attention or MLP that reads a pre-norm -> its gain; per norm: "same"
    (identity affine in both), "copied" (the source's affine is free: the target's gain and bias are copied
    into it, which this does) or "folded"). Raises ConfigError for what has no closed form.
    """
    from sltlab.nn.norm import is_norm

    tmods, smods = dict(target.named_modules()), dict(source.named_modules())
    gains: dict[str, torch.Tensor] = {}
    how: dict[str, str] = {}
    for name, t in tmods.items():
        if not is_norm(t):
            continue
        s = smods.get(name)
        if s is None or type(s) is not type(t) or getattr(s, "eps", None) != getattr(t, "eps", None):
            raise ConfigError("construct.target", f"norm {name!r}: the source's is {type(s).__name__}, the "
                              f"target's {type(t).__name__}", "source and target with the same norm spec")
        if any(p.requires_grad for p in s.parameters()):
            for pname, p in t.named_parameters():
                getattr(s, pname).copy_(p)
            how[name] = "copied"
            continue
        if _is_identity_affine(t) and _is_identity_affine(s):
            how[name] = "same"
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = tmods[parent_name]
        reads = {"norm1": "attn", "norm": "attn", "norm2": "mlp"}.get(leaf)
        bias = getattr(t, "bias", None)
        if getattr(parent, "placement", None) != "pre" or reads is None or (bias is not None and bool(bias.any())):
            raise ConfigError(
                "construct.target",
                f"norm {name!r}: the target's gain/bias has no closed form in a frozen, bias-free source "
                "(only a pre-norm's gain folds into the maps that read it)",
                "the LN-integrated ticket (variant '...+affine'), which copies the target's affine",
            )
        src_gain = getattr(s, "weight", None)
        ratio = t.weight.detach() / (src_gain.detach() if src_gain is not None else 1.0)
        gains[f"{parent_name}.{reads}" if parent_name else reads] = ratio
        how[name] = "folded"
    return gains, how


def construct_ticket(
    source: nn.Module, target: nn.Module, cfg: ConstructConfig | None = None, progress: bool = False
) -> dict[str, Any]:
    """Construct and set the masks of `source` (a masked NormedAttention, Stack or AttentionChain) from the
    matching modules of `target`: every attention, every ReLU MLP (the source's must be PairedMLPs), and the
    norms' affine (copied, folded or identical; see the module docstring)."""
    t0 = time.perf_counter()
    src_attn, tgt_attn = attention_modules(source), attention_modules(target)
    if set(src_attn) != set(tgt_attn) or not src_attn:
        raise ConfigError(
            "construct.target",
            "source and target attentions do not match one to one",
            "source and target of the same arch and depth",
        )
    src_mlp, tgt_mlp = mlp_modules(source), mlp_modules(target)
    if set(src_mlp) != set(tgt_mlp):
        raise ConfigError("construct.target", "source and target MLPs do not match one to one",
                          "source and target of the same arch, depth and mlp setting")
    sms = supermasks(source)

    def full(prefix: str, leaf: str) -> str:
        return f"{prefix}.{leaf}" if prefix else leaf

    covered = {full(a, x) for a in src_attn for x in "qkvo"}
    covered |= {full(m, f"{f}.{x}") for m in src_mlp for f in ("fc1", "fc2") for x in "ab"}
    other = sorted(set(sms) - covered)
    if other:
        raise ConfigError(
            "construct.target",
            f"masked layers the construction does not cover: {other}",
            "attentions and PairedMLPs only (study.source_mlp = 'paired' for a block with an MLP)",
        )
    gains, norms = plan_norms(source, target)
    masks: dict[str, torch.Tensor] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    for a in sorted(src_attn):
        m, info = construct_attention(tgt_attn[a], src_attn[a], cfg, progress, a or "attn", gains.get(a or "attn"))
        for x, mask in m.items():
            masks[full(a, x)] = mask
        counts.update(info.pop("solver_counts"))
        per_layer[a or "attn"] = info
    mlp_info: dict[str, dict[str, Any]] = {}
    for name in sorted(src_mlp):
        m, info = construct_mlp(tgt_mlp[name], src_mlp[name], cfg, progress, name, gains.get(name))
        for x, mask in m.items():
            masks[full(name, x)] = mask
        counts.update(info.pop("solver_counts"))
        mlp_info[name] = info
    set_fixed_masks(source, masks)
    out: dict[str, Any] = {
        "construct_s": time.perf_counter() - t0,
        "solver_counts": dict(counts),
        "qk_max_abs_error": max(v["qk_max_abs_error"] for v in per_layer.values()),
        "vo_max_abs_error": max(v["vo_max_abs_error"] for v in per_layer.values()),
        "qk_rel_error": float(np.mean([v["qk_rel_error"] for v in per_layer.values()])),
        "vo_rel_error": float(np.mean([v["vo_rel_error"] for v in per_layer.values()])),
        "unreachable_entries": sum(v["unreachable_entries"] for v in per_layer.values()),
        "qk_norm_ratio": max(
            (v.get("qk_norm_ratio", float("nan")) for v in per_layer.values()), default=float("nan")
        ),
        "vo_norm_ratio": max(
            (v.get("vo_norm_ratio", float("nan")) for v in per_layer.values()), default=float("nan")
        ),
        "per_layer_construct": per_layer,
    }
    if mlp_info:
        # Only blocks with an MLP carry these, so attention-only results keep exactly their old keys.
        vals = list(mlp_info.values())
        out["mlp_max_abs_error"] = max(max(v["fc1_max_abs_error"], v["fc2_max_abs_error"]) for v in vals)
        out["mlp_rel_error"] = float(np.mean([(v["fc1_rel_error"] + v["fc2_rel_error"]) / 2 for v in vals]))
        out["mlp_unreachable_entries"] = sum(v["unreachable_entries"] for v in vals)
        out["per_mlp_construct"] = mlp_info
    if any(v != "same" for v in norms.values()):
        out["norms"] = norms
    return out
