"""The counter's bike services in headless Chromium, as a clerk uses them: what each service did, the owner's
slips, deregistered bikes, the server's refusals in the page's language, the bike's photo. The pictures taken
here are in docs/counter.md."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image, ImageDraw

from backend.api.app import create_app
from bikeguard.services import free_port
from tests import factories
from tests.backend.test_pages_browser import _api_as, _clerk, _message, _owner_api, _sign_in
from tests.browser import browser_page, console_errors, raw_keys, require_chromium, screenshot_path
from tests.serving import served

# Where the registry says owners sign in (BIKEGUARD_PUBLIC_BASE_URL): not the address the counter's browser uses.
PUBLIC_BASE_URL = "https://bikes.example.gov"


@pytest.fixture
def counter_server(database_url: str) -> Iterator[str]:
    """The backend (API and pages, no ingest) served by uvicorn, with a public address of its own."""
    require_chromium()
    port = free_port()
    settings = factories.settings(database_url, http_port=port, public_base_url=PUBLIC_BASE_URL)
    with served(create_app(settings, run_ingest=False), port) as url:
        yield url


def _officer(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        return factories.account(conn, "police", "officer.li")


def _open_services(page: Any, server: str, clerk: str, lang: str, find: str) -> None:
    page.on("dialog", lambda dialog: dialog.accept())  # "Deregister this bike?", "Issue a new password?"
    page.goto(f"{server}/counter?lang={lang}")
    _sign_in(page, clerk, factories.PASSWORD)
    page.click("[data-tab=services]")
    _find(page, find)


def _find(page: Any, text: str) -> None:
    page.fill("#find", text)
    page.click("#find-form button")
    page.wait_for_selector(".bg-bike")


def _op(page: Any, op: str, fields: dict[str, str]) -> None:
    page.click(f".bg-bike details:has(form[data-op={op}]) summary")
    for name, value in fields.items():
        page.fill(f"form[data-op={op}] [name={name}]", value)
    page.click(f"form[data-op={op}] button")


def test_transfer_chip_replacement_and_deregistration_say_what_was_done(counter_server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    body = factories.registration(plate="HZ-50001", tag_id="5A5A0001")
    with _api_as(counter_server, clerk) as api:
        api.post("/api/bikes", json=body).raise_for_status()
    new_owner = factories.owner_body(name="Li Na")
    with browser_page(1400, 1100) as page:
        _open_services(page, counter_server, clerk, "en", "HZ-50001")

        page.click(".bg-bike details:has(form[data-op=transfer]) summary")
        page.fill("form[data-op=transfer] [name=old_owner_id_number]", body["owner"]["id_number"])
        page.fill("form[data-op=transfer] [name=new_owner_id_number]", new_owner["id_number"])
        page.wait_for_selector("form[data-op=transfer] .bg-new-owner:not([hidden])")
        for name in ("name", "mobile", "address"):
            page.fill(f"form[data-op=transfer] [name={name}]", new_owner[name])
        page.click("form[data-op=transfer] button")
        page.wait_for_selector(".bg-done-note:not([hidden])")
        note = page.inner_text(".bg-done-note")
        assert note.startswith("✓ Transferred: bike HZ-50001 now belongs to owner #") and "L* N*" in note, note
        assert "new certificate No." in note
        slip = page.inner_text(".bg-slip-box .bg-slip")
        assert "Owner login slip" in slip and page.inner_text(".bg-slip-user").startswith("bg-")
        assert f"{PUBLIC_BASE_URL}/login" in page.inner_text(".bg-slip-note")
        assert page.is_visible(".bg-slip-box button:has-text('Print slip')")
        page.screenshot(path=str(screenshot_path("counter-transfer-done.png")))
        page.click(".bg-slip-box button:has-text('Print slip')")  # the print dialog shows the slip alone
        page.emulate_media(media="print")
        page.screenshot(path=str(screenshot_path("counter-transfer-slip-print.png")))
        assert page.is_visible(".bg-slip-password")
        assert page.is_hidden("#find") and page.is_hidden(".bg-facts") and page.is_hidden(".bg-slip-print")
        page.emulate_media(media="screen")

        _op(page, "chip", {"tag_id": "5A5A0002", "reason": "chip damaged"})
        page.wait_for_selector(".bg-done-note:has-text('Chip replaced')")
        note = page.inner_text(".bg-done-note")
        assert "bike HZ-50001: 5A5A0001 retired, 5A5A0002 fitted" in note, note

        page.click(".bg-bike details:has(form[data-op=deregister]) summary")
        page.select_option("form[data-op=deregister] [name=status]", "exported")
        page.fill("form[data-op=deregister] [name=note]", "sold abroad")
        page.click("form[data-op=deregister] button")
        page.wait_for_selector(".bg-done-note:has-text('Deregistered')")
        note = page.inner_text(".bg-done-note")
        assert f"Deregistered (Exported): bike HZ-50001, frame {body['frame_number']}" in note, note
        assert "Plate released, chip retired" in note
        page.screenshot(path=str(screenshot_path("counter-deregistered.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []


def test_clerk_reissues_a_forgotten_password_on_a_printable_slip_in_chinese(
    counter_server: str, database_url: str
) -> None:
    clerk = _clerk(database_url)
    with _api_as(counter_server, clerk) as api:
        done = api.post("/api/bikes", json=factories.registration(plate="HZ-50002")).json()
    forgotten = done["owner_login"]
    with browser_page(1400, 1100) as page:
        _open_services(page, counter_server, clerk, "zh", "HZ-50002")
        page.click(".bg-bike details:has([data-act=reissue]) summary")
        assert "旧密码随即失效" in page.inner_text(".bg-bike")
        page.click("[data-act=reissue]")
        page.wait_for_selector(".bg-slip-box .bg-slip")
        note = page.inner_text(".bg-done-note")
        assert "已为车主 #" in note and "（车辆 HZ-50002）签发新的一次性密码" in note and "旧密码已失效" in note, note
        slip = page.inner_text(".bg-slip-box .bg-slip")
        assert "车主登录凭条（新密码）" in slip and f"{PUBLIC_BASE_URL}/login" in slip
        assert page.inner_text(".bg-slip-user") == forgotten["username"]
        password = page.inner_text(".bg-slip-password")
        assert len(password) == 10 and password != forgotten["initial_password"]
        assert page.is_visible(".bg-slip-box button:has-text('打印凭条')")
        page.screenshot(path=str(screenshot_path("counter-password-zh.png")))
        assert console_errors(page) == []
        assert raw_keys(page) == []
    login = {"username": forgotten["username"], "password": password, "token_in_body": True}
    assert httpx.post(f"{counter_server}/api/auth/login", json=login).status_code == 200
    login["password"] = forgotten["initial_password"]
    assert httpx.post(f"{counter_server}/api/auth/login", json=login).status_code == 401


def test_a_deregistered_bike_is_found_again_says_so_and_offers_only_its_history(
    counter_server: str, database_url: str
) -> None:
    clerk, police = _clerk(database_url), _officer(database_url)
    body = factories.registration(plate="HZ-50003", tag_id="5A5A0003")
    with _api_as(counter_server, clerk) as api:
        done = api.post("/api/bikes", json=body).json()
        bike_id = done["bike"]["bike_id"]
        deregistration = {"status": "scrapped", "note": "frame cracked"}
        assert api.post(f"/api/bikes/{bike_id}/deregister", json=deregistration).status_code == 200
        # Found again at the counter (by frame number, its last plate or its retired chip), marked deregistered...
        for query in ({"frame_number": body["frame_number"]}, {"plate": "HZ-50003"}, {"tag_id": "5A5A0003"}):
            found = api.get("/api/bikes", params=query).json()
            assert [(b["bike_id"], b["status"], b["former_plate"]) for b in found] == [
                (bike_id, "scrapped", "HZ-50003")
            ], query
        # ...and still beyond every service.
        transfer = {"new_owner": factories.owner_body(), "old_owner_id_number": body["owner"]["id_number"]}
        assert api.post(f"/api/bikes/{bike_id}/transfer", json=transfer).status_code == 404
        assert api.post(f"/api/bikes/{bike_id}/chip", json={"tag_id": "5A5A0004"}).status_code == 404
        assert api.post(f"/api/bikes/{bike_id}/theft", json={}).status_code == 404
    with _api_as(counter_server, police) as officer:  # police search active bikes, as before
        assert officer.get("/api/bikes/search", params={"q": body["frame_number"]}).json() == []
        assert officer.get("/api/bikes", params={"frame_number": body["frame_number"]}).json() == []
    slip = done["owner_login"]
    with _owner_api(counter_server, slip) as owner:
        assert owner.get("/api/bikes").json() == []
        assert owner.post(f"/api/bikes/{bike_id}/arm", json={"armed": True}).status_code == 404

    # The clerk types what they have: the frame number (in English), the plate it had (in Chinese).
    for lang, find, words in (
        (
            "en",
            body["frame_number"].lower(),
            ("DEREGISTERED", "Scrapped and deregistered on", "No service is possible"),
        ),
        ("zh", "hz-50003", ("已注销", "因报废注销", "原号牌 HZ-50003 已释放")),
    ):
        with browser_page(1400, 900) as page:
            _open_services(page, counter_server, clerk, lang, find)
            card = page.inner_text(".bg-bike.gone")
            assert all(w in card for w in words), card
            assert page.inner_text(".bg-plate.released") == "HZ-50003"
            assert page.query_selector(".bg-bike form") is None  # no transfer, chip, plate or deregistration
            assert page.query_selector(".bg-bike [data-act=reissue]") is None
            assert page.query_selector(".bg-bike a[href$=certificate]") is None  # it has no current certificate
            page.wait_for_selector(".bg-history-table table")
            history = page.inner_text(".bg-history-table")
            assert "5A5A0003" in history and "HZ-50003" in history and "frame cracked" in history
            page.screenshot(path=str(screenshot_path(f"counter-deregistered-history-{lang}.png")))
            assert console_errors(page) == []
            assert raw_keys(page) == []


def test_the_chinese_counter_says_the_servers_refusals_in_chinese(counter_server: str, database_url: str) -> None:
    clerk = _clerk(database_url)
    with _api_as(counter_server, clerk) as api:
        taken = api.post("/api/bikes", json=factories.registration(plate="HZ-50004", tag_id="5A5A0005")).json()
        other = api.post("/api/bikes", json=factories.registration(plate="HZ-50005")).json()
    with browser_page(1400, 1000) as page:
        page.goto(f"{counter_server}/counter?lang=zh")
        _sign_in(page, clerk, factories.PASSWORD)
        page.wait_for_selector("#register-form")
        page.type("#plate", "HZ-50004")
        page.wait_for_selector("[data-for=plate].bad:has-text('号牌')")
        bike_id = taken["bike"]["bike_id"]
        assert _message(page, "plate") == f"号牌 HZ-50004 已登记在另一辆车上（#{bike_id}）。"
        page.type("#tag_id", "5a5a0005")
        page.wait_for_selector("[data-for=tag_id].bad:has-text('芯片')")
        assert _message(page, "tag_id") == "芯片 5A5A0005 已安装在车辆 HZ-50004 上。"
        page.screenshot(path=str(screenshot_path("counter-refusals-zh.png")))

        page.click("[data-tab=services]")
        _find(page, "HZ-50005")
        _op(page, "chip", {"tag_id": "5A5A0005"})  # a chip fitted to another bike, refused by the server
        page.wait_for_selector(".bg-bike .bg-error:not([hidden])")
        assert page.inner_text(".bg-bike .bg-error") == "芯片 5A5A0005 已安装在车辆 HZ-50004 上。"
        page.click(".bg-bike details:has(form[data-op=transfer]) summary")
        new_owner = factories.owner_body()
        page.fill("form[data-op=transfer] [name=new_owner_id_number]", new_owner["id_number"])
        page.wait_for_selector("form[data-op=transfer] .bg-new-owner:not([hidden])")
        for name in ("name", "mobile", "address"):
            page.fill(f"form[data-op=transfer] [name={name}]", new_owner[name])
        page.click("form[data-op=transfer] button")  # without the current owner's consent
        page.wait_for_selector(".bg-bike .bg-error:has-text('同意')")
        assert page.inner_text(".bg-bike .bg-error").startswith("须经原车主同意")
        assert other["bike"]["tag_id"] in page.inner_text(".bg-facts")  # nothing changed
        url = f"{counter_server}/api/bikes/{other['bike']['bike_id']}"
        refused = "console: Failed to load resource: the server responded with a status of"
        # Chromium logs each refused request; those two are the refusals this test asks for, and nothing else.
        assert console_errors(page) == [
            f"{refused} 409 (Conflict) ({url}/chip)",
            f"{refused} 403 (Forbidden) ({url}/transfer)",
        ]
        assert raw_keys(page) == []


def _bike_photo() -> bytes:
    """A small JPEG: a blue bike's two wheels and frame on grey."""
    image = Image.new("RGB", (360, 240), (226, 232, 240))
    draw = ImageDraw.Draw(image)
    for x in (90, 270):
        draw.ellipse((x - 60, 110, x + 60, 230), outline=(15, 23, 42), width=10)
    draw.line((90, 170, 170, 90, 270, 170, 180, 170, 90, 170), fill=(29, 78, 216), width=12)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def test_the_bikes_photo_is_on_its_card_its_certificate_and_in_the_police_search(
    counter_server: str, database_url: str
) -> None:
    clerk, police = _clerk(database_url), _officer(database_url)
    with _api_as(counter_server, clerk) as api:
        bike = api.post("/api/bikes", json=factories.registration(plate="HZ-50006")).json()["bike"]
        files = {"photo": ("bike.jpg", _bike_photo(), "image/jpeg")}
        photo_id = api.post(f"/api/bikes/{bike['bike_id']}/photos", files=files).json()["photo_id"]
        pdf = api.get(f"/bikes/{bike['bike_id']}/certificate.pdf?lang=zh").content
    photo_url = f"/api/bikes/{bike['bike_id']}/photos/{photo_id}"
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Subtype /Image") == 2  # the QR code and the photo
    with _api_as(counter_server, police) as officer:
        [found] = officer.get("/api/bikes/search", params={"q": "HZ-50006"}).json()
        assert found["photo_url"] == photo_url
        assert officer.get(photo_url).headers["content-type"] == "image/jpeg"
    with browser_page(1400, 900) as page:
        _open_services(page, counter_server, clerk, "zh", "HZ-50006")
        img = page.locator(".bg-bike img.bg-bike-photo")
        assert img.get_attribute("src") == photo_url
        assert img.evaluate("img => img.complete && img.naturalWidth") == 360
        page.screenshot(path=str(screenshot_path("counter-photo-zh.png")))
        page.goto(f"{counter_server}/bikes/{bike['bike_id']}/certificate?lang=en")
        photo = page.locator("#certificate img.bg-cert-photo")
        assert photo.get_attribute("src") == photo_url
        assert photo.evaluate("img => img.complete && img.naturalWidth") == 360
        page.screenshot(path=str(screenshot_path("certificate-photo.png")), full_page=True)
        assert console_errors(page) == []
        assert raw_keys(page) == []


