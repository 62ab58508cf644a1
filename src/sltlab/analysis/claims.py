"""Claims: what a report asserts, each with its n, effect, interval, p, Holm-adjusted p, smallest detectable effect
and a verdict that follows from them by one rule.

A claim compares two arms of one study on one measure, *paired by weight seed* (the random network is the unit of
replication; score seeds were averaged within it before they reach here). The plan of a study (`ClaimsPlan`, the
`[claims]` table of its config, recorded in the store when the sweep starts) names the measures, the direction the
hypothesis predicts and the equivalence margin of each, before any run. `ClaimSet` collects every claim of a report
and `finalize` applies, across all of them at once:

- Holm's step-down correction to every p-value the report computes (the difference test of each claim, and the TOST
  of each claim that has a margin): the family is the whole report, so adding claims makes each one harder to pass;
- the minimum detectable effect of each claim: the mean difference its paired t test would detect with power 0.8 at
  its n, at alpha / m (the Holm threshold of the smallest p, the strictest step), with the observed sd;
- the verdict:
  * **equivalent within margin**: a margin was declared and the Holm-adjusted TOST p < alpha. This comes first: the
    margin is the smallest difference declared to matter, so a difference shown to lie inside it is, for the
    question asked, no difference, even where the difference test also passes (a real but negligible effect; the
    effect and its p stay in the row);
  * **supported**: otherwise, the Holm-adjusted difference p < alpha and the effect has the predicted sign (for a
    two-sided claim: any sign, "differs");
  * **contradicted**: the Holm-adjusted difference p < alpha with the opposite sign;
  * **inconclusive**: everything else. "No difference" is never read as "the same".

Limits: the t-based p, interval and MDE assume roughly normal differences across weight seeds; the exact Wilcoxon
p is printed beside them as the distribution-free check (at n weight seeds it cannot go below 2 / 2^n). A claim with
fewer than 3 units gets no verdict but "inconclusive".
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sltlab.analysis import stats
from sltlab.errors import ConfigError
from sltlab.runs.config import check_range

Direction = Literal["greater", "less", "two-sided"]
VERDICTS = ("supported", "contradicted", "equivalent within margin", "inconclusive")
MIN_UNITS = 3


@dataclass(frozen=True)
class ClaimSpec:
    """One pre-declared claim: `measure` of arm `compare` minus arm `reference`, predicted `direction`, the
    equivalence `margin` (in the measure's units; 0 = none declared), and the pilot sd of the paired difference
    with its source (for sizing the study; 0 = unknown)."""

    name: str
    measure: str
    direction: Direction = "two-sided"
    margin: float = 0.0
    question: str = ""
    sd: float = 0.0
    sd_source: str = ""

    def validate(self, where: str = "claims.claim") -> None:
        if not self.name:
            raise ConfigError(f"{where}.name", "is empty", "a short name, e.g. consistency-jaccard")
        if self.direction not in ("greater", "less", "two-sided"):
            raise ConfigError(f"{where}.direction", f"got {self.direction!r}", "greater | less | two-sided")
        check_range(f"{where}.margin", self.margin, 0.0)
        check_range(f"{where}.sd", self.sd, 0.0)

    def __post_init__(self) -> None:
        self.validate()


@dataclass(frozen=True)
class ClaimsPlan:
    """The `[claims]` table of a study config: the claims, declared before the run.

    reference: the arm every other is compared with (a norm variant, e.g. "none"); compare: the arms compared with
    it ([] = every other arm of the study); per_width: one claim per source width (else the largest width only);
    alpha, power: for verdicts and sizing."""

    claim: tuple[ClaimSpec, ...] = ()
    reference: str = "none"
    compare: tuple[str, ...] = ()
    per_width: bool = True
    alpha: float = 0.05
    power: float = 0.8
    # the number of p-values the report's Holm family is expected to hold, for sizing (0 = this plan's own)
    holm_family: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "claim", tuple(self.claim))
        object.__setattr__(self, "compare", tuple(self.compare))
        check_range("claims.alpha", self.alpha, 0.0, 0.5, lo_open=True)
        check_range("claims.power", self.power, 0.5, 1.0, hi_open=True)
        check_range("claims.holm_family", self.holm_family, 0)
        names = [c.name for c in self.claim]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError("claims.claim", f"claim name {sorted(dup)[0]!r} appears twice", "distinct names")
        for i, c in enumerate(self.claim):
            c.validate(f"claims.claim[{i}]")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def spec(self, name: str) -> ClaimSpec | None:
        return next((c for c in self.claim if c.name == name), None)


@dataclass
class Claim:
    """One tested claim; `finalize` of its ClaimSet fills p_holm, p_tost_holm, mde and verdict."""

    name: str
    question: str
    scope: str
    compare: str
    reference: str
    measure: str
    direction: Direction
    margin: float
    result: stats.Paired
    p_tost: float = math.nan
    p_holm: float = math.nan
    p_tost_holm: float = math.nan
    mde: float = math.nan
    alpha_mde: float = math.nan
    verdict: str = "inconclusive"
    figure: str = ""
    note: str = ""
    # {unit: (compare value, reference value)}: what the test saw, for figures and report.json
    values: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.result.n

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "name": self.name, "question": self.question, "scope": self.scope, "compare": self.compare,
            "reference": self.reference, "measure": self.measure, "direction": self.direction,
            "margin": self.margin, "n": r.n, "mean_compare": r.mean_a, "mean_reference": r.mean_b,
            "effect": r.effect, "ci": [r.lo, r.hi], "ci_level": r.level, "dz": r.dz, "dz_ci": [r.dz_lo, r.dz_hi],
            "sd_diff": r.sd_diff, "p": r.p, "p_wilcoxon": r.p_wilcoxon, "p_tost": self.p_tost,
            "p_holm": self.p_holm, "p_tost_holm": self.p_tost_holm, "mde": self.mde, "mde_alpha": self.alpha_mde,
            "verdict": self.verdict, "figure": self.figure, "note": self.note, "units": [str(u) for u in r.units],
            "values": {u: list(v) for u, v in self.values.items()},
        }


def make_claim(name: str, scope: str, compare: str, reference: str, measure: str,
               a: Mapping[Hashable, float], b: Mapping[Hashable, float], direction: Direction = "two-sided",
               margin: float = 0.0, question: str = "", note: str = "") -> Claim:
    """Test `measure` of arm a (compare) against arm b (reference), paired by unit. Raises stats.UnpairedError
    unless both arms have the same units: restrict both to the shared weight seeds first, and say so in `note`."""
    result = stats.paired(a, b, "two-sided")
    p_tost = stats.tost_paired(a, b, margin) if margin > 0 else math.nan
    values = {str(u): (float(a[u]), float(b[u])) for u in result.units}
    return Claim(name, question, scope, compare, reference, measure, direction, margin, result, p_tost, note=note,
                 values=values)


def shared_units(a: Mapping[Hashable, float], b: Mapping[Hashable, float]
                 ) -> tuple[dict[Hashable, float], dict[Hashable, float], int]:
    """Both arms restricted to the units they share (finite in both); returns them and how many units were
    dropped."""
    keep = [u for u in a if u in b and math.isfinite(a[u]) and math.isfinite(b[u])]
    dropped = len(set(a) | set(b)) - len(keep)
    return {u: a[u] for u in keep}, {u: b[u] for u in keep}, dropped


@dataclass
class ClaimSet:
    """Every claim of one report; `finalize` corrects across all of them at once."""

    alpha: float = 0.05
    power: float = 0.8
    claims: list[Claim] = field(default_factory=list)

    def add(self, claim: Claim) -> Claim:
        self.claims.append(claim)
        return claim

    @property
    def m(self) -> int:
        """The number of p-values in the Holm family (difference tests + TOSTs that can be computed)."""
        return sum(math.isfinite(c.result.p) for c in self.claims) + sum(math.isfinite(c.p_tost) for c in self.claims)

    def finalize(self) -> ClaimSet:
        ps = [c.result.p for c in self.claims] + [c.p_tost for c in self.claims]
        adj = stats.holm(ps)
        k = len(self.claims)
        m = max(1, self.m)
        for i, c in enumerate(self.claims):
            c.p_holm, c.p_tost_holm = adj[i], adj[k + i]
            c.alpha_mde = self.alpha / m
            c.mde = stats.mde(c.n, c.result.sd_diff, c.alpha_mde, self.power)
            c.verdict = verdict(c, self.alpha)
        return self

    def as_list(self) -> list[dict[str, Any]]:
        return [c.as_dict() for c in self.claims]

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in VERDICTS}
        for c in self.claims:
            out[c.verdict] += 1
        return out


def verdict(c: Claim, alpha: float) -> str:
    """The module docstring's rule, for one finalized claim."""
    r = c.result
    if r.n < MIN_UNITS or not math.isfinite(r.effect):
        return "inconclusive"
    if c.margin > 0 and math.isfinite(c.p_tost_holm) and c.p_tost_holm < alpha:
        return "equivalent within margin"
    if math.isfinite(c.p_holm) and c.p_holm < alpha and r.effect != 0:
        if c.direction == "two-sided":
            return "supported"
        right = r.effect > 0 if c.direction == "greater" else r.effect < 0
        return "supported" if right else "contradicted"
    return "inconclusive"


def sizing(plan: ClaimsPlan, n_tests: int, n_units: int) -> list[dict[str, Any]]:
    """How many weight seeds each claim of a plan needs for power `plan.power` at alpha / n_tests (the strictest
    Holm step), from the pilot sd: to detect a difference of the margin's size, and to show equivalence within it
    when the true difference is 0; and the power the study's n_units gives."""
    alpha = plan.alpha / max(1, n_tests)
    out = []
    for c in plan.claim:
        row: dict[str, Any] = {"claim": c.name, "measure": c.measure, "margin": c.margin, "sd": c.sd,
                               "sd_source": c.sd_source, "alpha": alpha, "n_planned": n_units}
        if c.margin > 0 and c.sd > 0:
            row["n_difference"] = stats.n_for_effect(c.margin, c.sd, alpha, plan.power)
            row["n_equivalence"] = stats.n_for_equivalence(c.sd, c.margin, alpha, plan.power)
            row["mde_planned"] = stats.mde(n_units, c.sd, alpha, plan.power)
            row["tost_power_planned"] = stats.tost_power(n_units, c.sd, c.margin, alpha)
        out.append(row)
    return out


def fmt_claim_row(c: dict[str, Any]) -> list[str]:
    """The claims table's cells for one claim dict (report and docs share it)."""
    def f(x: Any, d: int = 3) -> str:
        return f"{x:.{d}g}" if isinstance(x, int | float) and math.isfinite(x) else "n/a"

    lo, hi = c["ci"]
    sign = {"greater": ">", "less": "<", "two-sided": "≠"}[c["direction"]]
    return [
        c["question"] or c["name"], c["scope"], f"{c['compare']} {sign} {c['reference']}", str(c["n"]),
        f"{f(c['effect'])} [{f(lo)}, {f(hi)}]", stats.fmt_p(c["p"]), stats.fmt_p(c["p_holm"]),
        (stats.fmt_p(c["p_tost_holm"]) + f" (±{c['margin']:g})") if c["margin"] else "no margin",
        f(c["mde"]), c["verdict"],
    ]


CLAIM_HEADERS = ["claim", "where", "comparison", "n (weight seeds)", "effect [95% CI]", "p", "Holm p",
                 "TOST Holm p (margin)", "MDE", "verdict"]


def units_of(values: Sequence[tuple[Hashable, float]]) -> dict[Hashable, float]:
    """{unit: mean of its values}: the score seeds of one weight seed averaged into one value."""
    acc: dict[Hashable, list[float]] = {}
    for u, v in values:
        if isinstance(v, int | float) and math.isfinite(v):
            acc.setdefault(u, []).append(float(v))
    return {u: sum(vs) / len(vs) for u, vs in acc.items()}
