"""The error a constructed ticket carries through blocks and norms: a bound stated in closed form, and the measure.

Setting: a target (a Stack of blocks, a bare NormedAttention, or an AttentionChain) and a source holding a
constructed ticket for it (sltlab.tickets.construct), with the same norms (identity affine, or the target's
affine copied into an LN-integrated ticket). All errors are per sequence in the token-max norm
||E|| = max_i ||e_i||_2 (tokens i), which attention's mixing of tokens needs.

What is bounded. The ticket's sublayers equal the target's with *matrix* errors: per head dM = M_s - M_t (the
merged query-key matrix, logit scale and temperature included) and dV = V_s - V_t (merged value-output); for the
MLP the realised maps S+ and S- of the first pair (the pair computes S+ relu(x) - S- relu(-x)) and S2 of the
second, against W1 and W2. From these, the target's weights and the target's own activations, every sublayer
gets two closed-form terms; e is the error entering it:
- a norm (LayerNorm / RMSNorm, gain g): out <= max|g| e / sqrt((sigma_i - e/sqrt(d))_+^2 + eps), max over
  tokens i, sigma_i the token's standard deviation (its RMS for RMSNorm): the norm's Jacobian is 1/sigma times a
  projection, and sigma moves by at most e/sqrt(d) on the way. This is the factor that makes small-variance
  inputs dangerous; `norm_factor` reports max|g| / sigma_min per norm;
- attention, propagation of e through the target's attention at its input U (token norms <= U):
  sum_h ||V_h|| e + 2 max_j||V_h u_j|| (e (max_j||M_h u_j|| + max_j||M_h^T u_j||) + ||M_h|| e^2), because a
  softmax row moves by at most 2 max|d logits| in l1 and every row is a convex combination;
- attention, the ticket's own error at its input (norms <= U + e): sum_h ||dV_h|| (U+e) + 2 ||dM_h|| (U+e)^3 ||V_h||;
- the MLP: propagation ||W2|| ||W1|| e; own error, with eta = ||[S+ - W1, S- - W1]|| (V + e):
  ||S2 - W2|| (||W1|| (V + e) + eta) + ||W2|| eta (V: the largest token norm entering the MLP);
- residuals add errors.
Chained in the block's order (pre: x + attn(norm1 x), then + mlp(norm2 .); post: norm1(x + attn x), then
norm2(. + mlp .)), this gives e_b <= bound_b(e_(b-1)) for every block b. All norms are spectral (2-norms).

What it does not say. The bound is evaluated on given inputs (a-posteriori in the target's activations, not
worst case over all inputs); with small sigma somewhere it is large, as it must be, and it is loose where
attention's worst case is far from its typical case. It does not apply to searched tickets (their MLP pairs
are not one connection per hidden unit; `pair_maps` refuses them) nor to gains folded into a frozen source
(`propagation` refuses norms that differ between source and target).

Beside the bound, `propagation` measures what happened: the error after every block, the block's own error on the
ticket's actual input (delta_b = ||F_s(x_s) - F_t(x_s)||), and the realised amplification of the incoming error
(||F_t(x_s) - F_t(x_t)|| / ||x_s - x_t||), so e_b <= delta_b + amp_b e_(b-1) holds by the triangle inequality.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sltlab.errors import ConfigError
from sltlab.nn.norm import is_norm
from sltlab.tickets.construct import merged_matrices, raw_weight


def _spec(m: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(m.double(), ord=2)) if m.numel() else 0.0


def _token_max(x: torch.Tensor) -> torch.Tensor:
    """(B, T, d) -> (B,): the largest token norm of each sequence."""
    return x.double().norm(dim=-1).amax(dim=-1)


# --------------------------------------------------------------------------------------------- matrix errors
@dataclass
class AttnMatrices:
    m: list[torch.Tensor]  # target's merged query-key per head, logit scale and temperature folded in
    v: list[torch.Tensor]  # target's merged value-output per head
    dm: list[float]  # ||M_s - M_t|| per head
    dv: list[float]  # ||V_s - V_t|| per head


@dataclass
class MlpMatrices:
    w1: float  # ||W1||
    w2: float  # ||W2||
    d1: float  # ||[S+ - W1, S- - W1]||
    d2: float  # ||S2 - W2||


def attention_matrices(target_attn: nn.Module, source_attn: nn.Module) -> AttnMatrices:
    """The target's merged matrices and the ticket's errors on them, from the source's effective weights."""
    qk_t, vo_t = merged_matrices(target_attn)
    qk_s, vo_s = merged_matrices(source_attn, effective=True)
    tt, ts = getattr(target_attn, "temperature", 1.0), getattr(source_attn, "temperature", 1.0)
    m_t = [q / tt for q in qk_t]
    return AttnMatrices(
        m=m_t, v=vo_t,
        dm=[_spec(qs / ts - q) for qs, q in zip(qk_s, m_t, strict=True)],
        dv=[_spec(vs - v) for vs, v in zip(vo_s, vo_t, strict=True)],
    )


