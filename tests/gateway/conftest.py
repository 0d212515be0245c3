"""Fixtures for the gateway tests (the tools themselves live in harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bikeguard.services import Broker
from tests.gateway.harness import FakeModule, TcpHop


@pytest.fixture
def anyio_backend() -> str:
    """The gateway is asyncio code."""
    return "asyncio"


@pytest.fixture
def module() -> Iterator[FakeModule]:
    """A fake radio module on a fresh pty."""
    m = FakeModule()
    yield m
    m.close()


@pytest.fixture
async def hop(broker: Broker) -> AsyncIterator[TcpHop]:
    """A TCP hop to the test broker, closed at the end."""
    h = TcpHop(broker)
    yield h
    await h.cut()
