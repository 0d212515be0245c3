"""Accounts, passwords and sessions: argon2id hashes, opaque expiring session tokens, login throttling."""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.rows import dict_row

from backend.settings import BackendSettings

Role = Literal["clerk", "owner", "police", "installer", "admin"]
ROLES: tuple[Role, ...] = ("clerk", "owner", "police", "installer", "admin")
STAFF_ROLES: tuple[Role, ...] = ("clerk", "police", "installer", "admin")
# Easy to read aloud and to type from a printed slip: no 0/O, 1/l/I.
_SLIP_ALPHABET = "abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY346789"


class AccountError(Exception):
    """Base of account errors."""


class LoginFailed(AccountError):
    """Wrong username or password (which of the two is not said)."""


class LoginThrottled(AccountError):
    """Too many failed logins recently; carries how long to wait."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AccountConflict(AccountError):
    """The username is taken."""


class AccountNotFound(AccountError):
    """No such account."""


class PasswordRejected(AccountError):
    """A new password that does not meet the policy, or a wrong current password."""


@dataclass(frozen=True, slots=True)
class User:
    """The account behind a request."""

    account_id: int
    username: str
    role: Role
    display_name: str
    owner_id: int | None
    must_change_password: bool
    session_expires_at: datetime

    @property
    def actor(self) -> str:
        """How this user is named in history and audit records."""
        return f"{self.role}:{self.username}"


class Passwords:
    """argon2id hashing with the settings' cost; verification accepts any cost a hash was made with."""

    def __init__(self, settings: BackendSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.password_time_cost,
            memory_cost=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
        )
        self.min_length = settings.password_min_length
        # Verified when the username is unknown, so a miss costs as long as a wrong password.
        self._dummy = self._hasher.hash(secrets.token_hex(16))

    async def hash(self, password: str) -> str:
        """The argon2id hash (computed off the event loop)."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether the password matches (a missing hash takes as long and is False)."""
        try:
            return await asyncio.to_thread(self._hasher.verify, password_hash or self._dummy, password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    def check_policy(self, password: str, username: str) -> None:
        """Refuse a password that is too short, is the username, or is one character repeated."""
        if len(password) < self.min_length:
            raise PasswordRejected(f"a password needs at least {self.min_length} characters")
        if password.lower() == username.lower() or len(set(password)) < 4:
            raise PasswordRejected("this password is too easy to guess")


def slip_password(length: int = 10) -> str:
    """A random first password to print on a slip (changed at first login)."""
    return "".join(secrets.choice(_SLIP_ALPHABET) for _ in range(length))


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_ACCOUNT_COLUMNS = (
    "account_id, username, role, display_name, owner_id, must_change_password, created_at, created_by, disabled_at"
)


async def create_account(
    conn: psycopg.AsyncConnection[Any],
    passwords: Passwords,
    *,
    username: str,
    password: str,
    role: Role,
    display_name: str,
    created_by: str,
    owner_id: int | None = None,
    must_change_password: bool = True,
) -> dict[str, Any]:
    """A new account; raises AccountConflict if the username is taken, PasswordRejected on a weak password."""
    passwords.check_policy(password, username)
    password_hash = await passwords.hash(password)
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO accounts (username, password_hash, role, owner_id, display_name, must_change_password,"
                " created_by) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING " + _ACCOUNT_COLUMNS,
                (username, password_hash, role, owner_id, display_name, must_change_password, created_by),
            )
            return await cur.fetchone()  # type: ignore[return-value]
    except psycopg.errors.UniqueViolation as exc:
        if "owner_id" in (exc.diag.constraint_name or ""):
            raise AccountConflict("this owner already has an account") from exc
        raise AccountConflict(f"username {username!r} is taken") from exc


async def list_accounts(conn: psycopg.AsyncConnection[Any], role: Role | None = None) -> list[dict[str, Any]]:
    """Accounts, optionally of one role, in creation order."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE %s::text IS NULL OR role = %s ORDER BY account_id",
            (role, role),
        )
        return await cur.fetchall()


async def disable_account(conn: psycopg.AsyncConnection[Any], account_id: int) -> dict[str, Any]:
    """Disable an account and end its sessions."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"UPDATE accounts SET disabled_at = coalesce(disabled_at, now()) WHERE account_id = %s"
            f" RETURNING {_ACCOUNT_COLUMNS}",
            (account_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise AccountNotFound(f"no account {account_id}")
    await conn.execute(
        "UPDATE sessions SET revoked_at = now() WHERE account_id = %s AND revoked_at IS NULL", (account_id,)
    )
    return row


async def reset_password(
    conn: psycopg.AsyncConnection[Any], passwords: Passwords, account_id: int, password: str
) -> str:
    """Set a new one-time password (changed at next login), end the account's sessions; returns the username."""
    cur = await conn.execute("SELECT username FROM accounts WHERE account_id = %s", (account_id,))
    row = await cur.fetchone()
    if row is None:
        raise AccountNotFound(f"no account {account_id}")
    passwords.check_policy(password, row[0])
    await conn.execute(
        "UPDATE accounts SET password_hash = %s, must_change_password = true WHERE account_id = %s",
        (await passwords.hash(password), account_id),
    )
    await conn.execute(
        "UPDATE sessions SET revoked_at = now() WHERE account_id = %s AND revoked_at IS NULL", (account_id,)
    )
    return str(row[0])


# Counts an attempt in advance as a failure of its key (an account name or a client address) and sets when the next
# may be made, if the key's wait is over; one statement, so parallel attempts are counted one at a time (the row
# lock) and none passes on a count read before another's was written. Failures older than the window are forgotten.
_RESERVE = """
INSERT INTO login_throttle AS t (throttle_key, failures, last_failed_at, next_attempt_at)
VALUES (%(key)s, 1, now(), now() + bikeguard_login_delay(1, %(free)s, %(max_delay_s)s))
ON CONFLICT (throttle_key) DO UPDATE SET
    failures = CASE WHEN t.last_failed_at < now() - make_interval(secs => %(window_s)s) THEN 1 ELSE t.failures + 1 END,
    last_failed_at = now(),
    next_attempt_at = now() + bikeguard_login_delay(
        CASE WHEN t.last_failed_at < now() - make_interval(secs => %(window_s)s) THEN 1 ELSE t.failures + 1 END,
        %(free)s, %(max_delay_s)s)
WHERE t.next_attempt_at <= now()
RETURNING throttle_key
"""


async def _reserve_attempt(
    conn: psycopg.AsyncConnection[Any], settings: BackendSettings, username: str, address: str | None
) -> None:
    """Count this attempt for the account and the address (committed); raise LoginThrottled if either must wait."""
    keys = [(f"account:{username}", settings.login_max_failures)]
    if address is not None:
        keys.append((f"address:{address}", settings.login_max_failures_per_address))
    waiting = []
    for key, free in keys:
        cur = await conn.execute(
            _RESERVE,
            {"key": key, "free": free, "max_delay_s": settings.login_max_delay_s, "window_s": settings.login_window_s},
        )
        if await cur.fetchone() is None:
            waiting.append(key)
    if not waiting:
        await conn.commit()
        return
    # Not counted: waiting out the delay is enough, a refused attempt does not make it longer.
    await conn.rollback()
    cur = await conn.execute(
        "SELECT max(next_attempt_at) - now() FROM login_throttle WHERE throttle_key = ANY(%s)", (waiting,)
    )
    row = await cur.fetchone()
    wait_s = max(1, math.ceil(row[0].total_seconds())) if row and row[0] is not None else 1
    await conn.rollback()
    what = "this account" if waiting[0].startswith("account:") else "this address"
    raise LoginThrottled(f"too many failed logins for {what}; try again in {wait_s} s", wait_s)


async def _release_attempt(conn: psycopg.AsyncConnection[Any], username: str, address: str | None) -> None:
    """A correct password: the account starts afresh; the address's advance count of this attempt is taken back."""
    await conn.execute("DELETE FROM login_throttle WHERE throttle_key = %s", (f"account:{username}",))
    if address is not None:
        await conn.execute(
            "UPDATE login_throttle SET failures = greatest(failures - 1, 0) WHERE throttle_key = %s",
            (f"address:{address}",),
        )


async def login(
    conn: psycopg.AsyncConnection[Any],
    settings: BackendSettings,
    passwords: Passwords,
    username: str,
    password: str,
    address: str | None,
) -> tuple[str, User]:
    """A new session token for the username and password; raises LoginThrottled or LoginFailed.

    Each attempt is counted before the password is checked and committed, so a failure counts even though the
    request fails, and parallel attempts cannot pass the limit together.
    """
    key = username.strip().lower()
    await _reserve_attempt(conn, settings, key, address)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT account_id, password_hash FROM accounts WHERE lower(username) = %s AND disabled_at IS NULL",
            (key,),
        )
        row = await cur.fetchone()
    ok = await passwords.verify(row["password_hash"] if row else None, password)
    await conn.execute(
        "INSERT INTO login_attempts (username, address, succeeded) VALUES (%s, %s, %s)", (key, address, ok)
    )
    if not ok or row is None:
        await conn.commit()
        raise LoginFailed("wrong username or password")
    await _release_attempt(conn, key, address)
    token = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO sessions (token_hash, account_id, expires_at) VALUES (%s, %s, now() + make_interval(secs => %s))",
        (_token_hash(token), row["account_id"], settings.session_ttl_s),
    )
    user = await session_user(conn, token)
    assert user is not None
    return token, user


