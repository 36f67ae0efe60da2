"""Engine-side limits: update values in their spec ranges, queued send bytes per connection,
listeners' pending queues, file descriptors running out, and listeners closed under waiting
accepts (issue: unvalidated update values; memory held for clients that never finish; limits
that are checked, then acted on later)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import EngineConfig, load_config
from chimneyd.engine import CACHED_FLAGS, Engine
from tests.integration.support import RecordingPeer

pytestmark = pytest.mark.timeout(60, method="thread")

MiB = 1024 * 1024
SOON_S = 5.0


# -- tcp.update values (spec §2.2) -----------------------------------------------------------------
#: (key, lowest, highest) as spec §2.2 types them; InitialRcvWnd's top is the receive buffer
BOUNDS = [
    ("InitialRcvWnd", 1, EngineConfig().rx_buffer_bytes),
    ("RcvIndicationSize", 0, 0xFFFFFFFF),
    ("KaProbeCount", 0, 0xFF),
    ("KaTimeout", 0, 0xFFFFFFFF),
    ("KaInterval", 0, 0xFFFFFFFF),
    ("MaxRT", 0, 0xFFFFFFFF),
    ("FlowLabel", 0, 0xFFFFF),
    ("TtlOrHopLimit", 0, 0xFF),
    ("TosOrTrafficClass", 0, 0xFF),
    ("UserPriority", 0, 7),
]


@pytest.fixture
async def offloaded(make_engine: Any, echo_port: int) -> tuple[Engine, int]:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    return engine, conn


async def _still_carries(engine: Engine, conn: int) -> None:
    """The connection still moves bytes both ways (nothing broke in the host)."""
    assert await asyncio.wait_for(engine.send(conn, b"ping" * 300), SOON_S) == 1200
    got = await asyncio.wait_for(engine.recv(conn, 1200, SOON_S, True), SOON_S)
    assert got == b"ping" * 300


@pytest.mark.parametrize(("key", "low", "high"), BOUNDS, ids=[b[0] for b in BOUNDS])
async def test_update_bounds(offloaded: tuple[Engine, int], key: str, low: int, high: int) -> None:
    engine, conn = offloaded
    for bad in (low - 1, high + 1, -(1 << 40), 1 << 64):
        with pytest.raises(EngineError) as err:
            await engine.update(conn, {key: bad})
        assert err.value.code is ErrorCode.INVALID_PARAMS
        assert key in err.value.detail
    for good in (low, high):
        try:
            assert (await asyncio.wait_for(engine.update(conn, {key: good}), SOON_S))["status"]
        except EngineError as err:
            # in the spec's range, but more than the real socket takes (Linux caps keepalive
            # times): the target fails the update and the connection goes on uploaded (spec
            # §6.2), after which an update finds it not offloaded — never INVALID_PARAMS
            assert err.code in (ErrorCode.NDIS_STATUS, ErrorCode.INVALID_STATE), err
    await _still_carries(engine, conn)


async def test_the_issue_example_rcv_indication_size_minus_one(
    offloaded: tuple[Engine, int],
) -> None:
    """Accepted, it made the next receive raise IndexError in the host, lost bytes, and left
    tcp.close unanswered; refused, the connection carries on and closes."""
    engine, conn = offloaded
    with pytest.raises(EngineError) as err:
        await engine.update(conn, {"RcvIndicationSize": -1})
    assert err.value.code is ErrorCode.INVALID_PARAMS
    assert "RcvIndicationSize" in err.value.detail
    await _still_carries(engine, conn)
    await asyncio.wait_for(engine.close(conn), SOON_S)


async def test_update_flags_only_the_defined_bits(offloaded: tuple[Engine, int]) -> None:
    engine, conn = offloaded
    assert CACHED_FLAGS == 0x1F
    for bit in range(5):
        await asyncio.wait_for(engine.update(conn, {"Flags": 1 << bit}), SOON_S)
    await asyncio.wait_for(engine.update(conn, {"Flags": CACHED_FLAGS}), SOON_S)
    for bad in (0x20, 0x80000000, CACHED_FLAGS | 0x100, -1):
        with pytest.raises(EngineError) as err:
            await engine.update(conn, {"Flags": bad})
        assert err.value.code is ErrorCode.INVALID_PARAMS and "Flags" in err.value.detail
    await _still_carries(engine, conn)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"NoSuchVariable": 1}, "NoSuchVariable"),
        ({"KaTimeout": True}, "KaTimeout"),
        ({"KaTimeout": 1.5}, "KaTimeout"),
        ({"KaTimeout": "7200000"}, "KaTimeout"),
        ({"KaTimeout": None}, "KaTimeout"),
        ({"RcvNxt": 5}, "RcvNxt"),  # delegated, not cached: the target owns it (spec §2.2)
        ({}, "non-empty"),
    ],
)
async def test_update_refuses_what_is_not_a_cached_value(
    offloaded: tuple[Engine, int], changes: dict[str, Any], named: str
) -> None:
    engine, conn = offloaded
    with pytest.raises(EngineError) as err:
        await engine.update(conn, changes)
    assert err.value.code is ErrorCode.INVALID_PARAMS
    assert named in err.value.detail


async def test_one_bad_value_applies_nothing(offloaded: tuple[Engine, int]) -> None:
    engine, conn = offloaded
    before = (await engine.query(conn))["State"]
    with pytest.raises(EngineError):
        await engine.update(conn, {"KaTimeout": 1000, "UserPriority": 8})
    assert engine.host.tcbs[conn].cached.KaTimeout != 1000  # the good half was not applied
    assert (await engine.query(conn))["State"] == before


# -- queued send bytes per connection --------------------------------------------------------------
async def _peer_accepted(peers: list[Any]) -> None:
    """Wait (at most a second) for the recording peer to accept the connection just made."""
    for _ in range(200):
        if peers:
            return
        await asyncio.sleep(0.005)


async def test_queued_send_bytes_are_capped_per_connection(
    make_engine: Any, recording: Any
) -> None:
    """A peer that never reads: sends pile up unacknowledged until the cap, then LIMIT before
    anything more is queued; the connection's other requests and other connections go on."""
    port, peers = recording
    engine = await make_engine(max_queued_send_bytes=4 * MiB)
    stuck = await engine.connect("127.0.0.1", port)
    await _peer_accepted(peers)
    peers[0].transport.pause_reading()  # never reads: nothing more is acknowledged
    sends = [asyncio.ensure_future(engine.send(stuck, b"s" * MiB)) for _ in range(4)]
    await asyncio.sleep(0.1)
    with pytest.raises(EngineError) as err:
        await engine.send(stuck, b"one byte too many")
    assert err.value.code is ErrorCode.LIMIT
    assert "max_queued_send_bytes" in err.value.detail
    assert engine.stats()["engine"]["queued_send_bytes"] == 4 * MiB
    # a bigger send than the cap is refused whole, at once
    with pytest.raises(EngineError) as err:
        await engine.send(stuck, b"x" * (5 * MiB))
    assert err.value.code is ErrorCode.LIMIT
    # another connection is not affected
    other = await engine.connect("127.0.0.1", port)
    assert await asyncio.wait_for(engine.send(other, b"fine"), SOON_S) == 4
    # the peer reads again: the queued sends complete and the room comes back
    peers[0].transport.resume_reading()
    assert await asyncio.wait_for(asyncio.gather(*sends), 20) == [MiB] * 4
    assert await asyncio.wait_for(engine.send(stuck, b"room again"), SOON_S) == 10
    assert engine.stats()["engine"]["queued_send_bytes"] == 0


