"""Typed dependencies shared by the routes: connection, settings, domain services, and who is calling.

Every API route declares who may call it with `allow(...)` (roles), `signed_in()` (any account, even one
that must still change its password) or `public()`; tests check that none is left without. Whether a caller
passes is backend.access's rule (the pages ask it too); what they may see past the door is asked of its Viewer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import psycopg
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from backend import access, accounts
from backend.accounts import Passwords, Role, User
from backend.certificates import Signer
from backend.registry import Registry
from backend.settings import BackendSettings

SESSION_COOKIE = "bikeguard_session"
_bearer = HTTPBearer(auto_error=False, description="the token from POST /api/auth/login")
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="set by POST /api/auth/login")


async def _connection(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with request.app.state.pool.connection() as conn:
        yield conn


def _settings(request: Request) -> BackendSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def _passwords(request: Request) -> Passwords:
    return request.app.state.passwords  # type: ignore[no-any-return]


def _signer(request: Request) -> Signer:
    return request.app.state.signer  # type: ignore[no-any-return]


# Function scope: the transaction commits before the response is sent, so a client that acts on a response
# (e.g. signs in again after changing its password) always sees what that request wrote.
Conn = Annotated[psycopg.AsyncConnection[Any], Depends(_connection, scope="function")]


async def _reads(request: Request, conn: Conn) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with request.app.state.reads.connection(conn) as reads:
        yield reads


# Heavy reads that may be a little behind (backend.db.replica): the streaming replica's connection when one is set and
# close enough behind, else this request's Conn itself. Writes, and reads that must see one, take Conn.
Reads = Annotated[psycopg.AsyncConnection[Any], Depends(_reads, scope="function")]
Settings = Annotated[BackendSettings, Depends(_settings)]
RegistryDep = Annotated[Registry, Depends(_registry)]
PasswordsDep = Annotated[Passwords, Depends(_passwords)]
SignerDep = Annotated[Signer, Depends(_signer)]


def public_base_url(request: Request) -> str:
    """Where links printed on certificates point: BIKEGUARD_PUBLIC_BASE_URL (required in production); only in
    development, when it is unset, the address the request was sent to."""
    settings = _settings(request)
    if settings.public_base_url:
        return settings.public_base_url
    if settings.environment != "development":
        raise RuntimeError("BIKEGUARD_PUBLIC_BASE_URL is unset outside development (settings validation forbids it)")
    return str(request.base_url)


PublicBaseUrl = Annotated[str, Depends(public_base_url)]


def client_address(request: Request) -> str | None:
    """The client's address: the connection's peer, or what a trusted proxy (BIKEGUARD_TRUSTED_PROXIES) says in
    X-Forwarded-For: its right-most address not itself a trusted proxy (the left ones are the client's to write)."""
    peer = request.client.host if request.client else None
    proxies = _settings(request).trusted_proxy_networks
    if peer is None or not _is_in(peer, proxies):
        return peer
    forwarded = [a.strip() for h in request.headers.getlist("x-forwarded-for") for a in h.split(",")]
    for entry in reversed(forwarded):
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            return peer  # a proxy of ours writes addresses; anything else is not to be believed
        if not _is_in(entry, proxies):
            return entry
    return peer


def _is_in(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


ClientAddress = Annotated[str | None, Depends(client_address)]


_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def cross_site_refusal(request: Request, settings: BackendSettings) -> str | None:
    """Why a state-changing request comes from another site's page, or None (same site, or not a browser's).

    Browsers send Origin with every POST they make for a page, and Sec-Fetch-Site; our own pages' Origin is the
    host they were loaded from (or public_base_url's, behind a proxy that rewrites Host).
    """
    if request.method not in _STATE_CHANGING:
        return None
    origin = request.headers.get("origin")
    if origin is not None:
        ours = {request.headers.get("host", "")}
        if settings.public_base_url:
            ours.add(urlsplit(settings.public_base_url).netloc)
        if origin == "null" or urlsplit(origin).netloc not in ours:
            return f"refused: a request from another site ({origin}) may not act with this site's session"
        return None
    if request.headers.get("sec-fetch-site") in {"cross-site", "same-site"}:
        return "refused: a request from another site may not act with this site's session"
    return None


def same_site(request: Request, settings: Settings) -> None:
    """A route that sets or uses a browser session: refused (403) when another site's page sends it."""
    if refusal := cross_site_refusal(request, settings):
        raise HTTPException(403, refusal)


def session_token(
    request: Request,
    settings: Settings,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> str | None:
    """The session token of the request: Authorization: Bearer, else the session cookie — which a browser sends
    on its own, so a state-changing request with it must come from our own pages."""
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    if cookie:
        same_site(request, settings)
    return cookie or None


Token = Annotated[str | None, Depends(session_token)]


async def optional_user(conn: Conn, token: Token) -> User | None:
    """The signed-in user, or None (no token, or an expired, revoked or unknown one)."""
    if not token:
        return None
    return await accounts.session_user(conn, token)


OptionalUser = Annotated[User | None, Depends(optional_user)]


def _unauthorised(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Allow:
    """A route's access rule: the roles that may call it (empty with public=True: anyone)."""

    roles: tuple[Role, ...]
    public: bool = False
    pending_ok: bool = False

    async def __call__(self, user: OptionalUser, token: Token) -> User | None:
        if self.public:
            return user
        refusal = access.admission(user, self.roles, pending_ok=self.pending_ok)
        if refusal == "sign in" or user is None:
            raise _unauthorised("sign in first" if not token else "the session has expired or is not valid")
        if refusal == "change password":
            raise HTTPException(403, "change your password first (POST /api/auth/password)")
        if refusal == "wrong role":
            raise HTTPException(403, f"a {user.role} may not do this")
        return user


class Anyone(Allow):
    """Anyone, without asking who is calling: no session lookup, so no database (liveness, readiness, metrics)."""

    async def __call__(self) -> None:  # type: ignore[override]  # deliberately no user: nothing to look up
        return None


def anyone() -> Any:
    """Anyone, and the route never touches the database to find out who (it must answer while that is stuck)."""
    return Depends(Anyone((), public=True))


def allow(*roles: Role) -> Any:
    """Only these roles (with their password already changed)."""
    return Depends(Allow(roles))


def signed_in() -> Any:
    """Any signed-in account, even one that must still change its password."""
    return Depends(Allow((), pending_ok=True))


def public() -> Any:
    """Anyone, signed in or not."""
    return Depends(Allow((), public=True))
