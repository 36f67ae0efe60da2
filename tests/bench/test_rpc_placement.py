"""The rpc section places its processes as the bulk section does (bench.common.placed), so its
ratios compare runs with the same placement: the client (this thread) on one CPU, the servers it
measures (the daemon, the minimal RPC echo server, the echo peer, every thread of each) on
another, during every measured window; every mask is given back afterwards. Runs the section at
--smoke sizes against a real daemon."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench import rpc_bench
from bench.common import Section, cpus
from bench.context import SCALES, Ctx
from bench.progress import Reporter


def _children() -> list[int]:
    """This process's live child processes (from /proc; a zombie another test left unreaped
    runs nowhere)."""
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == me and state != "Z":
            out.append(int(entry.name))
    return out


def _masks() -> dict[str, Any]:
    """This thread's CPU mask, and every thread's of every child process."""
    servers = {}
    for pid in _children():
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                servers[f"{pid}/{tid}"] = frozenset(os.sched_getaffinity(int(tid)))
            except OSError:
                continue
    return {"client": frozenset(os.sched_getaffinity(0)), "servers": servers}


async def test_the_rpc_section_measures_with_client_and_servers_placed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = cpus()
    client_cpu, server_cpu = mine[0], mine[1] if len(mine) > 1 else mine[0]
    before = frozenset(os.sched_getaffinity(0))
    seen: list[dict[str, Any]] = []
    real_load, real_rounds = rpc_bench.rpc_load, rpc_bench.rpc_echo_rounds
    real_plain = rpc_bench.PlainEcho.rounds

    async def load(*args: Any) -> Any:
        seen.append(_masks())
        return await real_load(*args)

    async def rounds(*args: Any) -> Any:
        seen.append(_masks())
        return await real_rounds(*args)

    async def plain(self: Any, *args: Any) -> Any:
        seen.append(_masks())
        return await real_plain(self, *args)

    monkeypatch.setattr(rpc_bench, "rpc_load", load)
    monkeypatch.setattr(rpc_bench, "rpc_echo_rounds", rounds)
    monkeypatch.setattr(rpc_bench.PlainEcho, "rounds", plain)
    sec = Section("rpc")
    with Reporter(Console(file=io.StringIO())) as progress:
        await rpc_bench.run(Ctx(SCALES["smoke"], progress), sec)
    assert not sec.problems, sec.problems
    # every ping window (warm-up and 2 repeats, 2 in-flight counts, both servers) and every
    # tcp.send window (warm-up and 2 repeats, both sides)
    assert len(seen) == 2 + 2 * 2 * 2 + 2 + 2 * 2
    for masks in seen:
        assert masks["client"] == {client_cpu}
        # the daemon, the minimal echo server and the echo peer: 3 processes at least
        assert len({k.split("/")[0] for k in masks["servers"]}) >= 3, masks
        assert set(masks["servers"].values()) == {frozenset({server_cpu})}, masks
    assert sec.raw["placement"] == {
        "client_cpu": client_cpu,
        "server_cpu": server_cpu,
        "placed": True,
    }
    assert frozenset(os.sched_getaffinity(0)) == before
