"""Registration certificates: issued on every registry change, signed token in a QR code, PDF rendering.

The token carries only the certificate number and an HMAC over it, so the QR code says nothing about the
bike or its owner; the public verify endpoint answers "genuine" and "current" and nothing more.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import struct
from collections.abc import Callable
from datetime import datetime
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import segno
from psycopg.rows import dict_row

from protocol.messages import format_tag

if TYPE_CHECKING:
    from fpdf import FPDF

_TOKEN_PREFIX = "BG1"
_MAC_BYTES = 16
# The PDF's font comes with our install (the pip package noto-cjk-sans-otc, Noto Sans CJK under the SIL OFL 1.1),
# never from the system: a county prints Chinese certificates on any machine. Face 2 of the collection is Simplified
# Chinese; its Latin letters serve the English certificate.
_FONT_PACKAGE = "noto_cjk_sans_otc"
_FONT_FILE = "NotoSansCJK-Regular.ttc"
FONT_FACE = 2
_LINE_BREAKS = "\n\r"  # multi_cell breaks lines there; they need no glyph


class CertificateError(Exception):
    """Base of certificate errors."""


class CertificateNotFound(CertificateError):
    """The bike has no current certificate."""


class CertificateFontMissing(CertificateError):
    """The certificate font package is not installed."""


class GlyphMissing(CertificateError):
    """The certificate font has no glyph for a character of the text: the PDF would show an empty box instead."""

    def __init__(self, character: str, text: str) -> None:
        super().__init__(f"the certificate font has no glyph for {character!r} (U+{ord(character):04X}) in {text!r}")
        self.character = character
        self.text = text


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Makes and checks certificate tokens under the signing key."""

    def __init__(self, key: str) -> None:
        self._key = hashlib.sha256(b"bikeguard certificate v1:" + key.encode()).digest()

    def _mac(self, certificate_id: int) -> bytes:
        return hmac.new(self._key, struct.pack(">Q", certificate_id), hashlib.sha256).digest()[:_MAC_BYTES]

    def token(self, certificate_id: int) -> str:
        """BG1.<certificate number>.<MAC>, URL-safe."""
        return f"{_TOKEN_PREFIX}.{_b64(struct.pack('>Q', certificate_id))}.{_b64(self._mac(certificate_id))}"

    def certificate_id(self, token: str) -> int | None:
        """The certificate number a token was signed for, or None if the token is not genuine."""
        parts = token.strip().split(".")
        if len(parts) != 3 or parts[0] != _TOKEN_PREFIX or len(parts[1]) > 16 or len(parts[2]) > 32:
            return None
        try:
            raw_id, mac = _unb64(parts[1]), _unb64(parts[2])
        except (ValueError, TypeError):
            return None
        if len(raw_id) != 8:
            return None
        certificate_id = struct.unpack(">Q", raw_id)[0]
        return certificate_id if hmac.compare_digest(mac, self._mac(certificate_id)) else None


