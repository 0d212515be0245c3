"""Who may see what: the one viewer policy that routes, pages and the live feed ask.

An owner sees only their own bikes, and a bike's passages and alarms only since they hold it. Police see
alarms and stolen bikes (a stolen bike's passages since the theft); a person, or the passages of a bike that is
not stolen, needs a case number, and each such access leaves an audit record. "Since the theft" is bounded by
the report: no earlier than a set time (BIKEGUARD_POLICE_THEFT_LOOKBACK_S) before the theft was reported, so a
back-dated report opens no bike's past; police file a theft report only under a case number. Installers see
stations and the alarms about them, no personal data. Clerks register bikes and see owners masked. Admins see
what police and clerks see. Which roles may open a route or a page at all is said where the route is declared;
`admission` is the one rule that checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from backend import audit, trajectories
from backend.accounts import Role, User
from backend.alarms.kinds import HIDDEN_FROM_POLICE, INSTALLER_KINDS, OWNER_ONLY_KINDS
from backend.identity import mask_name
from backend.registry import NotFound, Registry
from backend.settings import BackendSettings
from protocol.messages import format_tag, parse_tag

_CASE_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9/_.-]{3,39}")
# Those who see a bike's owner (masked) with the bike: the owner themself and the counter.
_SEE_OWNER_WITH_BIKE: frozenset[Role] = frozenset({"owner", "clerk", "admin"})
# Those who find deregistered bikes too (to read their history); for everyone else a bike off the registry is gone.
_FIND_DEREGISTERED: frozenset[Role] = frozenset({"clerk", "admin"})
# Police must give a case number to see a person; the counter (clerks, admins) works with owners anyway.
_CASE_FOR_PERSON: frozenset[Role] = frozenset({"police"})
_DEFAULT_THEFT_LOOKBACK = timedelta(seconds=BackendSettings.model_fields["police_theft_lookback_s"].default)


class AccessError(Exception):
    """Base of access refusals."""


class Refused(AccessError):
    """The viewer may not see this at all."""


class CaseNumberRequired(Refused):
    """Police access to personal data, or to a bike that is not stolen, needs a case number."""


def require_case_number(case_number: str | None, what: str) -> str:
    """The case number, checked for shape; raises CaseNumberRequired when it is missing or malformed."""
    if case_number is None or not case_number.strip():
        raise CaseNumberRequired(f"a case number is required to see {what}")
    text = case_number.strip()
    if not _CASE_NUMBER.fullmatch(text):
        raise CaseNumberRequired("a case number has 4-40 letters, digits, '/', '_', '.' or '-'")
    return text


@dataclass(frozen=True, slots=True)
class Scope:
    """Which alarms a viewer may see: one owner's bikes (since they own them), only some kinds, or all but some;
    and whether an alarm about a bike not reported stolen shows only its kind and station (police without a case)."""

    owner_id: int | None = None
    hidden_kinds: tuple[str, ...] = ()
    only_kinds: tuple[str, ...] | None = None
    case_for_bikes_not_stolen: bool = False

    def allows(self, kind: str) -> bool:
        """Whether alarms of this kind are in scope (the owner rule aside)."""
        return kind not in self.hidden_kinds and (self.only_kinds is None or kind in self.only_kinds)

    def hides_details(self, alarm: dict[str, Any]) -> bool:
        """Whether this scope shows the alarm (as backend.alarms.queries reads it) by its kind and station only:
        it is about a chip whose bike is not reported stolen, and no case number opened it."""
        return self.case_for_bikes_not_stolen and alarm["tag_id"] is not None and not alarm["stolen"]

    def shown(self, alarm: dict[str, Any]) -> dict[str, Any]:
        """The alarm as this scope shows it: a bike not reported stolen without its plate, chip and trail (where it
        goes), which need a case number; `details_hidden` says which."""
        if not self.hides_details(alarm):
            return {**alarm, "details_hidden": False}
        hidden: dict[str, Any] = {
            "plate": None,
            "tag_id": None,
            "trail": [],
            "next_stations": [],
            "crossings": [],
            "evidence": [],  # where the chip's genuine beacon was heard is where the bike was
        }
        return {**alarm, **hidden, "details_hidden": True}

    def under_case(self) -> Scope:
        """This scope with the details of alarms about bikes not reported stolen opened (by a case number)."""
        return replace(self, case_for_bikes_not_stolen=False)

    def sql(self) -> tuple[str, list[Any]]:
        """A WHERE fragment (starting with AND) and its parameters."""
        where, params = "", list[Any]()
        if self.hidden_kinds:
            where += " AND NOT (a.kind = ANY(%s))"
            params.append(list(self.hidden_kinds))
        if self.only_kinds is not None:
            where += " AND a.kind = ANY(%s)"
            params.append(list(self.only_kinds))
        if self.owner_id is not None:
            where += (
                " AND EXISTS (SELECT 1 FROM bike_bindings ob WHERE ob.bike_id = a.bike_id AND ob.kind = 'owner'"
                " AND ob.valid_to IS NULL AND ob.owner_id = %s AND a.raised_at >= ob.valid_from)"
            )
            params.append(self.owner_id)
        return where, params


EVERYTHING = Scope()
POLICE = Scope(hidden_kinds=HIDDEN_FROM_POLICE, case_for_bikes_not_stolen=True)
INSTALLERS = Scope(only_kinds=INSTALLER_KINDS)


Admission = Literal["sign in", "change password", "wrong role"]


def admission(user: User | None, roles: tuple[Role, ...], *, pending_ok: bool = False) -> Admission | None:
    """Why this user may not pass a door open to these roles (no roles: any account), or None if they may.

    An account that must still change its password passes only doors marked pending_ok."""
    if user is None:
        return "sign in"
    if user.must_change_password and not pending_ok:
        return "change password"
    if roles and user.role not in roles:
        return "wrong role"
    return None


async def owner_since(conn: psycopg.AsyncConnection[Any], owner_id: int, bike_id: int) -> datetime | None:
    """Since when the owner has held the bike (None if it is not theirs now): they see nothing from before."""
    cur = await conn.execute(
        "SELECT valid_from FROM bike_bindings WHERE bike_id = %s AND kind = 'owner' AND valid_to IS NULL"
        " AND owner_id = %s",
        (bike_id, owner_id),
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def tag_binding(conn: psycopg.AsyncConnection[Any], tag_id: int) -> dict[str, Any] | None:
    """The chip's current bike, its owner, since when each binding holds, since when it is stolen and when that was
    reported (or None)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT c.bike_id, b.owner_id, cb.valid_from AS chip_since, ob.valid_from AS owner_since,"
            " t.stolen_at, t.reported_at FROM chips c JOIN bikes b USING (bike_id)"
            " JOIN bike_bindings cb ON cb.bike_id = c.bike_id AND cb.kind = 'chip' AND cb.valid_to IS NULL"
            " JOIN bike_bindings ob ON ob.bike_id = c.bike_id AND ob.kind = 'owner' AND ob.valid_to IS NULL"
            " LEFT JOIN theft_reports t ON t.bike_id = c.bike_id AND t.recovered_at IS NULL"
            " WHERE c.tag_id = %s",
            (tag_id,),
        )
        return await cur.fetchone()


