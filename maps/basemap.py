"""An empty folium map wired to local Leaflet assets, with an optional tile layer."""

from __future__ import annotations

from collections.abc import Iterable

import folium
from branca.element import Element, Figure

from maps.assets import DEFAULT_BASE, use_local_assets

DEFAULT_CENTRE = (0.0, 0.0)
NO_TILES_BACKGROUND = "#e9edf1"
"""Map background when no tile server is configured: a quiet grey that lets roads and stations stand out."""
CHINESE_FONT_URL = "/assets/fonts/bikeguard-cjk-sc.otf"
"""Where the backend serves the Chinese web font (backend/web/fonts.py)."""
CHINESE_FONT_FACE = (
    # A system Chinese font when there is one (no download); ours otherwise. First in every font stack: Chromium keeps
    # a fallback's shaping of Chinese (boxes) for the next page when the first family is not a loading web font.
    '@font-face { font-family: "Bikeguard CJK"; font-display: swap;'
    ' src: local("PingFang SC"), local("Microsoft YaHei"), local("Noto Sans CJK SC"), local("NotoSansCJKsc-Regular"),'
    ' local("Source Han Sans SC"), local("Source Han Sans CN"),'
    f' url("{CHINESE_FONT_URL}") format("opentype");'
    " unicode-range: U+2E80-2FFF, U+3000-303F, U+3100-312F, U+31A0-31BF, U+3400-4DBF, U+4E00-9FFF, U+F900-FAFF,"
    " U+FF00-FFEF; }"
)
MAP_FONT = '"Bikeguard CJK", system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif'
"""The maps' words, Chinese ones included, in every map page."""


def base_map(
    *,
    assets_base: str = DEFAULT_BASE,
    tile_url: str | None = None,
    tile_attribution: str | None = None,
) -> folium.Map:
    """A folium map with no CDN references; tiles only from `tile_url` (e.g. the police tile server)."""
    m = folium.Map(location=DEFAULT_CENTRE, zoom_start=14, tiles=None, control_scale=True, zoom_snap=0.25)
    use_local_assets(m, assets_base)
    if tile_url:
        folium.TileLayer(
            tiles=tile_url,
            attr=tile_attribution or "Base map: local tile server",
            name="Base map",
            max_zoom=20,
            control=False,
        ).add_to(m)
    add_to_head(
        m,
        "bikeguard_base_style",
        f"<style>{CHINESE_FONT_FACE}"
        f" .folium-map.leaflet-container {{ background: {NO_TILES_BACKGROUND}; }}"
        f" .leaflet-container, .leaflet-tooltip {{ font-family: {MAP_FONT}; }}</style>"
        '<link rel="icon" href="data:,">',
    )
    return m


def add_to_head(element: Element, name: str, html: str) -> None:
    """Put raw HTML (a <style>, a data: link) into the <head> of the page holding `element`, once per name."""
    figure = element.get_root()
    if not isinstance(figure, Figure):
        raise TypeError(f"{element.get_name()} is not on a map yet: add it to one first")
    figure.header.add_child(Element(html), name=name)


def fit_to(m: folium.Map, points: Iterable[tuple[float, float]], padding_px: int = 40) -> None:
    """Fit the view to (lat, lon) points; a single point gets a street-level zoom around it."""
    pts = list(points)
    if not pts:
        return
    lats = [p[0] for p in pts]
    lons = [p[1] for p in pts]
    south, north, west, east = min(lats), max(lats), min(lons), max(lons)
    if north - south < 1e-4 and east - west < 1e-4:
        south, north, west, east = south - 0.003, north + 0.003, west - 0.004, east + 0.004
    m.location = [(south + north) / 2, (west + east) / 2]
    m.fit_bounds([[south, west], [north, east]], padding=(padding_px, padding_px))
