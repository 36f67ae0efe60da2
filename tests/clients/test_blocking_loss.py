"""Client (blocking): after the connection is lost, each failed call raises its own error."""

from __future__ import annotations

import pytest

from chimney_client import Client
from chimney_client.errors import ConnectionLost
from tests.clients.mini_server import MiniServer


def test_use_after_loss_raises_fresh_exceptions(server: MiniServer) -> None:
    c = Client.connect(server.address)
    with pytest.raises(ConnectionLost):
        c.call("test.garbage")
    seen = []
    for _ in range(50):
        try:
            c.ping()
        except ConnectionLost as exc:
            seen.append(exc)
    depth, tb = 0, seen[-1].__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    assert len({id(e) for e in seen}) == 50, "one exception object raised again and again"
    assert depth < 10, f"traceback depth {depth}"
    assert all("protocol error" in str(e) and e.__cause__ is not None for e in seen)
    c.close()