def stolen_visible_since(stolen_at: datetime, reported_at: datetime, lookback: timedelta) -> datetime:
    """From when police see a stolen bike without a case number: the theft, but at most `lookback` before its report.

    Whoever files a report chooses the time of the theft; bounding it by the report keeps a back-dated report from
    opening the bike's past (its owner's everyday life) without a case number."""
    return max(stolen_at, reported_at - lookback)


@dataclass(frozen=True, slots=True)
class Viewer:
    """What one signed-in account may see: which bikes, chips, time windows, people and alarms."""

    user: User
    # How long before a theft's report police see the stolen bike without a case number.
    theft_lookback: timedelta = _DEFAULT_THEFT_LOOKBACK

    def stolen_since(self, stolen_at: datetime, reported_at: datetime) -> datetime:
        """From when this viewer sees a stolen bike without a case number (stolen_visible_since)."""
        return stolen_visible_since(stolen_at, reported_at, self.theft_lookback)

    @property
    def bike_owner(self) -> int | None:
        """The owner whose bikes alone this viewer may see (a filter for registry queries); None: any bike."""
        return (self.user.owner_id or 0) if self.user.role == "owner" else None

    @property
    def finds_deregistered(self) -> bool:
        """Whether this viewer's bike searches find deregistered bikes too (the counter reads their history)."""
        return self.user.role in _FIND_DEREGISTERED

    async def check_bike(self, conn: psycopg.AsyncConnection[Any], registry: Registry, bike_id: int) -> dict[str, Any]:
        """The bike if this viewer may see it; another owner's is NotFound, exactly as one that does not exist."""
        return await registry.get_bike(conn, bike_id, owner_id=self.bike_owner)

    async def bike(self, conn: psycopg.AsyncConnection[Any], registry: Registry, bike_id: int) -> dict[str, Any]:
        """The bike as this viewer may see it: with its owner masked for the owner and the counter, else none."""
        return (await self.with_owners(conn, registry, [await self.check_bike(conn, registry, bike_id)]))[0]

    async def with_owners(
        self, conn: psycopg.AsyncConnection[Any], registry: Registry, bikes: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The bikes, each with its owner's masked summary where this viewer may see it."""
        if self.user.role in _SEE_OWNER_WITH_BIKE:
            for bike in bikes:
                bike["owner"] = await registry.owner_summary(conn, bike["owner_id"])
        return bikes

    def owner_named(self, owner_id: int, owner_name: str | None) -> str:
        """How a (past or present) owner of a bike is named to this viewer: never by name to another owner."""
        if self.user.role == "owner":
            return "you" if owner_id == self.user.owner_id else "another owner"
        return f"#{owner_id} {mask_name(owner_name or '')}"

    def actor_named(self, actor: str | None) -> str | None:
        """Who did something in a bike's history, as this viewer may read it: to an owner, an owner's account is
        "you" or "another owner" (an owner's login may be their mobile number); staff keep their names."""
        if self.user.role != "owner" or actor is None or not actor.startswith("owner:"):
            return actor
        return "you" if actor == self.user.actor else "another owner"

    async def bike_history(
        self, conn: psycopg.AsyncConnection[Any], registry: Registry, bike_id: int
    ) -> list[dict[str, Any]]:
        """The bike's history (registry.history, each row with its `value`) as this viewer may see it.

        An owner (of the bike now; else NotFound): the owner rows, others as "another owner"; of the rest only what
        was in force while they held it, with other owners' accounts unnamed. The counter: all, owners masked."""
        await self.check_bike(conn, registry, bike_id)
        held_since = await owner_since(conn, self.user.owner_id or 0, bike_id) if self.user.role == "owner" else None
        out = []
        for row in await registry.history(conn, bike_id):
            ended = row["valid_to"]
            if held_since is not None and row["kind"] != "owner" and ended is not None and ended < held_since:
                continue
            value = row["plate"] or row["tag_id"]
            if row["kind"] == "owner":
                value = self.owner_named(row["owner_id"], row["owner_name"])
            bound_by, unbound_by = self.actor_named(row["bound_by"]), self.actor_named(row["unbound_by"])
            out.append({**row, "value": value, "bound_by": bound_by, "unbound_by": unbound_by})
        return out

    def case_for_person(self, case_number: str | None) -> str | None:
        """The case number under which this viewer sees a person: police must give one (CaseNumberRequired)."""
        if self.user.role in _CASE_FOR_PERSON:
            return require_case_number(case_number, "a bike's owner")
        return case_number

    def case_for_theft_report(self, case_number: str | None) -> str | None:
        """The case number a theft report is filed under: police must give one (a report opens a bike's passages
        to them without a further case number), others may."""
        if self.user.role in _CASE_FOR_PERSON and (case_number is None or not case_number.strip()):
            raise CaseNumberRequired("police file a theft report under a case number: give case_number")
        return require_case_number(case_number, "a theft report") if case_number is not None else None

    async def theft_reported(
        self, conn: psycopg.AsyncConnection[Any], bike: dict[str, Any], case_number: str | None
    ) -> None:
        """Audit a theft report filed under a case number (every one police file), with the time of the theft given."""
        if case_number is not None:
            theft = bike["theft"]
            await audit.record(
                conn,
                self.user,
                "bike.theft_report",
                f"bike:{bike['bike_id']}",
                case_number,
                stolen_at=theft["stolen_at"].isoformat(),
                reported_at=theft["reported_at"].isoformat(),
            )

    async def recovered(
        self, conn: psycopg.AsyncConnection[Any], bike: dict[str, Any], case_number: str | None
    ) -> None:
        """Audit police marking a stolen bike recovered: under the case number given, else the report's own."""
        if self.user.role in _CASE_FOR_PERSON:
            case = require_case_number(case_number, "a recovery") if case_number else bike["theft"]["police_report"]
            await audit.record(conn, self.user, "bike.recovered", f"bike:{bike['bike_id']}", case)

    async def read_owner(
        self,
        conn: psycopg.AsyncConnection[Any],
        registry: Registry,
        owner_id: int,
        case_number: str | None,
        **detail: Any,
    ) -> dict[str, Any]:
        """The owner's record (ID number masked); the reading is audited, under the case number if any."""
        owner = await registry.get_owner(conn, owner_id)
        await audit.record(conn, self.user, "owner.view", f"owner:{owner_id}", case_number, **detail)
        return owner

    async def search_result(
        self,
        conn: psycopg.AsyncConnection[Any],
        reads: psycopg.AsyncConnection[Any],
        registry: Registry,
        bike: dict[str, Any],
        case_number: str | None,
        search: str,
    ) -> dict[str, Any]:
        """A bike found by a police search: its owner only under a case number (audited); where it was last seen
        with a case number, or since the theft (as stolen_since bounds it) for a stolen bike; else neither. The audit
        record goes on conn; where it was seen is read on reads (backend.db.replica)."""
        owner, seen = None, None
        if case_number is not None:
            owner = await self.read_owner(
                conn, registry, bike["owner_id"], case_number, bike_id=bike["bike_id"], search=search
            )
        if bike["tag_id"] is not None and (case_number is not None or bike["stolen"]):
            since = (
                None if case_number is not None else self.stolen_since(bike["stolen_at"], bike["theft"]["reported_at"])
            )
            seen = await trajectories.last_seen(reads, parse_tag(bike["tag_id"]), since)
        return {"bike": bike, "last_seen": seen, "owner": owner}

    async def stolen_bikes(
        self, conn: psycopg.AsyncConnection[Any], reads: psycopg.AsyncConnection[Any], registry: Registry
    ) -> list[dict[str, Any]]:
        """Police, admin: every bike reported stolen, with where it was last seen since the theft (as stolen_since
        bounds it; read on reads) and no owner; the list is audited as one read (on conn)."""
        self._police_only("the list of stolen bikes")
        bikes = await registry.stolen_bikes(conn)
        chips = [
            (i, parse_tag(b["tag_id"]), self.stolen_since(b["stolen_at"], b["theft"]["reported_at"]))
            for i, b in enumerate(bikes)
            if b["tag_id"] is not None
        ]
        seen: list[dict[str, Any] | None] = [None] * len(bikes)
        for (i, _, _), where in zip(chips, await trajectories.last_seen_of(reads, [c[1:] for c in chips]), strict=True):
            seen[i] = where
        await audit.record(conn, self.user, "bikes.stolen_list", None, None, bikes=len(bikes))
        return [{"bike": bike, "last_seen": where, "owner": None} for bike, where in zip(bikes, seen, strict=True)]

    async def bike_window(
        self,
        conn: psycopg.AsyncConnection[Any],
        bike: dict[str, Any],
        since: datetime,
        until: datetime,
        case_number: str | None,
        **detail: str,
    ) -> tuple[datetime, datetime]:
        """The part of [since, until) of the bike's passages this viewer may see.

        Owner: since they hold the bike (NotFound if they do not). Police: a stolen bike since the theft (as
        stolen_since bounds it); otherwise a case number is needed. Every police access is audited, with `detail`
        (what was read).
        """
        bike_id = bike["bike_id"]
        if self.user.role == "owner":
            held_since = await owner_since(conn, self.user.owner_id or 0, bike_id)
            if held_since is None:
                raise NotFound(f"no bike {bike_id}", "bike")
            return max(since, held_since), until
        self._police_only("a bike's passages")
        if case_number is None and bike["stolen"]:
            await audit.record(conn, self.user, "bike.trajectory", f"bike:{bike_id}", None, stolen=True, **detail)
            return max(since, self.stolen_since(bike["stolen_at"], bike["theft"]["reported_at"])), until
        case = require_case_number(case_number, "the trajectory of a bike that is not reported stolen")
        await audit.record(
            conn,
            self.user,
            "bike.trajectory",
            f"bike:{bike_id}",
            case,
            since=since.isoformat(),
            until=until.isoformat(),
            **detail,
        )
        return since, until

    async def passages_window(
        self,
        conn: psycopg.AsyncConnection[Any],
        tag_id: str | None,
        station_id: str | None,
        since: datetime,
        until: datetime,
        case_number: str | None,
    ) -> tuple[datetime, datetime]:
        """The part of [since, until) of one chip's (tag_id, hex) or one station's passages this viewer may see.

        Owner: only their own chip (another's is NotFound), since the chip and the bike are theirs; never a
        station's traffic. Police: a stolen chip since the theft (as stolen_since bounds it); any other chip, or a
        station, with a case number. Every police access is audited.
        """
        tag = parse_tag(tag_id) if tag_id is not None else None
        binding = await tag_binding(conn, tag) if tag is not None else None
        if self.user.role == "owner":
            if tag is None:
                raise Refused("an owner can look up only their own chip")
            if binding is None or binding["owner_id"] != self.user.owner_id:
                raise NotFound(f"no chip {tag_id} among your bikes", "tag_id")
            return max(since, binding["chip_since"], binding["owner_since"]), until
        self._police_only("passages")
        if case_number is None and station_id is None and binding is not None and binding["stolen_at"] is not None:
            await audit.record(conn, self.user, "sightings.view", f"tag:{format_tag(tag or 0)}", None, stolen=True)
            stolen_since = self.stolen_since(binding["stolen_at"], binding["reported_at"])
            return max(since, stolen_since, binding["chip_since"]), until
        case = require_case_number(
            case_number, "passages of a chip that is not reported stolen, or a station's traffic"
        )
        subject = f"tag:{format_tag(tag)}" if tag is not None else f"station:{station_id}"
        await audit.record(
            conn,
            self.user,
            "sightings.view",
            subject,
            case,
            station_id=station_id,
            since=since.isoformat(),
            until=until.isoformat(),
        )
        return since, until

    def _police_only(self, what: str) -> None:
        # Routes admit only owners and police here; this keeps any other role out should a route widen.
        if self.user.role not in ("police", "admin"):
            raise Refused(f"a {self.user.role} may not see {what}")

    def alarm_scope(self, only_kinds: tuple[str, ...] | None = None) -> Scope:
        """The alarms this viewer may see (narrowed to only_kinds when given, e.g. the station kinds of a desk).

        Owner: their own bikes' alarms since they hold them. Installer: alarms about stations. Police, admin:
        every alarm but an armed bike moving (that shows where a bike that is not stolen is), one about a bike not
        reported stolen by its kind and station only (Scope.shown; open_alarm_scope opens it with a case)."""
        if self.user.role == "owner":
            scope = Scope(owner_id=self.user.owner_id or 0)
        elif self.user.role == "installer":
            scope = INSTALLERS
        else:
            scope = POLICE
        if only_kinds is None:
            return scope
        narrowed = only_kinds if scope.only_kinds is None else tuple(k for k in scope.only_kinds if k in only_kinds)
        return replace(scope, only_kinds=narrowed)

    def open_alarm_scope(self, case_number: str | None) -> tuple[Scope, str | None]:
        """The alarm scope to read one alarm in, and the case number (checked) that opens the details of an alarm
        about a bike not reported stolen; without one, the plain alarm_scope."""
        scope = self.alarm_scope()
        if case_number is None:
            return scope, None
        return scope.under_case(), require_case_number(case_number, "the details of an alarm")

    async def alarm_opened(
        self, conn: psycopg.AsyncConnection[Any], alarm: dict[str, Any], case_number: str | None
    ) -> None:
        """Audit the details of an alarm about a bike not reported stolen, opened under a case number."""
        if case_number is not None and self.alarm_scope().hides_details(alarm):
            await audit.record(conn, self.user, "alarm.view", f"alarm:{alarm['id']}", case_number, kind=alarm["kind"])

    def may_handle_alarm(self, kind: str) -> bool:
        """Whether this viewer may acknowledge or clear an alarm of this kind it sees: an owner only their own."""
        return self.user.role != "owner" or kind in OWNER_ONLY_KINDS


def viewer_of(user: User, settings: BackendSettings | None = None) -> Viewer:
    """The viewer policy of the signed-in user, under the settings' look-back on thefts (its default without them)."""
    if settings is None:
        return Viewer(user)
    return Viewer(user, timedelta(seconds=settings.police_theft_lookback_s))


def alarm_scope(user: User, only_kinds: tuple[str, ...] | None = None) -> Scope:
    """The alarms this user may see (what the alarm routes, the pages and the live feed filter by)."""
    return viewer_of(user).alarm_scope(only_kinds)
