"""Imports run downwards only: commands -> report -> tasks -> analysis -> tickets -> nn -> runs -> errors.

Walks every module of src/sltlab, reads its imports (module level and inside functions) with `ast`, and fails on
any import of a higher layer. A deferred import inside a function is still a dependency, so it counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sltlab"
# Lower number = lower layer. Top-level modules (errors, paths) are the ground floor; cli sits on top.
LAYERS = {"errors": 0, "paths": 0, "version": 0, "runs": 1, "nn": 2, "tickets": 3, "analysis": 4, "tasks": 5,
          "report": 6,
          "commands": 7, "cli": 8}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "sltlab":
        return None
    if len(parts) == 1:
        return 8  # the package root re-exports the public API (load_ticket, save_ticket): above everything
    return LAYERS.get(parts[1])


def imports(path: Path) -> list[tuple[int, str]]:
    return imports_of(path.read_text(encoding="utf-8"), ["sltlab", *path.relative_to(SRC).with_suffix("").parts])


def imports_of(text: str, pkg: list[str]) -> list[tuple[int, str]]:
    """(line, module) of every import in `text`, a module at dotted path `pkg` (for relative imports)."""
    tree = ast.parse(text)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = pkg[: len(pkg) - node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "sltlab":  # `from sltlab import tasks` / `from .. import errors`: the names are modules
                out += [(node.lineno, f"sltlab.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return out


def violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts == ("__init__.py",):
            continue
        own = LAYERS.get(rel.parts[0].removesuffix(".py"))
        if own is None:
            continue
        for line, mod in imports(path):
            other = layer_of(mod)
            if other is not None and other > own:
                bad.append(f"{rel}:{line} imports {mod} (layer {other} > {own})")
    return bad


def test_imports_run_downwards_only():
    bad = violations()
    assert not bad, "imports that run up the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("src,upward", [
    ("from sltlab.tasks import approx", True),
    ("import sltlab.commands.glue", True),
    ("from sltlab.runs import store", False),
    ("from .. import errors", False),
])
def test_the_check_catches_an_upward_import(src, upward):
    """The walker itself: an import from tasks/commands in a tickets module is flagged, downward ones are not."""
    ((_, mod),) = imports_of(f"def f():\n    {src}\n", ["sltlab", "tickets", "probe"])
    assert (layer_of(mod) > LAYERS["tickets"]) is upward
