"""`sltlab report`: one page that answers "does LayerNorm give more consistent but less diverse tickets?".

It reads whatever the store holds and never assumes a full sweep: each section says which runs it used and,
when its runs are missing, what to run to fill it. Sections:

1. error vs source width per norm variant (log y, seeds as dots, fitted exponential law and its slope);
2. error per block in depth (stacks) and mask density per layer;
3. ticket consistency: Jaccard overlap of tickets found from different score seeds on the same weights;
4. attention entropy and head diversity per layer: ticket vs its random source vs the dense target;
5. GLUE (and PEFT / LM) tables with bootstrap intervals and Kruskal-Wallis across methods;
6. statistics and the conclusion, phrased by what the numbers say, with the n behind every claim.

Outputs in the chosen folder: report.html (self-contained: figures embedded as data URIs, inline CSS),
report.md (links the PNGs), figures/*.png and report.json (every number the text quotes).
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sltlab import report_plots as plots
from sltlab.analysis import stats
from sltlab.analysis.fits import fit_laws
from sltlab.runs.store import RunRecord, Store, atomic_write_bytes, atomic_write_text

NO_LN = ("none", "no-ln")
# Config keys that do not define *which ticket problem* a run solves; runs equal in all other keys share
# weights (and so are comparable for consistency).
SEED_KEYS = ("score_seed",)
SETTING_KEYS = ("study", "module", "d_model", "n_heads", "n_blocks", "mlp", "method", "keep")


def is_ln(variant: str) -> bool:
    """Every variant with a normalisation layer (LayerNorm, RMSNorm, pre or post, integrated or not)."""
    return str(variant) not in NO_LN


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return "n/a" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if math.isfinite(x) else "n/a"
    return str(x)


# -- output pieces -------------------------------------------------------------------------------------------


@dataclass
class Table:
    """Rows of cells; None rows (a test that could not run) are dropped, and `empty` is shown instead of a
    table with no rows."""

    headers: list[str]
    rows: list[list[Any] | None]
    empty: str = "no rows"

    def __post_init__(self) -> None:
        self.rows = [r for r in self.rows if r is not None]

    def md(self) -> str:
        if not self.rows:
            return f"_({self.empty})_\n"
        out = "| " + " | ".join(self.headers) + " |\n|" + "---|" * len(self.headers) + "\n"
        for r in self.rows:
            out += "| " + " | ".join(fmt(c).replace("|", "\\|") for c in r) + " |\n"
        return out

    def html(self) -> str:
        if not self.rows:
            return f"<p><em>({html.escape(self.empty)})</em></p>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Section:
    """A titled list of blocks: ('p', text), ('table', Table), ('figure', (file name, caption)), ('note',
    text)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def table(self, t: Table) -> None:
        self.blocks.append(("table", t))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("figure", (name, caption)))


class Figures:
    """Writes PNGs under out/figures and remembers their bytes for the HTML."""

    def __init__(self, out: Path):
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        # Figures of an earlier build of a bigger store would otherwise linger beside the new report.
        for stale in self.dir.glob("*.png"):
            stale.unlink()
        self.data: dict[str, bytes] = {}

    def add(self, name: str, png: bytes) -> str:
        atomic_write_bytes(self.dir / name, png)
        self.data[name] = png
        return name


# -- data helpers --------------------------------------------------------------------------------------------


def _setting(rec: RunRecord) -> tuple:
    c = rec.config
    return tuple((k, c.get(k)) for k in SETTING_KEYS if k in c)


def _setting_label(setting: tuple) -> str:
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


def _variants_sorted(variants: Any) -> list[str]:
    return sorted(set(variants), key=lambda v: (is_ln(v), v))


def _ln_test(values: Mapping[str, Sequence[float]], alternative: str) -> dict[str, Any]:
    """Mann-Whitney of all LN-variant values against the no-LN values, with effect sizes."""
    ln = [x for v, xs in values.items() if is_ln(v) for x in xs]
    no = [x for v, xs in values.items() if not is_ln(v) for x in xs]
    return stats.mann_whitney(ln, no, alternative=alternative)


def _stat_row(name: str, res: dict[str, Any]) -> list[Any] | None:
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


