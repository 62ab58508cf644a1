"""sltlab: strong lottery tickets in transformers, with LayerNorm as a first-class knob."""

__version__ = "0.1.0"
from sltlab.tickets.artifact import load_ticket  # noqa: E402,F401  (sltlab.load_ticket(path) -> nn.Module)
