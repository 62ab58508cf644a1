"""The pieces a report section is made of: tables, paragraphs and notes, and the figures written beside the
page."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sltlab.runs.store import atomic_write_bytes


def finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return "n/a" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if math.isfinite(x) else "n/a"
    return str(x)


@dataclass
class Table:
    """Rows of cells; None rows (a test that could not run) are dropped, and `empty` is shown instead of a
    table with no rows."""

    headers: list[str]
    rows: list[list[Any] | None]
    empty: str = "no rows"
    # the first `merge` columns are shown only where they change from the row above (a setting label is not
    # repeated on every row of its block)
    merge: int = 0
    # an HTML id, so a page (or a test) can find the table
    html_id: str = ""

    def __post_init__(self) -> None:
        self.rows = [r for r in self.rows if r is not None]

    def shown(self) -> list[list[str]]:
        out: list[list[str]] = []
        prev: list[str] = []
        for r in self.rows:
            cells = [fmt(c) for c in r]
            row = list(cells)
            for i in range(min(self.merge, len(cells))):
                if prev[: i + 1] == cells[: i + 1]:
                    row[i] = ""
                else:
                    break
            out.append(row)
            prev = cells
        return out

    def md(self) -> str:
        if not self.rows:
            return f"_({self.empty})_\n"
        out = "| " + " | ".join(self.headers) + " |\n|" + "---|" * len(self.headers) + "\n"
        for r in self.shown():
            out += "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |\n"
        return out

    def html(self) -> str:
        if not self.rows:
            return f"<p><em>({html.escape(self.empty)})</em></p>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.shown())
        ident = f" id='{html.escape(self.html_id)}'" if self.html_id else ""
        return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Section:
    """A titled list of blocks: ('p', text), ('table', Table), ('figure', (file name, caption)), ('note',
    text)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    # detail, not the answer: shown folded (<details>) in the HTML, after the sections that are not
    collapsed: bool = False

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def table(self, t: Table) -> None:
        self.blocks.append(("table", t))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("figure", (name, caption)))


class Figures:
    """Writes PNGs under out/figures and remembers their bytes for the HTML. `out` is the build's staging folder
    (sltlab.runs.io.publish moves them into place); figures of an earlier build are removed by its manifest there,
    never by a pattern, so PNGs a user keeps in the folder stay."""

    def __init__(self, out: Path):
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, bytes] = {}

    def add(self, name: str, png: bytes) -> str:
        atomic_write_bytes(self.dir / name, png)
        self.data[name] = png
        return name