def _fill_registration(page: Any, body: dict[str, Any], photo: bytes) -> None:
    """The registration form filled as a clerk does, each field checked (and free) before the next."""
    page.fill("#id_number", body["owner"]["id_number"])
    page.wait_for_selector("#owner-new:not([hidden])")
    for field in ("name", "mobile", "address"):
        page.fill(f"#{field}", body["owner"][field])
    for field in ("plate", "frame_number", "motor_number", "tag_id"):
        page.fill(f"#{field}", body[field])
        page.wait_for_selector(f".bg-msg.ok[data-for={field}]")
    page.set_input_files("#photo", {"name": "bike.jpg", "mimeType": "image/jpeg", "buffer": photo})


def test_a_photo_taken_at_registration_is_on_the_card_and_a_refused_one_is_said(
    counter_server: str, database_url: str
) -> None:
    clerk = _clerk(database_url)
    with browser_page(1400, 1000) as page:
        page.goto(f"{counter_server}/counter?lang=zh")
        _sign_in(page, clerk, factories.PASSWORD)
        page.wait_for_selector("#register-form")
        _fill_registration(page, factories.registration(plate="HZ-50007"), b"a page, not a photo")
        page.click("#register-submit")
        page.wait_for_selector("#done-photo-error:not([hidden])")
        assert page.inner_text("#done-photo-error") == "车辆已登记，但照片未保存：照片须为可读取的 JPEG 或 PNG 图片。"
        assert page.inner_text("#done-plate") == "HZ-50007"
        # Chromium logs the refused upload; it is the only error.
        [refused] = console_errors(page)
        assert "status of 422" in refused and refused.endswith("/photos)"), refused
        assert raw_keys(page) == []

        page.click("#next-registration")
        _fill_registration(page, factories.registration(plate="HZ-50008"), _bike_photo())
        page.click("#register-submit")
        page.wait_for_selector("#register-done:not([hidden])")
        assert page.is_hidden("#done-photo-error")
        page.click("[data-tab=services]")
        _find(page, "HZ-50008")
        assert page.locator(".bg-bike img.bg-bike-photo").evaluate("img => img.complete && img.naturalWidth") == 360
        assert len(console_errors(page)) == 1
