"""GLUE data: the nine tasks read from a local directory in the standard GLUE layout, or from Hugging Face.

The local layout is the one the official download script writes::

    DATA/glue/CoLA/{train,dev,test}.tsv          no header on train/dev (source, label, orig_label, sentence)
    DATA/glue/SST-2/{train,dev,test}.tsv
    DATA/glue/MRPC/{train,dev,test}.tsv          train/dev start with a UTF-8 byte-order mark
    DATA/glue/STS-B/{train,dev,test}.tsv         label = similarity score in [0, 5]
    DATA/glue/QQP/{train,dev,test}.tsv
    DATA/glue/MNLI/{train,dev_matched,dev_mismatched,test_matched,test_mismatched}.tsv
    DATA/glue/{QNLI,RTE,WNLI}/{train,dev,test}.tsv

Quotes in these files are literal characters, not CSV quoting (a sentence may start with `"` and never close
it), so every file is read with quoting off. Files are opened as `utf-8-sig`, which strips MRPC's byte-order
mark. `DATA` is found by `sltlab.paths.data_dir` (--data-dir, else $SLTLAB_DATA, else ./data or
../shared/data); a path that is itself the `glue/` folder is accepted too.

Labels follow the Hugging Face `nyu-mll/glue` convention so both sources agree: MNLI entailment=0, neutral=1,
contradiction=2; QNLI/RTE entailment=0, not_entailment=1; the others are 0/1 as in the files; STS-B a float.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sltlab.errors import ConfigError, DataError
from sltlab.paths import data_dir as resolve_data_dir
from sltlab.paths import read_utf8

# GLUE's longest fields (QNLI passages) exceed csv's default 128 KiB limit on some platforms.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class TaskInfo:
    """What a GLUE task looks like on disk and how it is scored.

    dir_name: folder under glue/. text_columns: one or two header names of the text fields. label_column:
    header name of the label (None: none). n_outputs: classes, or 1 for the STS-B regression. dev_splits: the
    split(s) reported (MNLI has two). metrics: the official metric names, the first the main one. label_names:
    the string labels in index order (None: labels are already integers / floats). header: False for CoLA's
    headerless train/dev, whose columns are then `positional`. hf_name / hf_columns: the Hugging Face config
    and text columns.
    """

    name: str
    dir_name: str
    text_columns: tuple[str, ...]
    label_column: str | None
    n_outputs: int
    dev_splits: tuple[str, ...]
    metrics: tuple[str, ...]
    label_names: tuple[str, ...] | None = None
    header: bool = True
    positional: tuple[str, ...] = ()
    hf_name: str = ""
    hf_columns: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.n_outputs == 1

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        if self.name == "mnli":
            return ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")
        return ("train", "dev", "test")


TASKS: dict[str, TaskInfo] = {
    "cola": TaskInfo(
        "cola",
        "CoLA",
        ("sentence",),
        "label",
        2,
        ("dev",),
        ("mcc", "accuracy"),
        header=False,
        positional=("source", "label", "orig_label", "sentence"),
        hf_name="cola",
        hf_columns=("sentence",),
    ),
    "sst2": TaskInfo(
        "sst2",
        "SST-2",
        ("sentence",),
        "label",
        2,
        ("dev",),
        ("accuracy",),
        hf_name="sst2",
        hf_columns=("sentence",),
    ),
    "mrpc": TaskInfo(
        "mrpc",
        "MRPC",
        ("#1 String", "#2 String"),
        "Quality",
        2,
        ("dev",),
        ("f1", "accuracy"),
        hf_name="mrpc",
        hf_columns=("sentence1", "sentence2"),
    ),
    "stsb": TaskInfo(
        "stsb",
        "STS-B",
        ("sentence1", "sentence2"),
        "score",
        1,
        ("dev",),
        ("spearman", "pearson"),
        hf_name="stsb",
        hf_columns=("sentence1", "sentence2"),
    ),
    "qqp": TaskInfo(
        "qqp",
        "QQP",
        ("question1", "question2"),
        "is_duplicate",
        2,
        ("dev",),
        ("f1", "accuracy"),
        hf_name="qqp",
        hf_columns=("question1", "question2"),
    ),
    "mnli": TaskInfo(
        "mnli",
        "MNLI",
        ("sentence1", "sentence2"),
        "gold_label",
        3,
        ("dev_matched", "dev_mismatched"),
        ("accuracy_matched", "accuracy_mismatched"),
        label_names=("entailment", "neutral", "contradiction"),
        hf_name="mnli",
        hf_columns=("premise", "hypothesis"),
    ),
    "qnli": TaskInfo(
        "qnli",
        "QNLI",
        ("question", "sentence"),
        "label",
        2,
        ("dev",),
        ("accuracy",),
        label_names=("entailment", "not_entailment"),
        hf_name="qnli",
        hf_columns=("question", "sentence"),
    ),
    "rte": TaskInfo(
        "rte",
        "RTE",
        ("sentence1", "sentence2"),
        "label",
        2,
        ("dev",),
        ("accuracy",),
        label_names=("entailment", "not_entailment"),
        hf_name="rte",
        hf_columns=("sentence1", "sentence2"),
    ),
    "wnli": TaskInfo(
        "wnli",
        "WNLI",
        ("sentence1", "sentence2"),
        "label",
        2,
        ("dev",),
        ("accuracy",),
        hf_name="wnli",
        hf_columns=("sentence1", "sentence2"),
    ),
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "sts": "stsb", "sst": "sst2"}
_SPLIT_ALIASES = {
    "validation": "dev",
    "valid": "dev",
    "val": "dev",
    "validation_matched": "dev_matched",
    "validation_mismatched": "dev_mismatched",
}


@dataclass
class GlueSplit:
    """One split of one task. texts_b is None for single-sentence tasks; labels is None for unlabelled test
    sets."""

    task: str
    split: str
    texts_a: list[str]
    texts_b: list[str] | None
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.texts_a)

    def subset(self, index: np.ndarray | list[int]) -> GlueSplit:
        """The rows at `index` (e.g. a seeded subsample of a large training set)."""
        idx = [int(i) for i in index]
        return GlueSplit(
            self.task,
            self.split,
            [self.texts_a[i] for i in idx],
            None if self.texts_b is None else [self.texts_b[i] for i in idx],
            None if self.labels is None else self.labels[np.asarray(idx, dtype=np.int64)],
        )


def get_task(task: str) -> TaskInfo:
    """The TaskInfo for a task name (case-insensitive; 'SST-2' and 'sst2' both work)."""
    key = str(task).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ConfigError("task", f"unknown GLUE task {task!r}", ", ".join(TASKS))
    return TASKS[key]


def normalise_split(info: TaskInfo, split: str) -> str:
    """Map 'validation'/'dev' to the task's file name; for MNLI 'dev' means dev_matched and 'test'
    test_matched."""
    s = _SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())
    if info.name == "mnli" and s in ("dev", "test"):
        s = f"{s}_matched"
    if s not in info.splits:
        raise ConfigError("split", f"task {info.name} has no split {split!r}", ", ".join(info.splits))
    return s


def glue_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds CoLA/, SST-2/, ...: DATA/glue, or DATA itself when it already is that folder."""
    root = resolve_data_dir(data_dir)
    assert root is not None
    if (root / "glue").is_dir():
        return root / "glue"
    if any((root / info.dir_name).is_dir() for info in TASKS.values()):
        return root
    return root / "glue"


