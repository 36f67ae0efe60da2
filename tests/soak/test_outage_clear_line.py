"""What the soak says as it clears a NIC outage (soak/layer_faults.py `outage`): the daemon
keeps a NIC out of service until the last `nic_down` or `target_failure` of it is cleared
(docs/faults.md `nic_down`, `target_failure`), so "back" is said only when none is left."""

from __future__ import annotations

import asyncio
from typing import Any

from chimney_client.soak.channels import LocalChannel
from chimney_client.soak.layer_faults import LayerFaults


class _Daemon:
    """fault.inject/clear/list over `faults` (id: spec), as chimneyd lists them."""

    def __init__(self, faults: dict[int, dict[str, Any]]) -> None:
        self.faults = faults

    async def fault_inject(self, kind: str, **params: Any) -> int:
        fid = max(self.faults, default=0) + 1
        self.faults[fid] = {"kind": kind, **params}
        return fid

    async def fault_clear(self, fid: int) -> None:
        self.faults.pop(fid, None)

    async def fault_list(self) -> list[dict[str, Any]]:
        return [{"id": fid, **spec} for fid, spec in self.faults.items()]


class _Soak(LayerFaults):
    def __init__(self, daemon: _Daemon) -> None:
        self.control = daemon  # type: ignore[assignment]
        self.ins = [LocalChannel()]
        self.interrupted = asyncio.Event()
        self.said: list[str] = []

    def say(self, text: str) -> None:
        self.said.append(text)

    async def wait_or_interrupt(self, seconds: float) -> None:
        return None

    async def tcp_left(self, layer: str, shard: int | None = None) -> int | None:
        return 0

    async def nic_connections(self, shard: int | None = None) -> dict[str, int] | None:
        return {"nic0": 0, "nic1": 0}


async def _cleared_line(others: dict[int, dict[str, Any]], where: dict[str, int]) -> str:
    soak = _Soak(_Daemon(others))
    rec: dict[str, Any] = {"kind": "nic_down"}
    await soak.outage(rec, "nic_down", "nic0", 0.0, where)
    assert rec["cleared"]
    return soak.said[-1]


async def test_a_nic_alone_out_is_said_back() -> None:
    line = await _cleared_line({}, {})
    assert "nic0 back" in line and "cleared" in line, line


async def test_a_nic_another_fault_keeps_out_is_not_said_back() -> None:
    line = await _cleared_line({1: {"kind": "nic_down", "layer": "nic0"}}, {})
    assert "back" not in line and "still out" in line and "fault 1" in line, line


async def test_a_target_failure_of_it_keeps_it_out_too() -> None:
    line = await _cleared_line({1: {"kind": "target_failure", "layer": "nic0"}}, {})
    assert "still out" in line and "target_failure" in line, line


async def test_faults_of_other_nics_or_shards_do_not_keep_it_out() -> None:
    others = {
        1: {"kind": "nic_down", "layer": "nic1"},
        2: {"kind": "delay", "layer": "nic0"},
        3: {"kind": "nic_down", "layer": "nic0", "shards": [1]},
    }
    line = await _cleared_line(others, {"shard": 0})
    assert "nic0 in shard 0 back" in line, line
