"""Transformers with a norm knob and seeded, order-independent initialisation."""

from sltlab.nn.init import INIT_SCHEMES, InitSpec, init_model, seeded_tensor
from sltlab.nn.norm import NormSpec, make_norm
from sltlab.nn.transformer import (
    MLP,
    Block,
    CausalLM,
    EncoderClassifier,
    ModelConfig,
    MultiHeadAttention,
    NormedAttention,
    Stack,
)

__all__ = [
    "INIT_SCHEMES",
    "MLP",
    "Block",
    "CausalLM",
    "EncoderClassifier",
    "InitSpec",
    "ModelConfig",
    "MultiHeadAttention",
    "NormedAttention",
    "NormSpec",
    "Stack",
    "init_model",
    "make_norm",
    "seeded_tensor",
]
