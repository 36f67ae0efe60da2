"""A call riding on an abandoned call with no timeout (`ClientCodec._ride`, `_ride_accept`)
gets what the daemon answers a call it rides on: not the refusal (LIMIT, docs/rpc.md
"Limits") of another abandoned call of its listener (connection) while one it rides on still
waits in the daemon. That refusal is the refused request's alone: nothing was taken from the
listener (stream), and the call still waiting there answers the rider in its turn."""

from __future__ import annotations

from chimney_client.protocol import ClientCodec
from tests.clients.scripted import replies_in, response
from tests.clients.test_kept_accepts_sequences import KeptAccepts
from tests.clients.test_kept_reads_sequences import KeptReads

LIMIT = [6, "LIMIT: more than 256 requests in flight"]


def test_a_riding_accept_does_not_get_another_accepts_refusal() -> None:
    """Accepts `a` and `b` with no timeout are sent (the second while the first is on its way,
    so not riding) and both abandoned; the next accept rides. The daemon refuses `b`: the
    rider keeps waiting for `a`, which gets connection 17, the rider's answer."""
    codec: ClientCodec[str] = ClientCodec()
    a, _ = codec.request("tcp.accept", (3,), "a")
    b, data = codec.request("tcp.accept", (3,), "b")
    assert data  # `a` is on its way: sent
    codec.forget(a)
    codec.forget(b)
    rider, data = codec.request("tcp.accept", (3,), "rider")
    assert data == b""  # rides
    got = [(r.token, r.error, r.result) for r in replies_in(codec, response(b, None, LIMIT))]
    assert got == [], f"the rider got another accept's refusal: {got}"
    got = [(r.token, r.error, r.result) for r in replies_in(codec, response(a, 17))]
    assert got == [("rider", None, 17)], got
    codec.forget(rider)
    assert codec.kept_answer("tcp.accept", (3,)) is None  # nothing kept, nothing lost
    assert not codec._riding_accepts and not codec._orphan_accepts


def test_a_riding_accept_gets_the_refusal_of_the_last_accept_it_rides_on() -> None:
    """The one abandoned accept it rides on is refused: that is the rider's answer (nothing
    else in the daemon would answer it), as before."""
    codec: ClientCodec[str] = ClientCodec()
    a, _ = codec.request("tcp.accept", (3,), "a")
    codec.forget(a)
    rider, data = codec.request("tcp.accept", (3,), "rider")
    assert data == b""
    (reply,) = replies_in(codec, response(a, None, LIMIT))
    assert reply.token == "rider" and reply.error is not None and "LIMIT" in str(reply.error)
    codec.forget(rider)
    assert not codec._riding_accepts and not codec._orphan_accepts and not codec._pending


def test_a_riding_read_does_not_get_another_reads_refusal() -> None:
    """As for accepts: reads `a` and `b` of connection 1 with no timeout, both abandoned; the
    next read rides. `b` is refused; `a` gets "xy", the rider's answer, and nothing is kept."""
    codec: ClientCodec[str] = ClientCodec()
    a, _ = codec.request("tcp.recv", (1, 100), "a")
    b, data = codec.request("tcp.recv", (1, 100), "b")
    assert data
    codec.forget(a)
    codec.forget(b)
    rider, data = codec.request("tcp.recv", (1, 100), "rider")
    assert data == b""
    got = [(r.token, r.error, r.result) for r in replies_in(codec, response(b, None, LIMIT))]
    assert got == [], f"the rider got another read's refusal: {got}"
    got = [(r.token, r.error, r.result) for r in replies_in(codec, response(a, b"xy"))]
    assert got == [("rider", None, b"xy")], got
    codec.forget(rider)
    assert codec.before_read((1, 100)) is None  # nothing kept, nothing lost
    assert not codec._riding and not codec._orphans and not codec._kept


def test_a_riding_read_gets_the_refusal_of_the_last_read_it_rides_on() -> None:
    codec: ClientCodec[str] = ClientCodec()
    a, _ = codec.request("tcp.recv", (1, 100), "a")
    codec.forget(a)
    rider, data = codec.request("tcp.recv", (1, 100), "rider")
    assert data == b""
    (reply,) = replies_in(codec, response(a, None, LIMIT))
    assert reply.token == "rider" and reply.error is not None and "LIMIT" in str(reply.error)
    codec.forget(rider)
    assert not codec._riding and not codec._orphans and not codec._pending


def test_the_accept_machine_holds_a_riders_strict_check_on_this_sequence() -> None:
    """The kept-accepts machine (tests/clients/test_kept_accepts_sequences.py), whose check
    that a rider gets no error had been relaxed to let a LIMIT through, on the sequence that
    gives one (its random search seldom finds it): an accept with no timeout given up on, an
    accept riding on it, then another accept sent, given up on and refused."""
    machine = KeptAccepts()
    machine.accept(timed=False)
    machine.give_up(0)
    machine.accept(timed=False)  # rides
    machine.refused_accept(timed=False, give_up=True)
    machine.peer_connects()  # the accept still waiting gets it: the rider's answer
    assert len(machine.answered) == 1
    machine.run_next_answered(cancel=False)
    machine.teardown()
    assert machine.taken == [100]


def test_the_read_machine_holds_a_riders_check_on_this_sequence() -> None:
    """The kept-reads machine (tests/clients/test_kept_reads_sequences.py) checks that a
    rider never gets another read's refusal; on the sequence that gives one (its random
    search seldom finds it): a read with no timeout given up on, a read riding on it, then
    another read with no timeout sent, given up on and refused."""
    machine = KeptReads()
    machine.read(conn=1, max_bytes=6, waitall=False, forever=True)
    machine.cancel_waiting(0)
    machine.read(conn=1, max_bytes=6, waitall=False, forever=True)  # rides
    machine.limited_read(conn=1, give_up=True)
    machine.peer_sends(conn=1, data=b"ab")  # the read still waiting gets it: the rider's answer
    assert len(machine.answered) == 1
    machine.run_next_answered(cancel=False)
    machine.teardown()
    assert bytes(machine.taken[1]) == bytes(machine.daemon.conns[1].stream)
