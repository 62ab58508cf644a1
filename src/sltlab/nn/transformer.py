"""A transformer a reader can hold in their head: MHA with free per-head widths, MLP, block, stack, two heads.

Per-head query/key width `n_k` and value width `n_v` are independent of the model width `d`, so a *source* for the
approximation study is just a wider copy of a *target*. Only the norm spec differs between "with" and "without
LayerNorm": parameter names and the weights drawn from a seed are otherwise the same.

Folding (`ModelConfig.fold = S`, Yan et al., "Multicoated and Folded Graph Neural Networks with Strong Lottery
Tickets"): the n_layers blocks form S stages of n_layers / S consecutive blocks, and every block of a stage uses the
*same* Parameter objects for its linear weights and biases (one allocation per stage: a weight-tied recurrent
stack). Block i belongs to stage i // (n_layers / S); the first block of a stage owns the tensors, so seeded
initialisation, which names a shared tensor by its first occurrence, draws stage s from the names of block
s * (n_layers / S). S = n_layers is therefore today's network bit for bit, and S = 1 is one random block reused at
every depth. Norms and residual scales stay per block. Supermasks attach per module as always, so each block keeps
its own mask over the shared weights (`mask_sharing = "unshared"`); "shared" (one mask per stage, the plain
recurrent network) is arranged by `sltlab.tickets.spec.build_model`.

The parameter-golf architecture (openai/parameter-golf's baseline and its supermask submission) is a set of
options, each off by default so that every earlier spec builds the same network, bit for bit:
    activation "relu2"      relu(x)^2 in the MLP (the challenge's baseline; "relu" is the supermask submission's)
    mlp_mult                hidden width = mlp_mult x d_model (d_ff, when given, wins; neither = 4 x d_model)
    norm "pre-rms+noaffine" RMS norms without a gain parameter (sltlab.nn.norm.BareRMSNorm)
    qk_norm                 q and k RMS-normed per head (no gain) before the positions are applied
    embed_norm              the token embedding's output RMS-normed before the first block
    positions "rope"        rotary positions on q and k (base rope_base), no learned position table
    scale_groups "golf"     the submission's continuous knobs: per-block attn_scale[d] and mlp_scale[d] on the
                            residual branches, head_scale[H] on each head's attention output (before the output
                            projection), pre_logit_scale[d] on the final hidden state before the LM head
Causal attention without padding goes through SDPA's `is_causal` path (no materialised mask: the flash kernel on a
GPU), which on the CPU gives the same bits as the explicit triangular mask it replaced (tests/test_golf_model.py).
"""

from __future__ import annotations

