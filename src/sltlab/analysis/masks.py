"""Where a ticket keeps its weights, and how much two tickets agree.

A ticket is a set of binary masks, one per masked module (`sltlab.tickets.supermask.get_masks` gives
{module name: bool tensor}). This module answers three questions about such sets:

- **Distribution**: the kept fraction (density) per layer and per module type (q, k, v, o, mlp, emb, head),
  because a global-scope search may starve some layers, and depth is where the approximation theory says
  tickets get harder.
- **Consistency**: Jaccard |A and B| / |A or B| and normalised Hamming distance between two tickets found from
  different score seeds on the *same* random weights. High overlap means the weights themselves decide the
  ticket (a consistent ticket); overlap near the chance level p*q / (p + q - p*q) of two independent random
  masks means the search is free to pick many equally good tickets (diverse tickets).
- **IMP rounds**: the overlap between consecutive pruning rounds, and how much of each round's mask survives
  into the final one.

Everything works on plain {name: tensor} dicts, so it serves supermask tickets, IMP masks and masks read from
checkpoints alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from sltlab.errors import ArtifactError, ConfigError

MaskSet = Mapping[str, torch.Tensor]
MODULE_TYPES: tuple[str, ...] = ("q", "k", "v", "o", "mlp", "emb", "head", "other")

_LAYER_RE = re.compile(r"(?:^|\.)(?:blocks|layers?|h)\.(\d+)(?:\.|$)")
# Ordered: the first matching rule wins. Covers sltlab's own names and the usual Hugging Face BERT/GPT names.
_TYPE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("q", re.compile(r"(?:^|\.)(?:q|query|q_proj|q_lin)$")),
    ("k", re.compile(r"(?:^|\.)(?:k|key|k_proj|k_lin)$")),
    ("v", re.compile(r"(?:^|\.)(?:v|value|v_proj|v_lin)$")),
    ("o", re.compile(r"(?:^|\.)(?:attn\.o|o_proj|out_proj|out_lin|attention\.output\.dense|attn\.c_proj)$")),
    (
        "mlp",
        re.compile(r"(?:^|\.)(?:mlp|ffn|intermediate|output)(?:\.|$)|(?:^|\.)(?:fc1|fc2|c_fc|lin1|lin2)$"),
    ),
    (
        "emb",
        re.compile(
            r"(?:^|\.)(?:tok_emb|pos_emb|embeddings?|wte|wpe|word_embeddings|position_embeddings|"
            r"token_type_embeddings)(?:\.|$)"
        ),
    ),
    ("head", re.compile(r"(?:^|\.)(?:head|lm_head|classifier|pooler|score)(?:\.|$)")),
)


def module_type(name: str) -> str:
    """The module type of a masked module's name: q, k, v, o, mlp, emb, head or other."""
    for label, pattern in _TYPE_RULES:
        if pattern.search(name):
            return label
    return "other"