def _kw_row(name: str, res: dict[str, Any]) -> list[Any] | None:
    if len(res["groups"]) < 2:
        return None
    groups = ", ".join(f"{k}: {v}" for k, v in res["groups"].items())
    return [name, groups, fmt(res["H"]), stats.fmt_p(res["p"]), fmt(res["epsilon_squared"])]


STAT_EMPTY = "no LN vs no-LN test: it needs runs both with and without a norm layer"
KW_EMPTY = "no Kruskal-Wallis test: it needs two or more groups"
KW_HEADERS = ["quantity", "groups (n)", "H", "p (Kruskal-Wallis)", "epsilon²"]


# -- the report ----------------------------------------------------------------------------------------------


@dataclass
class ReportContext:
    store: Store
    out: Path
    figures: Figures
    data_dir: str | None
    n_inputs: int
    max_attention_runs: int
    progress: bool
    summary: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    _mask_cache: dict[str, Any] = field(default_factory=dict)

    def masks(self, rec: RunRecord) -> dict | None:
        """The run's ticket masks from its checkpoint (cached); None when it has none."""
        if rec.run_id not in self._mask_cache:
            from sltlab.analysis.masks import load_ticket_masks
            from sltlab.errors import SltlabError

            path = self.store.path.parent / "artifacts" / rec.run_id / "ticket.safetensors"
            try:
                self._mask_cache[rec.run_id] = load_ticket_masks(path)[0] if path.is_file() else None
            except (SltlabError, RuntimeError, KeyError):
                self._mask_cache[rec.run_id] = None
        return self._mask_cache[rec.run_id]