def _expected_layout(info: TaskInfo, root: Path) -> str:
    files = ",".join(info.splits)
    return (
        f"expected {root}/{info.dir_name}/{{{files}}}.tsv (the layout of the official GLUE download script); "
        "pass --data-dir DIR or set SLTLAB_DATA=DIR where DIR holds glue/, or use --source hf with a network"
    )


# Labels are ASCII numbers: Python's int() and float() also read "1_0", "١" (an Arabic-Indic one), "nan" and "inf".
_INT_LABEL = re.compile(r"[0-9]+", re.ASCII)
_FLOAT_LABEL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
SCORE_RANGE = (0.0, 5.0)  # STS-B's similarity scores


def _parse_label(info: TaskInfo, raw: str, path: Path, lineno: int) -> float | int:
    raw = raw.strip()
    try:
        if info.is_regression:
            if not _FLOAT_LABEL.fullmatch(raw):
                raise ValueError(raw)
            score = float(raw)
            lo, hi = SCORE_RANGE
            if not lo <= score <= hi:  # also an overflow to inf
                raise DataError(f"{path}, line {lineno}: score {raw} is outside [{lo:g}, {hi:g}] for {info.name}")
            return score
        if info.label_names is not None:
            return info.label_names.index(raw)
        if not _INT_LABEL.fullmatch(raw):
            raise ValueError(raw)
        value = int(raw)
    except ValueError:
        accepts = "a number in [0, 5]" if info.is_regression else " | ".join(info.label_names or ("0", "1"))
        raise DataError(
            f"{path}, line {lineno}: bad label {raw!r} for {info.name} (expected {accepts})"
        ) from None
    if not 0 <= value < info.n_outputs:
        raise DataError(
            f"{path}, line {lineno}: label {value} out of range for {info.name} "
            f"(expected 0..{info.n_outputs - 1})"
        )
    return value


