"""Many officers can keep the live feed open: a stream holds no database connection from the pool."""

from __future__ import annotations

import contextlib

from tests.backend.conftest import Staff


def test_more_live_viewers_than_pool_connections_leave_the_api_answering(staff: Staff) -> None:
    viewers = 14  # the pool holds at most 10 connections
    with contextlib.ExitStack() as stack:
        for _ in range(viewers):
            response = stack.enter_context(staff.client.stream("GET", "/api/live", headers=staff.police.headers))
            assert response.status_code == 200
            assert next(response.iter_bytes()).startswith(b": connected")
        assert staff.client.app.state.live.viewers == viewers
        r = staff.police.get("/api/alarms")
        assert r.status_code == 200, r.text
