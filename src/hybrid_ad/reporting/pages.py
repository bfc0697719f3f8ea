"""Small self-contained HTML pages for analysts (review queue, drift): escaped, offline.

Every value that reaches a page goes through `escape`, and plots are embedded as PNG data URIs
(matplotlib `Figure`, Agg, no pyplot state), so a page can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from hybrid_ad.artifacts import atomic_write_text

DPI = 100
CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "tr.flag td{background:#fde2e2}.note{color:#555}ul{margin:0;padding-left:1.2em}"
    "figure{margin:1em 0}img{max-width:100%}"
)


def escape(value: Any) -> str:
    """Text safe inside HTML elements and attribute values."""
    return html.escape(str(value), quote=True)


def table(header: list[str], rows: list[list[Any]], flagged: list[bool] | None = None) -> str:
    """An HTML table of plain values, every cell escaped; numbers right-aligned."""
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = []
    for index, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{escape(cell)}</td>'
            if isinstance(cell, int | float) and not isinstance(cell, bool)
            else f"<td>{escape(cell)}</td>"
            for cell in row
        )
        marked = ' class="flag"' if flagged is not None and flagged[index] else ""
        body.append(f"<tr{marked}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure_uri(figure: Figure) -> str:
    """The figure as a PNG data URI, for an `<img src>`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_page(path: str | Path, title: str, body: str) -> None:
    """Write one HTML page atomically; `body` must already be escaped HTML."""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>{body}</body></html>\n"
    )
    atomic_write_text(path, page)
