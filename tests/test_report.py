"""The report from a tiny but real store: approximation tickets searched for a few steps, GLUE-like records
and a GLUE ticket checkpoint. Parses the HTML, checks every image it shows or links exists, and runs the two
commands."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sltlab.cli import main
from sltlab.errors import StoreError
from sltlab.nn.init import InitSpec
from sltlab.nn.norm import NormSpec
from sltlab.nn.transformer import ModelConfig
from sltlab.report import build_report, consistency_groups
from sltlab.runs.store import Store
from sltlab.tasks.approx import ApproxStudy, run_cell
from sltlab.tickets.checkpoint import save_checkpoint
from sltlab.tickets.search import SearchConfig
from sltlab.tickets.spec import ModelSpec, build_model
from sltlab.tickets.supermask import SupermaskConfig

PNG = b"\x89PNG\r\n\x1a\n"


def _approx(store: Store, **kw) -> list[str]:
    study = ApproxStudy(
        d_model=8,
        heads=(2,),
        n_train=64,
        n_test=32,
        batch_size=32,
        seq_len=4,
        search=SearchConfig(steps=4, lr=0.05),
        **kw,
    )
    ids = []
    for cell in study.cells():
        rid = store.start("approx", cell.config_dict(), cell.seed)
        source, metrics, timings = run_cell(cell)
        save_checkpoint(store.artifact_dir(rid) / "ticket.safetensors", source, cell.source_spec())
        store.finish(rid, metrics, timings)
        ids.append(rid)
    return ids


def _glue(store: Store) -> str:
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=2, vocab_size=40, max_len=16, norm=NormSpec.parse("pre-ln"))
    ticket_id = ""
    for method in ("dense", "edge-popup"):
        for norm in ("none", "pre-ln"):
            for seed in (0, 1, 2):
                conf = {"task": "sst2", "method": method, "norm": norm, "seed": seed}
                rid = store.start("glue", conf, seed)
                acc = 0.8 + 0.01 * seed - (0.05 if method != "dense" else 0.0)
                store.finish(
                    rid,
                    {
                        "main_metric": "accuracy",
                        "main": acc,
                        "accuracy": acc,
                        "params_total": 1000,
                        "params_trainable": 1000 if method == "dense" else 40,
                        "density": 0.5,
                    },
                )
                if norm == "pre-ln" and seed == 0:
                    mask = SupermaskConfig(keep=0.5) if method != "dense" else None
                    spec = ModelSpec("encoder-classifier", cfg, InitSpec(seed=0), mask)
                    save_checkpoint(
                        store.artifact_dir(rid) / "ticket.safetensors",
                        build_model(spec),
                        spec,
                        which="all" if mask is None else "trainable",
                    )
                    if mask is not None:
                        ticket_id = rid
    rid = store.start("peft", {"task": "mrpc", "method": "ln-only", "seed": 0}, 0)
    store.finish(rid, {"main": 0.7})
    return ticket_id


PLAN = {
    "reference": "none",
    "claim": [
        {"name": "consistency-jaccard", "measure": "jaccard_excess", "direction": "greater", "margin": 0.05},
        {"name": "consistency-output", "measure": "output_disagreement", "direction": "less", "margin": 0.05},
        {"name": "diversity-heads", "measure": "head_jsd", "direction": "less"},
        {"name": "quality-error", "measure": "rel_error", "direction": "two-sided", "margin": 0.05},
    ],
}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """A store as the studies make it: a pre-declared plan, an lr grid chosen on held-out inputs, 3 weight seeds
    x 2 score seeds through the executor; a stack with its own-norm targets; GLUE-like records."""
    from sltlab.analysis.claims import ClaimsPlan
    from sltlab.runs.config import from_dict
    from sltlab.tasks.approx import run_study

    path = tmp_path_factory.mktemp("store") / "sltlab.db"
    study = ApproxStudy(
        name="tiny-hypothesis", d_model=8, heads=(2,), n_train=64, n_test=32, batch_size=32, seq_len=4,
        search=SearchConfig(steps=4, lr=0.05), widths=(4, 8), variants=("none", "pre-ln"), seeds=(0, 1, 2),
        score_seeds=(0, 1), lr_grid=(0.05, 0.2), claims=from_dict(ClaimsPlan, PLAN, prefix="claims"),
    )
    run_study(study, str(path), progress=False, log=lambda _m: None)
    with Store(path) as store:
        _approx(
            store,
            name="stack",
            module="stack",
            n_blocks=2,
            widths=(4, 8),
            variants=("none", "post-ln"),
            seeds=(0,),
            score_seeds=(0,),
            target="own",
        )
        _glue(store)
    return path


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self._h = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "a":
            self.links.append(a.get("href", ""))
        self._h = tag in ("h1", "h2", "summary")

    def handle_data(self, data):
        if self._h:
            self.headings.append(data)
            self._h = False


def test_report_from_small_store(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = build_report(store_path, out, max_attention_runs=2, n_inputs=16)
    page = res.html.read_text()
    parser = _Collect()
    parser.feed(page)
    # every figure is embedded, is a PNG, and its file beside the report exists too
    assert len(parser.imgs) >= 5
    for src in parser.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    figure_links = [h for h in parser.links if h.startswith("figures/")]
    assert len(figure_links) == len(parser.imgs)
    for href in figure_links:
        assert (out / href).is_file() and (out / href).read_bytes()[:8] == PNG
    md = res.markdown.read_text()
    for line in md.splitlines():
        if line.startswith("!["):
            assert (out / line.split("](", 1)[1].rstrip(")")).is_file()
    titles = " ".join(parser.headings)
    assert parser.headings[1].startswith("The question and the claims")  # the answer first
    for word in ("error vs source width", "depth", "consistency", "Attention", "GLUE", "Plans and selection"):
        assert word.lower() in titles.lower()
    assert page.count("<details>") >= 6  # the detail is folded
    summary = json.loads(res.json.read_text())
    claims = summary["claims"]
    # 4 declared claims x 1 compared arm x 2 widths, paired by weight seed: n = 3 weight seeds, never 6 tickets
    assert len(claims) == 8 and all(c["n"] == 3 for c in claims)
    assert {c["name"] for c in claims} == {"consistency-jaccard", "consistency-output", "diversity-heads",
                                           "quality-error"}
    for c in claims:
        assert c["verdict"] in ("supported", "contradicted", "equivalent within margin", "inconclusive")
        assert c["p_holm"] is None or c["p_holm"] >= c["p"]
        assert len(c["values"]) == 3 and c["ci"][0] is not None
    m = summary["claims_meta"]["m"]
    assert m == 8 + 6  # 8 difference tests + 6 TOSTs (diversity-heads declared no margin)
    # the lr grid was chosen on held-out inputs, and only the chosen lr's runs are shown
    assert "Grid points chosen on held-out training data" in md and "holdout_rel_error" in md
    cons = summary["consistency"][0]["excess"]
    assert cons["none"]["n"] == 6 and cons["pre-ln"]["n"] == 6  # 2 widths x 3 weight seeds, one value per source
    # same source and score seed, two norms: mha 2 widths x 3 seeds x 2 score seeds; stack 2 widths x 1 x 1
    cross = summary["cross_norm_overlap"]
    assert sorted((c["a"], c["b"], len(c["values"])) for c in cross) == [("none", "post-ln", 2), ("none", "pre-ln", 12)]
    assert all(0.0 <= v <= 1.0 for c in cross for v in c["values"])
    # the shared-target study and the own-target stack are never drawn as one comparison
    labels = [e["setting"] for e in summary["error_vs_width"]]
    assert any("shared target: none" in x for x in labels) and any("own-norm targets" in x for x in labels)
    assert summary["depth"][0]["per_block_mean"] and len(summary["depth"][0]["per_block_mean"]) == 2
    assert {r["method"] for r in summary["glue"]} == {"dense", "edge-popup"}
    assert "lm runs" in summary["missing"]
    glue_att = [a for a in summary["attention"] if a["what"] == "glue"]
    assert glue_att, "the GLUE ticket's attention (ticket vs random vs dense) must be analysed"
    assert "<table id='claims'>" in page and "Mann-Whitney" not in page and "bootstrap" not in page.lower()


def test_claims_need_a_shared_target(tmp_path: Path) -> None:
    """Variants that imitate their own-norm targets solve different problems: the report tests no claim between
    them and says why."""
    from sltlab.analysis.claims import ClaimsPlan
    from sltlab.runs.config import from_dict
    from sltlab.tasks.approx import run_study

    study = ApproxStudy(
        name="own", d_model=8, heads=(2,), n_train=32, n_test=16, batch_size=16, seq_len=4,
        search=SearchConfig(steps=2, lr=0.05), widths=(4,), variants=("none", "pre-ln"), seeds=(0, 1, 2),
        target="own", claims=from_dict(ClaimsPlan, {"claim": [{"name": "q", "measure": "rel_error"}]}, prefix="c"),
    )
    run_study(study, str(tmp_path / "s.db"), progress=False, log=lambda _m: None)
    res = build_report(tmp_path / "s.db", tmp_path / "out", max_attention_runs=0)
    assert res.summary["claims"] == [] and "imitate different targets" in res.markdown.read_text()


def test_consistency_groups_split_on_everything_but_score_seed(store_path: Path) -> None:
    with Store(store_path) as store:
        groups = consistency_groups(store.runs("approx"))
    # the grid's other lr ran on seed 0 / score seed 0 only: no pair there
    assert len(groups) == 12 and all(len(g) == 2 for g in groups.values())


def test_empty_store_gives_a_report_that_says_what_is_missing(tmp_path: Path) -> None:
    Store(tmp_path / "empty.db").close()
    res = build_report(tmp_path / "empty.db", tmp_path / "out")
    text = res.markdown.read_text()
    assert "No finished approximation runs" in text and "No claims" in text
    assert "approximation runs (kind=approx)" in res.missing
    with pytest.raises(StoreError):
        build_report(tmp_path / "missing.db", tmp_path / "out2")


def test_cli_report_on_empty_store(tmp_path: Path, capsys) -> None:
    Store(tmp_path / "e.db").close()
    args = ["report", "--store", str(tmp_path / "e.db"), "--out", str(tmp_path / "r"), "--quiet"]
    assert main(args) == 0
    assert (tmp_path / "r" / "report.html").is_file()
    assert "missing from the store" in capsys.readouterr().out
    assert main([*args, "--attention-runs", "0"]) == 2
    assert main(["report", "--store", str(tmp_path / "absent.db")]) == 2


def test_cli_analyze(store_path: Path, capsys) -> None:
    with Store(store_path) as store:
        # a source searched from both score seeds (the chosen lr of its problem)
        pairs = [g for g in consistency_groups(store.runs("approx")).values() if len(g) == 2]
        rid = next(r.run_id for r in pairs[0] if r.config["score_seed"] == 0)
        glue_id = next(
            r.run_id
            for r in store.runs("glue")
            if r.config["method"] != "dense" and r.config["norm"] == "pre-ln" and r.config["seed"] == 0
        )
    capsys.readouterr()
    assert main(["analyze", rid[:16], "--store", str(store_path), "--n-inputs", "8"]) == 0
    text = capsys.readouterr().out
    assert "consistency over 2 score seeds" in text and "ticket  layer 0" in text and "target" in text
    assert main(["analyze", rid, "--store", str(store_path), "--json", "--n-inputs", "8", "--save"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["masks"]["by_type"] == {"q": 0.5, "k": 0.5, "v": 0.5, "o": 0.5}
    with Store(store_path) as store:
        assert store.get(rid).metrics["analysis"]["masks"]["density"] == 0.5
    assert main(["analyze", glue_id, "--store", str(store_path), "--n-inputs", "8"]) == 0
    text = capsys.readouterr().out
    assert "dense   layer 1" in text and "random token sequences" in text
    with Store(store_path) as store:
        dense_id = next(
            r.run_id
            for r in store.runs("glue")
            if r.config["method"] == "dense" and r.config["norm"] == "pre-ln" and r.config["seed"] == 0
        )
    assert main(["analyze", dense_id, "--store", str(store_path), "--n-inputs", "8"]) == 0
    text = capsys.readouterr().out
    assert "model   layer 1" in text and "no ticket masks" in text  # a dense run: attention only
    assert main(["analyze", "approx-nonexistent", "--store", str(store_path)]) == 2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless chromium is not installed (`make browser`)")
def test_report_renders_in_headless_chromium(store_path: Path, tmp_path: Path) -> None:
    res = build_report(store_path, tmp_path / "c", max_attention_runs=1, n_inputs=8)
    # A probe copy of the page: once loaded, it writes how many images actually decoded, so a broken or missing
    # PNG shows up as a count, not just as an <img> tag in the DOM.
    probe = res.html.with_name("probe.html")
    script = (
        "<script>window.addEventListener('load', () => { const im = [...document.images];"
        " const ok = im.filter(i => i.complete && i.naturalWidth > 0).length;"
        " const t = document.getElementById('claims').getBoundingClientRect();"
        " document.body.insertAdjacentHTML('beforeend', `<p id=probe>images ${ok}/${im.length} claims"
        " ${Math.round(t.top)} ${window.innerHeight}</p>`); });</script>"
    )
    probe.write_text(res.html.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
            "--window-size=1280,1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r"images (\d+)/(\d+) claims (-?\d+) (\d+)", dom)
    assert found is not None, "the probe script did not run"
    ok, total = int(found.group(1)), int(found.group(2))
    assert total >= 5 and ok == total, f"{total - ok} of {total} images failed to load"
    # the first screen (a 1280 x 1000 window, before any scrolling) shows the claims table
    top, height = int(found.group(3)), int(found.group(4))
    assert 0 < top < height, f"the claims table starts at {top} px, below the first screen of {height} px"
    assert "The question and the claims" in dom


def test_lm_section_plots_bpb_against_artifact_bytes(tmp_path):
    from sltlab.report.build import build_report

    with Store(tmp_path / "s.db") as store:
        for method, scales, size, bpb in (("edge-popup", True, 15052, 3.54), ("dense", False, 440000, 3.51)):
            rid = store.start("lm", {"method": method, "scales": scales, "dataset": "t", "seed": 0}, 0)
            extra = {"int8_artifact_bytes": 14443, "int8_val_bpb": 3.77} if method == "dense" else {}
            store.finish(rid, {"val_bpb": bpb, "artifact_bytes": size, "density": 0.5, **extra})
    build_report(tmp_path / "s.db", tmp_path / "report")
    png = tmp_path / "report" / "figures" / "lm_bpb_vs_bytes.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lm_bpb_vs_bytes.png" in (tmp_path / "report" / "report.md").read_text()
