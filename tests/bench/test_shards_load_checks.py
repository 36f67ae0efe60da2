"""What the shards section makes of its load processes' answers (bench.shards_bench.LoadSide):
a client that is not on its process's shard fails the figure (the 2-shard daemon would be
loaded unevenly, and the figure would not say so), and the errors a process met while it opened
and closed its connections are counted once (its `close` answer already holds those of `open`:
one tally, bench.echo_bench.EmulatedSide.setup). No sockets: the answers are made up."""

from __future__ import annotations

from typing import Any

from bench.echo_bench import EchoResult
from bench.shard_load import CLIENTS_PER_SHARD
from bench.shards_bench import LoadSide

N = 3  # echo connections per shard


def _opened(shard: int, setup: EchoResult, ping_on: int | None = None) -> dict[str, Any]:
    on = shard if ping_on is None else ping_on
    return {
        "pid": 1000 + shard,
        "shard": shard,
        "ping_clients_on": [shard] * (CLIENTS_PER_SHARD - 1) + [on],
        "echo_clients_on": [shard],
        "echo_conns": N,
        "setup": setup.as_map(),
    }


def _window(shards: int) -> EchoResult:
    w = EchoResult(N * shards)
    w.conns_active = N * shards
    w.ops = 10
    return w


def _side(opened: list[dict[str, Any]], closed: list[dict[str, Any]]) -> LoadSide:
    side = LoadSide([], N)
    side.procs = [None] * len(opened)  # type: ignore[list-item]  # counted, never asked
    side.opened, side.closed, side.drained = opened, closed, {"drained": {}}
    return side


def _clean(offloaded: int = N) -> EchoResult:
    s = EchoResult(N)
    s.offloaded = offloaded
    return s


def test_clients_on_their_shards_are_no_problem() -> None:
    side = _side([_opened(0, _clean()), _opened(1, _clean())], [_clean().as_map()] * 2)
    assert side.problems([_window(2)]) == []


def test_a_client_on_another_shard_is_a_problem() -> None:
    # shard 1's load process reports one ping client on shard 0
    side = _side([_opened(0, _clean()), _opened(1, _clean(), ping_on=0)], [_clean().as_map()] * 2)
    problems = side.problems([_window(2)])
    assert any("shard" in p and "on shard 0" in p for p in problems), problems


def test_an_error_while_opening_is_counted_once() -> None:
    setup = _clean()
    setup.error("tcp.connect 1: refused")
    opened = _opened(0, setup)
    # the same tally, read again after `close`: it still holds the error met while opening
    problems = _side([opened], [setup.as_map()]).problems([_window(1)])
    assert len(problems) == 1 and problems[0].startswith("0 integrity errors, 1 errors"), problems
    assert problems[0].count("refused") == 1, problems
