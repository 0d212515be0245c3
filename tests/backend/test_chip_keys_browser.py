"""The counter fits a v2 chip in headless Chromium (English and Chinese): the clerk picks the kind, the chip on the
programming cable (a simulated chip on a real pty) is keyed as the bike is registered, and a cable that does not
answer is said in the page's language with nothing registered. The pictures are in docs/counter.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backend.api.app import create_app
from bikeguard.services import free_port
from protocol.ids import parse_tag
from tests import factories
from tests.backend.counter_cable import CounterCable, counter_cable
from tests.backend.test_pages_browser import _clerk, _sign_in
from tests.browser import browser_page, console_errors, raw_keys, require_chromium, screenshot_path
from tests.serving import served


@pytest.fixture
def cable(tmp_path: Path) -> Iterator[CounterCable]:
    """The counter's programming cable, nothing on it yet."""
    with counter_cable(tmp_path) as c:
        yield c


@pytest.fixture
def counter_server(database_url: str, cable: CounterCable) -> Iterator[str]:
    """The backend served by uvicorn, its programming cable at cable.port."""
    require_chromium()
    port = free_port()
    settings = factories.settings(
        database_url, http_port=port, counter_programmer_url=cable.port, counter_programmer_timeout_s=0.5
    )
    with served(create_app(settings, run_ingest=False), port) as url:
        yield url


def _fill_registration(page: Any, body: dict[str, Any]) -> None:
    owner = body["owner"]
    page.fill("#id_number", owner["id_number"])
    page.wait_for_selector("#owner-new:not([hidden])")
    for field in ("name", "mobile", "address"):
        page.fill(f"#{field}", owner[field])
    for field in ("plate", "frame_number", "motor_number", "brand", "model", "colour", "tag_id"):
        page.fill(f"#{field}", str(body[field]))
    for field in ("plate", "frame_number", "motor_number", "tag_id"):
        page.wait_for_selector(f"#{field}.ok")  # free, as the server said


def _registered_tags(database_url: str) -> list[tuple[int, str]]:
    with psycopg.connect(database_url) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT tag_id, kind FROM chips ORDER BY tag_id")]


@pytest.mark.parametrize(
    ("lang", "plate", "tag", "done_words", "silent_words"),
    [
        ("en", "HZ-60001", "7E570001", "keyed on the cable", "no answer from a chip on the programming cable"),
        ("zh", "HZ-60002", "7E570002", "已在编程线上写入密钥", "编程线上的芯片没有应答"),
    ],
)
def test_clerk_fits_a_v2_chip_on_the_cable(
    counter_server: str,
    database_url: str,
    cable: CounterCable,
    lang: str,
    plate: str,
    tag: str,
    done_words: str,
    silent_words: str,
) -> None:
    clerk = _clerk(database_url)
    body = factories.registration(plate=plate, tag_id=tag, frame_number=f"LZXE{tag}", motor_number=f"MT{tag}")
    with browser_page(1400, 1150) as page:
        page.goto(f"{counter_server}/counter?lang={lang}")
        _sign_in(page, clerk, factories.PASSWORD)
        page.wait_for_selector("#register-form")
        _fill_registration(page, body)
        page.check("input[name=chip_kind][value=v2]")
        page.wait_for_selector("#v2-cable-hint:not([hidden])")

        # Nothing on the cable yet: the page says so in its language, and nothing is registered.
        page.click("#register-submit")
        page.wait_for_selector("#register-error:not([hidden])")
        assert silent_words in page.inner_text("#register-error")
        assert silent_words in page.inner_text("[data-for=tag_id]")
        assert _registered_tags(database_url) == []
        page.screenshot(path=str(screenshot_path(f"counter-v2-no-chip-{lang}.png")))

        chip = cable.put(parse_tag(tag))
        page.click("#register-submit")
        page.wait_for_selector("#register-done:not([hidden])")
        assert chip.keyed
        assert done_words in page.inner_text("#done-certificate")
        assert _registered_tags(database_url) == [(parse_tag(tag), "v2")]
        page.screenshot(path=str(screenshot_path(f"counter-v2-done-{lang}.png")))

        # The bike's card in the services tab says the chip's kind.
        page.click("[data-tab=services]")
        page.fill("#find", plate)
        page.click("#find-form button")
        page.wait_for_selector(".bg-bike")
        facts = page.inner_text(".bg-bike .bg-facts")
        assert f"{tag} · v2" in facts
        page.click(".bg-bike details:has(form[data-op=chip]) summary")
        page.screenshot(path=str(screenshot_path(f"counter-v2-card-{lang}.png")))
        # Chromium logs the refused request; that refusal is the one this test asks for, and nothing else.
        assert console_errors(page) == [
            "console: Failed to load resource: the server responded with a status of 409 (Conflict)"
            f" ({counter_server}/api/bikes)"
        ]
        assert raw_keys(page) == []
