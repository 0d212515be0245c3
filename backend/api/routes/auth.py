"""Signing in and out, who am I, changing one's password."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from backend import accounts
from backend.accounts import User
from backend.api.deps import (
    SESSION_COOKIE,
    ClientAddress,
    Conn,
    PasswordsDep,
    Settings,
    Token,
    public,
    same_site,
    signed_in,
)
from backend.api.schemas import AccountPublic, LoginCreate, PasswordChange, SessionPublic

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post(
    "/login",
    response_model=SessionPublic,
    dependencies=[public(), Depends(same_site)],
    responses={
        401: {"description": "wrong username or password"},
        403: {"description": "sent by another site's page"},
        429: {"description": "too many failed logins"},
    },
)
async def login(
    body: LoginCreate,
    address: ClientAddress,
    response: Response,
    conn: Conn,
    settings: Settings,
    passwords: PasswordsDep,
) -> dict[str, Any]:
    """Anyone: a session for a username and password, as an HttpOnly cookie; the token in the body too only when
    an API client asks (token_in_body), so no script on a page can read the browser's session.

    Failed logins make the next attempt wait, per account and per client address (429 with Retry-After).
    """
    token, user = await accounts.login(conn, settings, passwords, body.username, body.password, address)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies,
        path="/",
    )
    return {"token": token if body.token_in_body else None, "expires_at": user.session_expires_at, "account": user}


@router.post("/logout", status_code=204)
async def logout(response: Response, conn: Conn, token: Token, _user: Annotated[User, signed_in()]) -> None:
    """Any signed-in account: end this session."""
    if token:
        await accounts.logout(conn, token)
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get("/me", response_model=AccountPublic)
async def me(user: Annotated[User, signed_in()]) -> User:
    """Any signed-in account: who am I (and must I change my password)."""
    return user


@router.post("/password", response_model=AccountPublic, responses={422: {"description": "password refused"}})
async def change_password(
    body: PasswordChange, conn: Conn, token: Token, passwords: PasswordsDep, user: Annotated[User, signed_in()]
) -> User:
    """Any signed-in account: change the password (required after the first login); other sessions end."""
    await accounts.change_password(conn, passwords, user, body.current_password, body.new_password, token or "")
    refreshed = await accounts.session_user(conn, token or "")
    assert refreshed is not None
    return refreshed
