"""The gateway's settings: one object, built in the entry point and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway import rejected_runs
from gateway.mqtt import Tls
from gateway.spool import DEFAULT_MAX_BYTES, MIB
from protocol.frames import BAUD_RATE
from protocol.ids import IdError, check_station_id
from protocol.mqtt_address import mqtt_address, uses_tls
from protocol.signing import SigningKeyError, read_public_key


def _default_firmware() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"bikeguard-gateway/{version('bikeguard')}"
    except PackageNotFoundError:
        return "bikeguard-gateway/dev"


class GatewaySettings(BaseSettings):
    """Everything one station's gateway needs; env vars are `BIKEGUARD_GATEWAY_<FIELD>`."""

    # hide_input_in_errors: a refused setting is named and explained, never echoed (a URL may carry a password).
    model_config = SettingsConfigDict(
        env_prefix="BIKEGUARD_GATEWAY_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    station_id: str
    serial_url: str = Field(description="anything serial.serial_for_url takes: /dev/ttyUSB0, a pty, socket://")
    baud_rate: int = BAUD_RATE
    mqtt_url: SecretStr = SecretStr("mqtt://127.0.0.1:1883")
    spool_path: Path | None = Field(default=None, description="SQLite file; default ./gateway-<id>.spool")
    spool_max_bytes: int = Field(
        default=DEFAULT_MAX_BYTES,
        ge=MIB,
        description="payload bytes the spool may hold; when full the oldest sightings go (docs/spool.md)",
    )
    spool_drop_log_interval_s: float = Field(default=60.0, gt=0, description="at most one drop warning per interval")

    passage_gap_s: float = Field(default=8.0, gt=0)
    passage_max_s: float = Field(default=60.0, gt=0)
    passage_checkpoint_s: float = Field(
        default=10.0,
        gt=0,
        description="how often the open passages' counts are rewritten to the spool (new ones go at once)",
    )
    batch_max: int = Field(default=500, ge=1, le=10_000)
    batch_interval_s: float = Field(default=1.0, gt=0)
    status_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="the longest wait between two statuses (each wait is a random 0-20 % shorter: stations started"
        " together drift apart)",
    )
    firmware: str = Field(default_factory=_default_firmware)

    # A mobile reader (issue 16): the GPS receiver's serial port; each sighting then carries the reader's position.
    gps_url: str | None = Field(default=None, description="the GPS receiver's port (NMEA 0183); None: a fixed station")
    gps_baud_rate: int = Field(default=9600, gt=0)
    gps_fix_max_age_s: float = Field(
        default=10.0, gt=0, description="a fix older than this at a beacon is no position: the sighting goes without"
    )

    serial_read_timeout_s: float = Field(default=0.2, gt=0)
    serial_reopen_min_s: float = Field(default=0.25, gt=0)
    serial_reopen_max_s: float = Field(default=10.0, gt=0)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    inflight_max: int = Field(default=16, ge=1, le=20, description="QoS 1 publishes awaiting PUBACK at once")
    confirm_timeout_s: float = Field(
        default=30.0, gt=0, description="a batch sent and not confirmed by the backend within this goes again"
    )
    confirm_backoff_max_s: float = Field(
        default=600.0, gt=0, description="the wait for a confirmation doubles per resend of a batch, up to this"
    )
    mqtt_keepalive_s: int = Field(default=30, ge=5)
    # TLS (an mqtts:// URL): the CA of the broker's certificate (none: the system's CAs), and the station's own
    # certificate and key when the broker asks for one.
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # The station's own monitoring (gateway/metrics.py): off unless a port is given; stations of one fleet process
    # that name the same port share one endpoint, labelled by station.
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus /metrics; None: off")
    metrics_host: str = Field(default="127.0.0.1", description="where /metrics listens; the station itself only")
    # The rejected-runs file (gateway/rejected_runs.py): what the decoder refused, kept for the installer.
    rejected_runs_path: Path | None = Field(
        default=None, description="JSON lines file; default rejected-runs-<id>.jsonl beside the spool"
    )
    rejected_runs_max_bytes: int = Field(
        default=MIB, ge=4096, description="the file is rotated to <file>.1 before it passes this size"
    )
    rejected_run_max_bytes: int = Field(
        default=256, ge=16, le=65536, description="bytes of one rejected run kept (its length is always kept)"
    )

    # The backend's public key (`bikeguard station credentials` prints it): the station takes only hot lists signed
    # with its private half. Without it the station takes no hot list at all (it flags from the list it saved).
    hotlist_public_key: str | None = Field(default=None, description="base64url Ed25519 public key of the backend")
    # About 11 bytes a tag: 100,000 tags are about 1.1 MB. A larger payload is refused before it is parsed.
    hotlist_max_bytes: int = Field(default=2 * MIB, ge=4096, description="largest hot-list payload taken")
    hotlist_max_tags: int = Field(default=100_000, ge=1, description="most tags a hot list may hold")
    # A fleet process restarts a station whose task failed, waiting this long (doubling per failure in a row).
    station_restart_min_s: float = Field(default=1.0, gt=0)
    station_restart_max_s: float = Field(default=60.0, gt=0)

    @field_validator("hotlist_public_key")
    @classmethod
    def _public_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            read_public_key(value)
        except SigningKeyError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("station_id")
    @classmethod
    def _station_id(cls, value: str) -> str:
        try:
            return check_station_id(value)
        except IdError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: SecretStr) -> SecretStr:
        mqtt_address(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _defaults(self) -> Self:
        if self.spool_path is None:
            object.__setattr__(self, "spool_path", Path(f"gateway-{self.station_id}.spool"))
        if self.passage_max_s < self.passage_gap_s:
            raise ValueError("passage_max_s must not be shorter than passage_gap_s")
        tls_files = (self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)
        if any(tls_files) and not uses_tls(self.mqtt_url.get_secret_value()):
            raise ValueError("TLS files are set but the MQTT URL is not mqtts://: the station would talk in clear")
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("mqtt_cert_file and mqtt_key_file go together (the station's certificate and its key)")
        for path in tls_files:
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        return self

    @property
    def mqtt_tls(self) -> Tls | None:
        """TLS for the broker connection, or None for a plain mqtt:// URL."""
        if not uses_tls(self.mqtt_url.get_secret_value()):
            return None
        return Tls(self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)

    @property
    def spool_file(self) -> Path:
        """The spool's SQLite file (spool_path, defaulted from the station id)."""
        assert self.spool_path is not None  # filled in by the validator
        return self.spool_path

    @property
    def rejected_runs_file(self) -> Path:
        """The rejected-runs file (rejected_runs_path, defaulted beside the spool)."""
        if self.rejected_runs_path is not None:
            return self.rejected_runs_path
        return rejected_runs.default_path(self.spool_file, self.station_id)

    @property
    def mqtt_address(self) -> tuple[str, int, str | None, str | None]:
        """host, port, username, password from mqtt_url."""
        return mqtt_address(self.mqtt_url.get_secret_value())

    @property
    def mqtt_endpoint(self) -> str:
        """host:port, safe to log (no credentials)."""
        host, port, _, _ = self.mqtt_address
        return f"{host}:{port}"


class StationFilesSettings(GatewaySettings):
    """A station's settings as far as its files go: the serial port need not be given (`bikeguard gateway
    rejected` reads the station's rejected-runs file from the same BIKEGUARD_GATEWAY_* variables as the gateway)."""

    serial_url: str = Field(default="", description="not used: the files alone are read")
