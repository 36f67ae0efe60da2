"""A `tcp.offload` asked while the connection's upload is in flight, and that upload's
terminate fails (corrupt hardware, spec §3.7), on a running engine with real loopback sockets,
through an IM and through a team: `tcp.info`, read at every turn of the loop, never shows
`state: offloaded` beside an `offload_refused`, and once the upload is over the offload's
answer is the refusal `tcp.info` tells (docs/rpc.md `tcp.offload`, `tcp.info`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chimneyd.api import EngineError
from chimneyd.config import load_config
from tests.integration.support import EngineFactory, fail_next, topology

TEAMING = load_config(Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml").layers


@pytest.mark.parametrize("layers", ["im", "team"])
async def test_an_offload_during_a_failed_upload_never_contradicts_tcp_info(
    make_engine: EngineFactory, echo_port: int, layers: str
) -> None:
    engine = await make_engine(topology(1) if layers == "im" else TEAMING)
    conn = await engine.connect("127.0.0.1", echo_port)
    fail_next(engine, engine.conn_info(conn)["path"][-1], "MiniportTerminateOffload")
    # one inbox, in order: the host starts the upload, then takes the offload behind it
    upload = asyncio.ensure_future(engine.upload(conn))
    offload = asyncio.ensure_future(engine.offload(conn))
    while not (upload.done() and offload.done()):
        info = engine.conn_info(conn)
        assert not (info["state"] == "offloaded" and info["offload_refused"]), info
        if not upload.done():
            assert not offload.done(), offload  # answered once the upload is over
        await asyncio.sleep(0)
    assert (await upload)["state"] == "host"
    with pytest.raises(EngineError) as answer:
        await offload
    info = engine.conn_info(conn)
    assert info["state"] == "host", info
    assert info["offload_refused"] == {
        "status": None,
        "layer": "tcpip",
        "reason": str(answer.value),
    }
