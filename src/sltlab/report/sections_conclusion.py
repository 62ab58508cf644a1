"""Section 7: the answer to the report's question, phrased from the tests the earlier sections stored in the
summary."""

from __future__ import annotations

from typing import Any

from sltlab.analysis import stats
from sltlab.report.blocks import Section, finite, fmt
from sltlab.report.context import ReportContext


def _verdict(res: dict[str, Any] | None, want: str) -> tuple[str, str]:
    """('supports' | 'contradicts' | 'inconclusive' | 'insufficient', sentence) for one one-sided LN test."""
    if res is None:
        return "insufficient", "no data"
    n_a, n_b, p, d = res["n_a"], res["n_b"], res["p"], res["cliffs_delta"]
    ci = res.get("diff_ci", {})
    txt = (
        f"LN mean {fmt(res['mean_a'])} vs no-LN {fmt(res['mean_b'])} (n = {n_a} vs {n_b}; difference 95% CI "
        f"[{fmt(ci.get('lo'))}, {fmt(ci.get('hi'))}]; one-sided Mann-Whitney p = {stats.fmt_p(p)}; Cliff's "
        "delta "
        f"{fmt(d)}, {res['effect']})"
    )
    if n_a < 3 or n_b < 3 or not finite(p):
        return "insufficient", txt
    sign_ok = d > 0 if want == "greater" else d < 0
    if p < 0.05 and sign_ok:
        return "supports", txt
    if finite(d) and abs(d) >= 0.474 and not sign_ok:
        return "contradicts", txt
    return "inconclusive", txt


def section_conclusion(ctx: ReportContext) -> Section:
    s = Section("7. Conclusion: does LayerNorm give more consistent but less diverse tickets?")
    cons = ctx.summary.get("consistency", [])
    att = ctx.summary.get("attention", [])
    verdicts = []
    lines = []
    for c in cons:
        v, txt = _verdict(c["ln_vs_none"], "greater")
        verdicts.append(("consistency", v))
        lines.append(f"**More consistent?** {c['setting']}: {v} — Jaccard excess over chance, {txt}.")
    if not cons:
        verdicts.append(("consistency", "insufficient"))
        lines.append("**More consistent?** Not measurable: no runs differing only in score seed with checkpoints.")
    for a in att:
        if a.get("diversity_undefined"):
            lines.append(f"**Less diverse?** {a['setting']}: not applicable — one head per layer, no pair of heads "
                         "to compare.")
            continue
        v, txt = _verdict(a["ticket_diversity_ln_vs_none"], "less")
        verdicts.append(("diversity", v))
        refs = "; ".join(
            f"{m} LN {fmt(r['mean_a'])} vs no-LN {fmt(r['mean_b'])} (two-sided p = {stats.fmt_p(r['p'])}, "
            f"delta {fmt(r['cliffs_delta'])})"
            for m, r in a.get("reference_diversity_ln_vs_none", {}).items()
            if r["n_a"] and r["n_b"]
        )
        lines.append(
            f"**Less diverse?** {a['setting']}: {v} — ticket head diversity (JSD bits), {txt}."
            + (f" For reference, head diversity of {refs}." if refs else "")
        )
    if not att:
        verdicts.append(("diversity", "insufficient"))
        lines.append("**Less diverse?** Not measurable: no ticket checkpoints to run.")
    for e in ctx.summary.get("error_vs_width", []):
        res = e["ln_vs_none"]
        if res["n_a"] and res["n_b"]:
            lines.append(
                f"**Context, ticket quality.** {e['setting']}: relative error at width {e['width']}, LN "
                f"{fmt(res['mean_a'])} vs no-LN {fmt(res['mean_b'])} (n = {res['n_a']} vs {res['n_b']}; "
                f"two-sided p = {stats.fmt_p(res['p'])}; Cliff's delta {fmt(res['cliffs_delta'])})."
            )
    for line in lines:
        s.p(line)
    parts = {k: {v for kk, v in verdicts if kk == k} for k in ("consistency", "diversity")}

    def word(k: str) -> str:
        vs = parts[k]
        if vs == {"supports"}:
            return "supported"
        if "contradicts" in vs and "supports" not in vs:
            return "contradicted"
        if vs <= {"insufficient"}:
            return "not testable with these runs"
        if "supports" in vs:
            return "supported in some settings only"
        return "not supported (no significant difference)"

    overall = f"Consistency half: {word('consistency')}. Diversity half: {word('diversity')}."
    s.p(
        f"**Answer.** {overall} The hypothesis as a whole holds only if both halves are supported; tests are "
        "one-sided at α = 0.05 without correction across settings, with few seeds, so a non-significant "
        "result means 'not shown', not 'shown absent'."
    )
    ctx.summary["conclusion"] = {
        "consistency": word("consistency"),
        "diversity": word("diversity"),
        "lines": lines,
    }
    if ctx.missing:
        s.note("Missing from the store: " + "; ".join(ctx.missing) + ".")
    return s
