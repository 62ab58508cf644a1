"""sltlab: strong lottery tickets in transformers, with LayerNorm as a first-class knob."""

__version__ = "0.1.0"
