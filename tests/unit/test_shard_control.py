"""The shards' control channel without sockets: two `ControlCodec` ends wired together, a
clock passed in; and the supervisor's restart back-off."""

from __future__ import annotations

import msgpack
import pytest

from chimneyd.shards.control import Answer, ControlCodec, ControlError, Notification, Request
from chimneyd.shards.supervisor import Backoff


def test_a_request_and_its_answer_cross_in_any_slicing() -> None:
    shard, sup = ControlCodec(), ControlCodec()
    frame = shard.request("ask", ["stats", None, [1]], now=0.0, timeout=5.0)
    msgid = shard.last_msgid
    got: list[object] = []
    for i in range(len(frame)):  # one byte at a time: frames are reassembled
        got += sup.feed(frame[i : i + 1])
    assert got == [Request(msgid, "ask", ["stats", None, [1]])]
    answer = sup.respond(msgid, None, [[1, "ok", {"connections": 3}]])
    assert shard.feed(answer) == [Answer(msgid, "ask", None, [[1, "ok", {"connections": 3}]])]
    assert shard.pending == 0
    assert shard.next_deadline() is None


def test_notifications_carry_no_msgid_and_get_no_answer() -> None:
    a, b = ControlCodec(), ControlCodec()
    assert b.feed(a.notify("event", [7, "closed", {}])) == [
        Notification("event", [7, "closed", {}])
    ]
    assert a.pending == 0


def test_a_request_past_its_deadline_is_answered_expired_and_its_late_answer_dropped() -> None:
    shard, sup = ControlCodec(), ControlCodec()
    shard.request("ask", ["info", None, [1]], now=10.0, timeout=2.0)
    slow = shard.last_msgid
    shard.request("ask", ["info", None, [1]], now=11.0, timeout=5.0)
    fast = shard.last_msgid
    assert shard.next_deadline() == 12.0
    assert shard.expire(11.9) == []
    assert shard.expire(12.0) == [Answer(slow, "ask", expired=True)]
    assert shard.next_deadline() == 16.0
    # the late answer of the expired one is dropped; the other is still awaited
    assert shard.feed(sup.respond(slow, None, "late")) == []
    assert shard.feed(sup.respond(fast, None, "on time")) == [Answer(fast, "ask", None, "on time")]


def test_a_closed_channel_answers_every_pending_request_expired() -> None:
    codec = ControlCodec()
    codec.request("ask", [], now=0.0, timeout=60.0)
    codec.request("part", [], now=0.0, timeout=60.0)
    answers = codec.close()
    assert sorted(a.method for a in answers) == ["ask", "part"]
    assert all(a.expired for a in answers)
    assert codec.pending == 0 and codec.expire(1e9) == []


@pytest.mark.parametrize("obj", [[9, 1, 2], "hello", [0, 1, 2, 3], [2, 5, []], [1, 1, None]])
def test_anything_but_a_control_frame_is_an_error(obj: object) -> None:
    with pytest.raises(ControlError):
        ControlCodec().feed(msgpack.packb(obj))


def test_backoff_starts_at_once_then_doubles_while_a_shard_keeps_dying_young() -> None:
    b = Backoff(first=0.1, most=1.0, settled_s=30.0)
    assert [b.next(1.0) for _ in range(6)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    # one that lived long enough starts over
    assert b.next(31.0) == 0.0
    assert b.next(1.0) == 0.1
