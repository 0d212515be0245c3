"""The backend's fixtures (the app, signed-in staff, an ingest on the test's broker) for the attack tests."""

from tests.backend.conftest import app_client, ingest, publish, staff

__all__ = ["app_client", "ingest", "publish", "staff"]