import contextlib
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
    activation: Literal["gelu", "relu", "relu2"] = "gelu"
    norm: NormSpec = field(default_factory=NormSpec)
    final_norm: bool = True
    residual_scales: bool = False
    vocab_size: int = 0
    max_len: int = 128
    n_outputs: int = 2
    pooling: Literal["mean", "first"] = "mean"
    fold: int | None = None
    mask_sharing: Literal["unshared", "shared"] = "unshared"
    # The parameter-golf recipe's parts (defaults: off, so every existing spec builds the same network).
    # n_kv_heads: grouped-query attention, n_heads query heads sharing n_kv_heads key/value heads;
    # tie_embeddings: the LM head reuses the token embedding's Parameter (one tensor, hence one mask);
    # logit_softcap: logits -> c * tanh(logits / c).
    n_kv_heads: int | None = None
    tie_embeddings: bool = False
    logit_softcap: float | None = None
    # The parameter-golf architecture (module docstring); defaults: off.
    mlp_mult: int | None = None
    qk_norm: bool = False
    embed_norm: bool = False
    positions: Literal["learned", "rope"] = "learned"
    rope_base: float = 10000.0
    scale_groups: Literal["none", "golf"] = "none"

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
        self._validate_fold()
        kv = self.n_kv_heads
        if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int) or kv < 1 or self.n_heads % kv):
            raise ConfigError("model.n_kv_heads", f"{kv!r} key/value heads cannot be shared evenly by "
                              f"n_heads={self.n_heads} query heads", "a divisor of n_heads, or omitted (= n_heads)")
        if self.logit_softcap is not None and not (self.logit_softcap > 0 and math.isfinite(self.logit_softcap)):
            raise ConfigError("model.logit_softcap", f"{self.logit_softcap!r} is not a positive number",
                              "a number > 0 (e.g. 30), or omitted for no cap")
        self._validate_golf()

    def _validate_golf(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError("model.activation", f"unknown activation {self.activation!r}", " | ".join(ACTIVATIONS))
        m = self.mlp_mult
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError("model.mlp_mult", f"{m!r} is not a width multiple", "an integer >= 1, or omitted")
        if m is not None and self.d_ff is not None:
            raise ConfigError("model.mlp_mult", f"both mlp_mult={m} and d_ff={self.d_ff} set the MLP width",
                              "one of them")
        if self.positions not in ("learned", "rope"):
            raise ConfigError("model.positions", f"unknown positions {self.positions!r}", "learned | rope")
        if self.positions == "rope" and self.head_dim_qk % 2:
            raise ConfigError("model.positions", f"rotary positions pair the {self.head_dim_qk} query/key "
                              "channels of a head, an odd number", "an even per-head width, or 'learned'")
        if not (self.rope_base > 1 and math.isfinite(self.rope_base)):
            raise ConfigError("model.rope_base", f"{self.rope_base!r} is not a rotary base", "a number > 1")
        if self.scale_groups not in ("none", "golf"):
            raise ConfigError("model.scale_groups", f"unknown scale groups {self.scale_groups!r}", "none | golf")
        if self.scale_groups == "golf" and self.residual_scales:
            raise ConfigError("model.scale_groups", "'golf' has per-channel residual scales of its own, and "
                              "residual_scales asks for scalar ones too", "one of them")

    def _validate_fold(self) -> None:
        f = self.fold
        if f is not None and (isinstance(f, bool) or not isinstance(f, int) or f < 1 or self.n_layers % f):
            divisors = [k for k in range(1, self.n_layers + 1) if self.n_layers % k == 0]
            raise ConfigError(
                "model.fold", f"{f!r} stages do not divide n_layers={self.n_layers} into equal stages",
                f"one of {divisors} (n_layers = unfolded, 1 = one block reused at every depth), or omitted",
            )
        if self.mask_sharing not in ("unshared", "shared"):
            raise ConfigError("model.mask_sharing", f"unknown mask sharing {self.mask_sharing!r}",
                              "unshared (a mask per layer) | shared (a mask per fold stage)")
        if self.mask_sharing == "shared" and f is None:
            raise ConfigError("model.mask_sharing", "'shared' shares a mask among the layers of a fold stage, "
                              "but fold is not set", "set fold (e.g. 1), or mask_sharing = 'unshared'")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim_qk(self) -> int:
        return self.n_k if self.n_k is not None else self.d_model // self.n_heads

    @property
    def head_dim_v(self) -> int:
        return self.n_v if self.n_v is not None else self.head_dim_qk

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def ff_width(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        return (self.mlp_mult if self.mlp_mult is not None else 4) * self.d_model

    @property
    def stages(self) -> int:
        """Fold stages: groups of consecutive blocks sharing one set of random weights (n_layers = unfolded)."""
        return self.fold if self.fold is not None else self.n_layers

    @property
    def folded(self) -> bool:
        """True when some blocks share weights (fewer stages than layers)."""
        return self.stages < self.n_layers

    def with_norm(self, norm: NormSpec) -> ModelConfig:
        return replace(self, norm=norm)


ACTIVATIONS = ("gelu", "relu", "relu2")


def rotary_tables(seq_len: int, dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (seq_len, dim / 2), of the rotation angles t * base^(-2i / dim), in float32."""
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel i with channel i + dim/2 of every head by the position's angle; x: (B, H, T, dim)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)


class MultiHeadAttention(nn.Module):
    """softmax(q k^T / sqrt(n_k)) v, per head; q: d -> H*n_k, k: d -> G*n_k, v: d -> G*n_v, o: H*n_v -> d.

    G = n_kv_heads (default H): grouped-query attention, query heads h*H/G .. (h+1)*H/G - 1 read key/value head h.
    With G = H the layer is plain multi-head attention, same parameter names and shapes.
    qk_norm: q and k RMS-normed per head (no gain); rope_base: rotary positions on q and k (None: none);
    head_scale: a learned scale per head on its output, before o (the parameter-golf `head_scale` group)."""

    def __init__(self, d: int, n_heads: int, n_k: int, n_v: int, bias: bool = False, n_kv_heads: int | None = None,
                 qk_norm: bool = False, rope_base: float | None = None, head_scale: bool = False):
        super().__init__()
        kv = n_heads if n_kv_heads is None else n_kv_heads
        self.n_heads, self.n_kv_heads, self.head_dim_qk, self.head_dim_v = n_heads, kv, n_k, n_v
        self.qk_norm, self.rope_base = qk_norm, rope_base
        self.q = nn.Linear(d, n_heads * n_k, bias=bias)
        self.k = nn.Linear(d, kv * n_k, bias=bias)
        self.v = nn.Linear(d, kv * n_v, bias=bias)
        self.o = nn.Linear(n_heads * n_v, d, bias=bias)
        self.head_scale = nn.Parameter(torch.ones(n_heads)) if head_scale else None
        # Attention shape knobs a study sets on a built model (not parameters, not in a state dict; the defaults
        # are the plain attention): window = r lets token i see only tokens j with |i - j| <= r (a local band, on
        # top of causal when that is asked for); temperature t divides the logits, softmax(q k^T / (t sqrt(n_k))).
        self.window: int | None = None
        self.temperature: float = 1.0
        # Tells per-head supermask scales how the heads lie in each weight: (heads, axis).
        self.q._sltlab_heads = (n_heads, 0)  # type: ignore[attr-defined]
        for lin in (self.k, self.v):
            lin._sltlab_heads = (kv, 0)  # type: ignore[attr-defined]
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
        G = self.n_kv_heads
        k = self.k(x).view(B, T, G, self.head_dim_qk).transpose(1, 2)
        v = self.v(x).view(B, T, G, self.head_dim_v).transpose(1, 2)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.shape[-1],)), F.rms_norm(k, (k.shape[-1],))
        if self.rope_base is not None:
            cos, sin = rotary_tables(T, self.head_dim_qk, self.rope_base, x.device)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if G != H:  # each key/value head serves H / G consecutive query heads
            k = k.repeat_interleave(H // G, dim=1)
            v = v.repeat_interleave(H // G, dim=1)
        mask = None
        if pad_mask is not None:
            mask = pad_mask[:, None, None, :].bool()
        if self.window is not None:
            pos = torch.arange(T, device=x.device)
            band = (pos[:, None] - pos[None, :]).abs() <= self.window
            mask = band if mask is None else mask & band
        scale = 1.0 / (math.sqrt(self.head_dim_qk) * self.temperature)
        if need_weights:
            if causal:
                tri = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                mask = tri if mask is None else mask & tri
            logits = (q @ k.transpose(-2, -1)) * scale
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            attn = logits.softmax(-1)
            y = attn @ v
        else:
            attn = None
            if causal and mask is None:  # SDPA's own causal path: no mask tensor, flash-capable on a GPU
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            else:
                if causal:
                    tri = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                    mask = tri if mask is None else mask & tri
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        if self.head_scale is not None:
            y = y * self.head_scale.to(y.dtype)[None, :, None, None]
        y = y.transpose(1, 2).reshape(B, T, H * self.head_dim_v)
        return self.o(y), attn


class MLP(nn.Module):
    def __init__(self, d: int, d_ff: int, bias: bool = False, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(d, d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d, bias=bias)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.square = activation == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        return self.fc2(h.square() if self.square else h)


class Block(nn.Module):
    """pre: x + attn(norm1(x)), then + mlp(norm2(x)); post: norm1(x + attn(x)), then norm2(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig, tie_to: Block | None = None):
        """tie_to: a block whose linear weights and biases this one uses (folding); its norms stay its own."""
        super().__init__()
        d = cfg.d_model
        self.placement = cfg.norm.placement
        # A tied block's attention and MLP are built on the meta device (no storage), then take the owner's
        # Parameters: rebuilding a folded network allocates one block's weights per stage, not per layer.
        # (Registration order stays attn, norm1, mlp, norm2: state-dict order, hence artifact bytes, depend on it.)
        tied = (lambda: torch.device("meta")) if tie_to is not None else contextlib.nullcontext
        with tied():
            self.attn = MultiHeadAttention(d, cfg.n_heads, cfg.head_dim_qk, cfg.head_dim_v, bias=cfg.bias,
                                           n_kv_heads=cfg.n_kv_heads, qk_norm=cfg.qk_norm,
                                           rope_base=cfg.rope_base if cfg.positions == "rope" else None,
                                           head_scale=cfg.scale_groups == "golf")
        self.norm1 = make_norm(cfg.norm, d)
        with tied():
            self.mlp = MLP(d, cfg.ff_width, bias=cfg.bias, activation=cfg.activation) if cfg.mlp else None
        self.norm2 = make_norm(cfg.norm, d) if cfg.mlp else None
        if tie_to is not None:
            _tie_linears(self, tie_to, own_mask=cfg.mask_sharing == "unshared")
            if self.attn.head_scale is not None:  # a scale, like a norm, stays the block's own
                self.attn.head_scale = nn.Parameter(torch.ones(cfg.n_heads))
        if cfg.residual_scales or cfg.scale_groups == "golf":
            shape = (d,) if cfg.scale_groups == "golf" else ()  # golf: one scale per channel
            self.attn_scale = nn.Parameter(torch.ones(shape))
            self.mlp_scale = nn.Parameter(torch.ones(shape)) if cfg.mlp else None
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


# A module carrying this attribute wants a mask of its own over a weight it shares (a folded layer, unshared masks);
# without it, sharing a weight means a tied weight, which has one mask (sltlab.tickets.supermask.maskable_groups).
OWN_MASK = "sltlab_own_mask"


def _tie_linears(block: Block, owner: Block, own_mask: bool = True) -> None:
    """Make every nn.Linear of `block`'s attention and MLP use `owner`'s weight and bias Parameter objects."""
    for part in ("attn", "mlp"):
        mine, theirs = getattr(block, part), getattr(owner, part)
        if mine is None:
            continue
        src = dict(theirs.named_modules())
        for name, m in mine.named_modules():
            if isinstance(m, nn.Linear):
                m.weight = src[name].weight
                if m.bias is not None:
                    m.bias = src[name].bias
                if own_mask:
                    setattr(m, OWN_MASK, True)


def run_layers(
    layers: nn.ModuleList,
    x: torch.Tensor,
    pad_mask: torch.Tensor | None,
    causal: bool,
    need_weights: bool,
    return_hidden: bool,
    skip_attn: frozenset[int],
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Layers in sequence, collecting attention maps and outputs when asked: one loop for every stack-like module
    (Stack, sltlab.nn.theory.AttentionChain), so the approximation study reads them all alike."""
    attns, hidden = [], []
    for i, layer in enumerate(layers):
        x, a = layer(x, pad_mask, causal, need_weights, skip_attn=i in skip_attn)
        if need_weights:
            attns.append(a)
        if return_hidden:
            hidden.append(x)
    return x, attns, hidden


class Stack(nn.Module):
    """B blocks, plus a final norm for pre-norm models (post-norm blocks already end normalised).

    Folded (cfg.fold = S < B): blocks of one stage share their linear weights, see the module docstring."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers_per_stage = cfg.n_layers // cfg.stages
        blocks: list[Block] = []
        for i in range(cfg.n_layers):
            owner = self.stage_owner(i)
            blocks.append(Block(cfg, tie_to=blocks[owner] if owner != i else None))
        self.blocks = nn.ModuleList(blocks)
        use_final = cfg.final_norm and cfg.norm.kind != "none" and cfg.norm.placement == "pre"
        self.norm_f = make_norm(cfg.norm, cfg.d_model) if use_final else None

    def stage_owner(self, i: int) -> int:
        """The index of the block that owns block i's weights: the first block of its stage (i itself unfolded)."""
        return i - i % self.layers_per_stage

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
        x, attns, hidden = run_layers(self.blocks, x, pad_mask, causal, need_weights, return_hidden, skip_attn)
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
    """A decoder-only LM: embeddings, causal stack, optional learned pre-logit scale, linear LM head.

    cfg.tie_embeddings: lm_head.weight *is* tok_emb.weight (one Parameter: drawn once, by the embedding's name,
    masked once, stored once); cfg.logit_softcap = c: logits -> c * tanh(logits / c), after the pre-logit scale.
    cfg.positions "rope": no position table (the blocks rotate q and k); cfg.embed_norm: the embedding's output is
    RMS-normed; cfg.scale_groups "golf": pre_logit_scale[d] multiplies the final hidden state before the LM head
    (`logit_scale`, a scalar on the logits, is sltlab's own knob)."""

    def __init__(self, cfg: ModelConfig, logit_scale: bool = False):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ConfigError("model.vocab_size", "a language model needs a vocabulary", "an integer >= 1")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.positions == "learned" else None
        self.stack = Stack(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.logit_scale = nn.Parameter(torch.ones(())) if logit_scale else None
        self.pre_logit_scale = nn.Parameter(torch.ones(cfg.d_model)) if cfg.scale_groups == "golf" else None

    def forward(self, idx: torch.Tensor, need_weights: bool = False):
        T = idx.shape[1]
        if self.cfg.max_len < T:
            raise ConfigError("model.max_len", f"input length {T} exceeds max_len {self.cfg.max_len}")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))[None]
        if self.cfg.embed_norm:
            x = F.rms_norm(x, (x.shape[-1],))
        h, attns, _ = self.stack(x, None, causal=True, need_weights=need_weights)
        if self.pre_logit_scale is not None:
            h = h * self.pre_logit_scale.to(h.dtype)
        logits = self.lm_head(h)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.cfg.logit_softcap is not None:
            cap = self.cfg.logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return (logits, attns) if need_weights else logits


class NormedAttention(nn.Module):
    """A bare MHA under a norm spec, no residual (the theory's setting when the norm is none).

    pre: attn(norm(x)); post: norm(attn(x)); none: attn(x). Used as the target/source of the approximation study.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.placement = cfg.norm.placement
        self.norm = make_norm(cfg.norm, cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.head_dim_qk, cfg.head_dim_v, bias=cfg.bias,
                                       n_kv_heads=cfg.n_kv_heads)

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
