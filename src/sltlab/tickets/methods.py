"""The registry of methods: one place that says what each method name means, which studies offer it, what mask
config it sets and its default learning rate. Studies validate and build from here; a new method is one
`register(...)` call (its mask rule goes in tickets/supermask.py), and every study that lists it picks it up.

kinds: "mask" (a supermask over frozen random weights), "dense" (every weight trained), "prune" (IMP),
"construct" (the theory's subset-sum ticket), "finetune" (parameter-efficient fine-tuning of a pretrained model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sltlab.errors import ConfigError

Kind = Literal["mask", "dense", "prune", "construct", "finetune"]


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind
    studies: frozenset[str]
    help: str
    # SupermaskConfig options the method switches on (its variant options, e.g. coats, come from the study)
    mask: Mapping[str, Any] = field(default_factory=dict)
    variant: tuple[str, ...] = ()  # the study fields the method reads (multicoated: coats, coat_keeps)
    learns_norm: bool = False  # the LayerNorm-integrated ticket: masks and the norm's gain/bias
    lr: Mapping[str, float] = field(default_factory=dict)  # default learning rate per study

    @property
    def masked(self) -> bool:
        return self.kind == "mask"


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    REGISTRY[method.name] = method
    return method


def names(study: str, kinds: tuple[Kind, ...] | None = None) -> tuple[str, ...]:
    """The methods `study` offers (optionally only of some kinds), in registration order."""
    return tuple(m.name for m in REGISTRY.values() if study in m.studies and (kinds is None or m.kind in kinds))


def get(name: str, study: str, field_name: str = "method") -> Method:
    """The method `name` of `study`, or a ConfigError naming the field and the study's methods."""
    m = REGISTRY.get(name)
    if m is None or study not in m.studies:
        raise ConfigError(field_name, f"unknown method {name!r}", " | ".join(names(study)))
    return m


def default_lr(name: str, study: str) -> float:
    return get(name, study).lr[study]


_ALL = frozenset({"approx", "glue", "lm"})
register(Method("dense", "dense", frozenset({"glue", "lm"}), "every weight trained: the reference of the same shape",
                lr={"glue": 1e-3, "lm": 3e-3}))
register(Method("edge-popup", "mask", _ALL | {"theory"}, "top-k of the scores per layer, straight-through "
                "(Ramanujan et al. 2020)", mask={"method": "edge-popup"}, lr={"approx": 0.05, "glue": 0.1,
                                                                                "lm": 0.01}))
register(Method("ln-integrated", "mask", frozenset({"glue"}), "edge-popup masks plus the LayerNorm gain/bias",
                mask={"method": "edge-popup"}, learns_norm=True, lr={"glue": 0.1}))
register(Method("annealed", "mask", _ALL, "masks sampled from sigmoid(scores / T), T annealed; straight-through",
                mask={"method": "annealed"}, lr={"approx": 0.05, "glue": 0.1, "lm": 0.2}))
register(Method("multicoated", "mask", frozenset({"approx"}), "nested coats over one score (Okoshi et al. 2022)",
                mask={"method": "edge-popup"}, variant=("coats", "coat_keeps"), lr={"approx": 0.05}))
register(Method("partially-frozen", "mask", frozenset({"approx"}), "a seeded part of each layer fixed pruned or "
                "kept before the search (Okoshi et al. 2024)", mask={"method": "edge-popup"},
                variant=("frozen_pruned", "frozen_kept"), lr={"approx": 0.05}))
register(Method("imp", "prune", frozenset({"glue"}), "iterative magnitude pruning with rewinding",
                lr={"glue": 1e-3}))
register(Method("construct", "construct", frozenset({"approx", "theory"}),
                "the theory's subset-sum construction (no search)"))
for _name, _help in (("full", "every weight"), ("bitfit", "every bias"), ("ln", "every LayerNorm gain and bias"),
                     ("random", "as many random scalars as ln"),
                     ("ln-fisher", "the top fraction of LayerNorm scalars by Fisher information")):
    register(Method(_name, "finetune", frozenset({"peft"}), _help))
register(Method("mask", "mask", frozenset({"peft"}), "binary masks over the frozen pretrained weights"))
register(Method("mask+ln", "mask", frozenset({"peft"}), "masks over the pretrained weights plus the LayerNorm "
                "gain/bias", learns_norm=True))
