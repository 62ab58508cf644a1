"""GLUE loading: the shipped fixtures with the real files' quirks, error messages, tokenisation, and (when
present)
the real ../shared/data row counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sltlab.errors import ConfigError, DataError
from sltlab.paths import data_dir
from sltlab.tasks.glue import TASKS, get_task, load_split
from sltlab.tasks.tokenize import TokenizerSpec, make_encoder, train_tokenizer

FIX = Path(__file__).parent / "fixtures"


def test_cola_has_no_header_and_keeps_literal_quotes():
    train = load_split("cola", "train", FIX)
    assert len(train) == 4  # no row lost to a header
    assert train.texts_a[0].startswith("Our friends won't buy")
    assert train.texts_a[2] == '"Mary said "hi" to John.'
    assert train.labels.tolist() == [1, 0, 1, 0]
    dev = load_split("cola", "dev", FIX)  # no final newline, an unclosed quote on the last line
    assert len(dev) == 3 and dev.texts_a[-1] == 'He said "stop.'
    test = load_split("cola", "test", FIX)  # CoLA's test file does have a header
    assert len(test) == 2 and test.labels is None and test.texts_a[1] == 'The car "honked.'


def test_mrpc_bom_is_stripped_and_pairs_read():
    dev = load_split("mrpc", "dev", FIX)
    assert dev.texts_b is not None and len(dev) == 2
    assert dev.labels.tolist() == [1, 0]
    assert dev.texts_a[1] == 'Magnarelli said Racicot hated "the Iraqi regime.'
    train = load_split("MRPC", "train", FIX)
    assert train.texts_a[0].startswith("Amrozi") and '"the witness"' in train.texts_b[0]


def test_string_labels_and_regression_labels():
    rte = load_split("rte", "dev", FIX)
    assert rte.labels.tolist() == [1, 0]  # not_entailment=1, entailment=0 (the HF convention)
    mnli = load_split("mnli", "dev", FIX)  # 'dev' means dev_matched
    assert mnli.split == "dev_matched" and mnli.labels.tolist() == [1, 0, 2]
    assert load_split("mnli", "dev_mismatched", FIX).labels.tolist() == [1, 0, 2]
    stsb = load_split("sts-b", "validation", FIX)
    assert stsb.labels.dtype == np.float32 and stsb.labels.tolist() == pytest.approx([5.0, 3.8, 0.5])
    qqp = load_split("qqp", "train", FIX)
    assert qqp.labels.tolist() == [0, 1] and qqp.texts_b[1] == "How do you control your horniness?"
    assert load_split("sst2", "dev", FIX, limit=2).labels.tolist() == [1, 0]


def test_every_fixture_task_loads():
    for name, info in TASKS.items():
        split = "dev_matched" if name == "mnli" else "dev"
        s = load_split(name, split, FIX)
        assert len(s) >= 2 and (s.texts_b is None) == (not info.is_pair)


def test_unknown_task_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown GLUE task.*cola, sst2"):
        get_task("squad")


def test_missing_task_dir_names_layout_and_setting(tmp_path):
    (tmp_path / "glue").mkdir()
    with pytest.raises(DataError, match=r"CoLA.*not found.*\{train,dev,test\}\.tsv.*--data-dir.*SLTLAB_DATA"):
        load_split("cola", "train", tmp_path)
    with pytest.raises(DataError, match=r"QNLI/train\.tsv not found"):
        load_split("qnli", "train", FIX)


def test_malformed_row_names_file_and_line(tmp_path):
    d = tmp_path / "glue" / "SST-2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad label row\tmaybe\n")
    with pytest.raises(DataError, match=r"SST-2/train\.tsv, line 3: bad label 'maybe'"):
        load_split("sst2", "train", tmp_path)
    (d / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\ntruncated row\n")
    with pytest.raises(DataError, match=r"dev\.tsv, line 3: expected 2 tab-separated fields"):
        load_split("sst2", "dev", tmp_path)
    (d / "test.tsv").write_text("text\tlabel\n")
    with pytest.raises(ConfigError, match="split"):
        load_split("sst2", "validation_matched", tmp_path)


def test_bad_split_and_source():
    with pytest.raises(ConfigError, match="split"):
        load_split("sst2", "dev_matched", FIX)
    with pytest.raises(ConfigError, match="source"):
        load_split("sst2", "dev", FIX, source="s3")


def test_tokenizer_pairs_cached_and_deterministic(tmp_path):
    texts = ["the cat sat on the mat", "a dog ran in the park", "the cat ran"] * 5
    enc = train_tokenizer(texts, TokenizerSpec(vocab_size=60, min_frequency=1), cache=tmp_path)
    files = list((tmp_path / "tokenizers").glob("*/tokenizer.json"))
    assert len(files) == 1
    again = make_encoder(texts, TokenizerSpec(vocab_size=60, min_frequency=1), cache=tmp_path)
    assert again.fingerprint == enc.fingerprint
    x = enc.encode(["the cat sat"], ["a dog ran"], max_len=12)
    y = again.encode(["the cat sat"], ["a dog ran"], max_len=12)
    assert (x["input_ids"] == y["input_ids"]).all()
    ids = x["input_ids"][0].tolist()
    cls, sep = enc._tok.token_to_id("[CLS]"), enc._tok.token_to_id("[SEP]")
    assert ids[0] == cls and ids.count(sep) == 2  # [CLS] a [SEP] b [SEP]
    n_real = int(x["attention_mask"].sum())
    assert ids[n_real:] == [enc.pad_id] * (12 - n_real)
    short = enc.encode(
        ["the cat sat on the mat the cat sat on the mat"], ["a dog ran in the park"], max_len=8
    )
    assert short["input_ids"].shape == (1, 8) and int(short["attention_mask"].sum()) == 8


def _real_glue() -> Path:
    root = data_dir(required=False)
    if root is None or not (root / "glue" / "SST-2" / "train.tsv").is_file():
        pytest.skip("../shared/data/glue is not present")
    return root


def test_real_row_counts():
    root = _real_glue()
    assert len(load_split("sst2", "train", root)) == 67349
    assert len(load_split("sst2", "dev", root)) == 872
    assert len(load_split("cola", "train", root)) == 8551
    assert len(load_split("cola", "dev", root)) == 1043
    assert len(load_split("mrpc", "train", root)) == 3668
    assert len(load_split("mrpc", "dev", root)) == 408
    assert len(load_split("rte", "dev", root)) == 277
    assert len(load_split("stsb", "dev", root)) == 1500
