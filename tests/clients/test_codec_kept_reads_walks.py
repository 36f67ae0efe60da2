"""Random walks over the kept-reads machines' rules (tests/clients/test_kept_reads_sequences.py),
each rule as likely as any other, with two checks the machines lack: an answer with no bytes
(an error, the end of stream) is never counted in its caller's hands (nothing there for `late`
to give back, so nothing may wait behind it), and every caller is answered once the daemon
has answered every read (the peers send FIN at the end). The machines under hypothesis (30
seeds; 4000 examples a machine with these checks added) reached none of what walks like these
found (each is a test of its own in test_codec_no_bytes_in_hand.py): a waitall read's TIMEOUT
counted in its caller's hands (these walks find it within a few hundred), a read behind an
abandoned waitall read that never got the bytes kept ahead of both, and refusals parked
behind a read riding on an abandoned read that never reached their callers (those took some
ten thousand walks: more than the suite's share).

The walks are seeded: a failure prints the steps, to paste as a sequence test."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from tests.clients.test_kept_reads_sequences import CONNS, KeptReads, KeptReadsOneReader

#: walks per machine and steps per walk: about a second a machine
WALKS = 2000
STEPS = 40


class _Checked(KeptReads):
    def no_bytes_are_not_in_hand(self) -> None:
        """Each read counted in its caller's hands was answered with bytes (`_in_hand`)."""
        answers = {reply.msgid: reply for _, _, reply in self.answered}
        for msgid in self.codec._in_hand:
            reply = answers.get(msgid)
            assert reply is not None, (msgid, "in hand, not answered", self.log)
            assert reply.error is None and reply.result, (msgid, reply, self.log)

    def teardown(self) -> None:
        super().teardown()
        for conn in CONNS:
            c = self.daemon.conns[conn]
            if not c.closed:
                c.eof = True  # the peer's FIN: the daemon answers every read it holds
                self._receive(self.daemon.serve(conn))
            assert not c.queue, (conn, c.queue, self.log)
        while self.answered:
            self.run_next_answered(False)
        codec = self.codec
        assert not self.waiting, ("callers never answered", self.waiting, self.log)
        assert not codec._pending, (codec._pending, self.log)
        assert not codec._parked and not codec._in_hand and not codec._taken, self.log
        assert not codec._reads and not codec._orphans and not codec._riding, self.log


class _CheckedOneReader(_Checked, KeptReadsOneReader):
    pass


class _OneChunk(_Checked):
    """The daemon's answers of one step come in one chunk (the shell has not run between)."""

    def _receive(self, frames: list[bytes]) -> None:
        if frames:
            self._deliver(list(self.codec.receive(b"".join(frames))))


class _OneChunkOneReader(_OneChunk, KeptReadsOneReader):
    pass


def _rules(m: _Checked, rng: random.Random) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """The machine's rules whose preconditions hold, with arguments as it draws them."""

    def conn() -> int:
        return rng.choice(CONNS)

    def flip() -> bool:
        return rng.random() < 0.5

    refused = [(0,), (6, -1), (6, None, {"peek": True}), (6, "soon")]
    rules: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (
            "read",
            lambda: {
                "conn": conn(),
                "max_bytes": rng.randint(1, 6),
                "waitall": flip(),
                "forever": flip(),
            },
        ),
        (
            "refused_read",
            lambda: {"conn": conn(), "params": rng.choice(refused), "give_up": flip()},
        ),
        ("limited_read", lambda: {"conn": conn(), "give_up": flip()}),
        ("read_never_written", lambda: {"conn": conn(), "forever": flip()}),
        ("peer_sends", lambda: {"conn": conn(), "data": b"\x00" * rng.randint(1, 5)}),
        ("daemon_timeout", lambda: {"conn": conn(), "index": rng.randint(0, 5)}),
    ]
    # the ends of a connection, less often: a walk has reads left to do after them
    if rng.random() < 0.3:
        rules.append(("peer_reset", lambda: {"conn": conn()}))
    if rng.random() < 0.3:
        rules.append(("peer_fin", lambda: {"conn": conn()}))
    if rng.random() < 0.3:
        rules.append(("close", lambda: {"conn": conn(), "refused": flip(), "before": flip()}))
    if m.answered:
        rules.append(("blocking_delivery", dict))
        rules.append(("run_next_answered", lambda: {"cancel": flip()}))
    if any(r.msgid in m.early for _, _, r in m.answered):
        rules.append(("interrupt_taken", lambda: {"index": rng.randint(0, 10)}))
    if m.waiting:
        rules.append(("cancel_waiting", lambda: {"index": rng.randint(0, 10)}))
    return rules


@pytest.mark.parametrize(
    "machine",
    [_Checked, _CheckedOneReader, _OneChunk, _OneChunkOneReader],
    ids=lambda c: c.__name__,
)
def test_random_walks_keep_the_stream_and_answer_every_caller(machine: type[_Checked]) -> None:
    for seed in range(WALKS):
        rng = random.Random(seed)
        m = machine()
        steps: list[str] = []
        try:
            for _ in range(STEPS):
                name, draw = rng.choice(_rules(m, rng))
                args = draw()
                steps.append(f"machine.{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})")
                getattr(m, name)(**args)
                m.taken_is_a_prefix_of_the_stream()
                m.indexes_agree_with_what_they_index()
                m.no_bytes_are_not_in_hand()
            steps.append("machine.teardown()")
            m.teardown()
        except AssertionError as exc:
            raise AssertionError(f"walk {seed}:\n" + "\n".join(steps)) from exc
