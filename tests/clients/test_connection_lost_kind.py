"""`ConnectionLost` is a `ConnectionError` (as `CallTimeout` is a `TimeoutError`): code that
catches the standard exception for a lost connection catches the client's too."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import pytest

from chimney_client import AsyncClient, Client
from chimney_client.errors import ChimneyError, ConnectionLost
from tests.clients.scripted import HANG, address, scripted_server, silent_listener


def _refused_address() -> str:
    lst = silent_listener()
    port = lst.getsockname()[1]
    lst.close()  # nobody listens there any more: connecting is refused
    return f"127.0.0.1:{port}"


async def test_a_refused_connect_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError) as caught:
        await asyncio.wait_for(AsyncClient.connect(_refused_address(), timeout=2), HANG)
    assert isinstance(caught.value, ConnectionLost)
    with pytest.raises(ConnectionError):
        Client.connect(_refused_address(), timeout=2)


async def test_a_call_on_a_connection_the_server_closed_is_a_connection_error() -> None:
    def hang_up(t: Any, msgid: int, method: str, params: list[Any]) -> None:
        t.close()

    srv = await scripted_server(hang_up)
    try:
        c = await AsyncClient.connect(address(srv))
        with pytest.raises(ConnectionError) as caught:
            await asyncio.wait_for(c.ping(), HANG)
        assert isinstance(caught.value, ConnectionLost) and isinstance(caught.value, ChimneyError)
        await c.close()
    finally:
        srv.close()


def test_it_still_pickles_as_itself() -> None:
    err = ConnectionLost("connection to 127.0.0.1:7411 lost: closed by the server")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ConnectionLost and str(back) == str(err)
    assert back.errno is None and back.args == err.args