async def test_a_send_given_up_on_counts_until_the_host_answers_it(
    make_engine: Any, recording: Any
) -> None:
    """A send whose future is cancelled (its client left) still holds its bytes in the host:
    they count against the cap until the host answers it, and then nothing is left pending."""
    port, peers = recording
    engine = await make_engine(max_queued_send_bytes=2 * MiB)
    conn = await engine.connect("127.0.0.1", port)
    await _peer_accepted(peers)
    peers[0].transport.pause_reading()
    held = engine.start_send(conn, b"g" * (2 * MiB))
    await asyncio.sleep(0.05)
    held.cancel()
    await asyncio.sleep(0.05)
    assert engine.stats()["engine"]["queued_send_bytes"] == 2 * MiB
    with pytest.raises(EngineError) as err:
        await engine.send(conn, b"!")
    assert err.value.code is ErrorCode.LIMIT
    peers[0].transport.resume_reading()
    deadline = asyncio.get_running_loop().time() + 20
    while engine.stats()["engine"]["queued_send_bytes"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert await asyncio.wait_for(engine.send(conn, b"room again"), SOON_S) == 10
    assert engine.stats()["engine"]["pending_requests"] == 0


async def test_a_recv_given_up_on_is_still_withdrawn_at_its_timeout(
    offloaded: tuple[Engine, int],
) -> None:
    """A cancelled `tcp.recv` stays the host's until its timeout withdraws it: the bytes that
    come later are not lost to it but go to the next read."""
    engine, conn = offloaded
    gone = engine.start_recv(conn, 100, 0.2)
    await asyncio.sleep(0.02)
    gone.cancel()
    await asyncio.sleep(0.4)  # past its timeout: withdrawn by the host, nothing pending
    assert engine.stats()["engine"]["pending_requests"] == 0
    await _still_carries(engine, conn)


@pytest.mark.parametrize("offload", [True, False], ids=["offloaded", "host"])
async def test_a_send_held_by_the_peers_window_shows_in_tcp_info_and_close_answers_it(
    make_engine: Any, recording: Any, offload: bool
) -> None:
    """A send waits as long as the peer's application does not read (TCP flow control).
    `tcp.info`'s `socket` view says so (bytes written, not acknowledged, the peer's window at
    0), unlike a send the stack itself had lost track of; closing the connection answers it."""
    port, peers = recording
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", port, offload=offload)
    await _peer_accepted(peers)
    assert await asyncio.wait_for(engine.send(conn, b"a" * 1000), SOON_S) == 1000
    view = engine.conn_info(conn)["socket"]
    assert view["written"] == view["acked"] == 1000
    assert view["peer_window"] is None or view["peer_window"] > 0
    peers[0].transport.pause_reading()  # never reads: the peer's window closes
    held = asyncio.ensure_future(engine.send(conn, b"s" * (8 * MiB)))
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        view = engine.conn_info(conn)["socket"]
        if view["peer_window"] in (0, None) and view["written"] > view["acked"]:
            break
        assert asyncio.get_running_loop().time() < deadline, view
        await asyncio.sleep(0.05)
    assert not held.done()
    assert view["acked"] < 1000 + 8 * MiB
    await asyncio.wait_for(engine.close(conn), SOON_S)
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(held, SOON_S)
    assert err.value.code is ErrorCode.NDIS_STATUS
    assert engine.stats()["engine"]["queued_send_bytes"] == 0


async def test_queued_send_bytes_count_host_mode_sends(make_engine: Any, recording: Any) -> None:
    port, peers = recording
    engine = await make_engine(max_queued_send_bytes=2 * MiB)
    conn = await engine.connect("127.0.0.1", port, offload=False)
    await _peer_accepted(peers)
    peers[0].transport.pause_reading()
    sends = [asyncio.ensure_future(engine.send(conn, b"h" * MiB)) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(EngineError) as err:
        await engine.send(conn, b"!")
    assert err.value.code is ErrorCode.LIMIT
    peers[0].transport.resume_reading()
    assert await asyncio.wait_for(asyncio.gather(*sends), 20) == [MiB] * 2


def test_engine_limits_have_defaults_and_are_configurable(tmp_path: Any) -> None:
    assert EngineConfig().max_queued_send_bytes == 16 * MiB
    assert EngineConfig().max_pending_accepts == 1024
    path = tmp_path / "c.toml"
    path.write_text("[engine]\nmax_queued_send_bytes = 1048576\nmax_pending_accepts = 8\n")
    config = load_config(path)
    assert config.engine.max_queued_send_bytes == MiB
    assert config.engine.max_pending_accepts == 8


# -- listeners --------------------------------------------------------------------------------------
async def test_a_listeners_pending_queue_is_bounded(make_engine: Any) -> None:
    """Connections nobody accepts: past the bound, new ones are reset and counted; the ones
    queued are still handed out, and once there is room again new ones queue."""
    engine = await make_engine(max_pending_accepts=3)
    lid = await engine.listen("127.0.0.1", 0, offload=False)
    port = engine.listener_info(lid)["port"]
    loop = asyncio.get_running_loop()
    peers: list[RecordingPeer] = []
    clients = []
    for _ in range(6):
        transport, _ = await loop.create_connection(lambda: RecordingPeer(peers), "127.0.0.1", port)
        clients.append(transport)
    for _ in range(400):
        if engine.stats()["engine"]["pending_overflows"] == 3:
            break
        await asyncio.sleep(0.01)
    assert engine.listener_info(lid)["pending"] == 3
    assert engine.stats()["engine"]["pending_overflows"] == 3
    # the three past the bound were reset
    lost = [await asyncio.wait_for(p.lost, SOON_S) for p in peers[3:]]
    assert all(isinstance(exc, ConnectionResetError) for exc in lost), lost
    accepted = [await engine.accept(lid, 1.0) for _ in range(3)]
    assert len(set(accepted)) == 3
    transport, _ = await loop.create_connection(lambda: RecordingPeer(peers), "127.0.0.1", port)
    clients.append(transport)
    accepted.append(await asyncio.wait_for(engine.accept(lid, SOON_S), SOON_S))
    assert engine.stats()["engine"]["pending_overflows"] == 3
    for conn in accepted:
        await engine.close(conn)
    await engine.close_listener(lid)
    for transport in clients:
        transport.abort()


async def test_closing_a_listener_fails_waiting_accepts(make_engine: Any) -> None:
    """Waiting accepts are answered NOT_FOUND "listener closed" (they were cancelled, which the
    RPC edge answered INTERNAL)."""
    engine = await make_engine()
    lid = await engine.listen("127.0.0.1", 0)
    waiting = [asyncio.ensure_future(engine.accept(lid, None)) for _ in range(3)]
    timed = asyncio.ensure_future(engine.accept(lid, 30.0))
    await asyncio.sleep(0.05)
    await engine.close_listener(lid)
    for fut in [*waiting, timed]:
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(fut, SOON_S)
        assert err.value.code is ErrorCode.NOT_FOUND
        assert "closed" in err.value.detail
    with pytest.raises(EngineError) as err:
        await engine.accept(lid, 0.1)
    assert err.value.code is ErrorCode.NOT_FOUND


async def test_a_connection_is_known_once_connect_answers(make_engine: Any, echo_port: int) -> None:
    """Not offloaded, connect used to answer before the host stack had the connection:
    tcp.info or fault.inject right after it said NOT_FOUND."""
    engine = await make_engine()
    for _ in range(20):
        conn = await engine.connect("127.0.0.1", echo_port, offload=False)
        assert engine.conn_info(conn)["state"] == "host"
        fid = engine.fault_inject({"kind": "stall_peer", "conn": conn, "ms": 10})
        engine.fault_clear(fid)
        await engine.close(conn)


# -- file descriptors running out ------------------------------------------------------------------
@contextlib.contextmanager
def out_of_fds(spare: int = 0) -> Iterator[list[int]]:
    """Lower the open-file limit and fill it, leaving `spare` descriptors; restore after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 32, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        for _ in range(spare):
            os.close(held.pop())
        yield held
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_out_of_fds_listen_and_connect_answer_limit(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    keep = await engine.connect("127.0.0.1", echo_port)
    with out_of_fds():
        with pytest.raises(EngineError) as err:
            await engine.listen("127.0.0.1", 0)
        assert err.value.code is ErrorCode.LIMIT, err.value  # was INTERNAL (IndexError)
        with pytest.raises(EngineError) as err:
            await engine.connect("127.0.0.1", echo_port)
        assert err.value.code is ErrorCode.LIMIT, err.value
        assert engine.stats()["engine"]["listeners"] == 0
    # descriptors back: both work again, and the connection held meanwhile still carries
    lid = await engine.listen("127.0.0.1", 0)
    await _still_carries(engine, keep)
    await engine.close_listener(lid)
    await engine.close(keep)


async def test_out_of_fds_an_incoming_connection_does_not_break_the_listener(
    make_engine: Any,
) -> None:
    engine = await make_engine()
    lid = await engine.listen("127.0.0.1", 0, offload=True)
    port = engine.listener_info(lid)["port"]
    waiting = asyncio.ensure_future(engine.accept(lid, None))
    with out_of_fds(spare=1):
        # the peer's socket takes the last descriptor: the daemon's side cannot be accepted
        early = socket.socket()
        early.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            early.connect(("127.0.0.1", port))
        await asyncio.sleep(0.3)
        assert not waiting.done()
    early.close()
    # descriptors back: the listener still takes connections, and the waiting accept gets one
    loop = asyncio.get_running_loop()
    peers: list[RecordingPeer] = []
    transport, _ = await loop.create_connection(lambda: RecordingPeer(peers), "127.0.0.1", port)
    conn = await asyncio.wait_for(waiting, SOON_S)
    assert engine.conn_info(conn)["state"] in ("offloading", "offloaded")
    assert await asyncio.wait_for(engine.send(conn, b"after"), SOON_S) == 5
    await engine.close(conn)
    await engine.close_listener(lid)
    transport.abort()
