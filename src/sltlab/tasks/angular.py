"""The angular-velocity task of Otsuka et al. (2025): the theory's own synthetic check, on a trained target.

A sequence is a regression token (a learned vector, initialised at zero) followed by T points on the unit
circle, x_t = (cos(w t + theta0), sin(w t + theta0)), t = 1..T, with w ~ U[-pi, pi] and theta0 ~ U[0, pi];
the label is w. Two targets:
- a *trained* single-head attention with input dimension 2 (plus learned positions and a linear read-out of
  the regression token): a target whose weights came from learning, not from a seed;
- an *untrained* stack of B residual attention blocks without normalisation (x + MHA(x): the block form the
  theory covers), B = 1..4, weights from a seed.
The ticket for either is constructed inside a wider random source (sltlab.tickets.construct) and scored on
held-out sequences: relative error of the attention output (per block for stacks) and, for the trained target,
the task MSE of the ticket against the target's. The sequence-length sweep checks the claim that the error
does not grow with T.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sltlab.errors import ConfigError
from sltlab.nn.init import INIT_SCHEMES, InitSpec, init_model, seeded_uniform
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig, MultiHeadAttention
from sltlab.tasks.approx import evaluate_pair
from sltlab.tickets.construct import ConstructConfig, construct_attention, construct_ticket, set_fixed_masks
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig, apply_supermask


@dataclass(frozen=True)
class AngularConfig:
    """One angular-velocity setting. Widths are the source's per-head query/key/value widths."""

    seq_len: int = 16
    target_width: int = 4
    n_heads: int = 1
    train_steps: int = 400
    lr: float = 0.02
    batch_size: int = 128
    n_train: int = 4096
    n_test: int = 1024
    seed: int = 0
    source_init: str = "theory"
    source_gain: float = 1.0
    keep: float = 0.5

    def validate(self) -> None:
        for name in ("seq_len", "target_width", "n_heads", "train_steps", "batch_size", "n_train", "n_test"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"angular.{name}", f"{getattr(self, name)} must be at least 1", "an integer >= 1"
                )
        if self.lr <= 0:
            raise ConfigError("angular.lr", f"{self.lr} must be positive", "a number > 0")
        if self.source_init not in INIT_SCHEMES:
            raise ConfigError(
                "angular.source_init", f"unknown scheme {self.source_init!r}", " | ".join(INIT_SCHEMES)
            )
        if self.source_gain <= 0:
            raise ConfigError("angular.source_gain", f"{self.source_gain} must be positive", "a number > 0")

    def __post_init__(self) -> None:
        self.validate()


