import csv
import io
import signal

import pytest

import sltlab.runs.store as store_mod
from sltlab.cli import main
from sltlab.runs.store import Store


def _store(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as s:
        a = s.start("approx", {"variant": "none", "width": 8}, 0)
        s.finish(a, {"rel_error": 0.5, "per_block_rel_error": [0.5]})
        b = s.start("glue", {"task": "sst2", "method": "dense"}, 1)
        s.fail(b, "boom")
    return path, a


def test_list_show_export(tmp_path, capsys):
    path, a = _store(tmp_path)
    assert main(["runs", "list", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert a in out and "rel_error=0.5" in out and "glue" not in out
    assert main(["runs", "list", "--store", str(path), "--status", "all"]) == 0
    assert "failed" in capsys.readouterr().out
    assert main(["runs", "show", a[:10], "--store", str(path)]) == 0
    assert '"rel_error": 0.5' in capsys.readouterr().out
    assert main(["runs", "export", "--kind", "approx", "--store", str(path)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["config.width"] == "8" and rows[0]["metrics.rel_error"] == "0.5"


def test_missing_store_and_unknown_run(tmp_path, capsys):
    assert main(["runs", "list", "--store", str(tmp_path / "nope.db")]) == 2
    assert "no store" in capsys.readouterr().err
    path, _ = _store(tmp_path)
    assert main(["runs", "show", "approx-ffff", "--store", str(path)]) == 2
    assert "no run" in capsys.readouterr().err


@pytest.fixture
def sigterm_default():
    # Whatever set SIGTERM before (Ray's driver installs a handler when a Ray test ran earlier in this process), each
    # case starts from the default action and leaves the process as it found it.
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, before)


def test_sigterm_stops_a_command_like_ctrl_c_and_main_restores_the_handler(tmp_path, capsys, monkeypatch,
                                                                            sigterm_default):
    path, _ = _store(tmp_path)

    def terminated_midway(*args, **kwargs):
        # what SIGTERM would run here (a real signal to this process is sent in test_executor.py: a regression
        # there kills a subprocess, not the test run)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), "main() set no SIGTERM handler"
        handler(signal.SIGTERM, None)
        raise AssertionError("the SIGTERM handler did not stop the command")

    monkeypatch.setattr(store_mod, "Store", terminated_midway)
    assert main(["runs", "list", "--store", str(path)]) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_sigterm_the_parent_ignores_stays_ignored(tmp_path, capsys, sigterm_default):
    path, _ = _store(tmp_path)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seen = []
    real_store = store_mod.Store

    def spy(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGTERM))
        return real_store(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "Store", spy)
        assert main(["runs", "list", "--store", str(path)]) == 0
    # the store is opened (to check it is one, then to read it) with SIGTERM still ignored
    assert seen and set(seen) == {signal.SIG_IGN} and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_sigterm_turned_into_a_plain_keyboardinterrupt_still_exits_143(tmp_path, capsys, monkeypatch,
                                                                         sigterm_default):
    path, _ = _store(tmp_path)

    def like_ray_wait(*args, **kwargs):  # ray.wait re-raises a signal handler's exception as KeyboardInterrupt
        try:
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None

    monkeypatch.setattr(store_mod, "Store", like_ray_wait)
    assert main(["runs", "list", "--store", str(path)]) == 143
    # and a Ctrl-C in the next command of the same process is a Ctrl-C again
    monkeypatch.setattr(store_mod, "Store", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["runs", "list", "--store", str(path)]) == 130
    assert "interrupted" in capsys.readouterr().err
