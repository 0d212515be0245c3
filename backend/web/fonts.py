"""The pages' Chinese web font: the Simplified Chinese face of the certificate's Noto Sans CJK, served by us.

A police workstation, a counter PC or a headless browser may have no Chinese font: the pages would show boxes.
The project already installs Noto Sans CJK (a font collection) for the certificate PDFs; its Simplified Chinese
face, taken out of the collection as it is (no subsetting: a name typed at the counter may use any character), is
one OpenType font browsers load by @font-face ("Bikeguard CJK" in pages.css and live.css). Its unicode-range keeps
it to Chinese, and its src names the usual system Chinese fonts first (local()), so a browser that has one (every
phone, Windows, macOS) uses it and never downloads ours.

The family comes first in every font stack: Chromium, shaping Chinese with a fallback font while ours loads, keeps
that shaping (boxes) for the same words on the next page; a loading first family is never shaped with a fallback.
"""

from __future__ import annotations

import io
from functools import cache

from fontTools.ttLib import TTFont

from backend.certificates import FONT_FACE, font_path
from maps.basemap import CHINESE_FONT_URL

FONT_URL = CHINESE_FONT_URL


@cache
def chinese_font() -> bytes:
    """The Simplified Chinese face as a standalone OpenType font (about 16 MB; made once, in about a second)."""
    font = TTFont(str(font_path()), fontNumber=FONT_FACE, lazy=True)  # tables are copied, not rebuilt
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()
