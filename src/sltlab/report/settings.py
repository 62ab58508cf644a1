"""How the report groups runs: which config keys make a setting, its label, and which variants have a
norm layer."""

from __future__ import annotations

from typing import Any

from sltlab.runs.store import RunRecord

NO_LN = ("none", "no-ln")
# Config keys that do not define *which ticket problem* a run solves; runs equal in all other keys share
# weights (and so are comparable for consistency).
SEED_KEYS = ("score_seed",)
SETTING_KEYS = ("study", "module", "d_model", "n_heads", "n_blocks", "mlp", "method", "keep")


def is_ln(variant: str) -> bool:
    """Every variant with a normalisation layer (LayerNorm, RMSNorm, pre or post, integrated or not)."""
    return str(variant) not in NO_LN


def setting_of(rec: RunRecord) -> tuple:
    c = rec.config
    return tuple((k, c.get(k)) for k in SETTING_KEYS if k in c)


def setting_label(setting: tuple) -> str:
    d = dict(setting)
    parts = [str(d.get("module", "?"))]
    if d.get("module") == "stack":
        parts.append(f"{d.get('n_blocks')} blocks" + (" +MLP" if d.get("mlp") else ""))
    parts += [
        f"d={d.get('d_model')}",
        f"H={d.get('n_heads')}",
        str(d.get("method", "")),
        f"keep={d.get('keep')}",
    ]
    if d.get("study"):
        parts.insert(0, f"[{d['study']}]")
    return " ".join(str(p) for p in parts)


def variants_sorted(variants: Any) -> list[str]:
    return sorted(set(variants), key=lambda v: (is_ln(v), v))