def layer_index(name: str) -> int | None:
    """The block index in a module name ('stack.blocks.3.attn.q' -> 3); None outside the blocks (embeddings,
    head, or a bare single attention)."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def layer_label(name: str) -> str:
    """'L3' for block 3; 'emb' / 'head' for modules outside the blocks; 'L0' for a bare attention (arch
    mha)."""
    idx = layer_index(name)
    if idx is not None:
        return f"L{idx}"
    kind = module_type(name)
    if kind in ("emb", "head"):
        return kind
    return "L0"


def _as_bool(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.bool) if t.dtype != torch.bool else t.detach()


def _grouped_density(masks: MaskSet, key) -> dict[str, float]:
    kept: dict[str, int] = {}
    total: dict[str, int] = {}
    for name, m in masks.items():
        g = key(name)
        b = _as_bool(m)
        kept[g] = kept.get(g, 0) + int(b.sum())
        total[g] = total.get(g, 0) + b.numel()
    return {g: kept[g] / total[g] for g in kept if total[g]}


def overall_density(masks: MaskSet) -> float:
    """Kept fraction over all masked weights together (NaN for no masks)."""
    kept = sum(int(_as_bool(m).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / total if total else float("nan")


def density_by_layer(masks: MaskSet) -> dict[str, float]:
    """Kept fraction per layer label (L0, L1, ..., emb, head), weighted by weight count, in depth order."""
    d = _grouped_density(masks, layer_label)
    return dict(sorted(d.items(), key=lambda kv: _layer_sort_key(kv[0])))


def density_by_type(masks: MaskSet) -> dict[str, float]:
    """Kept fraction per module type (q, k, v, o, mlp, emb, head, other), in that order."""
    d = _grouped_density(masks, module_type)
    return {t: d[t] for t in MODULE_TYPES if t in d}


def density_table(masks: MaskSet) -> dict[str, dict[str, float]]:
    """{layer label: {module type: density}}: the layer x type grid behind a heat map."""
    out: dict[str, dict[str, float]] = {}
    for layer in density_by_layer(masks):
        sub = {n: m for n, m in masks.items() if layer_label(n) == layer}
        out[layer] = density_by_type(sub)
    return out


def _layer_sort_key(label: str) -> tuple[int, int]:
    if label == "emb":
        return (0, 0)
    if label == "head":
        return (2, 0)
    return (1, int(label[1:])) if label[1:].isdigit() else (1, 10**9)


def _check_same(a: MaskSet, b: MaskSet) -> list[str]:
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
        raise ConfigError(
            "masks",
            f"the two tickets mask different modules (only in first: {only_a}, only in second: {only_b})",
            "two tickets of the same architecture and mask targets",
        )
    for name in a:
        if tuple(a[name].shape) != tuple(b[name].shape):
            raise ConfigError(
                "masks",
                f"module {name} has shape {tuple(a[name].shape)} in one ticket and {tuple(b[name].shape)} in the other",
                "tickets over the same source widths",
            )
    return list(a)


def _counts(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int, int]:
    x, y = _as_bool(a).reshape(-1), _as_bool(b).reshape(-1)
    return int((x & y).sum()), int((x | y).sum()), int((x ^ y).sum()), x.numel()


def jaccard(a: torch.Tensor | MaskSet, b: torch.Tensor | MaskSet) -> float:
    """|A and B| / |A or B| of two masks (tensors) or two tickets (mask dicts, pooled). Two empty masks: 1."""
    inter, union, _, _ = _pooled(a, b)
    return inter / union if union else 1.0


def hamming(a: torch.Tensor | MaskSet, b: torch.Tensor | MaskSet) -> float:
    """Fraction of positions where the two masks differ (0: identical, 1: complements)."""
    _, _, diff, n = _pooled(a, b)
    return diff / n if n else 0.0


def _pooled(a: torch.Tensor | MaskSet, b: torch.Tensor | MaskSet) -> tuple[int, int, int, int]:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            raise ConfigError("masks", f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}", "equal shapes")
        return _counts(a, b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        raise ConfigError(
            "masks",
            "cannot compare a single mask with a ticket's dict of masks",
            "two tensors or two {module: mask} dicts",
        )
    tot = [0, 0, 0, 0]
    for name in _check_same(a, b):
        for i, v in enumerate(_counts(a[name], b[name])):
            tot[i] += v
    return tot[0], tot[1], tot[2], tot[3]


def chance_jaccard(p: float, q: float) -> float:
    """Expected Jaccard of two independent random masks with densities p and q: pq / (p + q - pq).

    The baseline a consistency number must beat: two random 50% masks already share a third of their union.
    """
    denom = p + q - p * q
    return p * q / denom if denom > 0 else float("nan")


def overlap(a: MaskSet, b: MaskSet) -> dict[str, Any]:
    """Jaccard, Hamming, the chance-level Jaccard, and the same per module and per layer for two tickets."""
    names = _check_same(a, b)
    per_module = {n: jaccard(a[n], b[n]) for n in names}
    layers: dict[str, list[str]] = {}
    for n in names:
        layers.setdefault(layer_label(n), []).append(n)
    per_layer = {
        lab: jaccard({n: a[n] for n in ns}, {n: b[n] for n in ns})
        for lab, ns in sorted(layers.items(), key=lambda kv: _layer_sort_key(kv[0]))
    }
    pa, pb = overall_density(a), overall_density(b)
    return {
        "jaccard": jaccard(a, b),
        "hamming": hamming(a, b),
        "chance_jaccard": chance_jaccard(pa, pb),
        "density_a": pa,
        "density_b": pb,
        "per_module": per_module,
        "per_layer": per_layer,
    }


def pairwise_jaccard(tickets: Sequence[MaskSet]) -> list[float]:
    """Jaccard of every unordered pair of tickets (e.g. the same weights searched from several score
    seeds)."""
    return [jaccard(a, b) for a, b in combinations(tickets, 2)]


def consistency(tickets: Sequence[MaskSet]) -> dict[str, Any]:
    """Mean pairwise Jaccard of tickets found on the same weights, and its excess over chance.

    `excess` = (J - J_chance) / (1 - J_chance): 0 at chance level, 1 for identical tickets, so tickets of
    different densities compare on one scale.
    """
    pairs = pairwise_jaccard(tickets)
    if not pairs:
        return {
            "n_tickets": len(tickets),
            "n_pairs": 0,
            "jaccard": float("nan"),
            "chance": float("nan"),
            "excess": float("nan"),
            "pairs": [],
        }
    dens = [overall_density(t) for t in tickets]
    chance = sum(chance_jaccard(p, q) for p, q in combinations(dens, 2)) / len(pairs)
    mean_j = sum(pairs) / len(pairs)
    excess = (mean_j - chance) / (1 - chance) if chance < 1 else float("nan")
    return {
        "n_tickets": len(tickets),
        "n_pairs": len(pairs),
        "jaccard": mean_j,
        "chance": chance,
        "excess": excess,
        "pairs": pairs,
    }


def imp_round_overlap(rounds: Sequence[MaskSet]) -> list[dict[str, float]]:
    """For IMP masks of rounds 0..R (each nested in the previous one): per round r >= 1, the Jaccard with
    round r-1, the fraction of round r-1's kept weights that survive (retention), and the Jaccard with the
    final mask."""
    out = []
    for r in range(1, len(rounds)):
        prev, cur = rounds[r - 1], rounds[r]
        inter, _, _, _ = _pooled(prev, cur)
        kept_prev = sum(int(_as_bool(m).sum()) for m in prev.values())
        out.append(
            {
                "round": r,
                "density": overall_density(cur),
                "jaccard_prev": jaccard(prev, cur),
                "retention": inter / kept_prev if kept_prev else float("nan"),
                "jaccard_final": jaccard(cur, rounds[-1]),
            }
        )
    return out


def imp_round_table(
    rounds: Sequence[MaskSet], per_round_metrics: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per IMP round 0..R: density, Jaccard with the previous round (NaN for round 0), retention and
    Jaccard with the final round, plus the dev metric `main` of that round from `per_round_metrics` (a run's
    metrics["rounds"]) when given. Empty for no rounds."""
    if not rounds:
        return []
    nan = float("nan")
    first = {
        "round": 0,
        "density": overall_density(rounds[0]),
        "jaccard_prev": nan,
        "retention": nan,
        "jaccard_final": jaccard(rounds[0], rounds[-1]),
    }
    rows: list[dict[str, Any]] = [first, *imp_round_overlap(rounds)]
    by_round = {int(m["round"]): m for m in per_round_metrics or [] if "round" in m}
    for row in rows:
        main = by_round.get(row["round"], {}).get("main")
        row["main"] = float(main) if isinstance(main, int | float) else nan
    return rows


