"""Leaflet comes from the installed package; folium's CDN links are gone."""

from __future__ import annotations

import folium

from maps.assets import DEFAULT_BASE, LEAFLET_DIR, external_references, use_local_assets
from maps.basemap import base_map


def test_leaflet_dir_holds_leaflet_js_css_and_images() -> None:
    assert (LEAFLET_DIR / "leaflet.js").stat().st_size > 100_000
    assert (LEAFLET_DIR / "leaflet.css").is_file()
    assert (LEAFLET_DIR / "images" / "layers.png").is_file()
    assert (LEAFLET_DIR / "images" / "marker-icon.png").is_file()


def test_local_assets_leave_only_leaflet_from_the_base_path() -> None:
    m = use_local_assets(folium.Map(tiles=None))
    html = m.get_root().render()

    assert external_references(html) == []
    assert f'<script src="{DEFAULT_BASE}leaflet.js"></script>' in html
    assert f'href="{DEFAULT_BASE}leaflet.css"' in html
    for dropped in ("jquery", "bootstrap", "awesome-markers", "fontawesome", "glyphicons"):
        assert dropped not in html.lower()


def test_base_path_gets_its_trailing_slash() -> None:
    html = use_local_assets(folium.Map(tiles=None), base="/static/leaflet").get_root().render()

    assert '<script src="/static/leaflet/leaflet.js"></script>' in html


def test_local_assets_do_not_change_other_folium_maps() -> None:
    use_local_assets(folium.Map(tiles=None))

    assert any("jquery" in url for _, url in folium.Map().default_js)


def test_external_references_sees_scripts_styles_and_css_urls() -> None:
    html = (
        '<script src="https://cdn.example/x.js"></script><link rel="stylesheet" href=//cdn.example/y.css>'
        "<style>@import 'http://fonts.example/f.css'; a { background: url(https://img.example/i.png) }"
        "</style>"
        '<script src="/assets/leaflet/leaflet.js"></script>'
    )

    assert external_references(html) == [
        "https://cdn.example/x.js",
        "//cdn.example/y.css",
        "http://fonts.example/f.css",
        "https://img.example/i.png",
    ]


def test_base_map_has_no_tiles_unless_a_tile_url_is_given() -> None:
    bare = base_map().get_root().render()
    tiled = (
        base_map(tile_url="http://tiles.police.lan/{z}/{x}/{y}.png", tile_attribution="City GIS").get_root().render()
    )

    assert "L.tileLayer" not in bare
    assert "L.tileLayer" in tiled
    assert "http://tiles.police.lan/{z}/{x}/{y}.png" in tiled
    assert "City GIS" in tiled
