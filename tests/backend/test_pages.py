"""The pages without a browser: language choice, both catalogues complete, sign-in redirects, photos."""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image

from backend.alarms.kinds import AlarmKind, Audience
from backend.notifications.outbox import CHANNELS, EventKind
from backend.registry import ERROR_CODES
from backend.stations import LIFECYCLE
from backend.web import choose_language
from backend.web.translations import MESSAGES
from gateway.selftest import STEPS
from tests.backend.conftest import Staff


def test_both_languages_have_every_message() -> None:
    assert set(MESSAGES["en"]) == set(MESSAGES["zh"])
    for lang, words in MESSAGES.items():
        assert all(text.strip() for text in words.values()), lang


def test_language_comes_from_the_query_then_the_cookie_then_the_browser() -> None:
    assert choose_language("zh", "en", "en-GB") == "zh"
    assert choose_language(None, "zh", "en-GB") == "zh"
    assert choose_language(None, None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert choose_language("fr", None, "de-DE") == "en"


def test_signed_in_user_goes_to_the_page_of_their_role(staff: Staff) -> None:
    for caller, home in ((staff.clerk, "/counter"), (staff.police, "/"), (staff.installer, "/installer")):
        r = caller.get("/home", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == home
    assert staff.anonymous.get("/home", follow_redirects=False).headers["location"] == "/login"
    page = staff.clerk.get("/counter?lang=zh")
    assert page.status_code == 200 and "登记窗口" in page.text and page.cookies.get("bikeguard_lang") == "zh"


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_bike_photos_are_images_kept_with_the_bike_and_shown_to_its_owner_only(staff: Staff) -> None:
    mine, theirs = staff.register(), staff.register()
    bike_id = mine["bike"]["bike_id"]
    r = staff.clerk.post(f"/api/bikes/{bike_id}/photos", files={"photo": ("bike.png", _png(), "image/png")})
    assert r.status_code == 201, r.text
    photo_id = r.json()["photo_id"]
    fake = staff.clerk.post(f"/api/bikes/{bike_id}/photos", files={"photo": ("x.png", b"not an image", "image/png")})
    assert fake.status_code == 422 and fake.json()["field"] == "photo"
    owner = staff.owner_of(mine)
    assert owner.get(f"/api/bikes/{bike_id}").json()["photo_ids"] == [photo_id]
    shown = owner.get(f"/api/bikes/{bike_id}/photos/{photo_id}")
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
    # Re-encoded on upload (tests/security/test_html_smuggled_in_photos_and_pages.py): the same picture, not the bytes.
    assert Image.open(io.BytesIO(shown.content)).getpixel((3, 2)) == (200, 30, 30)
    assert staff.owner_of(theirs).get(f"/api/bikes/{bike_id}/photos/{photo_id}").status_code == 404


_WEB = Path(__file__).resolve().parents[2] / "backend" / "web"
# Keys the scripts build from a value: the prefix and every value it can take, from where the domain defines them.
_BUILT_KEYS: dict[str, tuple[str, ...]] = {
    "alarm_": tuple(k.value for k in AlarmKind if Audience.OWNER in k.audience),  # the owner portal's alerts
    "err_": ERROR_CODES,  # counter.js words the registry's refusals by their code
    "h_": ("owner", "plate", "chip", "theft"),  # bike_bindings.kind (migration 0004) and the theft reports
    "lc_": LIFECYCLE,
    "st_": ("running", "unfinished", "passed", "failed"),  # installer.js runState: the run's result or its progress
    "st_n_": ("pass", "warn", "fail", "skip"),
    "st_status_": ("pass", "warn", "fail", "skip"),
    "st_step_": tuple(STEPS),
    # portal_notify.js: the channels and what a notification is about
    "nt_ch_": CHANNELS,
    "nt_by_": CHANNELS,
    "nt_kind_": tuple(EventKind),
}


def test_every_key_the_pages_and_scripts_use_is_in_both_languages() -> None:
    used: set[str] = set()
    for template in (_WEB / "templates").glob("*.html"):
        text = template.read_text()
        used |= set(re.findall(r"\bt\.([a-z][a-z0-9_]*)", text)) | set(
            re.findall(r"\bt\[['\"]([a-z0-9_]+)['\"]\]", text)
        )
    for script in (_WEB / "static").glob("*.js"):
        text = script.read_text()
        used |= set(re.findall(r"\bt\(\"([a-z0-9_]+)\"", text))
        for prefix in re.findall(r"\bt\(\"([a-z0-9_]+_)\" *\+", text):
            assert prefix in _BUILT_KEYS, f"{script.name} builds keys from {prefix!r}: say here which values it takes"
            used |= {prefix + value for value in _BUILT_KEYS[prefix]}
    used -= {"role_", *_BUILT_KEYS}  # prefixes, not keys; base.html builds role_ + the user's role, below
    used |= {f"role_{role}" for role in ("clerk", "owner", "police", "installer", "admin")}
    for lang, words in MESSAGES.items():
        assert sorted(used - set(words)) == [], lang
