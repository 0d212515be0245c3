"""Trajectory replay: the one script and style (replay.js, replay.css) that draw a bike's route and play it back,
used by the live map and the standalone trajectory map."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import folium
from branca.element import MacroElement
from folium.template import Template

from maps import markup
from maps.words import words


def source(name: str) -> str:
    """The text of a file shipped in the maps package (a script or a style sheet)."""
    return resources.files("maps").joinpath(name).read_text(encoding="utf-8")


def script() -> str:
    """replay.js: defines bikeguardReplay(map, options)."""
    return source("replay.js")


def style() -> str:
    """replay.css: the route, the moving marker and the player bar."""
    return source("replay.css")


class Replay(MacroElement):
    """A trajectory summary ({stops, legs}, as the API answers) drawn on a folium map, ready to play."""

    _template = Template(
        """
        {% macro header(this, kwargs) %}<style>{{ this.css }}</style>{% endmacro %}
        {% macro script(this, kwargs) %}
            {{ this.code }}
            var {{ this.get_name() }} = bikeguardReplay({{ this.map_name }}, {{ this.setup }});
            {{ this.get_name() }}.load({{ this.summary }}, {{ this.options }});
        {% endmacro %}
        """
    )

    def __init__(self, m: folium.Map, summary: Mapping[str, Any], title: str, lang: str = "en", **options: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # branca's MacroElement is untyped
        self._name = "Replay"
        self.setup = markup.script_json({"words": words(lang), "lang": lang})
        self.css = style()
        self.code = script()
        self.map_name = m.get_name()
        self.summary = markup.script_json(dict(summary))
        self.options = markup.script_json({"title": title, **options})
