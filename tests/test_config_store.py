
import multiprocessing as mp
import sqlite3

import pytest

from sltlab.errors import ConfigError, StoreError
from sltlab.runs.config import check_range, from_dict, load_toml
from sltlab.runs.store import Store, atomic_write_text, make_run_id
from sltlab.tasks.approx import ApproxStudy
from sltlab.tickets.search import SearchConfig


def test_from_dict_builds_nested_typed_config():
    study = from_dict(ApproxStudy, {"widths": [8, 16], "search": {"steps": 5, "lr": 1}}, prefix="study")
    assert study.widths == (8, 16)
    assert isinstance(study.search, SearchConfig) and study.search.lr == 1.0 and isinstance(study.search.lr, float)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"widths": "8"}, "study.widths"),
        ({"widths": [8, "x"]}, "study.widths[1]"),
        ({"search": {"lr": "fast"}}, "study.search.lr"),
        ({"search": {"stepz": 3}}, "study.search.stepz"),
        ({"module": "conv"}, "study.module"),
        ({"keep": 1.5}, "study.keep"),
        ({"keep": 0.0}, "study.keep"),
        ({"variants": ["pre-bn"]}, "study.variants[0]"),
        ({"widths": [4, 16]}, "study.widths[0]"),
    ],
)
def test_bad_fields_name_themselves(data, field):
    with pytest.raises(ConfigError) as err:
        from_dict(ApproxStudy, data, prefix="study")
    assert f"'{field}'" in str(err.value)


def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [1,\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)


def test_check_range():
    check_range("f", 1.0, 0.0, 1.0, lo_open=True)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        check_range("f", 0.0, 0.0, 1.0, lo_open=True)


def test_store_resume_and_lookup(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as s:
        rid = s.start("approx", {"width": 8}, seed=0)
        assert rid == make_run_id("approx", {"width": 8}, 0)
        assert not s.is_finished(rid)
        s.finish(rid, {"rel_error": 0.5}, {"s": 1.0})
        other = s.start("approx", {"width": 16}, seed=0)
        s.fail(other, "boom")
    with Store(path) as s:  # a new process sees the finished result
        assert s.is_finished(rid)
        assert s.get(rid[:12]).metrics == {"rel_error": 0.5}
        assert [r.run_id for r in s.runs("approx")] == [rid]
        assert s.runs("approx", status="failed")[0].error == "boom"
        # restarting a finished run does not reset it
        s.start("approx", {"width": 8}, seed=0)
        assert s.is_finished(rid)
        with pytest.raises(StoreError, match="no run"):
            s.get("approx-zzzz")
        with pytest.raises(StoreError, match="ambiguous"):
            s.get("approx-")


def test_store_rejects_non_sqlite(tmp_path):
    p = tmp_path / "x.db"
    p.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError):
        Store(p).runs()


def _open_after(barrier, path) -> None:
    barrier.wait()
    Store(path).close()


def test_sweeps_opening_one_new_store_together_all_succeed(tmp_path):
    # Two sweeps started at once on a new store once failed with "duplicate column name" or "database is locked".
    ctx = mp.get_context("fork")
    for i in range(6):
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_after, args=(barrier, tmp_path / f"{i}.db")) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 4


def test_old_store_is_migrated_in_place_and_opening_does_not_wait_on_a_writer(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, seed INTEGER,"
                 " config TEXT NOT NULL, metrics TEXT, timings TEXT, error TEXT, code_version TEXT, host TEXT,"
                 " started REAL, finished REAL)")
    conn.execute("INSERT INTO runs(run_id, kind, status, seed, config, metrics, timings) VALUES "
                 "('approx-0123456789ab', 'approx', 'finished', 0, '{}', '{\"rel_error\": 0.25}', '{}')")
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert s.get("approx-0123456789ab").metrics == {"rel_error": 0.25}
        assert s.claim("approx", {"width": 8}, seed=0)[1] == "claimed"
    # up to date: opening takes no write lock, so it does not wait on a sweep that holds one
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with Store(path) as s:
            assert s.get("approx-0123456789ab").status == "finished"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "a" / "f.txt", "hi")
    assert (tmp_path / "a" / "f.txt").read_text() == "hi"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.txt"]
