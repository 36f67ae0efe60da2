"""A bench child (a peer, a shards load process) that has ended cannot be told anything: the
run fails saying which child it was, how it ended and what it wrote on stderr, as it does when
a child ends while the bench waits for its answer (`Child.line`). A bare BrokenPipeError said
none of that."""

from __future__ import annotations

import pytest

from bench.common import child
from bench.shards_bench import LoadSide

GONE = "import sys; sys.stderr.write('lost the daemon\\n'); sys.exit(4)"


def test_telling_an_ended_child_says_how_it_ended() -> None:
    with child("-c", GONE) as gone:
        gone.proc.wait(10)
        with pytest.raises(RuntimeError, match="exited, rc=4") as err:
            gone.send("ping 0.1")
        assert "lost the daemon" in str(err.value) and "ping 0.1" in str(err.value)


def test_a_load_process_that_ended_fails_the_shards_section_by_name() -> None:
    with child("-c", "import sys; sys.stdin.read()") as alive, child("-c", GONE) as gone:
        gone.proc.wait(10)
        with pytest.raises(RuntimeError, match="lost the daemon"):
            LoadSide([alive, gone], 1).ask("ping 0.1", 5.0)
