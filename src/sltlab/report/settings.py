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


def target_groups(recs: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """Split approximation runs by the target they imitate, so no table or figure puts variants with different
    targets side by side unlabelled: one group per shared target ("shared target: none"; the no-norm runs of the
    same seeds join it: their own target is that target) and one for runs that imitate their own-norm target."""
    shared: dict[str, list[RunRecord]] = {}
    own: list[RunRecord] = []
    for r in recs:
        t = r.config.get("target_norm")
        if t is None:
            own.append(r)
        else:
            shared.setdefault(str(t), []).append(r)
    out = []
    for t, rs in sorted(shared.items()):
        joined = [r for r in own if _own_target(r) == t]
        out.append((f"shared target: {t}", rs + joined))
    if own and (not shared or any(_own_target(r) not in shared for r in own)):
        out.append(("own-norm targets" if any(_own_target(r) != "none" for r in own) else "target: none", own))
    return out


def _own_target(rec: RunRecord) -> str:
    from sltlab.nn.norm import NormSpec

    try:
        spec = NormSpec.parse(str(rec.config.get("norm", rec.config.get("variant", "none"))))
    except Exception:  # noqa: BLE001 - an unknown norm name from another version
        return "?"
    return spec.name.replace("+affine", "")