async def session_user(conn: psycopg.AsyncConnection[Any], token: str) -> User | None:
    """The user of a live session token, or None (unknown, expired, revoked, or account disabled)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT a.account_id, a.username, a.role, a.display_name, a.owner_id, a.must_change_password,"
            " s.expires_at AS session_expires_at"
            " FROM sessions s JOIN accounts a USING (account_id)"
            " WHERE s.token_hash = %s AND s.expires_at > now() AND s.revoked_at IS NULL AND a.disabled_at IS NULL",
            (_token_hash(token),),
        )
        row = await cur.fetchone()
    return User(**row) if row else None


async def logout(conn: psycopg.AsyncConnection[Any], token: str) -> None:
    """End the session of this token."""
    await conn.execute(
        "UPDATE sessions SET revoked_at = now() WHERE token_hash = %s AND revoked_at IS NULL", (_token_hash(token),)
    )


async def change_password(
    conn: psycopg.AsyncConnection[Any], passwords: Passwords, user: User, current: str, new: str, keep_token: str
) -> None:
    """Change the user's password after checking the current one; other sessions of the account end."""
    cur = await conn.execute("SELECT password_hash FROM accounts WHERE account_id = %s", (user.account_id,))
    row = await cur.fetchone()
    if row is None or not await passwords.verify(row[0], current):
        raise PasswordRejected("the current password is wrong")
    if new == current:
        raise PasswordRejected("the new password must differ from the current one")
    passwords.check_policy(new, user.username)
    await conn.execute(
        "UPDATE accounts SET password_hash = %s, must_change_password = false, password_changed_at = now()"
        " WHERE account_id = %s",
        (await passwords.hash(new), user.account_id),
    )
    await conn.execute(
        "UPDATE sessions SET revoked_at = now() WHERE account_id = %s AND revoked_at IS NULL AND token_hash <> %s",
        (user.account_id, _token_hash(keep_token)),
    )