def section_overview(ctx: ReportContext, runs: dict[str, list[RunRecord]]) -> Section:
    s = Section("Store overview")
    rows = []
    for kind in sorted(set(runs) | {"approx", "glue", "peft", "lm"}):
        recs = runs.get(kind, [])
        statuses: dict[str, int] = defaultdict(int)
        for r in ctx.store.runs(kind, status=None):
            statuses[r.status] += 1
        rows.append([kind, len(recs), ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "none"])
    s.p(f"Store `{ctx.store.path}`; report built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    s.table(Table(["kind", "finished runs", "all runs by status"], rows))
    return s


def section_error_vs_width(ctx: ReportContext, approx: list[RunRecord]) -> Section:
    s = Section("1. Approximation error vs source width")
    usable = [r for r in approx if _finite(r.metrics.get("rel_error")) and "width" in r.config]
    if not usable:
        s.note("No finished approximation runs with a `rel_error`. Run `sltlab approx configs/approx_quick.toml`.")
        ctx.missing.append("approximation runs (kind=approx)")
        return s
    s.p(
        "Relative output error of the ticket on held-out inputs against the source's per-head width, per "
        "norm variant. Dots are single runs (seeds and score seeds), the band their range, the dashed line "
        "the fitted exponential law log(err) = a + b·width (`sltlab.analysis.fits.fit_laws`, fitted on every "
        "run)."
    )
    by_setting: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in usable:
        by_setting[_setting(r)].append(r)
    fit_rows, out_summary = [], []
    kw_rows, mw_rows = [], []
    for i, (setting, recs) in enumerate(sorted(by_setting.items(), key=lambda kv: str(kv[0]))):
        label = _setting_label(setting)
        series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in recs:
            series[str(r.config.get("variant"))][int(r.config["width"])].append(float(r.metrics["rel_error"]))
        series = {v: dict(sorted(series[v].items())) for v in _variants_sorted(series)}
        fits = {}
        for v, bw in series.items():
            fits[v] = fit_laws([w for w, es in bw.items() for _ in es], [e for es in bw.values() for e in es])
            wmin, wmax = min(bw), max(bw)
            fit_rows.append(
                [
                    label,
                    v,
                    fits[v]["n_points"],
                    fmt(float(np.mean(bw[wmin]))),
                    fmt(float(np.mean(bw[wmax]))),
                    fmt(fits[v]["exp_slope"]),
                    fmt(fits[v]["exp_r2"]),
                    fmt(fits[v]["exp_decay_width"]),
                    fmt(fits[v]["power_slope"]),
                    fmt(fits[v]["power_r2"]),
                    fits[v]["better"],
                ]
            )
        name = ctx.figures.add(f"error_vs_width_{i}.png", plots.error_vs_width(series, fits, label))
        s.figure(name, f"Error vs width, {label}.")
        # At the largest width every variant has: one value per run, to compare variants.
        wmax_all = max(w for bw in series.values() for w in bw)
        at_max = {v: bw.get(wmax_all, []) for v, bw in series.items() if bw.get(wmax_all)}
        kw = stats.kruskal_wallis(at_max)
        kw_rows.append(_kw_row(f"error at width {wmax_all}, {label}", kw))
        mw = _ln_test(at_max, "two-sided")
        mw_rows.append(_stat_row(f"error at width {wmax_all}, {label}", mw))
        out_summary.append(
            {
                "setting": label,
                "fits": fits,
                "width": wmax_all,
                "error_at_max_width": {v: stats.bootstrap_ci(x).as_dict() for v, x in at_max.items()},
                "kruskal": kw,
                "ln_vs_none": mw,
            }
        )
    s.table(
        Table(
            [
                "setting",
                "variant",
                "n runs",
                "err @ min width",
                "err @ max width",
                "exp slope / unit width",
                "exp R²",
                "e-fold width",
                "power exponent",
                "power R²",
                "better law",
            ],
            fit_rows,
        )
    )
    s.p("Do the variants differ at the largest width? (one value per run)")
    s.table(Table(KW_HEADERS, kw_rows, KW_EMPTY))
    s.table(Table(STAT_HEADERS, mw_rows, STAT_EMPTY))
    ctx.summary["error_vs_width"] = out_summary
    return s


def section_depth(ctx: ReportContext, approx: list[RunRecord]) -> Section:
    s = Section("2. Where in depth tickets are hardest to find")
    stacks = [
        r
        for r in approx
        if isinstance(r.metrics.get("per_block_rel_error"), list) and len(r.metrics["per_block_rel_error"]) > 1
    ]
    if not stacks:
        s.note(
            "No stack runs (module = stack with 2+ blocks) in the store, so no per-block error. Run an "
            "approx "
            'study with `module = "stack"` and `n_blocks = 2` or more.'
        )
        ctx.missing.append("approximation runs on stacks (per-block error)")
        return s
    s.p(
        "Relative error of each block's output (ticket vs target, on held-out inputs) at the largest width "
        "of each setting; mean ± sd over runs. The error compounds with depth when a later block's error is "
        "larger."
    )
    by_setting: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in stacks:
        by_setting[_setting(r)].append(r)
    rows, dens_rows, out = [], [], []
    for i, (setting, recs) in enumerate(sorted(by_setting.items(), key=lambda kv: str(kv[0]))):
        label = _setting_label(setting)
        wmax = max(int(r.config["width"]) for r in recs)
        curves: dict[str, list[list[float]]] = defaultdict(list)
        dens: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in recs:
            if int(r.config["width"]) != wmax:
                continue
            v = str(r.config.get("variant"))
            curves[v].append([float(x) for x in r.metrics["per_block_rel_error"]])
            for mod, d in (r.metrics.get("per_layer_density") or {}).items():
                from sltlab.analysis.masks import layer_label

                dens[v][layer_label(mod)].append(float(d))
        curves = {v: curves[v] for v in _variants_sorted(curves) if len({len(c) for c in curves[v]}) == 1}
        if not curves:
            continue
        name = ctx.figures.add(f"per_block_{i}.png", plots.per_block(curves, f"{label}, width {wmax}"))
        s.figure(name, f"Per-block error, {label}, width {wmax}.")
        for v, cs in curves.items():
            arr = np.asarray(cs)
            means = arr.mean(0)
            rows.append(
                [
                    label,
                    v,
                    len(cs),
                    " → ".join(fmt(float(x)) for x in means),
                    f"block {int(np.argmax(means)) + 1}",
                ]
            )
            if dens.get(v):
                dens_rows.append([label, v] + [", ".join(f"{k} {np.mean(x):.3f}" for k, x in sorted(dens[v].items()))])
            out.append(
                {
                    "setting": label,
                    "variant": v,
                    "width": wmax,
                    "per_block_mean": means.tolist(),
                    "n": len(cs),
                }
            )
    s.table(Table(["setting", "variant", "n runs", "mean error per block", "hardest"], rows))
    if dens_rows:
        s.p("Kept fraction per layer (mean over masked modules and runs):")
        s.table(Table(["setting", "variant", "density per layer"], dens_rows))
    ctx.summary["depth"] = out
    return s


def consistency_groups(records: Sequence[RunRecord]) -> dict[tuple, list[RunRecord]]:
    """Runs equal in every config key but the score seed: same weights, same problem, different search
    seeds."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:
        key = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in r.config.items() if k not in SEED_KEYS))
        groups[key].append(r)
    return {k: v for k, v in groups.items() if len(v) >= 2}


def section_consistency(ctx: ReportContext, approx: list[RunRecord]) -> Section:
    from sltlab.analysis.masks import consistency

    s = Section("3. Ticket consistency across score seeds")
    groups = consistency_groups([r for r in approx if "score_seed" in r.config])
    if not groups:
        s.note(
            "No two approximation runs differ only in their score seed, so consistency cannot be measured. "
            "Set `score_seeds = [0, 1, 2]` in the approx config."
        )
        ctx.missing.append("runs that differ only in score_seed (consistency)")
        return s
    s.p(
        "For each source (same weights, width, variant and seed) the tickets found from different score "
        "seeds are compared pairwise: Jaccard |A∩B|/|A∪B| of the kept weights. `excess` rescales it so that "
        "0 is the chance overlap of two independent random masks of the same densities and 1 is identical "
        "tickets; one value per source enters the statistics."
    )
    per_variant: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_width: dict[tuple, dict[tuple[str, int], list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    chance_all: list[float] = []
    skipped = 0
    for _, recs in groups.items():
        tickets = [ctx.masks(r) for r in sorted(recs, key=lambda r: r.config.get("score_seed", 0))]
        tickets = [t for t in tickets if t]
        if len(tickets) < 2:
            skipped += 1
            continue
        c = consistency(tickets)
        setting = _setting(recs[0])
        v = str(recs[0].config.get("variant"))
        per_variant[setting][v].append(c["excess"])
        per_width[setting][(v, int(recs[0].config.get("width", 0)))].append((c["jaccard"], c["chance"]))
        chance_all.append(c["chance"])
    if skipped:
        s.note(f"{skipped} group(s) skipped: fewer than two of their runs have a readable ticket checkpoint.")
    if not per_variant:
        s.note("No checkpoints to compare (tickets are read from artifacts/<run id>/ticket.safetensors).")
        ctx.missing.append("ticket checkpoints for consistency")
        return s
    rows, kw_rows, mw_rows, out = [], [], [], []
    for i, (setting, by_v) in enumerate(sorted(per_variant.items(), key=lambda kv: str(kv[0]))):
        label = _setting_label(setting)
        by_v = {v: by_v[v] for v in _variants_sorted(by_v)}
        name = ctx.figures.add(
            f"consistency_{i}.png",
            plots.strip(
                by_v,
                "Jaccard excess over chance",
                f"Ticket consistency, {label} (one dot per source)",
                chance=0.0,
            ),
        )
        s.figure(name, f"Consistency per variant, {label}: 0 = chance overlap, 1 = identical tickets.")
        for (v, w), vals in sorted(per_width[setting].items(), key=lambda kv: (is_ln(kv[0][0]), kv[0])):
            j = [x[0] for x in vals]
            rows.append(
                [
                    label,
                    v,
                    w,
                    len(vals),
                    stats.bootstrap_ci(j).fmt(),
                    fmt(float(np.mean([x[1] for x in vals]))),
                ]
            )
        kw = stats.kruskal_wallis(by_v)
        mw = _ln_test(by_v, "greater")
        kw_rows.append(_kw_row(f"consistency excess, {label}", kw))
        mw_rows.append(_stat_row(f"consistency excess, {label}", mw))
        out.append(
            {
                "setting": label,
                "excess": {v: stats.bootstrap_ci(x).as_dict() for v, x in by_v.items()},
                "kruskal": kw,
                "ln_vs_none": mw,
            }
        )
    s.table(Table(["setting", "variant", "width", "n sources", "mean Jaccard [95% CI]", "chance Jaccard"], rows))
    s.table(Table(KW_HEADERS, kw_rows, KW_EMPTY))
    s.p("One-sided test of the hypothesis' first half: LN tickets overlap more (alternative = greater).")
    s.table(Table(STAT_HEADERS, mw_rows, STAT_EMPTY))
    strata = _consistency_by_width(per_width)
    if strata:
        s.p(
            "The same comparison within each width (consistency falls with width, so pooling could hide a "
            "difference); Cliff's delta > 0 means LN tickets overlap more:"
        )
        s.table(Table(["setting", "width", "n LN / n no-LN", "excess LN", "excess no-LN", "Cliff's delta"], strata))
    ctx.summary["consistency"] = out
    cross = cross_norm_overlap(ctx, approx)
    if cross:
        s.p(
            "For scale: overlap of tickets found on the same weights with the same score seed under two "
            "different norm variants (one value per source and score seed):"
        )
        s.table(
            Table(
                ["setting", "variant A", "variant B", "n", "mean Jaccard [95% CI]"],
                [
                    [c["setting"], c["a"], c["b"], len(c["values"]), stats.bootstrap_ci(c["values"]).fmt()]
                    for c in cross
                ],
            )
        )
        ctx.summary["cross_norm_overlap"] = cross
    return s


def _consistency_by_width(per_width: Mapping[tuple, Mapping[tuple[str, int], list]]) -> list[list[Any]]:
    rows = []
    for setting, cells in sorted(per_width.items(), key=lambda kv: str(kv[0])):
        for w in sorted({w for _, w in cells}):
            ex = {v: [(j - c) / (1 - c) for j, c in vals] for (v, ww), vals in cells.items() if ww == w}
            ln = [x for v, xs in ex.items() if is_ln(v) for x in xs]
            no = [x for v, xs in ex.items() if not is_ln(v) for x in xs]
            if ln and no:
                d = stats.cliffs_delta(ln, no)
                rows.append(
                    [
                        _setting_label(setting),
                        w,
                        f"{len(ln)} / {len(no)}",
                        fmt(float(np.mean(ln))),
                        fmt(float(np.mean(no))),
                        f"{fmt(d)} ({stats.magnitude(d)})",
                    ]
                )
    return rows


def cross_norm_overlap(ctx: ReportContext, approx: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Jaccard between tickets that differ only in the norm variant (same weights, width and score seed).

    Source weights are drawn from (seed, parameter name), so the variants of one seed share every masked
    weight; this overlap says how much the norm changes *which* weights a ticket keeps.
    """
    from itertools import combinations

    from sltlab.analysis.masks import jaccard

    groups: dict[tuple, dict[str, RunRecord]] = defaultdict(dict)
    for r in approx:
        key = tuple(
            sorted((k, json.dumps(v, sort_keys=True)) for k, v in r.config.items() if k not in ("variant", "norm"))
        )
        groups[key][str(r.config.get("variant"))] = r
    pairs: dict[tuple, list[float]] = defaultdict(list)
    for by_v in groups.values():
        for a, b in combinations(_variants_sorted(by_v), 2):
            ma, mb = ctx.masks(by_v[a]), ctx.masks(by_v[b])
            if ma and mb and set(ma) == set(mb) and all(ma[k].shape == mb[k].shape for k in ma):
                pairs[(_setting_label(_setting(by_v[a])), a, b)].append(jaccard(ma, mb))
    return [{"setting": k[0], "a": k[1], "b": k[2], "values": v} for k, v in sorted(pairs.items())]


def _pick_attention_runs(recs: Sequence[RunRecord], limit: int) -> list[RunRecord]:
    """Per (setting, variant): the largest width, the lowest score seed, up to `limit` seeds."""
    by: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in recs:
        by[(_setting(r), str(r.config.get("variant", r.config.get("norm"))))].append(r)
    chosen = []
    for _, rs in sorted(by.items(), key=lambda kv: str(kv[0])):
        wmax = max(int(r.config.get("width", 0)) for r in rs)
        rs = [r for r in rs if int(r.config.get("width", 0)) == wmax]
        smin = min(int(r.config.get("score_seed", 0)) for r in rs)
        rs = sorted(
            [r for r in rs if int(r.config.get("score_seed", 0)) == smin],
            key=lambda r: r.config.get("seed", 0),
        )
        chosen += rs[:limit]
    return chosen


def section_attention(ctx: ReportContext, approx: list[RunRecord], glue: list[RunRecord]) -> Section:
    from sltlab.analysis.attention import compare_models, run_models
    from sltlab.errors import SltlabError

    s = Section("4. Attention entropy and head diversity")
    s.p(
        "Per layer: mean normalised entropy of attention rows (1 = uniform, 0 = one-hot; padding excluded) "
        "and head diversity, the mean pairwise Jensen-Shannon divergence between heads in bits (0 = "
        "identical heads). Each ticket is compared with its random source (same weights, no mask) and its "
        "dense counterpart (the approximation target, or the dense GLUE run of the same task, norm and seed) "
        "on the same inputs."
    )
    jobs = [(r, "approx") for r in _pick_attention_runs(approx, ctx.max_attention_runs)]
    glue_t = [r for r in glue if r.config.get("method") not in ("dense", None)]
    jobs += [(r, "glue") for r in _pick_attention_runs(glue_t, ctx.max_attention_runs)]
    if not jobs:
        s.note("No runs with tickets to analyse.")
        ctx.missing.append("ticket checkpoints for attention analysis")
        return s
    data: dict[tuple, dict[str, dict[str, list[list[float]]]]] = defaultdict(
        lambda: {"entropy": defaultdict(list), "diversity": defaultdict(list)}
    )
    # vals[key][model][metric][variant] = one number per run (mean over layers)
    vals: dict[tuple, dict[str, dict[str, dict[str, list[float]]]]] = defaultdict(
        lambda: defaultdict(lambda: {"entropy": defaultdict(list), "diversity": defaultdict(list)})
    )
    sources, notes, errors = set(), set(), []
    from tqdm.auto import tqdm

    for rec, kind in tqdm(jobs, desc="attention", disable=not ctx.progress, leave=False):
        try:
            rm = run_models(ctx.store, rec, n_inputs=ctx.n_inputs, data_dir=ctx.data_dir)
        except (SltlabError, RuntimeError, KeyError) as err:
            errors.append(f"{rec.run_id}: {err}")
            continue
        sources.add(rm.input_source.split(" (")[0])
        notes.update(rm.notes)
        res = compare_models(rm.models, rm.inputs)
        if kind == "approx":
            key = ("approx", _setting_label(_setting(rec)))
            v = str(rec.config.get("variant"))
        else:
            key = ("glue", f"{rec.config.get('task')} {rec.config.get('method')}")
            v = str(rec.config.get("norm"))
        for model, st in res.items():
            for metric in ("entropy", "diversity"):
                data[key][metric][f"{model}|{v}"].append([la[metric] for la in st["layers"]])
                vals[key][model][metric][v].append(st[metric])
    if errors:
        s.note(f"{len(errors)} run(s) could not be analysed: " + "; ".join(errors[:3]))
    for n in sorted(notes)[:5]:
        s.note(n)
    if not data:
        ctx.missing.append("readable ticket checkpoints for attention analysis")
        return s
    s.p("Inputs: " + "; ".join(sorted(sources)) + ".")
    rows, mw_rows, out = [], [], []
    for i, (key, d) in enumerate(sorted(data.items())):
        name = ctx.figures.add(
            f"attention_{i}.png",
            plots.attention_layers({m: dict(v) for m, v in d.items()}, f"{key[1]}: mean ± sd over runs"),
        )
        s.figure(name, f"Attention entropy (top) and head diversity (bottom) per layer, {key[1]}.")
        for metric in ("entropy", "diversity"):
            for mv, runs in sorted(d[metric].items()):
                model, v = mv.split("|")
                flat = [float(np.nanmean(r)) for r in runs]
                rows.append([key[1], v, model, metric, len(runs), stats.bootstrap_ci(flat).fmt()])
        tv = vals[key]["ticket"]
        mw_e = _ln_test(tv["entropy"], "two-sided")
        mw_d = _ln_test(tv["diversity"], "less")
        mw_rows.append(_stat_row(f"ticket head diversity, {key[1]}", mw_d))
        mw_rows.append(_stat_row(f"ticket attention entropy, {key[1]}", mw_e))
        others = {}
        for model in sorted(set(vals[key]) - {"ticket"}, key=plots.model_order):
            others[model] = _ln_test(vals[key][model]["diversity"], "two-sided")
            mw_rows.append(_stat_row(f"{model} head diversity (reference), {key[1]}", others[model]))
        out.append(
            {
                "what": key[0],
                "setting": key[1],
                "ticket_diversity_ln_vs_none": mw_d,
                "ticket_entropy_ln_vs_none": mw_e,
                "reference_diversity_ln_vs_none": others,
                "ticket_diversity": {v: stats.bootstrap_ci(x).as_dict() for v, x in tv["diversity"].items()},
            }
        )
    s.table(Table(["setting", "variant / norm", "model", "quantity", "n runs", "mean over layers [95% CI]"], rows))
    s.p(
        "The hypothesis' second half, one-sided: LN tickets' heads are less diverse (alternative = less). "
        "Ticket entropy and the reference models' diversity (random source, dense/target), two-sided, show "
        "whether a difference comes from the ticket or is already in the network it was cut from."
    )
    s.table(Table(STAT_HEADERS, mw_rows, STAT_EMPTY))
    ctx.summary["attention"] = out
    return s


def _main_metric(rec: RunRecord) -> tuple[str, float | None]:
    m = rec.metrics
    name = str(m.get("main_metric", "main"))
    for key in ("main", name, "accuracy", "bpb", "loss"):
        if _finite(m.get(key)):
            return (name if key == "main" else key), float(m[key])
    return name, None


def section_tasks(ctx: ReportContext, runs: dict[str, list[RunRecord]]) -> Section:
    s = Section("5. Task performance (GLUE, PEFT, LM)")
    any_rows = False
    for kind in ("glue", "peft", "lm"):
        recs = runs.get(kind, [])
        if not recs:
            s.note(f"No finished `{kind}` runs.")
            ctx.missing.append(f"{kind} runs")
            continue
        cells: dict[tuple, list[float]] = defaultdict(list)
        metric_names: dict[tuple, str] = {}
        extra: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in recs:
            c = r.config
            key = (
                str(c.get("task", c.get("dataset", "?"))),
                str(c.get("method", "?")),
                str(c.get("norm", "-")),
            )
            name, val = _main_metric(r)
            if val is None:
                continue
            cells[key].append(val)
            metric_names[key] = name
            for k, alias in (("params_trainable", "trainable"), ("density", "density")):
                val = r.metrics.get(k, r.metrics.get(alias))
                if _finite(val):
                    extra[key][k].append(float(val))
        rows = []
        for key in sorted(cells):
            e = extra[key]
            rows.append(
                [
                    *key,
                    metric_names[key],
                    stats.bootstrap_ci(cells[key]).fmt(4),
                    fmt(float(np.mean(e["params_trainable"]))) if e.get("params_trainable") else "n/a",
                    fmt(float(np.mean(e["density"]))) if e.get("density") else "n/a",
                ]
            )
        s.p(f"**{kind}**: mean of the main metric over seeds, 95% bootstrap interval, n seeds.")
        s.table(Table(["task", "method", "norm", "metric", "mean [95% CI] (n)", "trainable params", "density"], rows))
        kw_rows, mw_rows = [], []
        tasks = sorted({k[0] for k in cells})
        for task in tasks:
            by_method: dict[str, list[float]] = defaultdict(list)
            for (t, m, _), vals in cells.items():
                if t == task:
                    by_method[m] += vals
            if len(by_method) > 1:
                kw_rows.append(_kw_row(f"{kind} {task}: across methods", stats.kruskal_wallis(by_method)))
            for method in sorted({k[1] for k in cells if k[0] == task}):
                by_norm = {k[2]: v for k, v in cells.items() if k[0] == task and k[1] == method}
                if any(is_ln(n) for n in by_norm) and any(not is_ln(n) for n in by_norm):
                    mw_rows.append(_stat_row(f"{kind} {task} {method}", _ln_test(by_norm, "two-sided")))
        if kw_rows:
            s.table(Table(KW_HEADERS, kw_rows, KW_EMPTY))
        if mw_rows:
            s.table(Table(STAT_HEADERS, mw_rows, STAT_EMPTY))
        ctx.summary[kind] = [{"task": k[0], "method": k[1], "norm": k[2], "values": v} for k, v in cells.items()]
        any_rows = any_rows or bool(rows)
    return s


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
    if n_a < 3 or n_b < 3 or not _finite(p):
        return "insufficient", txt
    sign_ok = d > 0 if want == "greater" else d < 0
    if p < 0.05 and sign_ok:
        return "supports", txt
    if _finite(d) and abs(d) >= 0.474 and not sign_ok:
        return "contradicts", txt
    return "inconclusive", txt


def section_conclusion(ctx: ReportContext) -> Section:
    s = Section("6. Conclusion: does LayerNorm give more consistent but less diverse tickets?")
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


# -- rendering -----------------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}
.note{background:#fff7e0;border-left:4px solid #e0b000;padding:.4em .8em;font-size:14px}"""


def _inline_md(text: str) -> str:
    """The two Markdown inline forms the report uses (**bold**, `code`) as HTML, after escaping."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def render(sections: Sequence[Section], figures: Figures, title: str) -> tuple[str, str]:
    md = [f"# {title}\n"]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for sec in sections:
        md.append(f"\n## {sec.title}\n")
        body.append(f"<h2>{html.escape(sec.title)}</h2>")
        for kind, val in sec.blocks:
            if kind == "p":
                md.append(val + "\n")
                body.append(f"<p>{_inline_md(val)}</p>")
            elif kind == "note":
                md.append(f"> {val}\n")
                body.append(f"<p class='note'>{_inline_md(val)}</p>")
            elif kind == "table":
                md.append(val.md())
                body.append(val.html())
            elif kind == "figure":
                name, cap = val
                md.append(f"![{cap}](figures/{name})\n")
                b64 = base64.b64encode(figures.data[name]).decode()
                body.append(
                    f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                    f"<figcaption>{html.escape(cap)} (<a href='figures/{name}'>png</a>)</figcaption></figure>"
                )
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    return "\n".join(md), page


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


@dataclass
class ReportResult:
    html: Path
    markdown: Path
    json: Path
    figures: list[Path]
    summary: dict[str, Any]
    missing: list[str]


def build_report(
    store_path: str | Path,
    out_dir: str | Path,
    data_dir: str | None = None,
    n_inputs: int = 128,
    max_attention_runs: int = 3,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    extra_stores: list[str | Path] | None = None,
) -> ReportResult:
    """Build the report from the store at `store_path` (plus the runs of `extra_stores`, e.g. a GLUE sweep kept
    in its own file) into `out_dir`. Never fails on a partial store."""
    from sltlab.errors import StoreError

    store_path = Path(store_path)
    if not store_path.is_file():
        raise StoreError(
            f"no store at {store_path}; run an experiment first (e.g. `sltlab approx "
            "configs/approx_quick.toml`) or pass --store PATH"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _m: None)
    with Store(store_path) as store:
        runs: dict[str, list[RunRecord]] = defaultdict(list)
        for r in store.runs(None):
            runs[r.kind].append(r)
        for extra in extra_stores or []:
            if not Path(extra).is_file():
                raise StoreError(f"no store at {extra} (given with --also); fix the path or drop it")
            with Store(extra) as other:
                for r in other.runs(None):
                    runs[r.kind].append(r)
        ctx = ReportContext(store, out, Figures(out), data_dir, n_inputs, max_attention_runs, progress)
        approx = runs.get("approx", [])
        sections = [section_overview(ctx, runs)]
        for name, fn in (
            ("error vs width", lambda: section_error_vs_width(ctx, approx + runs.get("theory", []))),
            ("depth", lambda: section_depth(ctx, approx)),
            ("consistency", lambda: section_consistency(ctx, approx)),
            ("attention", lambda: section_attention(ctx, approx, runs.get("glue", []))),
            ("tasks", lambda: section_tasks(ctx, runs)),
            ("conclusion", lambda: section_conclusion(ctx)),
        ):
            t0 = time.perf_counter()
            sections.append(fn())
            say(f"report: {name} ({time.perf_counter() - t0:.1f} s)")
        md, page = render(sections, ctx.figures, "sltlab report: LayerNorm and strong lottery tickets")
        atomic_write_text(out / "report.md", md)
        atomic_write_text(out / "report.html", page)
        summary = _jsonable({**ctx.summary, "missing": ctx.missing, "store": str(store_path)})
        atomic_write_text(out / "report.json", json.dumps(summary, indent=1, sort_keys=True))
        return ReportResult(
            out / "report.html",
            out / "report.md",
            out / "report.json",
            [ctx.figures.dir / n for n in ctx.figures.data],
            summary,
            ctx.missing,
        )
