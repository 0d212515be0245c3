"""The self-test's thresholds and timeouts: one settings object, built in the entry point."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.messages import format_tag, parse_tag


class SelfTestSettings(BaseSettings):
    """Thresholds and timeouts of the self-test; env vars are `BIKEGUARD_SELFTEST_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="BIKEGUARD_SELFTEST_", extra="ignore", frozen=True)

    test_tag: str | None = Field(default=None, description="8 hex digits; None: any tag counts")
    module_timeout_s: float = Field(default=12.0, gt=0, description="the module sends a status every 10 s")
    tag_timeout_s: float = Field(default=30.0, gt=0)
    noise_max_dbm: int = Field(default=-85, description="a noise floor above this fails")
    tag_rssi_min_dbm: int = Field(default=-75, description="a test tag weaker than this at arm's length warns")
    corrupt_frames_max: int = Field(default=2, ge=0, description="more CRC/length errors than this warn")
    clock_max_skew_s: float = Field(default=2.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    hotlist_timeout_s: float = Field(default=5.0, gt=0)
    heartbeat_timeout_s: float = Field(default=5.0, gt=0)
    backend_url: str | None = Field(default=None, description="http(s)://host:port of the backend; None: skip")
    backend_token: SecretStr | None = Field(default=None, description="an installer's API token")
    backend_timeout_s: float = Field(default=20.0, gt=0)
    backend_poll_s: float = Field(default=1.0, gt=0)

    @field_validator("test_tag")
    @classmethod
    def _test_tag(cls, value: str | None) -> str | None:
        return None if value is None else format_tag(parse_tag(value))

    @field_validator("backend_url")
    @classmethod
    def _backend_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"backend URL must start with http:// or https:// : {value!r}")
        return value.rstrip("/")
