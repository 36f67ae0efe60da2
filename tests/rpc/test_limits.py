"""Per-client and daemon-wide limits, enforced atomically: requests pipelined in one write are
checked in order, each seeing those before it, and things being made count like things made."""

from __future__ import annotations

import asyncio
import errno

import msgpack
import pytest

from tests.rpc.fake_engine import FakeEngine
from tests.rpc.support import HOST, eventually, serving

LIMIT, TIMEOUT = 6, 7


async def test_in_flight_limit_gives_limit_and_cheap_methods_still_answer() -> None:
    async with serving(max_in_flight=2) as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        waiting = [c.request("tcp.recv", conn, 10) for _ in range(2)]
        code, message = await c.fails("tcp.recv", conn, 10)
        assert (code, message) == (LIMIT, "LIMIT: more than 2 requests in flight")
        assert await c.ok("ping") == "pong"  # a plain method: answered at once, not counted
        stats = await c.ok("stack.stats")
        assert stats["rpc"]["in_flight"] == 2
        # the two held requests were accepted, not refused: they answer once data comes
        s.engine.deliver(conn, b"ab")
        first = await c.response(waiting[0])
        s.engine.deliver(conn, b"cd")
        second = await c.response(waiting[1])
        assert sorted([first[3], second[3]]) == [b"ab", b"cd"]
        assert first[2] is None and second[2] is None
        await s.another_client_pings()


async def test_in_flight_limit_exact() -> None:
    async with serving(max_in_flight=3) as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        held = [c.request("tcp.recv", conn, 1) for _ in range(3)]
        code, _ = await c.fails("tcp.send", conn, b"xyz")  # a 4th async request
        assert code == LIMIT
        assert ("send", conn, b"xyz") not in s.engine.calls  # refused before the engine
        other = await s.client()
        assert await other.ok("ping") == "pong"
        # another client has its own budget: its async request runs while c's 3 are held
        other_conn = await other.ok("tcp.connect", HOST, 9000)
        assert await other.ok("tcp.send", other_conn, b"hi") == 2
        assert (await other.ok("stack.stats"))["rpc"]["in_flight"] == 3
        # all three held requests were accepted: each gets a byte
        s.engine.deliver(conn, b"xyz")
        answers = [await c.response(msgid) for msgid in held]
        assert sorted(a[3] for a in answers) == [b"x", b"y", b"z"]
        assert all(a[2] is None for a in answers)
        # and the slots are free again
        assert await c.ok("tcp.send", conn, b"ok") == 2


async def test_connections_per_client_limit() -> None:
    async with serving(max_connections_per_client=2) as s:
        c = await s.client()
        a = await c.ok("tcp.connect", HOST, 9000)
        await c.ok("tcp.connect", HOST, 9000)
        code, message = await c.fails("tcp.connect", HOST, 9000)
        assert (code, message) == (LIMIT, "LIMIT: this client already has 2 connections")
        assert len([call for call in s.engine.calls if call[0] == "connect"]) == 2
        other = await s.client()
        assert await other.ok("tcp.connect", HOST, 9000) == 3  # per client
        await c.ok("tcp.close", a)
        assert await c.ok("tcp.connect", HOST, 9000) == 4


async def test_connections_being_made_count_against_the_limit() -> None:
    engine = FakeEngine()
    engine.connect_gate = asyncio.Event()
    async with serving(engine, max_connections_per_client=2) as s:
        c = await s.client()
        first = [c.request("tcp.connect", HOST, 9000) for _ in range(2)]
        await eventually(lambda: len(engine.calls) == 2, "two connects under way")
        code, _ = await c.fails("tcp.connect", HOST, 9000)  # two are still being made
        assert code == LIMIT
        engine.connect_gate.set()
        for msgid in first:
            msg = await c.response(msgid)
            assert msg[2] is None
        assert len(await c.ok("tcp.list")) == 2


@pytest.mark.parametrize("limit", [1, 3])
async def test_pipelined_connects_never_overshoot(limit: int) -> None:
    """Many `tcp.connect` in one write, the engine slow to answer: exactly `limit` succeed."""
    engine = FakeEngine()
    engine.connect_gate = asyncio.Event()
    async with serving(engine, max_connections_per_client=limit) as s:
        c = await s.client()
        frames = b"".join(msgpack.packb([0, i, "tcp.connect", [HOST, 9000]]) for i in range(1, 21))
        c.send_raw(frames)
        refused = [await c.read() for _ in range(20 - limit)]
        assert all(m[2][0] == LIMIT for m in refused), refused
        engine.connect_gate.set()
        made = [await c.read() for _ in range(limit)]
        assert all(m[2] is None for m in made), made
        assert len(engine.conns) == limit
        assert len(await c.ok("tcp.list")) == limit


async def test_pipelined_listens_never_overshoot() -> None:
    """The listener limit is reserved before the engine call, so listens in flight count."""
    engine = FakeEngine()
    engine.listen_gate = asyncio.Event()
    async with serving(engine, max_listeners_per_client=2) as s:
        c = await s.client()
        c.send_raw(b"".join(msgpack.packb([0, i, "tcp.listen", [HOST, 0]]) for i in range(1, 11)))
        refused = [await c.read() for _ in range(8)]
        assert all(m[2][0] == LIMIT for m in refused), refused
        assert "2 listeners" in refused[0][2][1]
        engine.listen_gate.set()
        made = [await c.read() for _ in range(2)]
        assert all(m[2] is None for m in made), made
        assert len(engine.listeners) == 2


