"""The seed's figure: one send through host → IM(s) → target and its completion back up."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.support import topology


def _io_hops(trace: list[dict[str, Any]], nbl: int) -> list[tuple[str, str]]:
    return [(h["layer"], h["call"]) for h in trace if h["nbl"] == nbl]


@pytest.mark.parametrize("n_im", [0, 1, 3])
async def test_one_send_travels_every_layer_with_one_nbl(
    make_engine: Any, echo_port: int, n_im: int
) -> None:
    engine = await make_engine(topology(n_im))
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    before = len(engine.trace(conn, None))
    assert await engine.send(conn, b"seed") == 4

    hops = engine.trace(conn, None)[before:]
    sends = [h for h in hops if h["call"] == "NdisOffloadTcpSend"]
    nbl = sends[0]["nbl"]
    assert nbl and all(h["nbl"] == nbl for h in sends)

    ims = [f"im{i}" for i in range(n_im)]
    down: list[tuple[str, str]] = [("tcpip", "NdisOffloadTcpSend")]
    for im in ims:
        down += [(im, "MiniportTcpOffloadSend"), (im, "NdisOffloadTcpSend")]
    down += [("nic0", "MiniportTcpOffloadSend")]
    up: list[tuple[str, str]] = [("nic0", "NdisTcpOffloadSendComplete")]
    for im in reversed(ims):
        up += [(im, "ProtocolTcpOffloadSendComplete"), (im, "NdisTcpOffloadSendComplete")]
    up += [("tcpip", "ProtocolTcpOffloadSendComplete")]
    assert _io_hops(hops, nbl) == down + up

    # a different handle (Ndis* calls) and context (Miniport* handlers) at every layer
    handles = [h["handle"] for h in hops if h["nbl"] == nbl and h["call"] == "NdisOffloadTcpSend"]
    contexts = [
        h["context"] for h in hops if h["nbl"] == nbl and h["call"] == "MiniportTcpOffloadSend"
    ]
    assert len(handles) == n_im + 1 and len(set(handles)) == n_im + 1 and all(handles)
    assert len(contexts) == n_im + 1 and len(set(contexts)) == n_im + 1 and all(contexts)
    assert not set(handles) & set(contexts)
    # every completion hop carries the status, the same NBL, and no handle
    for h in hops:
        if h["nbl"] == nbl and "Complete" in h["call"]:
            assert h["status"] == "NDIS_STATUS_SUCCESS" and h["handle"] is None

    # the ids in the trace are the ones each layer really holds (tcp.info `handles`)
    info = engine.conn_info(conn)["handles"]
    assert info["tcpip"]["handle"] == handles[0]
    assert info["nic0"]["context"] == contexts[-1]
    for i, im in enumerate(ims):
        assert info[im] == {"context": contexts[i], "handle": handles[i + 1]}
    assert await engine.recv(conn, 16, 2.0) == b"seed"
