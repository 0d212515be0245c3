"""Backend settings: one object, built in the entry point from BIKEGUARD_* variables and passed down."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendSettings(BaseSettings):
    """Everything the backend reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="BIKEGUARD_", extra="ignore")

    database_url: str = Field(description="PostgreSQL/TimescaleDB conninfo or URL")
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_client_id: str = Field(default_factory=lambda: f"bikeguard-backend-{os.getpid()}")
    # Several ingest workers share the station topics through this group; empty disables sharing
    # (needed for brokers without $share, such as the embedded amqtt).
    mqtt_shared_group: str | None = "bikeguard-ingest"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    ingest_flush_rows: int = Field(default=20_000, ge=1)
    ingest_flush_interval_s: float = Field(default=0.05, gt=0)
    partition_days_ahead: int = Field(default=7, ge=1)
    retention_days: int | None = Field(default=None, ge=1)
    tile_url: str | None = None
    tile_attribution: str | None = None
