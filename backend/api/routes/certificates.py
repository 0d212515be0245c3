"""Certificate verification: public, and it says whether a certificate is genuine and current, nothing more."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from backend import certificates
from backend.api.deps import Conn, SignerDep, public
from backend.api.schemas import VerificationPublic

router = APIRouter(prefix="/api/certificates", tags=["certificates"])


@router.get("/verify", response_model=VerificationPublic, dependencies=[public()])
async def verify(conn: Conn, signer: SignerDep, token: str = Query(min_length=1, max_length=100)) -> dict[str, Any]:
    """Anyone: is the certificate with this token (from its QR code) genuine, and is it still current?"""
    return await certificates.verify(conn, signer, token)