def _read_tsv(info: TaskInfo, path: Path, split: str, limit: int | None) -> GlueSplit:
    texts_a: list[str] = []
    texts_b: list[str] = []
    labels: list[float | int] = []
    # Decoded whole first, so a byte that is not UTF-8 is reported with its line instead of a bare UnicodeDecodeError.
    with io.StringIO(read_utf8(path, encoding="utf-8-sig"), newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        # CoLA's test file has a header (index, sentence) although its train/dev files do not.
        has_header = info.header or split.startswith("test")
        if has_header:
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataError(f"{path} is empty; re-download the GLUE data") from None
        else:
            header = list(info.positional)
        twice = sorted({h for h in header if header.count(h) > 1})
        if has_header and twice:
            raise DataError(f"{path}, line 1: column {twice[0]!r} appears more than once in the header; which one "
                            "holds the data is ambiguous")
        text_cols = ("sentence",) if (info.name == "cola" and has_header) else info.text_columns
        missing = [c for c in text_cols if c not in header]
        if missing:
            raise DataError(
                f"{path}, line 1: header has no column {missing[0]!r} (found {header}); "
                f"is this the {info.dir_name} file of the standard GLUE layout?"
            )
        idx = [header.index(c) for c in text_cols]
        lab_idx = header.index(info.label_column) if info.label_column in header else None
        if lab_idx is None and not split.startswith("test"):
            raise DataError(
                f"{path}, line 1: header has no label column {info.label_column!r} (found {header})"
            )
        # Every row has exactly the header's fields: a row with more is a shifted or merged line whose columns
        # would be read as the wrong fields, one with fewer is truncated.
        need = len(header)
        first_line = 2 if has_header else 1
        for lineno, row in enumerate(reader, start=first_line):
            if limit is not None and len(texts_a) >= limit:
                break
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a trailing blank line
            if len(row) != need:
                raise DataError(
                    f"{path}, line {lineno}: expected {need} tab-separated fields (as the {info.dir_name} layout has), "
                    f"found {len(row)}; the file is truncated, has a stray tab, or is not in the GLUE layout"
                )
            texts_a.append(row[idx[0]])
            if len(idx) == 2:
                texts_b.append(row[idx[1]])
            if lab_idx is not None:
                labels.append(_parse_label(info, row[lab_idx], path, lineno))
    if not texts_a:
        raise DataError(f"{path} has {'a header but ' if has_header else ''}no rows; re-download the GLUE data")
    lab: np.ndarray | None = None
    if lab_idx is not None:
        lab = np.asarray(labels, dtype=np.float32 if info.is_regression else np.int64)
    return GlueSplit(info.name, split, texts_a, texts_b if info.is_pair else None, lab)


def _load_hf(info: TaskInfo, split: str, limit: int | None) -> GlueSplit:
    """Load through Hugging Face `datasets` (needs the network or its cache; `pip install sltlab[hub]`)."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError("--source hf needs the `datasets` package: pip install 'sltlab[hub]'") from None
    hf_split = split.replace("dev", "validation")
    try:
        ds = datasets.load_dataset("nyu-mll/glue", info.hf_name, split=hf_split)
    except Exception as err:  # noqa: BLE001 - network, cache and hub errors have many types
        raise DataError(
            f"cannot load nyu-mll/glue/{info.hf_name} split {hf_split} from Hugging Face: {err}; "
            "use a local copy with --data-dir instead"
        ) from err
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    cols = info.hf_columns
    texts_a = [str(t) for t in ds[cols[0]]]
    texts_b = [str(t) for t in ds[cols[1]]] if len(cols) == 2 else None
    raw = np.asarray(ds["label"])
    labels: np.ndarray | None
    if split.startswith("test") or (raw.size and (raw < 0).all()):
        labels = None  # the hub marks unlabelled test rows with -1
    else:
        labels = raw.astype(np.float32 if info.is_regression else np.int64)
    return GlueSplit(info.name, split, texts_a, texts_b, labels)


def split_files(task: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The local files a cell of `task` reads (train, then the dev splits): what its data fingerprint covers."""
    info = get_task(task)
    root = glue_root(data_dir)
    return [root / info.dir_name / f"{split}.tsv" for split in ("train", *info.dev_splits)]


def load_split(
    task: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    source: str = "local",
) -> GlueSplit:
    """Read one split of one GLUE task.

    task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli. split: train, dev, test (MNLI: dev_matched,
    dev_mismatched, test_matched, test_mismatched; 'dev' means dev_matched). limit: keep the first `limit`
    rows. source: 'local' (the GLUE folder under the data dir) or 'hf' (Hugging Face nyu-mll/glue, needs a
    network).
    """
    info = get_task(task)
    split = normalise_split(info, split)
    if limit is not None and limit < 1:
        raise ConfigError("limit", f"{limit} must be at least 1", "a positive integer or omitted")
    if source == "hf":
        return _load_hf(info, split, limit)
    if source != "local":
        raise ConfigError("source", f"unknown data source {source!r}", "local | hf")
    root = glue_root(data_dir)
    task_dir = root / info.dir_name
    if not task_dir.is_dir():
        raise DataError(f"GLUE task directory {task_dir} not found; " + _expected_layout(info, root))
    path = task_dir / f"{split}.tsv"
    if not path.is_file():
        raise DataError(f"GLUE file {path} not found; " + _expected_layout(info, root))
    return _read_tsv(info, path, split, limit)
