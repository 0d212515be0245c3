"""Registration certificates: the signed token, public verification that says nothing more, the page and PDF."""

from __future__ import annotations

import io

from pypdf import PdfReader

from backend.certificates import Signer
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
    r = staff.clerk.post(f"/api/bikes/{done['bike']['bike_id']}/transfer",
                         json={"new_owner": factories.owner_body(), "old_owner_id_number": staff.id_number_of(done)})
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
