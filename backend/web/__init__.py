"""The web pages: Jinja templates, their static files, and the language a page is shown in."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from backend.web.translations import LANGUAGES, MESSAGES
from maps import markup

STATIC_DIR: Path = Path(str(resources.files("backend.web").joinpath("static")))
LANG_COOKIE = "bikeguard_lang"

_env = Environment(
    loader=PackageLoader("backend.web", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["json"] = lambda value: Markup(markup.script_json(value))


def choose_language(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The page language: ?lang=, else the cookie, else the browser's preference; English by default."""
    for choice in (query, cookie):
        if choice in LANGUAGES:
            return choice
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "en"


def render(template: str, lang: str, **context: Any) -> str:
    """A page in the given language; templates read their words from `t`, scripts from the `t` JSON."""
    return _env.get_template(template).render(lang=lang, t=MESSAGES[lang], languages=LANGUAGES, **context)
