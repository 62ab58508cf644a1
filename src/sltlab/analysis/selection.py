"""Hyperparameters chosen on held-out *training* data, never on the scores a study reports.

A study with a grid (an lr grid, an affine-lr grid) runs every grid point on a few weight seeds, scores each on a
held-out slice of its training data (`holdout_*` metrics: approx draws fresh inputs from the training distribution,
GLUE and PEFT hold out rows of the training set that no run trains on), chooses the best point per problem, and runs
the remaining seeds at that point. Dev / test scores are computed once per run and reported; nothing here reads them.

The same function chooses for the driver (which cells to run next) and for the report (which stored runs to show),
from the same records, so the two always agree and the choice can be audited from the store alone:

- a *problem* is everything in a run's config except its seeds and the grid keys;
- the candidates of a problem are its distinct grid values; each is scored by the mean of `metric` over the
  (weight seed, score seed) pairs that *every* candidate has (the grid's seeds), so a candidate that also ran on
  more seeds gains nothing from them;
- ties go to the candidate listed first in `order` (the config's grid order), else the smallest value.

`SELECT_ON` holds what a study may choose on; asking for "dev" (or "test") is refused at the door.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sltlab.errors import ConfigError

SELECT_ON = ("train-holdout",)
SEED_KEYS = ("seed", "score_seed")


def check_select_on(value: str, where: str) -> None:
    """Refuse selection on the data a study reports: one line naming the field."""
    if value in ("dev", "test", "validation", "eval"):
        raise ConfigError(where, f"{value!r}: choosing hyperparameters on the {value} scores that are then reported "
                          "makes those scores optimistic", "train-holdout (a held-out slice of the training data)")
    if value not in SELECT_ON:
        raise ConfigError(where, f"got {value!r}", " | ".join(SELECT_ON))


def get_key(config: Mapping[str, Any], key: str) -> Any:
    """A dotted config key ('search.lr'); None when absent."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _without(config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(config, sort_keys=True, default=str))
    for key in keys:
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def problem_of(config: Mapping[str, Any], grid_keys: Sequence[str]) -> str:
    """The problem a run solves: its config without seeds and grid keys, as canonical JSON."""
    return json.dumps(_without(config, (*SEED_KEYS, *grid_keys)), sort_keys=True)


@dataclass(frozen=True)
class Choice:
    """The selection of one problem: each candidate's mean held-out metric over the shared seeds, and the winner."""

    problem: str
    candidates: dict[str, float]
    n_units: int
    chosen: str | None
    metric: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"problem": json.loads(self.problem), "candidates": self.candidates, "n_units": self.n_units,
                "chosen": self.chosen, "metric": self.metric, "reason": self.reason}


@dataclass
class Selection:
    """What `select` decided: the records to report (the chosen candidate of every problem) and every choice."""

    kept: list[Any] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)

    @property
    def chosen(self) -> dict[str, str | None]:
        return {c.problem: c.chosen for c in self.choices}


def _candidate(config: Mapping[str, Any], grid_keys: Sequence[str]) -> str:
    return json.dumps([get_key(config, k) for k in grid_keys])


def choose(scores: Mapping[str, Mapping[tuple, float]], lower_is_better: bool,
           order: Sequence[str] = ()) -> tuple[str | None, dict[str, float], int, str]:
    """Pick one candidate from {candidate: {(seed, score_seed): held-out value}}.

    Returns (chosen or None, {candidate: mean over shared units}, number of shared units, reason when None)."""
    if not scores:
        return None, {}, 0, "no candidates"
    shared = set.intersection(*(set(v) for v in scores.values()))
    if not shared:
        return None, {}, 0, "no seed is shared by every candidate"
    means = {}
    for cand, vals in scores.items():
        xs = [vals[u] for u in shared]
        means[cand] = float(sum(xs) / len(xs)) if all(math.isfinite(x) for x in xs) else math.nan
    finite = {c: m for c, m in means.items() if math.isfinite(m)}
    if not finite:
        return None, means, len(shared), "no candidate has a finite held-out score"
    rank = {c: i for i, c in enumerate(order)}

    def key(c: str) -> tuple:
        m = finite[c]
        return (m if lower_is_better else -m, rank.get(c, len(rank)), c)

    return min(finite, key=key), means, len(shared), ""


def select(records: Iterable[Any], grid_keys: Sequence[str], metric: str, lower_is_better: bool,
           order: Mapping[str, Sequence[Any]] | None = None) -> Selection:
    """Keep, per problem, the runs of the chosen grid point (see the module docstring).

    records: objects with `.config` and `.metrics` (RunRecord). A problem with a single candidate keeps its runs
    whatever their metrics (nothing was chosen). A problem whose runs have no held-out metric at all (made before
    it existed, or by hand) keeps every candidate: nothing was chosen, so nothing is hidden. A problem with
    held-out metrics but no seed shared by every candidate keeps nothing and says why in its Choice.
    order: {grid key: values in the config's order} for tie-breaking."""
    by_problem: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_problem[problem_of(r.config, grid_keys)][_candidate(r.config, grid_keys)].append(r)
    out = Selection()
    cand_order: list[str] = []
    if order:
        import itertools

        lists = [list(order.get(k, [])) for k in grid_keys]
        if all(lists):
            cand_order = [json.dumps(list(c)) for c in itertools.product(*lists)]
    for problem, cands in sorted(by_problem.items()):
        if len(cands) == 1:
            (only, recs), = cands.items()
            out.kept.extend(recs)
            out.choices.append(Choice(problem, {only: math.nan}, 0, only, metric, "single candidate"))
            continue
        scores: dict[str, dict[tuple, float]] = {}
        for cand, recs in cands.items():
            vals: dict[tuple, float] = {}
            for r in recs:
                v = r.metrics.get(metric)
                if isinstance(v, int | float):
                    vals[tuple(r.config.get(k) for k in SEED_KEYS)] = float(v)
            scores[cand] = vals
        if not any(scores.values()):
            # runs made before held-out scores existed (or by hand): nothing was chosen, so nothing is hidden
            out.kept.extend(r for recs in cands.values() for r in recs)
            out.choices.append(Choice(problem, {c: math.nan for c in cands}, 0, None, metric,
                                      "no held-out scores: every candidate kept"))
            continue
        chosen, means, n, reason = choose(scores, lower_is_better, cand_order)
        out.choices.append(Choice(problem, means, n, chosen, metric, reason))
        if chosen is not None:
            out.kept.extend(cands[chosen])
    return out
