"""The shards section's load scales with the shards: each shard of each daemon gets its own
load process (a client process of its own: the 2-shard figure is not bounded by one process's
CPU, as it was with every client in the bench's process) with the same clients on it, the
process's clients all on that shard (as `stack.info` told each). Runs the section at --smoke
sizes against two real daemons."""

from __future__ import annotations

import io
import os

from rich.console import Console

from bench import shards_bench
from bench.common import Section
from bench.context import SCALES, Ctx
from bench.progress import Reporter


async def test_each_shard_gets_a_load_process_of_its_own() -> None:
    sec = Section("shards")
    with Reporter(Console(file=io.StringIO())) as progress:
        await shards_bench.run(Ctx(SCALES["smoke"], progress), sec)
    assert not sec.problems, sec.problems
    load = sec.raw["load"]
    conns = SCALES["smoke"].shard_echo_conns
    for shards in (1, 2):
        procs = load[str(shards)]
        # one process per shard, none of them this one, each with its clients on its shard
        assert [p["shard"] for p in procs] == list(range(shards)), procs
        pids = {p["pid"] for p in procs}
        assert len(pids) == shards and os.getpid() not in pids, procs
        for p in procs:
            assert p["ping_clients_on"] == [p["shard"]] * shards_bench.CLIENTS_PER_SHARD, p
            assert set(p["echo_clients_on"]) == {p["shard"]}, p
            assert p["echo_conns"] == conns, p
    # the load per shard is the same on both daemons: the 2-shard one gets twice the clients
    for key in ("ping", "echo"):
        runs = sec.raw[key]
        assert len(runs["2"]) == len(runs["1"]) == SCALES["smoke"].repeats
