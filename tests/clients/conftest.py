"""What the client tests share: the mini server on a thread, and chimneyctl run against it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clients.mini_server import MiniServer, mini_server_in_thread


@pytest.fixture
def server() -> Iterator[MiniServer]:
    with mini_server_in_thread() as srv:
        yield srv