def angular_data(n: int, seq_len: int, seed: int, tag: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(points (n, T, 2), w (n,)): T points on the unit circle turning by w per step, from a random phase."""
    w = seeded_uniform(seed, f"angular-w-{tag}", (n,), "angular", -math.pi, math.pi)
    theta0 = seeded_uniform(seed, f"angular-theta-{tag}", (n,), "angular", 0.0, math.pi)
    t = torch.arange(1, seq_len + 1, dtype=torch.float32)
    phase = w[:, None] * t[None] + theta0[:, None]
    return torch.stack([phase.cos(), phase.sin()], dim=-1), w


def with_zero_token(points: torch.Tensor) -> torch.Tensor:
    """Prepend the all-zero regression token: what the untrained stacks see."""
    return torch.cat([points.new_zeros(points.shape[0], 1, points.shape[2]), points], dim=1)


class AngularRegressor(nn.Module):
    """[reg token; points] + learned positions -> one MHA (input dim 2) -> linear read-out of the reg token.

    The attention is the part a ticket replaces; positions, token and read-out stay the target's.
    """

    def __init__(self, seq_len: int, n_heads: int, width: int):
        super().__init__()
        self.reg = nn.Parameter(torch.zeros(2))
        self.pos = nn.Parameter(torch.zeros(seq_len + 1, 2))
        self.attn = MultiHeadAttention(2, n_heads, width, width)
        self.head = nn.Linear(2, 1)

    def tokens(self, points: torch.Tensor) -> torch.Tensor:
        """The attention's input: (B, T + 1, 2)."""
        B, T, _ = points.shape
        if self.pos.shape[0] < T + 1:
            raise ConfigError(
                "angular.seq_len", f"sequence of {T} points, model built for {self.pos.shape[0] - 1}"
            )
        return torch.cat([self.reg.expand(B, 1, 2), points], dim=1) + self.pos[: T + 1]

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(self.tokens(points))
        return self.head(a[:, 0]).squeeze(-1)


def train_target(cfg: AngularConfig, progress: bool = False) -> tuple[AngularRegressor, dict[str, float]]:
    """Train the target regressor with Adam on MSE(w); returns it, its train/test MSE and the label variance."""
    torch.manual_seed(cfg.seed)  # nn.Module defaults for the attention; our own seeded init follows
    model = AngularRegressor(cfg.seq_len, cfg.n_heads, cfg.target_width)
    init_model(model.attn, InitSpec("kaiming-uniform", seed=cfg.seed))
    with torch.no_grad():
        model.pos.copy_(seeded_uniform(cfg.seed, "angular-pos", tuple(model.pos.shape), "angular", -0.5, 0.5))
    x, y = angular_data(cfg.n_train, cfg.seq_len, cfg.seed, "train")
    xt, yt = angular_data(cfg.n_test, cfg.seq_len, cfg.seed, "test")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for step in tqdm(
        range(cfg.train_steps), desc=f"train target T={cfg.seq_len}", disable=not progress, leave=False
    ):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.train_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, cfg.n_train, (cfg.batch_size,), generator=gen)
        loss = (model(x[idx]) - y[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        train_mse = float((model(x) - y).pow(2).mean())
        test_mse = float((model(xt) - yt).pow(2).mean())
    return model, {"target_train_mse": train_mse, "target_test_mse": test_mse, "label_var": float(yt.var())}


def source_attention(d: int, n_heads: int, width: int, cfg: AngularConfig) -> MultiHeadAttention:
    """A random, frozen, masked attention of per-head width `width` (the source)."""
    attn = MultiHeadAttention(d, n_heads, width, width)
    init_model(attn, InitSpec(cfg.source_init, seed=10_000 + cfg.seed, gain=cfg.source_gain))  # type: ignore[arg-type]
    apply_supermask(attn, SupermaskConfig(keep=cfg.keep, seed=cfg.seed, scale="layer"))
    return attn


@torch.no_grad()
def evaluate_mha_ticket(
    target: AngularRegressor, source: nn.Module, points: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Relative error of the attention output (all tokens and the regression token) and both task MSEs."""
    ticket = copy.deepcopy(target)
    ticket.attn = source
    tok = target.tokens(points)
    yt, _ = target.attn(tok)
    ys, _ = source(tok)
    pt, ps = target(points), ticket(points)
    return {
        "rel_error": float((ys - yt).norm() / yt.norm().clamp_min(1e-30)),
        "reg_token_rel_error": float((ys[:, 0] - yt[:, 0]).norm() / yt[:, 0].norm().clamp_min(1e-30)),
        "target_mse": float((pt - labels).pow(2).mean()),
        "ticket_mse": float((ps - labels).pow(2).mean()),
        "pred_rel_error": float((ps - pt).norm() / pt.norm().clamp_min(1e-30)),
    }


def mha_ticket(
    target: AngularRegressor, width: int, cfg: AngularConfig, construct: ConstructConfig | None = None
) -> tuple[MultiHeadAttention, dict[str, Any]]:
    """Construct the ticket for the trained target's attention inside a fresh source of this width."""
    source = source_attention(2, cfg.n_heads, width, cfg)
    masks, info = construct_attention(target.attn, source, construct)  # warns when past the norm assumption
    info["norm_warning"] = max(info.get("qk_norm_ratio", 0.0), info.get("vo_norm_ratio", 0.0)) > 1.0
    set_fixed_masks(source, masks)
    source.eval()
    return source, info


def stack_pair(
    n_blocks: int, width: int, cfg: AngularConfig, d_model: int = 2, target_init: str = "kaiming-uniform"
) -> tuple[nn.Module, nn.Module]:
    """Untrained target stack (B blocks x + MHA(x), no norm, no MLP) and its masked source of this width."""
    model = ModelConfig(
        d_model=d_model,
        n_heads=cfg.n_heads,
        n_layers=n_blocks,
        n_k=cfg.target_width,
        n_v=cfg.target_width,
        mlp=False,
        norm=NormSpec(kind="none"),
        final_norm=False,
    )
    target = build_model(ModelSpec("stack", model, InitSpec(target_init, seed=cfg.seed)))  # type: ignore[arg-type]
    src_spec = ModelSpec(
        "stack",
        replace(model, n_k=width, n_v=width),
        InitSpec(cfg.source_init, seed=10_000 + cfg.seed, gain=cfg.source_gain),  # type: ignore[arg-type]
        SupermaskConfig(keep=cfg.keep, seed=cfg.seed, scale="layer"),
    )
    return target, build_model(src_spec)


def stack_ticket_errors(
    n_blocks: int,
    width: int,
    cfg: AngularConfig,
    seq_len: int | None = None,
    construct: ConstructConfig | None = None,
) -> dict[str, Any]:
    """Construct a ticket in the untrained B-block source and score it on held-out angular sequences."""
    target, source = stack_pair(n_blocks, width, cfg)
    info = construct_ticket(source, target, construct)
    points, _ = angular_data(cfg.n_test, seq_len or cfg.seq_len, cfg.seed, "test")
    metrics = evaluate_pair(source, target, with_zero_token(points))
    return {**metrics, **{k: v for k, v in info.items() if k != "per_layer_construct"}}