async def issue(conn: psycopg.AsyncConnection[Any], bike_id: int, issued_by: str) -> int:
    """Supersede the bike's current certificate and issue a new one for its present state."""
    await supersede(conn, bike_id)
    cur = await conn.execute(
        "INSERT INTO certificates (bike_id, owner_id, plate, tag_id, issued_by)"
        " SELECT b.bike_id, b.owner_id, b.plate, c.tag_id, %s FROM bikes b"
        " LEFT JOIN chips c ON c.bike_id = b.bike_id WHERE b.bike_id = %s AND b.status = 'active'"
        " RETURNING certificate_id",
        (issued_by, bike_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise CertificateNotFound(f"bike {bike_id} is not active; no certificate can be issued")
    return int(row[0])


async def supersede(conn: psycopg.AsyncConnection[Any], bike_id: int) -> None:
    """The bike's current certificate is no longer current."""
    await conn.execute(
        "UPDATE certificates SET superseded_at = now() WHERE bike_id = %s AND superseded_at IS NULL", (bike_id,)
    )


async def verify(conn: psycopg.AsyncConnection[Any], signer: Signer, token: str) -> dict[str, bool]:
    """{"genuine": signed by us and on record, "current": not superseded and the bike still registered}."""
    certificate_id = signer.certificate_id(token)
    if certificate_id is None:
        return {"genuine": False, "current": False}
    cur = await conn.execute(
        "SELECT c.superseded_at IS NULL AND b.status = 'active' FROM certificates c JOIN bikes b USING (bike_id)"
        " WHERE c.certificate_id = %s",
        (certificate_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return {"genuine": False, "current": False}
    return {"genuine": True, "current": bool(row[0])}


async def current(conn: psycopg.AsyncConnection[Any], bike_id: int) -> dict[str, Any]:
    """The bike's current certificate with what it shows (owner fields still unmasked: mask before showing)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT c.certificate_id, c.issued_at, c.issued_by, c.plate, c.tag_id, b.frame_number, b.motor_number,"
            " b.brand, b.model, b.colour, b.created_at AS registered_at, c.owner_id, o.name AS owner_name,"
            " o.id_number_enc, o.mobile"
            " FROM certificates c JOIN bikes b USING (bike_id) JOIN owners o ON o.owner_id = c.owner_id"
            " WHERE c.bike_id = %s AND c.superseded_at IS NULL",
            (bike_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise CertificateNotFound(f"bike {bike_id} has no current certificate")
    row["tag_id"] = format_tag(row["tag_id"]) if row["tag_id"] is not None else None
    row["bike_id"] = bike_id
    return row


def verify_url(base_url: str, token: str) -> str:
    """The address a certificate's QR code carries."""
    return f"{base_url.rstrip('/')}/verify?token={token}"


def qr_svg(data: str) -> str:
    """An inline SVG QR code (error correction M)."""
    out = io.BytesIO()
    segno.make(data, error="m", micro=False).save(
        out, kind="svg", scale=4, border=2, xmldecl=False, svgns=True, nl=False
    )
    return out.getvalue().decode()


@cache
def font_path() -> Path:
    """The certificate font (a font collection; face FONT_FACE is Simplified Chinese), from its installed package."""
    try:
        path = Path(str(files(_FONT_PACKAGE) / _FONT_FILE))
    except ModuleNotFoundError as exc:
        raise CertificateFontMissing("the certificate font is not installed: pip install 'bikeguard[backend]'") from exc
    if not path.is_file():
        raise CertificateFontMissing(f"the certificate font {path} is missing: reinstall noto-cjk-sans-otc")
    return path


def cjk_font(pdf: FPDF, family: str) -> Callable[[object], str]:
    """Add the project's Noto Sans CJK face to `pdf` as `family`, and return the text check that goes with it: a
    value as the text to draw, or GlyphMissing when the face cannot show one of its characters (fpdf2 would only log
    a warning and draw nothing)."""
    from fpdf.fonts import TTFFont

    pdf.add_font(family, fname=font_path(), collection_font_number=FONT_FACE)
    font = pdf.fonts[family]
    assert isinstance(font, TTFFont)  # add_font with a file always makes one
    glyphs = font.cmap

    def text(value: object) -> str:
        s = "" if value is None else str(value)
        for character in s:
            if ord(character) not in glyphs and character not in _LINE_BREAKS:
                raise GlyphMissing(character, s)
        return s

    return text


def render_pdf(view: dict[str, Any], labels: dict[str, str], url: str, photo: bytes | None = None) -> bytes:
    """A one-page A5 PDF of the certificate: title, fields (already masked), the QR code and the bike's photo (a JPEG
    or PNG as backend.photos keeps it) under it.

    Raises GlyphMissing when the font cannot show a character of the text (fpdf2 would only log a warning).
    """
    from fpdf import FPDF

    pdf = FPDF(orientation="L", unit="mm", format=(148, 210))  # A5
    pdf.set_auto_page_break(False)
    pdf.add_page()
    family = "cert"
    text = cjk_font(pdf, family)

    pdf.set_draw_color(30, 64, 175)
    pdf.set_line_width(0.8)
    pdf.rect(6, 6, 198, 136)
    pdf.set_font(family, size=18)
    pdf.set_xy(12, 12)
    pdf.cell(130, 10, text(labels["title"]))
    pdf.set_font(family, size=9)
    pdf.set_xy(12, 22)
    pdf.cell(
        130, 5, text(f"{labels['number']}: {view['certificate_id']}   {labels['issued']}: {_date(view['issued_at'])}")
    )
    y = 32
    for key, value in view["rows"]:
        pdf.set_xy(12, y)
        pdf.set_font(family, size=9)
        pdf.set_text_color(90, 90, 90)
        pdf.cell(40, 7, text(key))
        pdf.set_text_color(0, 0, 0)
        pdf.set_font(family, size=12)
        pdf.cell(90, 7, text(value))
        y += 8
    qr = segno.make(url, error="m")
    png = io.BytesIO()
    qr.save(png, kind="png", scale=8, border=2)
    png.seek(0)
    pdf.image(png, x=150, y=30, w=48, h=48)
    pdf.set_font(family, size=8)
    pdf.set_xy(146, 80)
    pdf.multi_cell(56, 4, text(labels["scan"]), align="C")
    if photo is not None:
        pdf.image(io.BytesIO(photo), x=150, y=94, w=48, h=30, keep_aspect_ratio=True)  # above the footer (y 128)
    pdf.set_xy(12, 128)
    pdf.set_font(family, size=7)
    pdf.set_text_color(90, 90, 90)
    pdf.multi_cell(186, 3.5, text(url))
    return bytes(pdf.output())


def _date(value: datetime) -> str:
    return value.strftime("%Y-%m-%d")


def public(certificate: dict[str, Any], signer: Signer, base_url: str) -> dict[str, Any]:
    """A certificate as the API gives it: number, token, and where to verify, view and print it."""
    token = signer.token(certificate["certificate_id"])
    base = base_url.rstrip("/")
    return {
        "certificate_id": certificate["certificate_id"],
        "bike_id": certificate["bike_id"],
        "issued_at": certificate["issued_at"],
        "token": token,
        "verify_url": verify_url(base, token),
        "page_url": f"{base}/bikes/{certificate['bike_id']}/certificate",
        "pdf_url": f"{base}/bikes/{certificate['bike_id']}/certificate.pdf",
    }
