"""Small HTML fragments for tooltips and labels, escaped for folium's JavaScript template literals."""

from __future__ import annotations

import html
import json
from datetime import datetime

_TEMPLATE_LITERAL = str.maketrans({"`": "&#96;", "$": "&#36;", "\\": "&#92;"})


def text(value: object) -> str:
    """Escape a value for HTML inside a folium tooltip or label (which lands in a JS template literal)."""
    return html.escape(str(value)).translate(_TEMPLATE_LITERAL)


def script_json(value: object) -> str:
    """JSON that is safe to inline in a <script> element."""
    return (
        json.dumps(value, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def clock(iso: str) -> str:
    """The time of day (HH:MM:SS) of an ISO 8601 timestamp, as written in it."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%H:%M:%S")
    except ValueError:
        return iso