def pair_maps(pair: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(S+, S-) of a ReluPair's effective weights: the pair computes S+ relu(x) - S- relu(-x) exactly when every
    hidden unit keeps at most one input (what the construction builds); otherwise ConfigError."""
    a, b = pair.a.weight.detach().double(), pair.b.weight.detach().double()
    if bool(((a != 0).sum(1) > 1).any()):
        raise ConfigError("bound.ticket", "a hidden unit of a ReLU pair keeps more than one input",
                          "a constructed ticket (sltlab.tickets.construct)")
    return b @ a.clamp(min=0), b @ a.clamp(max=0)


def mlp_matrices(target_mlp: nn.Module, source_mlp: nn.Module) -> MlpMatrices:
    w1, w2 = raw_weight(target_mlp.fc1).double(), raw_weight(target_mlp.fc2).double()
    sp, sm = pair_maps(source_mlp.fc1)
    s2, _ = pair_maps(source_mlp.fc2)  # its input is >= 0: negative units contribute nothing
    return MlpMatrices(w1=_spec(w1), w2=_spec(w2), d1=_spec(torch.cat([sp - w1, sm - w1], dim=1)), d2=_spec(s2 - w2))


# --------------------------------------------------------------------------------------------- sublayer terms
def norm_out(norm: nn.Module, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Bound on the error after `norm` at the target's input x (B, T, d), entering error e (B,)."""
    if not is_norm(norm):
        return e
    xd = x.double()
    d = xd.shape[-1]
    centred = isinstance(norm, nn.LayerNorm) or type(norm).__name__.lower().endswith("layernorm")
    sig = (xd - xd.mean(-1, keepdim=True) if centred else xd).pow(2).mean(-1).sqrt()  # (B, T)
    eps = float(getattr(norm, "eps", 0.0) or 0.0)
    w = getattr(norm, "weight", None)
    gmax = float(w.detach().abs().max()) if w is not None else 1.0
    low = (sig - e[:, None] / math.sqrt(d)).clamp(min=0)
    per_token = gmax * e[:, None] / (low.pow(2) + eps).sqrt()
    diameter = 2 * gmax * math.sqrt(d)  # a normalised token has norm <= sqrt(d) |g|
    return per_token.amax(-1).clamp(max=diameter)


def norm_factor(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """max|g| / sigma_min per sequence: the norm's largest local gain on these inputs (1 for no norm)."""
    if not is_norm(norm):
        return torch.ones(x.shape[0], dtype=torch.float64)
    return norm_out(norm, x, torch.full((x.shape[0],), 1e-12, dtype=torch.float64)) / 1e-12


def attn_terms(mats: AttnMatrices, u: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(propagation of e through the target attention at input u, the ticket's own error at u + e)."""
    ud = u.double()
    umax = _token_max(ud)
    prop = torch.zeros_like(e)
    own = torch.zeros_like(e)
    cap = torch.zeros_like(e)
    for m, v, dm, dv in zip(mats.m, mats.v, mats.dm, mats.dv, strict=True):
        vmax = _token_max(ud @ v.T)
        qmax, kmax = _token_max(ud @ m.T), _token_max(ud @ m)
        prop = prop + _spec(v) * e + 2 * vmax * (e * (qmax + kmax) + _spec(m) * e**2)
        up = umax + e
        own = own + dv * up + 2 * dm * up**3 * _spec(v)
        # Whatever the logits do, each output is a convex combination of values: |a_s(u')| + |a_t(u)| caps both.
        cap = cap + (2 * _spec(v) + dv) * up
    total = prop + own
    over = total > cap
    shrink = torch.where(over, cap / total.clamp(min=1e-300), torch.ones_like(total))
    return prop * shrink, own * shrink


def mlp_terms(mats: MlpMatrices, v: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    vp = _token_max(v) + e
    eta = mats.d1 * vp
    return mats.w2 * mats.w1 * e, mats.d2 * (mats.w1 * vp + eta) + mats.w2 * eta


# --------------------------------------------------------------------------------------------- whole models
def _units(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in order: Stack / AttentionChain blocks, or a bare NormedAttention as one unit."""
    return list(model.blocks) if hasattr(model, "blocks") else [model]


@torch.no_grad()
def _unit_bound(t: nn.Module, s: nn.Module, x: torch.Tensor, e0: torch.Tensor, causal: bool) -> dict[str, Any]:
    """One block (or bare attention): the bound on its output error given e0 at its input x (the target's)."""
    from sltlab.nn.theory import PairedMLP

    pre = t.placement == "pre"
    am = attention_matrices(t.attn, s.attn)
    n1 = t.norm1 if hasattr(t, "norm1") else t.norm
    factors = []
    residual = hasattr(t, "norm1")
    if pre:
        u = n1(x)
        factors.append(norm_factor(n1, x))
        eu = norm_out(n1, x, e0)
        a = t.attn(u, None, causal)[0]
        prop, own = attn_terms(am, u, eu)
        if not residual:  # bare attention: attn(norm(x))
            return {"bound": prop + own, "ln_factor": torch.stack(factors).amax(0)}
        h = x + a
        eh = e0 + prop + own
    else:
        a = t.attn(x, None, causal)[0]
        prop, own = attn_terms(am, x, e0)
        r = x + a if residual else a
        er = (e0 if residual else 0) + prop + own
        h = n1(r)
        factors.append(norm_factor(n1, r))
        eh = norm_out(n1, r, er)
        if not residual:
            return {"bound": eh, "ln_factor": torch.stack(factors).amax(0)}
    if t.mlp is None:
        return {"bound": eh, "ln_factor": torch.stack(factors).amax(0)}
    if not isinstance(s.mlp, PairedMLP):
        raise ConfigError("bound.ticket", "the source's MLP is not a PairedMLP", "a constructed block ticket")
    mm = mlp_matrices(t.mlp, s.mlp)
    n2 = t.norm2
    if pre:
        v = n2(h)
        factors.append(norm_factor(n2, h))
        ev = norm_out(n2, h, eh)
        prop, own = mlp_terms(mm, v, ev)
        ez = eh + prop + own
    else:
        prop, own = mlp_terms(mm, h, eh)
        rr = h + t.mlp(h)
        factors.append(norm_factor(n2, rr))
        ez = norm_out(n2, rr, eh + prop + own)
    return {"bound": ez, "ln_factor": torch.stack(factors).amax(0)}


@torch.no_grad()
def propagation(source: nn.Module, target: nn.Module, x: torch.Tensor, causal: bool = False) -> dict[str, Any]:
    """Per block, over the sequences of x (B, T, d), in the token-max norm: the measured error, the stated bound,
    the block's own error on the ticket's input, the realised amplification and the norms' largest gain.

    Returns lists (one entry per block) of (B,) float64 tensors: "error", "bound", "delta", "amplification" (NaN
    where no error came in: the first block), "ln_factor"; and "target_scale" (B,): the target output's largest
    token norm (for relative numbers).
    """
    _check_same_norms(source, target)
    # In float64, so that what is measured is the construction's error and not float32 rounding (~1e-7).
    source, target = copy.deepcopy(source).double().eval(), copy.deepcopy(target).double().eval()
    x = x.double()
    ts, ss = _units(target), _units(source)
    if len(ts) != len(ss):
        raise ConfigError("bound.source", f"{len(ss)} source blocks for {len(ts)} target blocks", "the same depth")
    xt = xs = x
    e_bound = torch.zeros(x.shape[0], dtype=torch.float64)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("error", "bound", "delta", "amplification", "ln_factor")}
    for t, s in zip(ts, ss, strict=True):
        b = _unit_bound(t, s, xt, e_bound, causal)
        yt, ys = t(xt, None, causal)[0], s(xs, None, causal)[0]
        ft_s = t(xs, None, causal)[0]
        err_in = _token_max(xs - xt)
        out["error"].append(_token_max(ys - yt))
        out["delta"].append(_token_max(ys - ft_s))
        amp = _token_max(ft_s - yt) / err_in.clamp(min=1e-300)
        out["amplification"].append(torch.where(err_in > 0, amp, torch.full_like(amp, math.nan)))
        e_bound = b["bound"]
        out["bound"].append(e_bound)
        out["ln_factor"].append(b["ln_factor"])
        xt, xs = yt, ys
    return {**out, "target_scale": _token_max(xt)}


def _check_same_norms(source: nn.Module, target: nn.Module) -> None:
    """The bound compares the source's sublayers with the target's on the same normalised input: every norm must
    compute the same function in both (identity affine, or the target's copied into an LN-integrated ticket)."""
    smods = dict(source.named_modules())
    for name, t in target.named_modules():
        if not is_norm(t):
            continue
        s = smods.get(name)
        sp = dict(s.named_parameters()) if s is not None else {}
        same = s is not None and all(n in sp and torch.equal(p, sp[n]) for n, p in t.named_parameters())
        if not same:
            raise ConfigError("bound.norms", f"norm {name!r} differs between source and target (a gain folded into "
                              "a frozen source?): the bound compares sublayers on the same normalised input",
                              "identity affine in both, or the LN-integrated ticket (copied affine)")


def summarise(prop: dict[str, Any]) -> dict[str, list[float]]:
    """Medians over sequences per block, and the share of sequences whose error the bound holds (should be 1)."""
    def med(ts: list[torch.Tensor]) -> list[float]:
        return [float(t.median()) for t in ts]

    return {
        "error_median": med(prop["error"]),
        "bound_median": med(prop["bound"]),
        "delta_median": med(prop["delta"]),
        "amplification_median": med(prop["amplification"]),
        "ln_factor_median": med(prop["ln_factor"]),
        "bound_holds": [float((e <= b * (1 + 1e-9) + 1e-12).double().mean())
                        for e, b in zip(prop["error"], prop["bound"], strict=True)],
        "bound_over_error_median": [float((b / e.clamp(min=1e-300)).median())
                                    for e, b in zip(prop["error"], prop["bound"], strict=True)],
    }
