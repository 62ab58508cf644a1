import csv
import io

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
