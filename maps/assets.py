"""Leaflet served from an installed package, so maps render on a network without internet."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import folium

# PyPI django-js-lib-leaflet: Leaflet's dist files as package data of the module js_lib_leaflet (no Django needed).
LEAFLET_DIR: Path = Path(str(resources.files("js_lib_leaflet").joinpath("static", "js_lib_leaflet")))
"""Directory holding leaflet.js, leaflet.css and images/; mount it as static files at the assets base."""

DEFAULT_BASE = "/assets/leaflet/"

_EXTERNAL = re.compile(
    r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?|@import\s+["'])\s*((?:https?:)?//[^"'\s)>]+)""", re.I
)


def use_local_assets(m: folium.Map, base: str = DEFAULT_BASE) -> folium.Map:
    """Make the map load only Leaflet, from `base`; drop folium's jQuery, Bootstrap and awesome-markers."""
    if not base.endswith("/"):
        base += "/"
    # Fresh lists: folium's add_js_link() mutates in place, and the default list is shared by the class.
    m.default_js = [("leaflet", f"{base}leaflet.js")]
    m.default_css = [("leaflet_css", f"{base}leaflet.css")]
    return m


def external_references(html: str) -> list[str]:
    """Every URL on another host that the page refers to (src or href, CSS url(), @import)."""
    return _EXTERNAL.findall(html)


_INLINE_BASE = "bikeguard-inline:/"


def standalone_html(m: folium.Map) -> str:
    """The map as one self-contained HTML file: Leaflet's script, style and images inlined, no server needed."""
    import base64

    use_local_assets(m, _INLINE_BASE)
    html = m.get_root().render()
    js = (LEAFLET_DIR / "leaflet.js").read_text(encoding="utf-8")
    css = (LEAFLET_DIR / "leaflet.css").read_text(encoding="utf-8")
    for image in sorted((LEAFLET_DIR / "images").glob("*.png")):
        data = base64.b64encode(image.read_bytes()).decode()
        css = css.replace(f"images/{image.name}", f"data:image/png;base64,{data}")
    html = re.sub(
        rf'<script src="{re.escape(_INLINE_BASE)}leaflet\.js"></script>', lambda _m: f"<script>{js}</script>", html
    )
    return re.sub(
        rf'<link rel="stylesheet" href="{re.escape(_INLINE_BASE)}leaflet\.css"\s*/?>',
        lambda _m: f"<style>{css}</style>",
        html,
    )
