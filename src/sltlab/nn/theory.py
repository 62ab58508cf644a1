"""The theory's two architectures beside the transformer: the subset-sum source of a ReLU MLP, and pure attention.

PairedMLP (Pensia et al. 2020; da Cunha et al. 2022; Burkholz 2022). The SubsetSum proofs of the strong lottery
ticket hypothesis realise one target linear map W (out x in) by *two* pruned random layers with a ReLU between
them, W x = W relu(x) - W relu(-x): a hidden unit that keeps one input coordinate with a positive weight carries
relu(x_j), one with a negative weight relu(-x_j), and the second layer sums subsets of them. A single random
hidden layer cannot contain a ticket for a whole ReLU MLP W2 relu(W1 x) (a pruned random row can only keep or
drop each of its own entries, never scale a whole row of W1), so the theory's source spends two random layers
per target layer. PairedMLP is that source for the transformer's MLP:

    fc1.b relu(fc1.a x)  ~  W1 x          (fc1.a: d -> p1, fc1.b: p1 -> d_ff)
    relu(.)              =   the target's activation
    fc2.b relu(fc2.a h)  ~  W2 h          (fc2.a: d_ff -> p2, fc2.b: p2 -> d)

with p1 = units * d and p2 = units * d_ff hidden units ("units" per input coordinate, about half of them with
each sign). Everything outside the MLP (attention, norms, residuals) is the ordinary Block's.

AttentionChain: L bare attention layers under a norm spec with no residual and no MLP, x <- attn(norm(x)) (pre),
norm(attn(x)) (post) or attn(x) (none): the setting in which Dong et al. (2021) prove rank collapse and Wu et al.
(2024) study how LayerNorm and attention masks change it. Layer l is a NormedAttention named layers.l, so seeded
initialisation, supermasks and the construction treat it like any other attention.
"""

from __future__ import annotations

import torch
from torch import nn

from sltlab.errors import ConfigError
from sltlab.nn.transformer import ModelConfig, NormedAttention, Stack, run_layers


class ReluPair(nn.Module):
    """b(relu(a(x))): one target linear map (in -> out) as two random layers through `hidden` ReLU units."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.a = nn.Linear(d_in, hidden, bias=False)
        self.b = nn.Linear(hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class PairedMLP(nn.Module):
    """fc2(relu(fc1(x))) where fc1 and fc2 are ReluPairs with `units` hidden units per input coordinate."""

    def __init__(self, d: int, d_ff: int, units: int):
        super().__init__()
        if units < 1:
            raise ConfigError("model.mlp_pairs", f"{units} units per coordinate", "an integer >= 1")
        self.units = units
        self.fc1 = ReluPair(d, units * d, d_ff)
        self.fc2 = ReluPair(d_ff, units * d_ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def use_paired_mlp(stack: Stack, cfg: ModelConfig, units: int) -> Stack:
    """Replace every block's MLP by a PairedMLP of the same d and d_ff (before the weights are drawn)."""
    if not cfg.mlp:
        raise ConfigError("model.mlp_pairs", "a paired MLP replaces the blocks' MLP, but mlp is off", "mlp = true")
    if cfg.folded:
        raise ConfigError("model.mlp_pairs", "a paired MLP is not defined for folded stacks", "fold omitted")
    for block in stack.blocks:
        block.mlp = PairedMLP(cfg.d_model, cfg.ff_width, units)
    return stack


class AttentionChain(nn.Module):
    """cfg.n_layers NormedAttention layers, no residual, no MLP. forward returns (output, [], per-layer outputs)
    like Stack, so the approximation study's evaluation reads it the same way."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(NormedAttention(cfg) for _ in range(cfg.n_layers))

    def forward(
        self,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
        return_hidden: bool = False,
        skip_attn: frozenset[int] = frozenset(),
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        return run_layers(self.layers, x, pad_mask, causal, need_weights, return_hidden, skip_attn)

    @property
    def blocks(self) -> nn.ModuleList:
        """The layers under the name the approximation study's per-block evaluation looks for."""
        return self.layers
