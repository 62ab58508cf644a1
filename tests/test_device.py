"""Devices and precisions for every study: one clear line for a CUDA device that is not there, finite bf16 cells,
and nothing made on the wrong device inside the step loops.

The tests run on the CPU by default. `SLTLAB_TEST_DEVICE=cuda pytest tests/test_device.py` runs the same checks
with every model on the GPU (benchmarks/gpu_check.py does so): there the device audit below compares real devices.
"""

from __future__ import annotations

import math
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import sltlab
from sltlab.errors import ConfigError
from sltlab.runs import device as dev
from sltlab.tickets import search as search_mod

DEVICE = os.environ.get("SLTLAB_TEST_DEVICE", "cpu")
if DEVICE != "cpu" and not torch.cuda.is_available():
    pytest.skip(f"SLTLAB_TEST_DEVICE={DEVICE} but torch has no CUDA", allow_module_level=True)
PRECISION = "bf16"
SLTLAB_SRC = str(Path(sltlab.__file__).resolve().parent)
TORCH_SRC = str(Path(torch.__file__).resolve().parent)
FACTORIES = {
    torch.zeros, torch.ones, torch.full, torch.empty, torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.arange, torch.tensor, torch.eye, torch.linspace,
}


# ------------------------------------------------------------------------------------------------ settings
def test_cuda_without_cuda_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError) as err:
            dev.resolve_device(name)
        msg = str(err.value)
        assert msg.startswith(f"config field 'device': {name} requested but torch has no CUDA (")
        assert "\n" not in msg
    assert dev.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'lm.device'"):
        dev.resolve_device("cuda", "lm.device")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cpu:1", "mps", "", "meta"])
def test_bad_device_names(name: str) -> None:
    with pytest.raises(ConfigError, match="auto \\| cpu \\| cuda \\| cuda:N"):
        dev.check_device_name(name)