async def prune(conn: psycopg.AsyncConnection[Any], settings: BackendSettings) -> None:
    """Forget login attempts and throttling older than the window, and sessions that ended a day ago."""
    await conn.execute(
        "DELETE FROM login_attempts WHERE attempted_at < now() - make_interval(secs => %s)", (settings.login_window_s,)
    )
    await conn.execute(
        "DELETE FROM login_throttle WHERE last_failed_at < now() - make_interval(secs => %s)"
        " AND next_attempt_at < now()",
        (settings.login_window_s,),
    )
    await conn.execute(
        "DELETE FROM sessions WHERE least(expires_at, coalesce(revoked_at, expires_at)) < now() - interval '1 day'"
    )


async def issue_owner_login(
    conn: psycopg.AsyncConnection[Any],
    passwords: Passwords,
    owner_id: int,
    username: str,
    display_name: str,
    created_by: str,
) -> dict[str, str]:
    """The owner's login slip: a new account, or a new one-time password for the one they have."""
    password = slip_password()
    cur = await conn.execute("SELECT account_id FROM accounts WHERE owner_id = %s", (owner_id,))
    row = await cur.fetchone()
    if row is not None:
        username = await reset_password(conn, passwords, int(row[0]), password)
    else:
        await create_account(
            conn,
            passwords,
            username=username,
            password=password,
            role="owner",
            display_name=display_name,
            created_by=created_by,
            owner_id=owner_id,
        )
    return {"username": username, "initial_password": password}


def bootstrap(
    settings: BackendSettings,
    username: str,
    password: str,
    role: Role = "admin",
    display_name: str | None = None,
    must_change_password: bool = False,
) -> None:
    """Create an account straight in the database (the first admin, from the command line or the demo)."""

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            await create_account(
                conn,
                Passwords(settings),
                username=username,
                password=password,
                role=role,
                display_name=display_name or username,
                created_by="command line",
                must_change_password=must_change_password,
            )
            await conn.commit()

    asyncio.run(run())
