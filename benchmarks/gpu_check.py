"""The prepared GPU check (issue 12): one script, at most 8 minutes on one CUDA GPU, JSON + Markdown into --out.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cuda --out gpu_check_out     # on the GPU machine
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gc      # the CPU smoke run (a test)

It uses that machine's own python3, torch and transformers (nothing is installed; no network). Sections:
  tests   tests/test_device.py with SLTLAB_TEST_DEVICE=<device> (every study's bf16 cell and the device audit on
          the GPU, plus the host-sync check); needs pytest
  step    masked vs dense training step of a 12-layer d=768 encoder (12 heads, MLP 3072, vocab 30522), seq 512,
          batch 32, bf16: edge-popup, annealed and edge-popup with one global threshold; step time, ratio to
          dense, tokens/s, peak memory
  glue    one configs/glue_full.toml SST-2 cell for dense and edge-popup at a reduced step count, examples/s
  lm      one configs/lm_full.toml cell (edge-popup) at a reduced step count, tokens/s
  golf    the parameter-golf submission's shape (configs/lm_golf.toml: 16 x 1024, 118,489,088 masked weights, its
          recipe): the masked training step in <precision> on one micro-batch of 16 x 2048 tokens, step time,
          tokens/s, peak memory, and the projected wall time of the submission's 50,000 steps x 262,144 tokens
  approx  CPU vs <device> agreement of a small approximation cell (relative difference of the held-out error)
GLUE and LM data come from $SLTLAB_DATA (or --data-dir); where it is absent a synthetic corpus of the same layout
is generated and the report says so (throughput is then still meaningful, accuracy is not). --tiny shrinks every
model and step count so the whole check runs on a CPU in well under a minute. Exit status 1 if any section failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEP_MODES: dict[str, dict[str, Any] | None] = {
    "dense": None,
    "edge-popup": {},
    "annealed": {"method": "annealed"},
    "edge-popup-global": {"scope": "global"},
}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS (Linux: KiB)


# ------------------------------------------------------------------------------------------------ sections
def section_tests(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import pytest  # noqa: F401
    except ImportError:
        raise RuntimeError("pytest is not installed for this python3: pip install pytest (pure Python)") from None
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=-q", "-p", "no:cacheprovider", "-rfE",
           str(ROOT / "tests" / "test_device.py")]
    if args.tiny:  # the CPU smoke run: the quick checks only (the whole file runs in the normal test suite)
        cmd += ["-k", "cuda_without or bad_device or precisions"]
    env = {**os.environ, "SLTLAB_TEST_DEVICE": args.device, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    summary = next((line for line in reversed(tail) if " passed" in line or " failed" in line or "error" in line),
                   tail[-1] if tail else "")
    out = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": summary.strip(" ="),
           "seconds": time.perf_counter() - t0}
    if proc.returncode != 0:
        out["output_tail"] = "\n".join(tail[-40:])
        raise _SectionFailed(out, f"device tests failed: {out['summary']}")
    return out


def section_step(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import torch

    from sltlab.nn.init import InitSpec
    from sltlab.nn.norm import NormSpec
    from sltlab.nn.transformer import ModelConfig
    from sltlab.tickets.search import SearchConfig, run_search
    from sltlab.tickets.spec import ModelSpec, build_model
    from sltlab.tickets.supermask import SupermaskConfig

    if args.tiny:
        shape = {"d_model": 32, "n_heads": 2, "n_layers": 2, "d_ff": 64, "vocab_size": 512, "max_len": 32}
        seq, batch, warm, steps = 32, 4, 2, 4
    else:
        shape = {"d_model": 768, "n_heads": 12, "n_layers": 12, "d_ff": 3072, "vocab_size": 30522, "max_len": 512}
        seq, batch, warm, steps = 512, 32, 5, args.step_steps
    cfg = ModelConfig(norm=NormSpec.parse("pre-ln"), n_outputs=2, **shape)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, shape["vocab_size"], (batch, seq), generator=g).to(device)
    att = torch.ones_like(x)
    y = torch.randint(0, 2, (batch,), generator=g).to(device)

    def loss_fn(model: torch.nn.Module, b: Any) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(b[0], b[1]), b[2])

    rows = []
    for mode, variant in STEP_MODES.items():
        mask = None if variant is None else SupermaskConfig(keep=0.5, **variant)
        t_build = time.perf_counter()
        model = build_model(ModelSpec("encoder-classifier", cfg, InitSpec(seed=0), mask))
        if variant is None:
            for p in model.parameters():
                p.requires_grad_(True)
        model.to(device)
        build_s = time.perf_counter() - t_build
        scfg = SearchConfig(steps=warm, lr=1e-3 if variant is None else 0.05, schedule="constant")
        run_search(model, loss_fn, [(x, att, y)], scfg, progress=False, log_every=warm, precision=args.precision)
        _sync(device)
        _peak_reset(device)
        scfg = SearchConfig(steps=steps, lr=scfg.lr, schedule="constant")
        t0 = time.perf_counter()
        run_search(model, loss_fn, [(x, att, y)], scfg, progress=False, log_every=steps, precision=args.precision)
        _sync(device)
        step_s = (time.perf_counter() - t0) / steps
        rows.append({"mode": mode, "step_s": step_s, "tokens_per_s": batch * seq / step_s,
                     "peak_mem_mb": _peak_mb(device), "build_s": build_s,
                     "params": sum(p.numel() for p in model.parameters())})
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dense = rows[0]["step_s"]
    for r in rows:
        r["ratio_to_dense"] = r["step_s"] / dense
    return {"shape": {**shape, "seq": seq, "batch": batch, "precision": args.precision, "timed_steps": steps},
            "rows": rows}


def _glue_data_dir(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """The GLUE root to use and where it came from."""
    if args.tiny:
        return ROOT / "tests" / "fixtures", "tests/fixtures (4 rows)"
    root = Path(args.data_dir or os.environ.get("SLTLAB_DATA", "") or "/nonexistent")
    if (root / "glue" / "SST-2" / "train.tsv").is_file():
        return root, str(root)
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    sst = tmp / "glue" / "SST-2"
    sst.mkdir(parents=True)
    for split, n in (("train", 20000), ("dev", 872)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            rows.append(" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + f"\t{rng.randint(0, 1)}")
        (sst / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return tmp, "synthetic SST-2 layout (no GLUE data here: throughput only)"


def section_glue(args: argparse.Namespace, device: Any, tmp: Path) -> dict[str, Any]:
    import torch

    from sltlab.tasks.glue_run import GlueRunConfig, prepare_data, train_cell

    sweep = tomllib.loads((ROOT / "configs" / "glue_full.toml").read_text())["sweep"]
    root, source = _glue_data_dir(args, tmp)
    rows = []
    for method in ("dense", "edge-popup"):
        run = {**sweep["run"], **sweep.get("method", {}).get(method, {})}
        run.update(steps=args.glue_steps, warmup=min(run.get("warmup", 0), args.glue_steps // 4), train_limit=0,
                   dev_limit=0)
        if args.tiny:
            run.update(d_model=16, n_heads=2, n_layers=1, max_len=16, vocab_size=60, batch_size=4, steps=4, warmup=0)
        cfg = GlueRunConfig(task="sst2", method=method, norm="pre-ln", device=args.device, precision=args.precision,
                            **{k: v for k, v in run.items() if k not in ("imp_rounds", "imp_fraction",
                                                                         "imp_rewind_step")}).resolved()
        t0 = time.perf_counter()
        data = prepare_data(cfg, root, tmp / "tok")
        t1 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        _peak_reset(device)
        _, _, metrics, _ = train_cell(cfg, data)
        _sync(device)
        t2 = time.perf_counter()
        rows.append({"method": method, "steps": cfg.steps, "batch_size": cfg.batch_size,
                     "model": f"{cfg.n_layers}x d={cfg.d_model}, max_len {cfg.max_len}",
                     "data_s": t1 - t0, "train_eval_s": t2 - t1,
                     "examples_per_s": cfg.steps * cfg.batch_size / (t2 - t1),
                     "accuracy": metrics["main"], "final_loss": metrics["final_loss"],
                     "peak_mem_mb": _peak_mb(device)})
    return {"data": source, "rows": rows}


def section_lm(args: argparse.Namespace, device: Any, tmp: Path) -> dict[str, Any]:
    from sltlab.runs.config import from_dict
    from sltlab.tasks.lm_run import LMStudy, run_cell

    raw = tomllib.loads((ROOT / "configs" / "lm_full.toml").read_text())
    raw.update(methods=["edge-popup"], seeds=[0], steps=args.lm_steps, warmup=min(raw.get("warmup", 0),
               args.lm_steps // 4), eval_bytes=65536, device=args.device, precision=args.precision)
    root = Path(args.data_dir or os.environ.get("SLTLAB_DATA", "") or "/nonexistent")
    source = str(root)
    if args.tiny or not (root / "tinyshakespeare").is_dir():
        rng = random.Random(0)
        text = "".join(rng.choice(["the ", "king ", "and ", "queen ", "of ", "mask "]) for _ in range(60000))
        corpus = tmp / "corpus.txt"
        corpus.write_text(text)
        raw["dataset"] = str(corpus)
        source = "synthetic text (no TinyShakespeare here: throughput only)"
    if args.tiny:
        raw.update(d_model=16, n_heads=2, n_layers=1, seq_len=16, batch_size=4, steps=4, warmup=0, eval_bytes=1024,
                   eval_batch=8)
    study = from_dict(LMStudy, raw, prefix="lm")
    _peak_reset(device)
    _, m, t = run_cell(study.cells()[0])
    tokens_per_s = m.get("tokens_per_s", t.get("tokens_per_s"))  # a timing, once wall clock leaves the metrics
    return {"data": source, "model": f"{study.n_layers}x d={study.d_model}, seq {study.seq_len}, "
            f"batch {study.batch_size}", "steps": study.steps, "tokens_per_s": tokens_per_s,
            "val_bpb": m["val_bpb"], "train_s": t["train_s"], "peak_mem_mb": _peak_mb(device)}


def section_golf(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import torch

    from sltlab.runs.config import load_toml
    from sltlab.tasks.lm_run import LMRun, study_from_dict
    from sltlab.tasks.text import lm_loss
    from sltlab.tickets.search import run_search
    from sltlab.tickets.spec import build_model

    raw = load_toml(ROOT / "configs" / "lm_golf.toml")
    full_tokens = raw["batch_size"] * raw["seq_len"]  # the submission's tokens per optimiser step
    full_steps = raw["steps"]
    micro, seq = 16, raw["seq_len"]
    if args.tiny:
        raw.update(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=1024, seq_len=32, warmdown_steps=2)
        micro, seq = 4, 32
    warm, timed = (2, 3) if args.tiny else (3, args.golf_steps)
    raw.update(steps=warm + timed, warmdown_steps=min(raw.get("warmdown_steps", 0), 2), device=args.device,
               precision=args.precision, methods=["annealed+scales"])
    study = study_from_dict(raw)
    run = LMRun(study, "annealed+scales", 0)
    t0 = time.perf_counter()
    model = build_model(run.spec()).to(device)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, study.vocab_size, (micro, seq + 1), generator=g).to(device)
    batch = (x[:, :-1], x[:, 1:])
    cfg = run.search_config()
    from dataclasses import replace as _replace

    run_search(model, lm_loss, [batch], _replace(cfg, steps=warm, warmdown_steps=0), progress=False,
               log_every=warm, precision=args.precision)
    _sync(device)
    _peak_reset(device)
    t1 = time.perf_counter()
    run_search(model, lm_loss, [batch], _replace(cfg, steps=timed, warmdown_steps=0), progress=False,
               log_every=timed, precision=args.precision)
    _sync(device)
    step_s = (time.perf_counter() - t1) / timed
    tokens_per_s = micro * seq / step_s
    masked = sum(sm.scores.numel() for sm in {id(m): m for m in _supermasks(model)}.values())
    return {"shape": f"{study.n_layers} x d {study.d_model}, {study.n_heads}/{study.n_kv_heads} heads, "
            f"vocab {study.vocab_size}, micro-batch {micro} x {seq}", "masked_weights": masked,
            "precision": args.precision, "build_s": build_s, "micro_step_s": step_s, "tokens_per_s": tokens_per_s,
            "peak_mem_mb": _peak_mb(device), "submission_tokens_per_step": full_tokens,
            "projected_50k_steps_h": full_steps * full_tokens / tokens_per_s / 3600, "tiny": args.tiny}


def _supermasks(model: Any) -> list[Any]:
    from sltlab.tickets.supermask import supermasks

    return list(supermasks(model).values())


def section_approx(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    from sltlab.tasks.approx import ApproxStudy, run_cell
    from sltlab.tickets.search import SearchConfig

    steps = 10 if args.tiny else 200
    rows = []
    for variant in ("none", "pre-ln"):
        for precision in ("fp32", "bf16"):
            kw = dict(widths=(32,), variants=(variant,), seeds=(0,), n_train=256 if args.tiny else 2048,
                      n_test=64 if args.tiny else 512, batch_size=32, search=SearchConfig(steps=steps, lr=0.05))
            cpu = run_cell(ApproxStudy(**kw).cells()[0])[1]["rel_error"]  # type: ignore[arg-type]
            on = run_cell(ApproxStudy(**kw, device=args.device, precision=precision,  # type: ignore[arg-type]
                                      deterministic=device.type == "cuda").cells()[0])[1]["rel_error"]
            rows.append({"variant": variant, "precision": precision, "cpu_fp32_error": cpu,
                         "device_error": on, "relative_difference": abs(on - cpu) / abs(cpu)})
    return {"steps": steps, "rows": rows}


class _SectionFailed(Exception):
    def __init__(self, result: dict[str, Any], message: str):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------------ report
def _markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [
        "# GPU check", "",
        f"- date: {res['date']}", f"- command: `{res['command']}`",
        f"- machine: {env['machine']}; python {env['python']}; torch {env['torch']} (CUDA {env['cuda']}); "
        f"transformers {env['transformers']}",
        f"- device: {env['device_name']}; precision {res['precision']}; wall {res['wall_s']:.0f} s",
        f"- result: **{'all sections passed' if res['ok'] else 'FAILED: ' + ', '.join(res['failed'])}**", "",
    ]
    s = res["sections"]
    if "tests" in s:
        t = s["tests"]
        lines += ["## Device tests", "", f"`{t.get('command', '')}` -> {t.get('summary', t.get('error', ''))}", ""]
    if "step" in s and "rows" in s["step"]:
        sh = s["step"]["shape"]
        lines += ["## Masked vs dense step", "",
                  f"{sh['n_layers']} layers, d={sh['d_model']}, {sh['n_heads']} heads, MLP {sh['d_ff']}, vocab "
                  f"{sh['vocab_size']}, seq {sh['seq']}, batch {sh['batch']}, {sh['precision']}, "
                  f"{sh['timed_steps']} timed steps after warm-up.", "",
                  "| mode | step (s) | ratio to dense | tokens/s | peak memory (MB) |", "|---|---|---|---|---|"]
        for r in s["step"]["rows"]:
            lines.append(f"| {r['mode']} | {r['step_s']:.4f} | {r['ratio_to_dense']:.3f}x | "
                         f"{r['tokens_per_s']:.0f} | {r['peak_mem_mb']:.0f} |")
        lines.append("")
    if "glue" in s and "rows" in s["glue"]:
        lines += ["## GLUE cell (configs/glue_full.toml, SST-2, reduced steps)", "", f"data: {s['glue']['data']}", "",
                  "| method | model | steps x batch | examples/s (train+eval) | dev accuracy | peak memory (MB) |",
                  "|---|---|---|---|---|---|"]
        for r in s["glue"]["rows"]:
            lines.append(f"| {r['method']} | {r['model']} | {r['steps']} x {r['batch_size']} | "
                         f"{r['examples_per_s']:.1f} | {r['accuracy']:.3f} | {r['peak_mem_mb']:.0f} |")
        lines.append("")
    if "lm" in s and "tokens_per_s" in s["lm"]:
        r = s["lm"]
        lines += ["## LM cell (configs/lm_full.toml, edge-popup, reduced steps)", "", f"data: {r['data']}", "",
                  "| model | steps | tokens/s (train) | val bpb | peak memory (MB) |", "|---|---|---|---|---|",
                  f"| {r['model']} | {r['steps']} | {r['tokens_per_s']:.0f} | {r['val_bpb']:.3f} | "
                  f"{r['peak_mem_mb']:.0f} |", ""]
    if "golf" in s and "tokens_per_s" in s["golf"]:
        r = s["golf"]
        lines += ["## The parameter-golf submission's shape (configs/lm_golf.toml, annealed + golf scales)", "",
                  f"{r['shape']}, {r['masked_weights']:,} masked weights, {r['precision']}"
                  + (" (--tiny: a small stand-in shape)" if r["tiny"] else ""), "",
                  "| micro-step (s) | tokens/s | peak memory (MB) | projected 50,000 steps x "
                  f"{r['submission_tokens_per_step']:,} tokens (h) |", "|---|---|---|---|",
                  f"| {r['micro_step_s']:.4f} | {r['tokens_per_s']:.0f} | {r['peak_mem_mb']:.0f} | "
                  f"{r['projected_50k_steps_h']:.1f} |", ""]
    if "approx" in s and "rows" in s["approx"]:
        lines += ["## CPU vs device agreement (approx cell, d=16, 2 heads, width 32)", "",
                  "| variant | precision on device | CPU fp32 error | device error | relative difference |",
                  "|---|---|---|---|---|"]
        for r in s["approx"]["rows"]:
            lines.append(f"| {r['variant']} | {r['precision']} | {r['cpu_fp32_error']:.6g} | "
                         f"{r['device_error']:.6g} | {r['relative_difference']:.2e} |")
        lines.append("")
    for name, sec in s.items():
        if "error" in sec:
            lines += [f"## {name}: failed", "", "```", sec["error"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    p.add_argument("--precision", default="bf16", help="fp32 | bf16 | fp16 (default bf16)")
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: the CPU smoke run, under a minute")
    p.add_argument("--data-dir", help="folder holding glue/ and tinyshakespeare/ (default $SLTLAB_DATA)")
    p.add_argument("--sections", default="tests,step,glue,lm,golf,approx", help="comma-separated subset")
    p.add_argument("--step-steps", type=int, default=20, help="timed steps per mode in the step section")
    p.add_argument("--glue-steps", type=int, default=300, help="steps of each GLUE cell")
    p.add_argument("--lm-steps", type=int, default=300, help="steps of the LM cell")
    p.add_argument("--golf-steps", type=int, default=10, help="timed micro-steps of the golf shape")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from sltlab.runs.device import resolve_device

    torch.set_num_threads(1 if args.tiny else torch.get_num_threads())
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = "not installed"
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "python " + " ".join([Path(sys.argv[0]).name if argv is None else "gpu_check.py",
                                         *(sys.argv[1:] if argv is None else argv)]),
        "device": str(device), "precision": args.precision, "tiny": args.tiny,
        "environment": {
            "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": tf_version,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or "CPU",
        },
        "sections": {},
    }
    wanted = [x.strip() for x in args.sections.split(",") if x.strip()]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        runners = {
            "tests": lambda: section_tests(args),
            "step": lambda: section_step(args, device),
            "glue": lambda: section_glue(args, device, tmp / "glue"),
            "lm": lambda: section_lm(args, device, tmp / "lm"),
            "golf": lambda: section_golf(args, device),
            "approx": lambda: section_approx(args, device),
        }
        for name in wanted:
            if name not in runners:
                p.error(f"unknown section {name!r} (accepts: {', '.join(runners)})")
            (tmp / name).mkdir(exist_ok=True)
            t0 = time.perf_counter()
            print(f"gpu_check: {name} ...", flush=True)
            try:
                sec = runners[name]()
            except _SectionFailed as err:
                sec = {**err.result, "error": str(err)}
            except Exception as err:  # a failed section is reported, and the others still run
                sec = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"}
            sec["section_s"] = time.perf_counter() - t0
            res["sections"][name] = sec
            print(f"gpu_check: {name} {'FAILED' if 'error' in sec else 'ok'} ({sec['section_s']:.1f} s)", flush=True)
    res["failed"] = [n for n, s in res["sections"].items() if "error" in s]
    res["ok"] = not res["failed"]
    res["wall_s"] = time.perf_counter() - t_start
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "gpu_check.md").write_text(_markdown(res))
    print(f"gpu_check: {'ok' if res['ok'] else 'FAILED'} in {res['wall_s']:.0f} s -> {out}/gpu_check.json, .md")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
