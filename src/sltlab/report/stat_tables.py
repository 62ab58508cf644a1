"""Rows of the report's statistics tables: LN vs no-LN Mann-Whitney with effect sizes, and Kruskal-Wallis
across groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sltlab.analysis import stats
from sltlab.report.blocks import fmt
from sltlab.report.settings import is_ln


def ln_test(values: Mapping[str, Sequence[float]], alternative: str) -> dict[str, Any]:
    """Mann-Whitney of all LN-variant values against the no-LN values, with effect sizes."""
    ln = [x for v, xs in values.items() if is_ln(v) for x in xs]
    no = [x for v, xs in values.items() if not is_ln(v) for x in xs]
    return stats.mann_whitney(ln, no, alternative=alternative)


def stat_row(name: str, res: dict[str, Any]) -> list[Any] | None:
    if not (res["n_a"] and res["n_b"]):
        return None
    ci = res.get("diff_ci", {})
    ci_txt = f"[{fmt(ci.get('lo'))}, {fmt(ci.get('hi'))}]" if ci else "n/a"
    return [
        name,
        f"{res['n_a']} / {res['n_b']}",
        fmt(res["mean_a"]),
        fmt(res["mean_b"]),
        ci_txt,
        res["alternative"],
        stats.fmt_p(res["p"]),
        f"{fmt(res['cliffs_delta'])} ({res['effect']})",
        fmt(res["hedges_g"]),
    ]


STAT_HEADERS = [
    "comparison (LN vs no-LN)",
    "n LN / n no-LN",
    "mean LN",
    "mean no-LN",
    "95% CI of difference",
    "alternative",
    "p (Mann-Whitney)",
    "Cliff's delta",
    "Hedges' g",
]


def kw_row(name: str, res: dict[str, Any]) -> list[Any] | None:
    if len(res["groups"]) < 2:
        return None
    groups = ", ".join(f"{k}: {v}" for k, v in res["groups"].items())
    return [name, groups, fmt(res["H"]), stats.fmt_p(res["p"]), fmt(res["epsilon_squared"])]


STAT_EMPTY = "no LN vs no-LN test: it needs runs both with and without a norm layer"
KW_EMPTY = "no Kruskal-Wallis test: it needs two or more groups"
KW_HEADERS = ["quantity", "groups (n)", "H", "p (Kruskal-Wallis)", "epsilon²"]
