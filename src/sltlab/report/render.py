"""The report's sections as Markdown and as one self-contained HTML page (inline CSS, figures as data URIs),
and the summary as plain JSON values."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from sltlab.report.blocks import Figures, Section

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}
.note{background:#fff7e0;border-left:4px solid #e0b000;padding:.4em .8em;font-size:14px}
details{margin:.6em 0;border-top:1px solid #ddd}
summary{cursor:pointer;font-size:1.25em;font-weight:600;padding:.4em 0}"""


def _inline_md(text: str) -> str:
    """The two Markdown inline forms the report uses (**bold**, `code`) as HTML, after escaping."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _blocks(sec: Section, figures: Figures, md: list[str], body: list[str]) -> None:
    for kind, val in sec.blocks:
        if kind == "p":
            md.append(val + "\n")
            body.append(f"<p>{_inline_md(val)}</p>")
        elif kind == "note":
            md.append(f"> {val}\n")
            body.append(f"<p class='note'>{_inline_md(val)}</p>")
        elif kind == "table":
            md.append(val.md())
            body.append(val.html())
        elif kind == "figure":
            name, cap = val
            md.append(f"![{cap}](figures/{name})\n")
            b64 = base64.b64encode(figures.data[name]).decode()
            body.append(
                f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{html.escape(cap)} (<a href='figures/{name}'>png</a>)</figcaption></figure>"
            )


def render(sections: Sequence[Section], figures: Figures, title: str) -> tuple[str, str]:
    """Markdown and HTML of the sections: the open ones first (the answer), then the collapsed ones, each folded
    in a <details> element (their order otherwise kept)."""
    md = [f"# {title}\n"]
    body = [f"<h1>{html.escape(title)}</h1>"]
    ordered = [s for s in sections if not s.collapsed] + [s for s in sections if s.collapsed]
    for sec in ordered:
        md.append(f"\n## {sec.title}\n")
        if sec.collapsed:
            body.append(f"<details><summary>{html.escape(sec.title)}</summary>")
        else:
            body.append(f"<h2>{html.escape(sec.title)}</h2>")
        _blocks(sec, figures, md, body)
        if sec.collapsed:
            body.append("</details>")
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    return "\n".join(md), page


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    return obj
