"""What the whole-path tests share: the backend served on a free port, its ingest on the test's broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.api.app import create_app
from bikeguard.services import Broker, free_port
from tests import factories
from tests.serving import served


@pytest.fixture
def backend_url(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[str]:
    """The backend served by uvicorn on a free port, with its ingest on the test's broker."""
    port = free_port()
    settings = factories.settings(
        database_url,
        mqtt_url=broker.url,
        mqtt_client_id=f"e2e-{topic_prefix}",
        mqtt_shared_group=f"e2e-{topic_prefix}" if broker.supports_shared_subscriptions else None,
        http_port=port,
    )
    with served(create_app(settings), port) as url:
        yield url
