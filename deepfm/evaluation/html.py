"""Static HTML pages that embed their PNGs by relative path, so a report folder renders offline anywhere."""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from deepfm.core import fs

Column = tuple[str, str, Callable[[Any], str]]  # key, header, formatter

CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}tr.hi td{background:#fff3c4}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
.note{background:#f7f7f7;padding:0.8em;border-left:4px solid #888}"""


def fmt(digits: int) -> Callable[[Any], str]:
    """A formatter printing numbers with ``digits`` decimals and missing values as 'n/a'."""

    def format_value(value: Any) -> str:
        if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
            return "n/a"
        return f"{value:,.{digits}f}" if isinstance(value, numbers.Real) else str(value)

    return format_value


def html_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[Column], highlight: Callable[[dict], bool] = lambda r: False
) -> str:
    """Rows as an HTML table, cells escaped and formatted per column; ``highlight`` rows stand out."""
    head = "".join(f"<th>{html.escape(header)}</th>" for _, header, _ in columns)
    body = "".join(
        f"<tr{' class=hi' if highlight(row) else ''}>"
        + "".join(f"<td>{html.escape(render(row.get(key)))}</td>" for key, _, render in columns)
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_image(path: fs.PathLike, page_dir: fs.PathLike, alt: str) -> str:
    """An ``<img>`` with a path relative to the page, so the folder renders offline anywhere."""
    relative = str(path).removeprefix(str(page_dir).rstrip("/") + "/")
    return f'<img src="{html.escape(relative)}" alt="{html.escape(alt)}">'


def write_html(path: fs.PathLike, title: str, parts: Sequence[str]) -> str:
    """A self-contained page: ``parts`` are HTML fragments, in order."""
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )
    return fs.put_text(path, page)