async def test_a_failed_listen_gives_its_slot_back() -> None:
    engine = FakeEngine()
    async with serving(engine, max_listeners_per_client=1) as s:
        c = await s.client()
        engine.fail["listen"] = OSError(errno.EADDRINUSE, "Address already in use")
        code, _ = await c.fails("tcp.listen", HOST, 0)
        assert code == 10  # an OSError the engine let escape is a bug: INTERNAL
        del engine.fail["listen"]
        assert await c.ok("tcp.listen", HOST, 0) == 1


async def test_connections_waiting_on_a_listener_count_against_connects() -> None:
    """Accepted by the engine but not yet `tcp.accept`ed, they are this client's to take."""
    async with serving(max_connections_per_client=3) as s:
        c = await s.client()
        lid = await c.ok("tcp.listen", HOST, 0)
        await c.ok("tcp.connect", HOST, 9000)
        waiting = [s.engine.incoming(lid), s.engine.incoming(lid)]
        code, message = await c.fails("tcp.connect", HOST, 9000)  # 1 made + 2 waiting
        assert (code, message) == (LIMIT, "LIMIT: this client already has 3 connections")
        # an accept turns a waiting one into an owned one: allowed, the count does not grow
        assert await c.ok("tcp.accept", lid, 1000) == waiting[0]
        assert await c.ok("tcp.accept", lid, 1000) == waiting[1]
        assert (await c.fails("tcp.connect", HOST, 9000))[0] == LIMIT
        assert len(await c.ok("tcp.list")) == 3


async def test_accepts_waiting_count_against_the_limit() -> None:
    async with serving(max_connections_per_client=2) as s:
        c = await s.client()
        lid = await c.ok("tcp.listen", HOST, 0)
        held = [c.request("tcp.accept", lid) for _ in range(2)]
        await eventually(lambda: sum(1 for x in s.engine.calls if x[0] == "accept") == 2, "2")
        code, _ = await c.fails("tcp.connect", HOST, 9000)
        assert code == LIMIT
        first, second = s.engine.incoming(lid), s.engine.incoming(lid)
        got = sorted([(await c.response(m))[3] for m in held])
        assert got == [first, second]


@pytest.mark.parametrize("call", ["connect", "listen", "accept"])
@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE], ids=["EMFILE", "ENFILE"])
async def test_out_of_file_descriptors_is_limit(call: str, err: int) -> None:
    engine = FakeEngine()
    async with serving(engine) as s:
        c = await s.client()
        lid = await c.ok("tcp.listen", HOST, 0)
        engine.fail[call] = OSError(err, "Too many open files")
        params = {"connect": [HOST, 9000], "listen": [HOST, 0], "accept": [lid, 100]}[call]
        code, message = await c.fails(f"tcp.{call}", *params)
        assert code == LIMIT, message
        assert message == "LIMIT: open-file limit reached: Too many open files"
        del engine.fail[call]
        assert await c.ok("ping") == "pong"
        # nothing was reserved for good: the client's count is back where it was
        [session] = s.sessions()
        assert session.holdings.pending_conns == 0 and session.holdings.pending_listeners == 0


async def test_message_size_limit_answers_limit_then_closes_only_that_client() -> None:
    async with serving(max_message_bytes=64 * 1024) as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        assert await c.ok("tcp.send", conn, b"x" * 60_000) == 60_000  # under the limit
        c.send_raw(msgpack.packb([0, 99, "tcp.send", [conn, b"x" * 100_000]]))
        [answer] = await c.read_until_closed()
        assert answer[:2] == [1, 99] and answer[3] is None
        assert answer[2] == [LIMIT, "LIMIT: a message is larger than 65536 bytes"]
        await eventually(lambda: conn in s.engine.closed, "the client's connection closed")
        await s.another_client_pings()


@pytest.mark.parametrize("over", [1, 1000, 30_000])  # each bin stays under the limit
async def test_a_frame_just_over_the_limit_is_refused_however_it_arrives(over: int) -> None:
    """A frame larger than `max_message_bytes` gets LIMIT and closes the client, also when no
    single read leaves it unfinished past the limit (a ping of two bins, each well under it);
    the daemon and other clients go on."""
    limit = 64 * 1024
    async with serving(max_message_bytes=limit) as s:
        c = await s.client()
        size = limit + over
        rest = size - limit // 2
        for _ in range(3):  # the bins' headers grow with their lengths: settles in a few steps
            frame = msgpack.packb([0, 9, "ping", [b"a" * (limit // 2), b"b" * rest]])
            rest += size - len(frame)
        assert len(frame) == size
        c.send_raw(frame)
        assert await c.read_until_closed() == [
            [1, 9, [LIMIT, f"LIMIT: a message is larger than {limit} bytes"], None]
        ]
        await s.another_client_pings()


async def test_max_clients_refuses_when_everyone_is_busy() -> None:
    async with serving(max_clients=2) as s:
        a, b = await s.client(), await s.client()
        for c in (a, b):  # each holds something: neither may be evicted
            await c.ok("tcp.connect", HOST, 9000)
        late = await s.client()
        assert await late.read_until_closed() == []
        assert await a.ok("ping") == "pong" and await b.ok("ping") == "pong"
        assert (await a.ok("stack.stats"))["rpc"]["clients"] == 2
