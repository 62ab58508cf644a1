"""A transformer a reader can hold in their head: MHA with free per-head widths, MLP, block, stack, two heads.

Per-head query/key width `n_k` and value width `n_v` are independent of the model width `d`, so a *source* for the
approximation study is just a wider copy of a *target*. Only the norm spec differs between "with" and "without
LayerNorm": parameter names and the weights drawn from a seed are otherwise the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sltlab.errors import ConfigError
from sltlab.nn.norm import NormSpec, make_norm


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a transformer. n_k / n_v / d_ff default to d_model // n_heads, the same, and 4 * d_model."""

    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    n_k: int | None = None
    n_v: int | None = None
    d_ff: int | None = None
    mlp: bool = True
    bias: bool = False
    activation: Literal["gelu", "relu"] = "gelu"
    norm: NormSpec = field(default_factory=NormSpec)
    final_norm: bool = True
    residual_scales: bool = False
    vocab_size: int = 0
    max_len: int = 128
    n_outputs: int = 2
    pooling: Literal["mean", "first"] = "mean"

    def validate(self) -> None:
        for name in ("d_model", "n_heads", "n_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}", f"{getattr(self, name)} must be at least 1", "an integer >= 1")
        for name in ("n_k", "n_v", "d_ff"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"model.{name}", f"{v} must be at least 1", "an integer >= 1 or omitted")
        if self.n_k is None and self.d_model % self.n_heads:
            raise ConfigError(
                "model.n_heads", f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}",
                "a divisor of d_model, or set n_k explicitly",
            )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim_qk(self) -> int:
        return self.n_k if self.n_k is not None else self.d_model // self.n_heads

    @property
    def head_dim_v(self) -> int:
        return self.n_v if self.n_v is not None else self.head_dim_qk

    @property
    def ff_width(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    def with_norm(self, norm: NormSpec) -> ModelConfig:
        return replace(self, norm=norm)


class MultiHeadAttention(nn.Module):
    """softmax(q k^T / sqrt(n_k)) v, per head; q, k: d -> H*n_k, v: d -> H*n_v, o: H*n_v -> d."""

    def __init__(self, d: int, n_heads: int, n_k: int, n_v: int, bias: bool = False):
        super().__init__()
        self.n_heads, self.head_dim_qk, self.head_dim_v = n_heads, n_k, n_v
        self.q = nn.Linear(d, n_heads * n_k, bias=bias)
        self.k = nn.Linear(d, n_heads * n_k, bias=bias)
        self.v = nn.Linear(d, n_heads * n_v, bias=bias)
        self.o = nn.Linear(n_heads * n_v, d, bias=bias)
        # Tells per-head supermask scales how the heads lie in each weight: (n_heads, axis).
        for lin in (self.q, self.k, self.v):
            lin._sltlab_heads = (n_heads, 0)  # type: ignore[attr-defined]
        self.o._sltlab_heads = (n_heads, 1)  # type: ignore[attr-defined]

    def forward(
        self,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, d); pad_mask: (B, T) bool, True for real tokens. Returns (out, attention (B, H, T, T) or None)."""
        B, T, _ = x.shape
        H = self.n_heads
        q = self.q(x).view(B, T, H, self.head_dim_qk).transpose(1, 2)
        k = self.k(x).view(B, T, H, self.head_dim_qk).transpose(1, 2)
        v = self.v(x).view(B, T, H, self.head_dim_v).transpose(1, 2)
        mask = None
        if pad_mask is not None:
            mask = pad_mask[:, None, None, :].bool()
        if causal:
            tri = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = tri if mask is None else mask & tri
        scale = 1.0 / math.sqrt(self.head_dim_qk)
        if need_weights:
            logits = (q @ k.transpose(-2, -1)) * scale
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            attn = logits.softmax(-1)
            y = attn @ v
        else:
            attn = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        y = y.transpose(1, 2).reshape(B, T, H * self.head_dim_v)
        return self.o(y), attn


class MLP(nn.Module):
    def __init__(self, d: int, d_ff: int, bias: bool = False, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(d, d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d, bias=bias)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """pre: x + attn(norm1(x)), then + mlp(norm2(x)); post: norm1(x + attn(x)), then norm2(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.placement = cfg.norm.placement
        self.attn = MultiHeadAttention(d, cfg.n_heads, cfg.head_dim_qk, cfg.head_dim_v, bias=cfg.bias)
        self.norm1 = make_norm(cfg.norm, d)
        self.mlp = MLP(d, cfg.ff_width, bias=cfg.bias, activation=cfg.activation) if cfg.mlp else None
        self.norm2 = make_norm(cfg.norm, d) if cfg.mlp else None
        if cfg.residual_scales:
            self.attn_scale = nn.Parameter(torch.ones(()))
            self.mlp_scale = nn.Parameter(torch.ones(())) if cfg.mlp else None
        else:
            self.attn_scale = self.mlp_scale = None

    def forward(
        self,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
        skip_attn: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """skip_attn drops the attention branch: the reference for the attention's own share of the output."""
        pre = self.placement == "pre"
        attn = None
        if not skip_attn:
            a, attn = self.attn(self.norm1(x) if pre else x, pad_mask, causal, need_weights)
            if self.attn_scale is not None:
                a = a * self.attn_scale
            x = x + a
        if not pre:
            x = self.norm1(x)
        if self.mlp is not None:
            m = self.mlp(self.norm2(x) if pre else x)
            if self.mlp_scale is not None:
                m = m * self.mlp_scale
            x = x + m
            if not pre:
                x = self.norm2(x)
        return x, attn


class Stack(nn.Module):
    """B blocks, plus a final norm for pre-norm models (post-norm blocks already end normalised)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        use_final = cfg.final_norm and cfg.norm.kind != "none" and cfg.norm.placement == "pre"
        self.norm_f = make_norm(cfg.norm, cfg.d_model) if use_final else None

    def forward(
        self,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
        return_hidden: bool = False,
        skip_attn: frozenset[int] = frozenset(),
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Returns (output, per-block attention maps if asked, per-block outputs if asked)."""
        attns, hidden = [], []
        for i, block in enumerate(self.blocks):
            x, a = block(x, pad_mask, causal, need_weights, skip_attn=i in skip_attn)
            if need_weights:
                attns.append(a)
            if return_hidden:
                hidden.append(x)
        if self.norm_f is not None:
            x = self.norm_f(x)
        return x, attns, hidden


class EncoderClassifier(nn.Module):
    """Token + learned position embeddings, a stack, pooling, and a linear head (n_outputs=1: regression)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ConfigError("model.vocab_size", "an encoder classifier needs a vocabulary", "an integer >= 1")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.stack = Stack(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.n_outputs)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        T = input_ids.shape[1]
        if self.cfg.max_len < T:
            raise ConfigError("model.max_len", f"input length {T} exceeds max_len {self.cfg.max_len}")
        pos = torch.arange(T, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)[None]
        pad = attention_mask.bool() if attention_mask is not None else None
        h, attns, _ = self.stack(x, pad, causal=False, need_weights=need_weights)
        if self.cfg.pooling == "first":
            pooled = h[:, 0]
        elif pad is None:
            pooled = h.mean(1)
        else:
            w = pad.unsqueeze(-1).to(h.dtype)
            pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        logits = self.head(pooled)
        return (logits, attns) if need_weights else logits


class CausalLM(nn.Module):
    """A decoder-only LM: embeddings, causal stack, optional learned pre-logit scale, linear LM head."""

    def __init__(self, cfg: ModelConfig, logit_scale: bool = False):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ConfigError("model.vocab_size", "a language model needs a vocabulary", "an integer >= 1")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.stack = Stack(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.logit_scale = nn.Parameter(torch.ones(())) if logit_scale else None

    def forward(self, idx: torch.Tensor, need_weights: bool = False):
        T = idx.shape[1]
        if self.cfg.max_len < T:
            raise ConfigError("model.max_len", f"input length {T} exceeds max_len {self.cfg.max_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)[None]
        h, attns, _ = self.stack(x, None, causal=True, need_weights=need_weights)
        logits = self.lm_head(h)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        return (logits, attns) if need_weights else logits


class NormedAttention(nn.Module):
    """A bare MHA under a norm spec, no residual (the theory's setting when the norm is none).

    pre: attn(norm(x)); post: norm(attn(x)); none: attn(x). Used as the target/source of the approximation study.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.placement = cfg.norm.placement
        self.norm = make_norm(cfg.norm, cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.head_dim_qk, cfg.head_dim_v, bias=cfg.bias)

    def forward(
        self, x: torch.Tensor, pad_mask: torch.Tensor | None = None, causal: bool = False,
        need_weights: bool = False, skip_attn: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pre = self.placement == "pre"
        if skip_attn:
            y, a = torch.zeros_like(x), None
        else:
            y, a = self.attn(self.norm(x) if pre else x, pad_mask, causal, need_weights)
        return (y if pre else self.norm(y)), a
