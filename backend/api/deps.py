"""Typed dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request

from backend.settings import BackendSettings


async def _connection(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with request.app.state.pool.connection() as conn:
        yield conn


def _settings(request: Request) -> BackendSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


Conn = Annotated[psycopg.AsyncConnection[Any], Depends(_connection)]
Settings = Annotated[BackendSettings, Depends(_settings)]
