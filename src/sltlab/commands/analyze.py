"""`sltlab analyze RUN_ID`: everything the analysis layer can say about one stored run.

Prints the run's key settings and metrics, its ticket's density per layer and module type, its overlap with
the tickets found on the same weights from other score seeds (consistency) and with the same seed under other
norm variants, for an IMP run the kept fraction, overlap and dev metric of every pruning round, and attention
entropy / head diversity per layer for the ticket, its random source and its dense counterpart. `--json` prints
the same as JSON; `--save` merges it into the run's metrics under "analysis".
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from sltlab.errors import ConfigError, SltlabError
from sltlab.runs.store import RunRecord, Store

EPILOG = """examples:
  sltlab analyze approx-3f2a9c            # a unique prefix of the run id is enough
  sltlab analyze approx-3f2a9c --json > analysis.json
  sltlab analyze glue-81be02 --store runs/sltlab.db --data-dir ../shared/data --n-inputs 256
  sltlab analyze approx-3f2a9c --save     # keep the numbers in the store (metrics.analysis)
"""

KEY_METRICS = (
    "rel_error",
    "branch_rel_error",
    "max_token_error",
    "final_loss",
    "main_metric",
    "main",
    "density",
    "params_trainable",
)


def _siblings(store: Store, rec: RunRecord, vary: tuple[str, ...]) -> list[RunRecord]:
    """Finished runs of the same kind equal to `rec` in every config key except those in `vary`."""

    def key(r: RunRecord) -> str:
        return json.dumps({k: v for k, v in r.config.items() if k not in vary}, sort_keys=True)

    mine = key(rec)
    return [r for r in store.runs(rec.kind) if r.run_id != rec.run_id and key(r) == mine]


def _masks_of(store: Store, rec: RunRecord) -> dict | None:
    from sltlab.analysis.masks import load_ticket_masks

    path = store.artifact_path(rec.run_id) / "ticket.safetensors"
    if not path.is_file():
        return None
    try:
        return load_ticket_masks(path)[0]
    except SltlabError:
        return None


def analyze_run(store: Store, run_id: str, n_inputs: int = 128, data_dir: str | None = None) -> dict[str, Any]:
    """The analysis of one run as a JSON-ready dict (sections absent when the run lacks what they need)."""
    from sltlab.analysis import masks as M
    from sltlab.analysis.attention import compare_models
    from sltlab.tasks.replay import run_models

    rec = store.get(run_id)
    out: dict[str, Any] = {
        "run_id": rec.run_id,
        "kind": rec.kind,
        "status": rec.status,
        "config": rec.config,
        "metrics": {k: rec.metrics[k] for k in KEY_METRICS if k in rec.metrics},
        "notes": [],
    }
    for k in ("per_block_rel_error", "per_block_branch_rel_error"):
        if isinstance(rec.metrics.get(k), list):
            out["metrics"][k] = rec.metrics[k]
    masks = _masks_of(store, rec)
    if masks is None:
        out["notes"].append("no ticket masks in a checkpoint: mask and consistency analysis skipped")
    else:
        out["masks"] = {
            "density": M.overall_density(masks),
            "by_layer": M.density_by_layer(masks),
            "by_type": M.density_by_type(masks),
            "table": M.density_table(masks),
        }
        _overlaps(store, rec, masks, out)
    if rec.config.get("method") == "imp":
        _imp_rounds(store, rec, out)
    try:
        rm = run_models(store, rec, n_inputs=n_inputs, data_dir=data_dir)
        out["attention"] = {
            "inputs": rm.input_source,
            "notes": rm.notes,
            "models": compare_models(rm.models, rm.inputs),
        }
    except SltlabError as err:
        out["notes"].append(f"attention skipped: {err}")
    return out


def _overlaps(store: Store, rec: RunRecord, masks: dict, out: dict[str, Any]) -> None:
    """Consistency with the runs that differ only in score seed, and overlap with the other norm variants."""
    from sltlab.analysis import masks as M

    sibs = [(r, _masks_of(store, r)) for r in _siblings(store, rec, ("score_seed",))]
    sibs = [(r, m) for r, m in sibs if m is not None]
    if sibs:
        pairs = [
            {
                "run_id": r.run_id,
                "score_seed": r.config.get("score_seed"),
                **{k: v for k, v in M.overlap(masks, m).items() if k != "per_module"},
            }
            for r, m in sibs
        ]
        out["consistency"] = {
            "with": pairs,
            **{k: v for k, v in M.consistency([masks] + [m for _, m in sibs]).items() if k != "pairs"},
        }
    else:
        out["notes"].append("no finished run differs only in score_seed: no consistency")
    cross = []
    for r in _siblings(store, rec, ("variant", "norm")):
        m = _masks_of(store, r)
        if m is not None and set(m) == set(masks) and all(m[k].shape == masks[k].shape for k in m):
            o = M.overlap(masks, m)
            cross.append(
                {
                    "run_id": r.run_id,
                    "variant": r.config.get("variant", r.config.get("norm")),
                    "jaccard": o["jaccard"],
                    "chance_jaccard": o["chance_jaccard"],
                }
            )
    if cross:
        out["cross_norm"] = cross


def _imp_rounds(store: Store, rec: RunRecord, out: dict[str, Any]) -> None:
    """Kept fraction, overlap with the previous and the final round, and dev metric of every IMP round."""
    from sltlab.analysis.masks import imp_round_table, load_imp_rounds

    try:
        rounds = load_imp_rounds(store.artifact_path(rec.run_id))
    except SltlabError as err:
        out["notes"].append(f"IMP round masks unreadable, per-round overlap skipped: {err}")
        return
    if rounds is None:
        out["notes"].append(
            "no IMP round masks (imp_rounds.safetensors; runs made before round masks were saved lack them): "
            "per-round overlap skipped"
        )
        return
    out["imp_rounds"] = {
        "fraction": rec.config.get("imp_fraction"),
        "scope": rec.config.get("imp_scope", "layer"),
        "metric": rec.metrics.get("main_metric", "main"),
        "rounds": imp_round_table(rounds, rec.metrics.get("rounds")),
    }


def _f(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else "n/a"
    return str(x)


def format_analysis(a: dict[str, Any]) -> str:
    c = a["config"]
    keys = [
        k
        for k in (
            "study",
            "task",
            "module",
            "method",
            "variant",
            "norm",
            "d_model",
            "n_heads",
            "n_blocks",
            "width",
            "keep",
            "seed",
            "score_seed",
        )
        if k in c
    ]
    lines = [f"run {a['run_id']} ({a['kind']}, {a['status']})", "  " + "  ".join(f"{k}={c[k]}" for k in keys)]
    if a["metrics"]:
        lines.append("metrics")
        lines += [
            f"  {k:<28}{_f(v) if not isinstance(v, list) else ' '.join(_f(x) for x in v)}"
            for k, v in a["metrics"].items()
        ]
    if "masks" in a:
        m = a["masks"]
        lines.append(f"mask density {_f(m['density'])}")
        lines.append("  per layer: " + "  ".join(f"{k} {_f(v)}" for k, v in m["by_layer"].items()))
        lines.append("  per type:  " + "  ".join(f"{k} {_f(v)}" for k, v in m["by_type"].items()))
    if "consistency" in a:
        cs = a["consistency"]
        lines.append(
            f"consistency over {cs['n_tickets']} score seeds: mean Jaccard {_f(cs['jaccard'])} "
            f"(chance {_f(cs['chance'])}, excess {_f(cs['excess'])})"
        )
        for p in cs["with"]:
            lines.append(
                f"  vs score_seed {p['score_seed']} ({p['run_id']}): Jaccard {_f(p['jaccard'])}, "
                f"Hamming {_f(p['hamming'])}; per layer " + " ".join(f"{k} {_f(v)}" for k, v in p["per_layer"].items())
            )
    for x in a.get("cross_norm", []):
        lines.append(
            f"overlap with variant {x['variant']} ({x['run_id']}): Jaccard {_f(x['jaccard'])} "
            f"(chance {_f(x['chance_jaccard'])})"
        )
    if "imp_rounds" in a:
        imp = a["imp_rounds"]
        p = imp["fraction"]
        lines.append(
            f"IMP rounds: each prunes {_f(p)} of the surviving weights ({imp['scope']} scope); masks are nested, so "
            "the Jaccard with the previous round is the share of it kept"
        )
        lines.append(f"  {'round':<7}{'kept':<10}{'(1-p)^r':<10}{'J prev':<10}{'J final':<10}dev {imp['metric']}")
        for row in imp["rounds"]:
            expected = (1 - p) ** row["round"] if isinstance(p, int | float) else float("nan")
            cells = (row["density"], expected, row["jaccard_prev"], row["jaccard_final"])
            lines.append(f"  {row['round']:<7}" + "".join(f"{_f(float(x)):<10}" for x in cells) + _f(row["main"]))
    if "attention" in a:
        at = a["attention"]
        lines.append(f"attention on {at['inputs']}   (entropy: 1 uniform, 0 one-hot; diversity: head JSD bits)")
        for model, st in at["models"].items():
            for la in st["layers"]:
                heads = " ".join(_f(e) for e in la["entropy_per_head"])
                lines.append(
                    f"  {model:<7} layer {la['layer']}: entropy {_f(la['entropy'])} (heads {heads}), "
                    f"diversity {_f(la['diversity'])}"
                )
        lines += [f"  note: {n}" for n in at["notes"]]
    lines += [f"note: {n}" for n in a["notes"]]
    return "\n".join(lines)


def _handler(args: argparse.Namespace) -> int:
    if args.n_inputs < 1:
        raise ConfigError("--n-inputs", f"{args.n_inputs} must be at least 1", "an integer >= 1")
    from sltlab.runs.checks import check_store_file

    check_store_file("--store", args.store)
    with Store(args.store, readonly=not args.save) as store:  # only --save writes
        a = analyze_run(store, args.run_id, args.n_inputs, args.data_dir)
        if args.save:
            store.update_metrics(a["run_id"], {"analysis": _slim(a)})
        if store.corrupt_note():
            import sys

            print(f"sltlab: warning: {store.corrupt_note()}", file=sys.stderr)
    print(json.dumps(_clean(a), indent=1, default=str) if args.json else format_analysis(a))
    return 0


def _slim(a: dict[str, Any]) -> dict[str, Any]:
    """What --save keeps: the numbers, not the config copy nor the per-pair head matrices."""
    out = {k: v for k, v in a.items() if k not in ("config", "metrics", "run_id", "kind", "status")}
    for st in out.get("attention", {}).get("models", {}).values():
        for la in st["layers"]:
            la.pop("head_jsd", None)
    return _clean(out)


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="mask, consistency and attention analysis of one run",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix (see the store)")
    p.add_argument("--store", default="runs/sltlab.db", help="results store (default: runs/sltlab.db)")
    p.add_argument("--n-inputs", type=int, default=128, help="inputs for the attention statistics (default 128)")
    p.add_argument("--data-dir", default=None, help="data root for GLUE dev sentences (else $SLTLAB_DATA, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--save", action="store_true", help="merge the numbers into the run's metrics (analysis)")
    p.set_defaults(func=_handler)