def test_precisions_and_run_ids() -> None:
    with pytest.raises(ConfigError, match="fp32 \\| bf16 \\| fp16"):
        dev.check_precision("fp8")
    assert dev.run_id_fields("cpu", "fp32") == {}
    assert dev.run_id_fields("cuda:3", "bf16", True) == {"device": "cuda", "precision": "bf16", "deterministic": True}
    # autocast: nothing at fp32, the dtype asked for otherwise
    with dev.autocast(torch.device("cpu"), "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with dev.autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_default_device_fields_leave_run_ids_unchanged() -> None:
    """The defaults add nothing to any study's run-id dict; a GPU or bf16 cell gets its own id."""
    from sltlab.tasks.approx import ApproxStudy
    from sltlab.tasks.glue_run import GlueRunConfig
    from sltlab.tasks.peft import PeftConfig

    a = ApproxStudy(widths=(8,), variants=("none",)).cells()[0].config_dict()
    assert not {"device", "precision", "deterministic"} & set(a)
    b = ApproxStudy(widths=(8,), variants=("none",), precision="bf16").cells()[0].config_dict()
    assert b["precision"] == "bf16"
    g = GlueRunConfig().to_dict()
    assert not {"device", "precision", "deterministic"} & set(g)
    assert GlueRunConfig(device="cuda:0").to_dict()["device"] == "cuda"
    p = PeftConfig(task="rte", method="ln", lr=1e-3).record()
    assert not {"device", "precision", "deterministic"} & set(p)


def test_every_study_config_validates_its_device_fields() -> None:
    from sltlab.runs.config import from_dict
    from sltlab.tasks.approx import ApproxStudy
    from sltlab.tasks.glue_run import GlueRunConfig, GlueSweepConfig
    from sltlab.tasks.lm_run import LMStudy
    from sltlab.tasks.peft import PeftConfig, SweepConfig
    from sltlab.tasks.theory.config import TheoryConfig

    cases: list[tuple[Any, str]] = [
        (lambda **kw: ApproxStudy(**kw), "study."),
        (lambda **kw: GlueRunConfig(**kw), ""),
        (lambda **kw: GlueSweepConfig(**kw), ""),
        (lambda **kw: LMStudy(**kw), "lm."),
        (lambda **kw: PeftConfig(task="rte", method="ln", lr=1e-3, **kw), ""),
        (lambda **kw: from_dict(TheoryConfig, kw, prefix="theory"), "theory."),
    ]
    for make, prefix in cases:
        with pytest.raises(ConfigError, match=f"'{prefix}device'"):
            make(device="tpu")
        with pytest.raises(ConfigError, match=f"'{prefix}precision'"):
            make(precision="int8")
    sweep = SweepConfig(tasks=("rte",), methods=("ln",), device="cuda", precision="bf16")
    assert sweep.base["device"] == "cuda" and sweep.base["precision"] == "bf16"
    glue = GlueSweepConfig(precision="bf16", run={"steps": 5})
    assert all(c.precision == "bf16" for c in glue.cells())


# ------------------------------------------------------------------------------------------------ audit
class _DeviceAudit(TorchDispatchMode):
    """Every tensor an op produces inside the step loop (batch production excepted), with the op's name."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.outputs: list[tuple[str, torch.device, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor):
                    self.outputs.append((str(func), t.device, t.numel()))
        return out


class _FactoryAudit(TorchFunctionMode):
    """Factory calls made from sltlab's own code without naming their device: on a GPU those land on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.implicit: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH_SRC):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(SLTLAB_SRC):
                self.implicit.append(f"{func.__name__} at {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
        return func(*args, **kwargs)


class _Paused:
    """The batch iterable, with the audits off while a batch is made (data pipelines work on the host)."""

    def __init__(self, batches: Any, audits: tuple[Any, ...]):
        self.batches, self.audits = batches, audits

    def __iter__(self) -> Any:
        it = iter(self.batches)
        while True:
            for a in self.audits:
                a.paused = True
            try:
                b = next(it)
            except StopIteration:
                return
            finally:
                for a in self.audits:
                    a.paused = False
            yield b


class _Recorder:
    def __init__(self) -> None:
        self.runs: list[tuple[torch.device, _DeviceAudit, _FactoryAudit]] = []


@pytest.fixture
def audited(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    """Wrap the one search loop: every call records what its steps made, and on which device."""
    rec = _Recorder()
    original = search_mod.run_search

    def wrapped(model, loss_fn, batches, cfg, *args, **kwargs):  # type: ignore[no-untyped-def]
        d, f = _DeviceAudit(), _FactoryAudit()
        rec.runs.append((dev.model_device(model), d, f))
        with f, d:
            return original(model, loss_fn, _Paused(batches, (d, f)), cfg, *args, **kwargs)

    for mod in ("sltlab.tickets.search", "sltlab.tasks.approx", "sltlab.tasks.glue_run", "sltlab.tasks.lm_run"):
        monkeypatch.setattr(f"{mod}.run_search", wrapped)
    return rec


def _check(rec: _Recorder) -> None:
    assert rec.runs, "the step loop never ran"
    for device, d, f in rec.runs:
        assert device.type == torch.device(DEVICE).type
        assert not f.implicit, f"factories without device= inside the step loop: {sorted(set(f.implicit))}"
        # Adam keeps its step counters as one-element CPU tensors by design; anything larger is a misplaced tensor.
        wrong = {op for op, where, n in d.outputs if where != device and n > 1}
        assert d.outputs and not wrong, f"ops producing tensors off {device}: {sorted(wrong)}"


# ------------------------------------------------------------------------------------------------ studies
def test_approx_cell_bf16_finite_and_on_device(audited: _Recorder) -> None:
    from sltlab.tasks.approx import ApproxStudy, run_cell
    from sltlab.tickets.search import SearchConfig

    for method, variant, precision in (("edge-popup", "ln-integrated", PRECISION), ("annealed", "none", PRECISION),
                                       ("multicoated", "pre-ln", PRECISION), ("edge-popup", "pre-ln", "fp16")):
        study = ApproxStudy(widths=(16,), variants=(variant,), methods=(method,), seeds=(0,), n_train=128,
                            n_test=32, batch_size=16, search=SearchConfig(steps=12, lr=0.05), device=DEVICE,
                            precision=precision)
        _, m, _ = run_cell(study.cells()[0])
        assert math.isfinite(m["rel_error"]) and math.isfinite(m["final_loss"]), method
        assert 0 < m["mask_changed_fraction"] <= 1 and m["stalled"] is False
    _check(audited)


def _glue_data(n: int = 96, regression: bool = False) -> Any:
    from sltlab.tasks.glue import get_task
    from sltlab.tasks.glue_run import Encoded, TaskData

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (n, 12), generator=g)
    att = torch.ones_like(ids)
    att[: n // 2, 8:] = 0
    labels = torch.rand(n, generator=g) * 5 if regression else (ids[:, 0] > 20).long()

    class Enc:
        vocab_size = 40

    info = get_task("stsb" if regression else "sst2")
    enc = Encoded(ids, att, labels)
    return TaskData(info, Enc(), enc, {info.dev_splits[0]: Encoded(ids[:32], att[:32], labels[:32])})  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["dense", "edge-popup", "ln-integrated", "annealed", "imp"])
def test_glue_cell_bf16_finite_and_on_device(audited: _Recorder, method: str) -> None:
    from sltlab.tasks.glue_run import GlueRunConfig, train_cell

    cfg = GlueRunConfig(method=method, d_model=16, n_heads=2, n_layers=1, max_len=12, vocab_size=40, steps=6,
                        batch_size=16, imp_rounds=1, device=DEVICE, precision=PRECISION).resolved()
    model, _, m, extras = train_cell(cfg, _glue_data(regression=method == "dense"))
    assert math.isfinite(m["main"]) and math.isfinite(m["final_loss"])
    assert next(model.parameters()).device.type == "cpu"  # handed back on the CPU for checkpoints
    assert all(t.device.type == "cpu" for t in extras.get("masks", {}).values())
    _check(audited)


def test_lm_cell_bf16_finite_and_on_device(audited: _Recorder, tmp_path: Path) -> None:
    from sltlab.tasks.lm_run import LMStudy, run_cell

    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(rng.choice(["the ", "king ", "mask ", "of "]) for _ in range(1500)))
    for method in ("dense", "edge-popup", "annealed+scales"):
        study = LMStudy(dataset=str(corpus), methods=(method,), d_model=16, n_heads=2, n_layers=1, seq_len=16,
                        batch_size=8, steps=6, eval_bytes=512, warmup=1, device=DEVICE, precision=PRECISION)
        _, m, _ = run_cell(study.cells()[0])
        assert math.isfinite(m["val_bpb"]) and m["device"].startswith(DEVICE.split(":")[0])
    _check(audited)


def test_peft_bf16_finite_and_on_device(audited: _Recorder) -> None:
    from transformers import BertConfig, BertModel

    from sltlab.tasks import peft
    from sltlab.tasks.pretrained import wrap_encoder

    device = dev.resolve_device(DEVICE)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        ids = torch.randint(1, 60, (4, 10), generator=g)
        batches.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                        "labels": torch.randint(0, 2, (4,), generator=g).to(device)})
    for method in ("full", "ln", "random"):
        torch.manual_seed(0)
        bert = BertModel(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=32, type_vocab_size=2))
        model = wrap_encoder(bert, 16, 2, 0).to(device)
        masks = peft.trainable_masks(model, method, seed=0)
        assert all(m.device == device for m in masks.values())
        cfg = peft.PeftConfig(task="rte", method=method, lr=1e-3, epochs=2, device=DEVICE, precision=PRECISION)
        hist = peft.train_masked(model, masks, batches, cfg, progress=False)
        assert math.isfinite(hist[-1]["loss"]) and not hist.stalled
        from sltlab.analysis import fisher as fisher_mod

        fisher = fisher_mod.empirical_fisher(model, peft.per_sample_loss, batches[:1],
                                                  params=peft.layernorm_names(model))
        assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in fisher.values())
    _check(audited)


