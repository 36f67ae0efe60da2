"""The gate between accept and aiohttp on each HTTP address: `web.max_connections` at once,
counted from accept to close; a newcomer past it is answered 503 and closed at once; a
connection that sends no whole request head in FIRST_REQUEST_S is closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from chimneyd.config import MAX_WEB_CONNECTIONS, ConfigError, load_config
from chimneyd.observe.web import server as http
from chimneyd.observe.web.server import Guard, HttpSite

CAP = 4
BOUND_S = 10.0  # a bound on waits, never a measurement


async def hello(request: web.Request) -> web.StreamResponse:
    return web.Response(text="hello\n")


@pytest.fixture
async def site() -> AsyncIterator[HttpSite]:
    app = web.Application()
    app.router.add_get("/", hello)
    s = HttpSite(app, Guard("", "127.0.0.1", 0), "127.0.0.1", 0, max_connections=CAP)
    await s.start()
    try:
        yield s
    finally:
        await s.stop(1.0)


async def connect(site: HttpSite) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = site.address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def get(site: HttpSite) -> bytes:
    """One GET on a new connection: what came back before it closed (b"" if reset)."""
    reader, writer = await connect(site)
    try:
        writer.write(
            f"GET / HTTP/1.1\r\nHost: {site.address}\r\nConnection: close\r\n\r\n".encode()
        )
        return await asyncio.wait_for(reader.read(), BOUND_S)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def closed(reader: asyncio.StreamReader) -> bool:
    """The server closed (or cut) the connection, having sent nothing."""
    try:
        return await asyncio.wait_for(reader.read(), BOUND_S) == b""
    except ConnectionResetError:
        return True


async def test_past_the_cap_a_newcomer_is_refused_at_once(site: HttpSite) -> None:
    held = [await connect(site) for _ in range(CAP)]
    try:
        answer = await get(site)
        # answered 503 and closed, while the held connections stay (no request from them yet);
        # a reset before the answer is read is a refusal too
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer
        assert site.gate is not None and site.gate.refused >= 1
        assert site.gate.open == CAP
    finally:
        for _, writer in held:
            writer.close()
    # the slots come back as the held connections close
    async with asyncio.timeout(BOUND_S):
        while True:
            answer = await get(site)
            if answer.startswith(b"HTTP/1.1 200 "):
                break
            await asyncio.sleep(0.05)
    assert answer.endswith(b"hello\n")


async def test_a_connection_without_a_request_is_closed_before_the_keep_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiohttp closes a connection that sent no whole request only at the keep-alive (here a
    minute): the gate closes it after FIRST_REQUEST_S, so idlers cannot hold the cap."""
    monkeypatch.setattr(http, "KEEPALIVE_S", 60.0)
    monkeypatch.setattr(http, "FIRST_REQUEST_S", 0.05)
    app = web.Application()
    app.router.add_get("/", hello)
    s = HttpSite(app, Guard("", "127.0.0.1", 0), "127.0.0.1", 0, max_connections=CAP)
    await s.start()
    try:
        idle_reader, idle = await connect(s)
        trickle_reader, trickle = await connect(s)
        trickle.write(b"GET / HTTP/1.1\r\nHost: ")  # a head begun, never finished
        try:
            for reader in (idle_reader, trickle_reader):
                assert await closed(reader)
        finally:
            idle.close()
            trickle.close()
        # a whole request in time is served as before
        assert (await get(s)).startswith(b"HTTP/1.1 200 ")
    finally:
        await s.stop(1.0)


@pytest.mark.parametrize(
    "web",
    [
        "max_connections = 16",  # fewer than the 32 pages web.max_clients lets open
        "max_clients = 200",  # likewise, from the other side
        f"max_connections = {MAX_WEB_CONNECTIONS + 1}",
        "max_connections = 0",
    ],
)
def test_max_connections_is_bounded(tmp_path: Path, web: str) -> None:
    path = tmp_path / "chimneyd.toml"
    path.write_text(f"[web]\n{web}\n")
    with pytest.raises(ConfigError, match=r"web\.max_connections"):
        load_config(path)


def test_the_cap_is_the_configured_one(tmp_path: Path) -> None:
    path = tmp_path / "chimneyd.toml"
    path.write_text("[web]\nmax_clients = 8\nmax_connections = 8\n")
    assert load_config(path).web.max_connections == 8
    assert load_config(None).web.max_connections == 128
