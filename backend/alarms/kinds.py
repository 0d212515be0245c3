"""The alarm kinds: each with its severity, who may see it, and what it is about; the groups used elsewhere."""

from __future__ import annotations

from enum import StrEnum


class Severity(StrEnum):
    """How urgent an alarm is, most urgent first."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for the most urgent."""
        return list(Severity).index(self)


class Audience(StrEnum):
    """Who may see an alarm of a kind (admins see what the police see)."""

    POLICE = "police"
    OWNER = "owner"
    INSTALLER = "installer"


class Subject(StrEnum):
    """What an alarm is about: a chip (and its bike), or a station."""

    TAG = "tag"
    STATION = "station"


class AlarmKind(StrEnum):
    """An alarm kind; its value is the string stored in the database and shown by the API."""

    STOLEN_CHIP_SEEN = "stolen_chip_seen"
    CHIP_CLONED = "chip_cloned"
    ARMED_BIKE_MOVING = "armed_bike_moving"
    TAMPER = "tamper"
    LOW_BATTERY = "low_battery"
    STATION_OFFLINE = "station_offline"
    POSSIBLY_RECOVERED = "possibly_recovered"

    @property
    def severity(self) -> Severity:
        """How urgent alarms of this kind are."""
        return _TRAITS[self][0]

    @property
    def audience(self) -> frozenset[Audience]:
        """Who may see alarms of this kind (an owner only those of their own bikes)."""
        return _TRAITS[self][1]

    @property
    def subject(self) -> Subject:
        """What alarms of this kind are about."""
        return _TRAITS[self][2]

    @property
    def has_trail(self) -> bool:
        """Whether the alarm is about a bike on the move, so it carries the chip's trail of passages."""
        return _TRAITS[self][3]

    @property
    def intercepts(self) -> bool:
        """Whether the alarm proposes where to meet the bike next (its likeliest next stations)."""
        return self is AlarmKind.STOLEN_CHIP_SEEN


_P, _O, _I = Audience.POLICE, Audience.OWNER, Audience.INSTALLER
# kind: severity, audience, subject, trail.
_TRAITS: dict[AlarmKind, tuple[Severity, frozenset[Audience], Subject, bool]] = {
    AlarmKind.STOLEN_CHIP_SEEN: (Severity.CRITICAL, frozenset({_P, _O}), Subject.TAG, True),
    AlarmKind.CHIP_CLONED: (Severity.CRITICAL, frozenset({_P, _O}), Subject.TAG, True),
    # An armed bike moving is its owner's business: it shows where a bike that is not stolen is.
    AlarmKind.ARMED_BIKE_MOVING: (Severity.WARNING, frozenset({_O}), Subject.TAG, True),
    AlarmKind.TAMPER: (Severity.WARNING, frozenset({_P, _O}), Subject.TAG, False),
    AlarmKind.LOW_BATTERY: (Severity.INFO, frozenset({_P, _O}), Subject.TAG, False),
    # About a station, not a person: installers see it too.
    AlarmKind.STATION_OFFLINE: (Severity.WARNING, frozenset({_P, _I}), Subject.STATION, False),
    # A stolen bike's chip back at its owner's usual stations (backend.recovery_followup): "recovered?"
    AlarmKind.POSSIBLY_RECOVERED: (Severity.INFO, frozenset({_P, _O}), Subject.TAG, False),
}

# Kinds whose alarm carries the chip's trail of passages: a bike on the move.
TRAIL_KINDS = tuple(k for k in AlarmKind if k.has_trail)
# Kinds about a station rather than a chip: no personal data.
STATION_KINDS = tuple(k for k in AlarmKind if k.subject is Subject.STATION)
# Kinds only the owner deals with (the police neither see nor handle them).
OWNER_ONLY_KINDS = tuple(k for k in AlarmKind if k.audience == {Audience.OWNER})
# Kinds the police (and admins) do not see.
HIDDEN_FROM_POLICE = tuple(k for k in AlarmKind if Audience.POLICE not in k.audience)
# Kinds installers see.
INSTALLER_KINDS = tuple(k for k in AlarmKind if Audience.INSTALLER in k.audience)


def severity_rank(severity: str) -> int:
    """Sort key of a stored severity, most urgent first (an unknown one last)."""
    try:
        return Severity(severity).rank
    except ValueError:
        return len(Severity)
