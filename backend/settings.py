"""Backend settings: one object, built in the entry point from BIKEGUARD_* variables and passed down."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from pathlib import Path
from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.messages import COMMAND_TTL_MAX_S, HOTLIST_EID_WINDOWS_MAX
from protocol.signing import SigningKeyError, generate_signing_key, public_key_of, read_signing_key

# Placeholders that work on a developer's machine and are refused anywhere else.
DEFAULT_SECRET = "changethis"
_SECRET_FIELDS = ("id_encryption_key", "id_lookup_key", "certificate_signing_key")
_MIN_SECRET_CHARS = 32


class BackendSettings(BaseSettings):
    """Everything the backend reads from its environment."""

    # hide_input_in_errors: a refused setting is named and explained, never echoed with the secrets beside it.
    model_config = SettingsConfigDict(env_prefix="BIKEGUARD_", extra="ignore", hide_input_in_errors=True)

    # "production" (the default) refuses to start with the placeholder secrets below, or weak ones; "development"
    # accepts them, and must be asked for: an install left with defaults would otherwise sign certificate tokens
    # and encrypt ID numbers with a key anyone can read here.
    environment: Literal["development", "production"] = "production"
    # What the backend (API and ingest) connects as: the application role, which may read and write the data but owns
    # nothing, so it cannot turn the audit log's protection off. Migrations run as the schema's owner instead, with
    # database_owner_url (`bikeguard db migrate`; the backend too when it is given one); they grant
    # database_app_role its privileges. docs/operations.md says how to create the two roles.
    database_url: str = Field(description="PostgreSQL/TimescaleDB conninfo or URL, as the application role")
    database_owner_url: SecretStr | None = None
    database_app_role: str = "bikeguard_app"
    # A read-only streaming replica (hot standby) of database_url, as the same role, for the heavy reads: trajectories
    # and exports, passages, where searched and stolen bikes were last seen, station activity (backend.db.replica).
    # Writes, and reads that must see a write of their own, stay on database_url. Unset: everything on the primary.
    database_replica_url: str | None = None
    # Reads go to the primary while the replica is further behind than this; its lag is measured this often; and a read
    # waits this long for a replica connection before it goes to the primary (the replica then counts as away).
    database_replica_max_lag_s: float = Field(default=10.0, gt=0)
    database_replica_check_s: float = Field(default=1.0, gt=0)
    database_replica_timeout_s: float = Field(default=1.0, gt=0)
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # TLS (an mqtts:// URL): the CA of the broker's certificate (none: the system's CAs), and the backend's own
    # certificate and key when the broker asks for one.
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_client_id: str = Field(default_factory=lambda: f"bikeguard-backend-{os.getpid()}")
    # Several ingest workers share the station topics through this group; empty disables sharing
    # (needed for brokers without $share, such as the embedded amqtt).
    mqtt_shared_group: str | None = "bikeguard-ingest"
    # Ingest workers in this process, each with its own MQTT client in the shared group (client ids
    # mqtt_client_id, mqtt_client_id-2, …); more than one needs the shared group.
    ingest_workers: int = Field(default=1, ge=1, le=64)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Requests (backend.api.middleware.limits): a JSON body's bytes (photo uploads have photo_max_bytes), the seconds
    # a whole body may take to arrive, how long an idle connection is kept, and the bytes of a request's head.
    request_json_max_bytes: int = Field(default=64 * 1024, ge=1024)
    request_body_timeout_s: float = Field(default=30.0, gt=0)
    http_keep_alive_s: float = Field(default=5.0, gt=0)
    http_max_header_bytes: int = Field(default=16 * 1024, ge=4096)
    ingest_flush_rows: int = Field(default=20_000, ge=1)
    ingest_flush_interval_s: float = Field(default=0.05, gt=0)
    # The window around the receive time that reported times must fall in (backend.ingest.window): how far ahead
    # a station's clock may run, and how old a sighting may be (a spool holds days of them while the uplink is down;
    # the retention period, when shorter, is the limit).
    ingest_max_clock_skew_s: float = Field(default=300.0, gt=0)
    ingest_max_age_days: float = Field(default=90.0, gt=0)
    # v2 chips (backend.ingest.v2): the 15-minute windows before the current one whose ephemeral ids the ingest
    # holds (12 bytes a chip each; a million chips with 8: 191 MiB in all). A beacon delivered later than these
    # reach still resolves, with a table of its own window built then (a key schedule per chip: seconds).
    ingest_v2_past_windows: int = Field(default=8, ge=1, le=96)
    # Messages the ingest holds in memory before paho's thread waits (and the broker keeps the rest): a sightings
    # batch is up to about 50 KB, so at most about 50 MB by default; a flush takes up to ingest_flush_rows at once.
    ingest_max_queued_messages: int = Field(default=1000, ge=1)
    # Alerts have their own lane (a stolen chip never waits behind sightings) and their own bound: they are small.
    ingest_max_queued_alerts: int = Field(default=10_000, ge=1)
    # Rejected messages keep this much of their raw bytes (and their full length), for this many days.
    ingest_reject_max_raw_bytes: int = Field(default=64 * 1024, ge=1024)
    rejected_retention_days: int = Field(default=30, ge=1)
    # How long /api/ready waits for the database before it says the database is away.
    ready_timeout_s: float = Field(default=2.0, gt=0)
    # How long the ingest trusts its cached list of registered stations before reading it again.
    ingest_station_refresh_s: float = Field(default=5.0, gt=0)
    # A batch_seq missing for this long is asked for (backend.ingest.gaps). Out-of-order arrival is normal (a gateway
    # has several batches in flight, and several ingest workers each commit on their own) but takes well under a
    # second; the grace covers that many times over. It is shorter than the gateway's confirmation timeout (30 s) on
    # purpose: a batch the broker acknowledged and then lost would otherwise go again only when that timeout runs out
    # (then after 60, 120 ... up to 600 s), and a batch the gateway dropped would never come; asked for first, either
    # is fixed or known sooner, and every gap is seen (counted, logged, shown) rather than mended unnoticed. From the
    # loss to the request: the station's next batch (1 s), the round that notices the gap (up to ingest_gap_check_s),
    # the grace, the round that asks (up to ingest_gap_check_s again): 16 to 26 s with the defaults, inside the 30 s.
    # Asking for a batch that was only late costs one harmless resend.
    ingest_gap_grace_s: float = Field(default=15.0, gt=0)
    # How often the gap check runs (one ingest process at a time does it), and the longest wait between two
    # requests for the same gap (the wait doubles from the grace period).
    ingest_gap_check_s: float = Field(default=5.0, gt=0)
    ingest_gap_request_max_s: float = Field(default=600.0, gt=0)
    # A chip seen at two stations faster than an e-bike can ride between them is a clone.
    clone_max_speed_kmh: float = Field(default=60.0, gt=0)
    # Storage engine of a new database (`bikeguard db migrate`): TimescaleDB (a hypertable, compressed after
    # sighting_compress_after_days, retention and the hourly aggregate by policy jobs) or plain PostgreSQL (daily
    # partitions, dropped and aggregated by the backend's maintenance). "auto" takes TimescaleDB when the server
    # preloads it, plain PostgreSQL when it is not installed, and refuses when it is installed but not preloaded.
    storage_engine: Literal["auto", "timescaledb", "postgresql"] = "auto"
    sighting_compress_after_days: int = Field(default=7, ge=1)
    partition_days_ahead: int = Field(default=7, ge=1)
    retention_days: int | None = Field(default=None, ge=1)
    maintenance_interval_s: float = Field(default=3600.0, gt=0, description="partitions, retention, transitions")
    # How often stations are checked for missed heartbeats (a station is offline after two missed intervals).
    station_watch_interval_s: float = Field(default=10.0, gt=0)
    # Recovery follow-up (backend.recovery_followup): a stolen bike whose chip has been seen at its owner's usual
    # stations for this long, and nowhere else meanwhile, prompts its owner and the police ("recovered?"); checked
    # every recovery_check_interval_s, off the ingest's path.
    recovery_dwell_s: float = Field(default=7200.0, gt=0)
    recovery_check_interval_s: float = Field(default=300.0, gt=0)
    # Stolen v2 chips go on the hot list by their ephemeral ids (backend.hotlist) for this many windows of 15 minutes:
    # the one before, the current one and the rest ahead. The list is renewed at each window's start, so a station
    # whose uplink goes down still flags them for (windows - 2) * 15 minutes: 3.5 hours with the most a list may carry
    # (each stolen v2 chip costs about 19 bytes a window in the list). The renewal checks the clock at least this often.
    hotlist_eid_windows: int = Field(default=HOTLIST_EID_WINDOWS_MAX, ge=3, le=HOTLIST_EID_WINDOWS_MAX)
    hotlist_renew_check_s: float = Field(default=60.0, gt=0)
    # The time zone the daily hot sheet (page and PDF) prints its times in: the county's.
    hotsheet_time_zone: str = "Asia/Shanghai"
    # How long a command sent to a station stays valid (a station away longer refuses it as expired when it is back).
    station_command_ttl_s: int = Field(default=300, ge=1, le=COMMAND_TTL_MAX_S)
    # The programming cable that keys v2 chips at the fitting counter (hardware/programming-cable.md): a pyserial
    # URL (/dev/ttyUSB0 on the counter's machine, or rfc2217:// / socket:// to a cable served from it). Unset, v2
    # chips cannot be fitted (v1 chips can). How long to wait for the chip's answer to each request.
    counter_programmer_url: str | None = None
    counter_programmer_timeout_s: float = Field(default=2.0, gt=0)
    tile_url: str | None = None
    tile_attribution: str | None = None

    # Privacy: the resident ID number is encrypted with one key and looked up by an HMAC under another.
    id_encryption_key: SecretStr = SecretStr(DEFAULT_SECRET)
    id_lookup_key: SecretStr = SecretStr(DEFAULT_SECRET)
    # Signs the token in a registration certificate's QR code.
    certificate_signing_key: SecretStr = SecretStr(DEFAULT_SECRET)
    # Signs every hot list (Ed25519, base64url; `bikeguard station credentials` gives stations its public half).
    # Development makes a random one per process when unset; production refuses to start without one.
    hotlist_signing_key: SecretStr | None = None
    # Where the QR code points (e.g. https://bikes.example.gov). Required in production: taken from the request
    # (its Host header), a printed certificate would point wherever a request claimed to be sent to. In development
    # the request's own address stands in when it is unset.
    public_base_url: str | None = None

    # Accounts and sessions.
    session_ttl_s: int = Field(default=8 * 3600, ge=60)
    # Live streams send a keep-alive comment this often when idle, and check their session is still valid.
    live_keepalive_s: float = Field(default=15.0, gt=0)
    session_cookie_secure: bool | None = Field(default=None, description="HTTPS-only cookie; on in production")
    # Failed logins in a row (those older than the window forgotten) before each next attempt waits: 2^(n - max) s
    # after the n-th, at most login_max_delay_s; a wait, not a lockout, so nobody can lock an officer out for long.
    login_max_failures: int = Field(default=5, ge=1, description="failed logins per account before delays")
    login_max_failures_per_address: int = Field(default=50, ge=1)
    login_window_s: int = Field(default=900, ge=1)
    login_max_delay_s: int = Field(default=300, ge=1)
    # Reverse proxies whose X-Forwarded-For names the client (addresses or networks, comma-separated); from anyone
    # else the header is ignored and the connection's peer address is the client's.
    trusted_proxies: str = ""
    password_min_length: int = Field(default=10, ge=8)
    # argon2id cost (OWASP's minimum recommendation by default); hashes carry their own parameters.
    password_time_cost: int = Field(default=2, ge=1)
    password_memory_kib: int = Field(default=19_456, ge=1024)
    password_parallelism: int = Field(default=1, ge=1)

    # Registry policy.
    max_bikes_per_owner: int = Field(default=1, ge=1, description="active bikes one person may hold")
    plate_pattern: str = r"^(?:[A-Z]{2}-[0-9]{5}|[\u4e00-\u9fff][A-Z]·[0-9]{5})$"
    plate_example: str = "HZ-12345"
    photo_max_bytes: int = Field(default=2_000_000, ge=1024)
    photos_per_bike: int = Field(default=6, ge=0)
    # Owner look-ups by resident ID number per account per hour: a counter needs a few; trying candidates against a
    # masked number needs thousands.
    owner_lookups_per_hour: int = Field(default=60, ge=1)
    transfer_consent_ttl_s: int = Field(default=7 * 86400, ge=60)
    # Without a case number, police see a stolen bike's passages from its theft, but no earlier than this long before
    # the theft was reported: whoever files a report (police included) cannot open a bike's past by back-dating it.
    police_theft_lookback_s: float = Field(default=24 * 3600, ge=0)
    # Results (/statistics): the county's own time zone, for the period's days and the thefts' hour of day and weekday
    # (UTC hours would put a Chinese county's evening thefts at noon).
    statistics_timezone: str = "Asia/Shanghai"

    # Notifications to owners (backend.notifications): the sender's loop (how often it looks for due rows when
    # nobody wakes it, how many it takes at once), the lease after which a row a dead worker had taken is tried
    # again (longer than notify_send_timeout_s, the most one provider request may take), and the retry backoff.
    # Whether the backend process runs a sender; off when senders run as processes of their own
    # (`bikeguard notify`, as many as wanted).
    notify_in_backend: bool = True
    notify_poll_s: float = Field(default=5.0, gt=0)
    notify_batch: int = Field(default=20, ge=1, le=1000)
    notify_send_timeout_s: float = Field(default=10.0, gt=0)
    notify_lease_s: float = Field(default=60.0, gt=0)
    notify_max_attempts: int = Field(default=20, ge=1)
    notify_backoff_s: float = Field(default=10.0, gt=0)
    notify_backoff_max_s: float = Field(default=3600.0, gt=0)
    # E-mail through SMTP: no host, no e-mail. STARTTLS unless smtp_tls is "none"; "ssl" is SMTP over TLS (465).
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_tls: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "Bikeguard <noreply@bikeguard.invalid>"
    # SMS through one generic HTTP gateway: a POST of sms_body_template (JSON, whose string values may name $to,
    # $text and $reference, the notification's idempotency key) to sms_gateway_url, with HTTP basic credentials
    # or a bearer token. No URL, no SMS.
    sms_gateway_url: str | None = None
    sms_gateway_username: str | None = None
    sms_gateway_password: SecretStr | None = None
    sms_gateway_token: SecretStr | None = None
    sms_body_template: str = '{"to": "$to", "text": "$text", "client_reference": "$reference"}'
    # Web Push: the VAPID private key (base64url of the raw P-256 scalar, or PEM); none, no Web Push.
    # The portal subscribes with its public key (GET /api/me/notifications/push-key).
    vapid_private_key: SecretStr | None = None
    vapid_subject: str = "mailto:admin@bikeguard.invalid"

    @field_validator("plate_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        re.compile(value)
        return value

    @field_validator("statistics_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"BIKEGUARD_STATISTICS_TIMEZONE {value!r} is not a known time zone (e.g. Asia/Shanghai)"
            ) from exc
        return value

    @field_validator("database_app_role")
    @classmethod
    def _role_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError(
                f"BIKEGUARD_DATABASE_APP_ROLE {value!r} is not a plain role name (lower-case letters, digits, _)"
            )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError as exc:
                raise ValueError(f"BIKEGUARD_TRUSTED_PROXIES: {part!r} is not an address or network") from exc
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The reverse proxies whose X-Forwarded-For is believed."""
        return tuple(
            ipaddress.ip_network(p.strip(), strict=False) for p in self.trusted_proxies.split(",") if p.strip()
        )

    @model_validator(mode="after")
    def _notify_lease(self) -> Self:
        if self.notify_lease_s <= self.notify_send_timeout_s:
            raise ValueError(
                "BIKEGUARD_NOTIFY_LEASE_S must be longer than BIKEGUARD_NOTIFY_SEND_TIMEOUT_S: a row still being sent"
                " would be taken by a second worker"
            )
        return self

    @model_validator(mode="after")
    def _workers_share(self) -> Self:
        if self.ingest_workers > 1 and not self.mqtt_shared_group:
            raise ValueError(
                f"BIKEGUARD_INGEST_WORKERS={self.ingest_workers} needs BIKEGUARD_MQTT_SHARED_GROUP: without a shared"
                " subscription every worker would receive every message (a broker without $share, such as the"
                " embedded one, runs one worker)"
            )
        return self

    @property
    def hotlist_public_key(self) -> str:
        """The public half of the hot-list key, as stations are given it."""
        assert self.hotlist_signing_key is not None  # filled in by the validator
        return public_key_of(self.hotlist_signing_key.get_secret_value())

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Self:
        if self.environment == "development":
            return self
        for name in _SECRET_FIELDS:
            value = getattr(self, name).get_secret_value()
            if value == DEFAULT_SECRET or len(value) < _MIN_SECRET_CHARS:
                raise ValueError(
                    f"BIKEGUARD_{name.upper()} must be set to a random string of at least {_MIN_SECRET_CHARS}"
                    f" characters (it is {'the placeholder' if value == DEFAULT_SECRET else 'too short'});"
                    " on a development machine only, BIKEGUARD_ENVIRONMENT=development accepts the placeholder"
                )
        if len({getattr(self, n).get_secret_value() for n in _SECRET_FIELDS}) != len(_SECRET_FIELDS):
            raise ValueError("the ID encryption, ID lookup and certificate signing keys must all differ")
        return self

    @model_validator(mode="after")
    def _public_address(self) -> Self:
        url = self.public_base_url
        if url is not None and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", url):
            raise ValueError(
                f"BIKEGUARD_PUBLIC_BASE_URL {url!r} is not an absolute http(s) address like https://bikes.example.gov"
            )
        if url is None and self.environment == "production":
            raise ValueError(
                "BIKEGUARD_PUBLIC_BASE_URL must be set in production (e.g. https://bikes.example.gov): certificates'"
                " QR codes point there, and are never made from a request's Host header"
            )
        return self

    @model_validator(mode="after")
    def _hotlist_key(self) -> Self:
        if self.hotlist_signing_key is None:
            if self.environment != "development":
                raise ValueError(
                    "BIKEGUARD_HOTLIST_SIGNING_KEY must be set outside development: stations take only hot lists"
                    " signed with it (`bikeguard station signing-key` makes one)"
                )
            self.hotlist_signing_key = SecretStr(generate_signing_key())
        try:
            read_signing_key(self.hotlist_signing_key.get_secret_value())
        except SigningKeyError as exc:
            raise ValueError(f"BIKEGUARD_HOTLIST_SIGNING_KEY: {exc}") from exc
        return self

    @property
    def hotlist_key(self) -> Ed25519PrivateKey:
        """The key that signs the hot list."""
        assert self.hotlist_signing_key is not None  # filled in by the validator
        return read_signing_key(self.hotlist_signing_key.get_secret_value())

    @property
    def secure_cookies(self) -> bool:
        """Whether the session cookie is sent over HTTPS only."""
        if self.session_cookie_secure is not None:
            return self.session_cookie_secure
        return self.environment == "production"


def random_secrets() -> dict[str, str]:
    """Fresh random values for every secret setting (for the demo and tests), as BIKEGUARD_* variables."""
    values = {f"BIKEGUARD_{name.upper()}": secrets.token_urlsafe(32) for name in _SECRET_FIELDS}
    return values | {"BIKEGUARD_HOTLIST_SIGNING_KEY": generate_signing_key()}


def random_secret_settings() -> dict[str, SecretStr]:
    """Fresh random values for every secret setting, as keyword arguments of BackendSettings."""
    values = {name: SecretStr(secrets.token_urlsafe(32)) for name in _SECRET_FIELDS}
    return values | {"hotlist_signing_key": SecretStr(generate_signing_key())}