def test_theory_width_search_cell_bf16(audited: _Recorder, tmp_path: Path) -> None:
    """Theory's device settings reach its searched cells (and their run ids); constructions stay on the CPU."""
    from sltlab.runs.config import from_dict
    from sltlab.runs.store import Store
    from sltlab.tasks.theory.config import TheoryConfig
    from sltlab.tasks.theory.runner import Runner
    from sltlab.tasks.theory.width import run_width

    cfg = from_dict(TheoryConfig, {
        "device": DEVICE, "precision": PRECISION,
        "width": {"d_model": 8, "heads": 2, "methods": ["edge-popup"], "search_widths": [8],
                  "search_inits": ["kaiming-uniform"], "search_seeds": [0], "search_steps": 6, "n_train": 64,
                  "n_test": 16, "seq_len": 4},
    }, prefix="theory")
    with Store(tmp_path / "s.db") as store:
        summary = run_width(cfg, Runner(store, progress=False), tmp_path)
        (rec,) = store.runs("theory")
    assert rec.config["precision"] == PRECISION and math.isfinite(rec.metrics["rel_error"])
    assert summary and (tmp_path / "width.csv").is_file()
    _check(audited)


def test_the_audit_catches_a_factory_without_device(audited: _Recorder) -> None:
    """The check above can fail: a loss function that makes a tensor without naming its device is reported."""
    from sltlab.tickets.search import SearchConfig

    model = torch.nn.Linear(3, 1).to(DEVICE)
    code = compile("def loss_fn(m, b):\n    return (m(b) - torch.zeros(4, 1).to(b.device)).pow(2).mean()\n",
                   f"{SLTLAB_SRC}/fake_module.py", "exec")
    ns: dict[str, Any] = {"torch": torch}
    exec(code, ns)
    x = torch.ones(4, 3, device=DEVICE)
    search_mod.run_search(model, ns["loss_fn"], [x], SearchConfig(steps=2, lr=0.1), progress=False)
    with pytest.raises(AssertionError, match="zeros at fake_module.py"):
        _check(audited)


