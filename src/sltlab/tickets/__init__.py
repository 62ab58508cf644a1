"""Ticket finders: supermask parametrizations, the one search loop, IMP and artifacts."""

from sltlab.tickets.supermask import (
    Supermask,
    SupermaskConfig,
    apply_supermask,
    bake,
    free_parameter_names,
    free_parameters,
    frozen_pattern,
    get_coat_counts,
    get_masks,
    mask_density,
    set_temperature,
    supermasks,
)

__all__ = [
    "Supermask",
    "SupermaskConfig",
    "apply_supermask",
    "bake",
    "free_parameter_names",
    "free_parameters",
    "frozen_pattern",
    "get_coat_counts",
    "get_masks",
    "mask_density",
    "set_temperature",
    "supermasks",
]
