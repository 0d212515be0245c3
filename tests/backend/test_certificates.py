"""Registration certificates: the signed token, public verification that says nothing more, the page and PDF."""

from __future__ import annotations

import io
import re
import sysconfig
from datetime import UTC, datetime
from importlib.metadata import distribution
from pathlib import Path

import pytest
from fontTools.ttLib import TTCollection
from pypdf import PdfReader

from backend import certificates
from backend.certificates import GlyphMissing, Signer
from backend.web.translations import MESSAGES
from tests import factories
from tests.backend.conftest import Staff


def test_verify_says_genuine_and_current_and_nothing_more(staff: Staff) -> None:
    done = staff.register()
    r = staff.anonymous.get("/api/certificates/verify", params={"token": done["certificate"]["token"]})
    assert r.status_code == 200 and r.json() == {"genuine": True, "current": True}


def test_a_forged_or_foreign_token_is_not_genuine(staff: Staff) -> None:
    done = staff.register()
    token = done["certificate"]["token"]
    foreign = Signer("another registry's key").token(done["certificate"]["certificate_id"])
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for candidate in (foreign, tampered, "BG1.x.y", "nonsense", Signer("k").token(987654)):
        r = staff.anonymous.get("/api/certificates/verify", params={"token": candidate})
        assert r.json() == {"genuine": False, "current": False}, candidate


def test_transfer_supersedes_the_certificate(staff: Staff) -> None:
    done = staff.register()
    r = staff.clerk.post(
        f"/api/bikes/{done['bike']['bike_id']}/transfer",
        json={"new_owner": factories.owner_body(), "old_owner_id_number": staff.id_number_of(done)},
    )
    new_token = r.json()["certificate"]["token"]
    verify = lambda token: staff.anonymous.get("/api/certificates/verify", params={"token": token}).json()  # noqa: E731
    assert verify(done["certificate"]["token"]) == {"genuine": True, "current": False}
    assert verify(new_token) == {"genuine": True, "current": True}


def test_certificate_page_shows_masked_owner_and_a_qr_code_to_the_verify_page(staff: Staff) -> None:
    done = staff.register(brand="Yadea", model="G5", colour="blue")
    page = staff.clerk.get(f"/bikes/{done['bike']['bike_id']}/certificate?lang=en")
    assert page.status_code == 200
    html = page.text
    assert done["bike"]["plate"] in html and "<svg" in html and "W*** F***" in html
    assert done["certificate"]["verify_url"] in html and "/verify?token=BG1." in html
    assert done["owner"]["mobile"] not in html and done["owner"]["mobile"][:3] + "****" in html
    verify_page = staff.anonymous.get("/verify", params={"token": done["certificate"]["token"], "lang": "zh"})
    assert verify_page.status_code == 200 and "真实有效" in verify_page.text


def test_certificate_pdf_has_the_bike_and_the_masked_owner(staff: Staff) -> None:
    done = staff.register()
    r = staff.clerk.get(f"/bikes/{done['bike']['bike_id']}/certificate.pdf?lang=zh")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    # pypdf puts a NUL before each glyph of a CID font; what a viewer copies (pdftotext) has none.
    text = PdfReader(io.BytesIO(r.content)).pages[0].extract_text().replace("\x00", "")
    assert "电动自行车登记证" in text and done["bike"]["plate"] in text and done["bike"]["tag_id"] in text
    assert "W*** F***" in text and staff.id_number_of(done) not in text


def test_certificate_needs_a_sign_in_and_is_the_owners_or_the_counters(staff: Staff) -> None:
    done = staff.register()
    bike_id = done["bike"]["bike_id"]
    staff.client.cookies.clear()
    anonymous = staff.client.get(f"/bikes/{bike_id}/certificate", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=")
    assert staff.owner_of(done).get(f"/bikes/{bike_id}/certificate").status_code == 200
    assert staff.police.get(f"/bikes/{bike_id}/certificate").status_code == 403
    assert staff.police.get(f"/api/bikes/{bike_id}/certificate").status_code == 403


def _pdf_text(pdf: bytes) -> str:
    # pypdf puts a NUL before each glyph of a CID font; what a viewer copies (pdftotext) has none.
    return PdfReader(io.BytesIO(pdf)).pages[0].extract_text().replace("\x00", "")


def _chinese_certificate(owner_name: str, address: str) -> tuple[bytes, list[str]]:
    t = MESSAGES["zh"]
    labels = {"title": t["cert_title"], "number": t["cert_number"], "issued": t["cert_issued"], "scan": t["cert_scan"]}
    rows = [("号牌", "浙A·12345"), ("车主", owner_name), ("住址", address), ("品牌型号", "雅迪 冠能G5 蓝色")]
    view = {"certificate_id": 42, "issued_at": datetime(2026, 11, 29, tzinfo=UTC), "rows": rows}
    url = "https://bikes.example.gov.cn/verify?token=BG1.AAAAAAAAACo.abc"
    pdf = certificates.render_pdf(view, labels, url)
    return pdf, [*labels.values(), *(s for row in rows for s in row), "42", "2026-11-29", url]


def test_the_certificate_font_comes_from_the_installed_package_not_the_system() -> None:
    path = certificates.font_path()
    package = distribution("noto-cjk-sans-otc")
    assert path.resolve() in {Path(str(package.locate_file(f))).resolve() for f in package.files or []}
    assert path.resolve().is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve())
    assert TTCollection(str(path), lazy=True).fonts[2]["name"].getBestFullName() == "Noto Sans CJK SC"
    pdf, _ = _chinese_certificate("王芳", "杭州市西湖区")
    resources = PdfReader(io.BytesIO(pdf)).pages[0]["/Resources"]
    fonts = {str(font.get_object()["/BaseFont"]) for font in resources["/Font"].values()}
    assert fonts and all(re.fullmatch(r"/[A-Z]{6}\+NotoSansCJKSC", font) for font in fonts), fonts  # embedded subset


def test_the_chinese_certificate_pdf_carries_every_character_of_its_text() -> None:
    # Rare but real name and place characters (鑫 垚 淼 犇 in names, 衢 in Quzhou) beside Latin and digits.
    pdf, texts = _chinese_certificate("欧阳鑫垚 淼犇", "浙江省衢州市柯城区荷花中路 88 号")
    extracted = "".join(_pdf_text(pdf).split())
    for text in texts:
        assert "".join(text.split()) in extracted, (text, extracted)


def test_a_character_the_font_lacks_is_an_error_not_a_blank_box() -> None:
    uyghur = "ئەخمەت"  # Arabic script: Noto Sans CJK has none of it
    with pytest.raises(GlyphMissing) as raised:
        _chinese_certificate(uyghur, "乌鲁木齐市")
    assert raised.value.character == uyghur[0] and raised.value.text == uyghur
    assert "U+0626" in str(raised.value)
