"""Rank collapse: how close the tokens of one layer's representation X (T tokens x d) are to one shared vector.

Dong, Cordonnier & Loukas (2021) show that pure self-attention drives X toward 1 x^T (every token the same)
doubly exponentially with depth, and that skip connections and MLPs counteract it; Wu et al. (2024) show that
LayerNorm changes the picture (with it, equilibria of any rank exist) and that sparse or local attention masks
slow the collapse. The metrics here measure that distance several ways, per sequence, over the last two axes of
a (..., T, d) tensor, in float64:

- res_l1linf: Dong et al.'s residual ratio ||X - 1 xbar^T|| / ||X|| in their composite norm
  ||M||_(1,inf) = sqrt(||M||_1 ||M||_inf) (max column abs sum times max row abs sum), with xbar the token mean
  (Dong et al. take the x minimising the norm; the mean is the standard, cheaper choice and bounds it above);
- mu: Wu et al.'s token similarity mu(X) = ||X - 1 gamma^T||_F, gamma the token mean (absolute);
- mu_rel: mu(X) / ||X||_F, which is also Dong et al.'s residual ratio in the Frobenius norm (there the
  minimising x *is* the mean), so one number serves both;
- erank: effective rank (Roy & Vetterli 2007), exp of the entropy of the normalised singular values
  s_i / sum s (1 for rank one, min(T, d) for equal singular values; 0 for X = 0);
- sigma_min: the smallest of the min(T, d) singular values;
- abs_cos: mean |cosine| over the T (T - 1) / 2 token pairs (a zero token counts as cosine 0).

Guarantees: X = 1 x^T gives res_l1linf = mu = mu_rel = 0, erank = 1 (x != 0), sigma_min = 0 (T, d >= 2) and
abs_cos = 1. Limits: the relative metrics are scale-free, mu is not (LayerNorm keeps mu of order sqrt(T d) while
an unnormalised stream may grow or shrink, so compare mu across norms only with that in mind); tokens that are
parallel but of different lengths (X = c x^T) have rank one yet a nonzero residual: "collapse" here means
*identical* tokens, rank one is erank and abs_cos.
"""

from __future__ import annotations

import math

import torch

METRICS: tuple[str, ...] = ("res_l1linf", "mu", "mu_rel", "erank", "sigma_min", "abs_cos")


def _f64(x: torch.Tensor) -> torch.Tensor:
    if x.ndim < 2:
        raise ValueError(f"a representation is (..., tokens, d), got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def residual(x: torch.Tensor) -> torch.Tensor:
    """X - 1 xbar^T: each token minus the token mean."""
    x = _f64(x)
    return x - x.mean(-2, keepdim=True)


def composite_norm(m: torch.Tensor) -> torch.Tensor:
    """sqrt(||M||_1 ||M||_inf): max over columns of the column's abs sum, times max over rows of the row's."""
    a = _f64(m).abs()
    return (a.sum(-2).amax(-1) * a.sum(-1).amax(-1)).sqrt()


def res_l1linf(x: torch.Tensor) -> torch.Tensor:
    return composite_norm(residual(x)) / composite_norm(x).clamp(min=1e-300)


def mu(x: torch.Tensor) -> torch.Tensor:
    return residual(x).flatten(-2).norm(dim=-1)


def mu_rel(x: torch.Tensor) -> torch.Tensor:
    return mu(x) / _f64(x).flatten(-2).norm(dim=-1).clamp(min=1e-300)


def singular_values(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(_f64(x))


def erank(x: torch.Tensor) -> torch.Tensor:
    s = singular_values(x)
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp(min=1e-300)
    h = -(p * torch.log(p.clamp(min=1e-300))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, h.exp(), torch.zeros_like(h))


def sigma_min(x: torch.Tensor) -> torch.Tensor:
    return singular_values(x).amin(-1)


def abs_cos(x: torch.Tensor) -> torch.Tensor:
    x = _f64(x)
    t = x.shape[-2]
    if t < 2:
        return torch.ones(x.shape[:-2], dtype=torch.float64)
    n = x.norm(dim=-1, keepdim=True)
    u = torch.where(n > 0, x / n.clamp(min=1e-300), torch.zeros_like(x))
    c = (u @ u.transpose(-1, -2)).abs()
    iu = torch.triu_indices(t, t, offset=1)
    return c[..., iu[0], iu[1]].mean(-1)


FUNCTIONS = {"res_l1linf": res_l1linf, "mu": mu, "mu_rel": mu_rel, "erank": erank, "sigma_min": sigma_min,
             "abs_cos": abs_cos}


def collapse_metrics(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of METRICS for each sequence of x (..., T, d): name -> tensor of shape (...). A sequence
    with a non-finite value (an overflowed network) gets NaN in every metric."""
    x = _f64(x)
    bad = ~torch.isfinite(x).flatten(-2).all(-1)
    if bool(bad.any()):
        x = torch.where(bad[..., None, None], torch.zeros_like(x), x)
    return {name: FUNCTIONS[name](x).masked_fill(bad, math.nan) for name in METRICS}


def batch_summary(x: torch.Tensor) -> dict[str, float]:
    """The metrics of a batch (B, T, d) averaged over its sequences (mu: geometric mean, since it spans
    decades with depth; the others arithmetic)."""
    out = {}
    for name, v in collapse_metrics(x).items():
        if name == "mu":
            out[name] = float(v.clamp(min=1e-300).log().mean().exp()) if v.numel() else math.nan
        else:
            out[name] = float(v.mean()) if v.numel() else math.nan
    return out  # NaN when any sequence overflowed: a mean over the survivors would hide it
