"""sltlab: strong lottery tickets in transformers, with LayerNorm as a first-class knob."""

from sltlab.tickets.artifact import load_ticket  # noqa: E402,F401  (sltlab.load_ticket(path) -> nn.Module)
from sltlab.version import __version__  # noqa: F401