def load_imp_rounds(run_dir: str | Path) -> list[dict[str, torch.Tensor]] | None:
    """The IMP round masks kept in a run's artifact folder; None when it has none (not an IMP run, or one made
    before round masks were saved). A damaged file raises ArtifactError."""
    from sltlab.tickets.checkpoint import ROUND_MASKS_FILE, load_round_masks

    path = Path(run_dir) / ROUND_MASKS_FILE
    return load_round_masks(path) if path.is_file() else None


_ROUND_RE = re.compile(r"^(?:imp\.)?round[_.]?(\d+)[./:](.+)$")


def masks_from_tensors(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Masks stored as checkpoint extras: 'mask.<module>' / '<module>' bool tensors are the final ticket,
    'round<r>.<module>' the IMP round masks. Returns (final masks, [round 0 masks, round 1 masks, ...])."""
    final: dict[str, torch.Tensor] = {}
    rounds: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if t.dtype not in (torch.bool, torch.uint8):
            continue
        m = _ROUND_RE.match(key)
        if m:
            rounds.setdefault(int(m.group(1)), {})[m.group(2)] = t.bool()
        else:
            for prefix in ("mask::", "mask."):
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    break
            final[key] = t.bool()
    ordered = [rounds[r] for r in sorted(rounds)]
    if not final and ordered:
        final = dict(ordered[-1])
    return final, ordered


def load_ticket_masks(path: str | Path) -> tuple[dict[str, torch.Tensor], list[dict], Any]:
    """Masks of a checkpointed run: a supermask ticket's deterministic masks, else bool masks saved as extras
    (IMP). Returns (final masks, IMP round masks or [], the ModelSpec)."""
    from sltlab.tickets.checkpoint import checkpoint_extras, load_checkpoint
    from sltlab.tickets.supermask import get_masks

    model, spec = load_checkpoint(path)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    extra_final, rounds = masks_from_tensors(checkpoint_extras(path))
    if not masks:
        masks = extra_final
    if not masks:
        raise ArtifactError(
            f"checkpoint {path} holds no masks (neither supermask scores nor bool mask extras); is it a dense run?"
        )
    return masks, rounds, spec