# ------------------------------------------------------------------------------------------------ GPU only
@pytest.mark.skipif(DEVICE == "cpu", reason="host syncs are only observable on a GPU")
def test_no_host_sync_between_log_steps() -> None:
    """torch's sync debug mode warns at every host sync: a 40-step search logging every 20 steps may wait for the
    device a handful of times (the log fetches, the final movement count), never once per step."""
    import warnings

    from sltlab.nn.init import InitSpec
    from sltlab.nn.transformer import ModelConfig
    from sltlab.tickets.search import SearchConfig
    from sltlab.tickets.spec import ModelSpec, build_model
    from sltlab.tickets.supermask import SupermaskConfig

    cfg = ModelConfig(d_model=32, n_heads=2, n_layers=1, vocab_size=50, max_len=16, n_outputs=2)
    for method in ("edge-popup", "annealed"):
        model = build_model(ModelSpec("encoder-classifier", cfg, InitSpec(seed=0),
                                      SupermaskConfig(method=method))).to(DEVICE)  # type: ignore[arg-type]
        ids = torch.randint(0, 50, (8, 16)).to(DEVICE)
        att = torch.ones_like(ids)
        y = torch.randint(0, 2, (8,)).to(DEVICE)
        batch = (ids, att, y)

        def loss_fn(m: torch.nn.Module, b: Any) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(m(b[0], b[1]), b[2])

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                search_mod.run_search(model, loss_fn, [batch], SearchConfig(steps=40, lr=0.05), progress=False,
                                      log_every=20, precision=PRECISION)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        assert len(syncs) < 20, f"{method}: {len(syncs)} host syncs in 40 steps"
