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


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "sltlab.db"
    with Store(path) as store:
        _approx(
            store,
            module="mha",
            widths=(4, 8),
            variants=("none", "pre-ln"),
            seeds=(0, 1),
            score_seeds=(0, 1),
        )
        _approx(
            store,
            name="stack",
            module="stack",
            n_blocks=2,
            widths=(4, 8),
            variants=("none", "post-ln"),
            seeds=(0,),
            score_seeds=(0,),
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
        self._h = tag in ("h1", "h2")

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
    for word in ("error vs source width", "depth", "consistency", "Attention", "GLUE", "Conclusion"):
        assert word.lower() in titles.lower()
    summary = json.loads(res.json.read_text())
    # 2 variants x 2 widths x 2 seeds sources, each searched from 2 score seeds
    cons = summary["consistency"][0]["excess"]
    assert cons["none"]["n"] == 4 and cons["pre-ln"]["n"] == 4
    assert summary["conclusion"]["consistency"] and summary["conclusion"]["diversity"]
    # same source and score seed, two norms: mha 2 widths x 2 seeds x 2 score seeds; stack 2 widths x 1 x 1
    cross = summary["cross_norm_overlap"]
    assert [(c["a"], c["b"], len(c["values"])) for c in cross] == [("none", "pre-ln", 8), ("none", "post-ln", 2)]
    assert all(0.0 <= v <= 1.0 for v in cross[0]["values"])
    assert "within each width" in md
    refs = summary["attention"][0]["reference_diversity_ln_vs_none"]
    assert set(refs) >= {"random"}
    assert summary["depth"][0]["per_block_mean"] and len(summary["depth"][0]["per_block_mean"]) == 2
    assert {r["method"] for r in summary["glue"]} == {"dense", "edge-popup"}
    assert "lm runs" in summary["missing"]
    glue_att = [a for a in summary["attention"] if a["what"] == "glue"]
    assert glue_att, "the GLUE ticket's attention (ticket vs random vs dense) must be analysed"
    assert "<table>" in page and "Kruskal" in page


def test_consistency_groups_split_on_everything_but_score_seed(store_path: Path) -> None:
    with Store(store_path) as store:
        groups = consistency_groups(store.runs("approx"))
    assert len(groups) == 8 and all(len(g) == 2 for g in groups.values())


def test_empty_store_gives_a_report_that_says_what_is_missing(tmp_path: Path) -> None:
    Store(tmp_path / "empty.db").close()
    res = build_report(tmp_path / "empty.db", tmp_path / "out")
    text = res.markdown.read_text()
    assert "No finished approximation runs" in text and "not testable" in text
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
        rid = next(r.run_id for r in store.runs("approx") if r.config["score_seed"] == 0)
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
        " document.body.insertAdjacentHTML('beforeend', `<p id=probe>images ${ok}/${im.length}</p>`); });</script>"
    )
    probe.write_text(res.html.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
            "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "Conclusion" in dom
    found = re.search(r"images (\d+)/(\d+)", dom)
    assert found is not None, "the probe script did not run"
    ok, total = int(found.group(1)), int(found.group(2))
    assert total >= 5 and ok == total, f"{total - ok} of {total} images failed to load"


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
