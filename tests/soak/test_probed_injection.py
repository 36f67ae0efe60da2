"""How the coordinator injects the probed kinds (soak/probe_faults.py), against a fake daemon
that records the calls: a `nic_up`'s `nic_down` is a NIC outage, so the workers are told of it
before it goes in (`nic_outage`: they keep only the stretches on a NIC an outage's injection
fell in, state.py `prune_placements`), and a fault the soak put in is taken out again even
when its probe fails half-way (the daemon must not keep a NIC out for the rest of the run)."""

from __future__ import annotations

import asyncio
from typing import Any

from chimney_client.errors import ChimneyError
from chimney_client.soak.channels import LocalChannel
from chimney_client.soak.probe_faults import ProbeFaults

NIC_DOWN_ID = 11


class _Daemon:
    """The calls a ProbeFaults makes, answered as a teaming daemon would; `log` records them
    (and what the workers' inbox held at each fault.inject)."""

    def __init__(self, inbox: LocalChannel, fail_on: str | None = None) -> None:
        self.log: list[tuple[str, Any]] = []
        self.inbox = inbox
        self.fail_on = fail_on
        self.faults: dict[int, str] = {}
        self.out = False
        self.next_conn = 100

    def _maybe_fail(self, name: str) -> None:
        if name == self.fail_on:
            raise ChimneyError(f"{name} failed")

    async def fault_inject(self, kind: str, **params: Any) -> int:
        told = [m for m in self.inbox.drain() if m["type"] == "nic_outage"]
        for m in told:
            self.inbox.put(m)
        self.log.append(("fault_inject", (kind, len(told))))
        self._maybe_fail(f"inject:{kind}")
        fid = NIC_DOWN_ID if kind == "nic_down" else NIC_DOWN_ID + 1 + len(self.faults)
        self.faults[fid] = kind
        self.out = kind == "nic_down" or (self.out and kind != "nic_up")
        return fid

    async def fault_clear(self, fid: int) -> None:
        self.log.append(("fault_clear", fid))
        self.faults.pop(fid, None)

    async def fault_list(self) -> list[dict[str, Any]]:
        return [{"id": fid, "kind": k} for fid, k in self.faults.items()]

    async def stack_info(self) -> dict[str, Any]:
        lowers = {n: {"in_service": not (n == "nic0" and self.out)} for n in ("nic0", "nic1")}
        return {"layers": [{"name": "team0", "kind": "mux", "lowers": lowers}]}

    async def tcp_connect(self, host: str, port: int, target: str | None = None) -> int:
        self._maybe_fail("tcp_connect")
        self.next_conn += 1
        return self.next_conn

    async def tcp_send(self, cid: int, data: bytes) -> None:
        self.sent = data

    async def tcp_recv(self, cid: int, n: int, timeout_ms: int) -> bytes:
        return self.sent[:n]

    async def tcp_info(self, cid: int) -> dict[str, Any]:
        return {"state": "offloaded", "path": ["tcpip", "team0", "nic0"]}

    async def tcp_close(self, cid: int) -> None:
        self.log.append(("tcp_close", cid))


class _Coordinator(ProbeFaults):
    def __init__(self, daemon: _Daemon, inbox: LocalChannel) -> None:
        self.control = daemon  # type: ignore[assignment]
        self.ins = [inbox]
        self.peer_addrs = [("127.0.0.1", 9)]
        self.interrupted = asyncio.Event()
        self.nics_settling = 0
        self.said: list[str] = []

    def say(self, text: str) -> None:
        self.said.append(text)

    async def wait_or_interrupt(self, seconds: float) -> None:
        return None

    async def settle(self, rec: dict[str, Any], layer: str, shard: int | None) -> None:
        return None

    async def tcp_left(self, layer: str, shard: int | None = None) -> int | None:
        return 0

    async def nic_connections(self, shard: int | None = None) -> dict[str, int] | None:
        return {"nic0": 0, "nic1": 0}


def _nic_up_rec() -> dict[str, Any]:
    return {"tag": 1, "kind": "nic_up", "params": {"layer": "nic0", "for": "0s", "shard": ""}}


async def _run(fail_on: str | None = None) -> tuple[_Daemon, LocalChannel, dict[str, Any]]:
    inbox = LocalChannel()
    daemon = _Daemon(inbox, fail_on)
    co = _Coordinator(daemon, inbox)
    rec = _nic_up_rec()
    await co.inject_probed(rec, {})
    return daemon, inbox, rec


async def test_the_workers_are_told_of_a_nic_ups_outage_before_it_goes_in(
    monkeypatch: Any,
) -> None:
    """Without the notice every stretch on the NIC is dropped after PLACEMENT_GRACE_S, and
    outcomes `_each_left_its_nic` finds no connection on it when it went out: a nic_down
    leaving one there would pass."""
    monkeypatch.setattr("chimney_client.soak.probe_faults.RESUME_GRACE_S", 0.0)
    monkeypatch.setattr("chimney_client.soak.probe_faults.STAGGER_S", 0.0)
    daemon, inbox, rec = await _run()
    assert ("fault_inject", ("nic_down", 1)) in daemon.log, daemon.log
    told = [m for m in inbox.drain() if m["type"] == "nic_outage"]
    assert told == [{"type": "nic_outage", "t0": rec["t0"], "nic": "nic0", "shard": None}]


async def test_a_nic_ups_nic_down_is_cleared_when_the_nic_up_fails(monkeypatch: Any) -> None:
    """The nic_up refused: the soak's nic_down must not keep the NIC out for the rest of the
    run (every later fault and the final counts would see a team short of a NIC)."""
    monkeypatch.setattr("chimney_client.soak.probe_faults.RESUME_GRACE_S", 0.0)
    monkeypatch.setattr("chimney_client.soak.probe_faults.STAGGER_S", 0.0)
    daemon, _, rec = await _run(fail_on="inject:nic_up")
    assert "error" in rec or "probe_error" in rec
    assert ("fault_clear", NIC_DOWN_ID) in daemon.log, daemon.log


async def test_a_nic_ups_nic_down_is_cleared_when_a_probe_fails(monkeypatch: Any) -> None:
    monkeypatch.setattr("chimney_client.soak.probe_faults.RESUME_GRACE_S", 0.0)
    monkeypatch.setattr("chimney_client.soak.probe_faults.STAGGER_S", 0.0)
    daemon, _, rec = await _run(fail_on="tcp_connect")
    assert rec.get("probe_error")
    assert ("fault_clear", NIC_DOWN_ID) in daemon.log, daemon.log


class _ShardClient(_Daemon):
    """A client of the fault's shard whose connection broke: tcp.close fails with OSError."""

    def __init__(self, inbox: LocalChannel) -> None:
        super().__init__(inbox)
        self.closed = False

    async def stack_info(self) -> dict[str, Any]:
        return {**await super().stack_info(), "shard": 1}

    async def tcp_close(self, cid: int) -> None:
        raise ConnectionResetError("the RPC connection broke")

    async def close(self) -> None:
        self.closed = True


async def test_a_shards_probe_client_is_closed_even_when_closing_a_probe_fails(
    monkeypatch: Any,
) -> None:
    """The probes of a fault with /shard=K live on a client of their own in that shard:
    it is closed whatever closing the probes does (else one RPC connection leaks per fault)."""
    monkeypatch.setattr("chimney_client.soak.probe_faults.RESUME_GRACE_S", 0.0)
    monkeypatch.setattr("chimney_client.soak.probe_faults.STAGGER_S", 0.0)
    monkeypatch.setattr("chimney_client.soak.probe_faults.SETTLE_MAX_S", 0.0)
    inbox = LocalChannel()
    own = _ShardClient(inbox)

    async def connect(*args: Any, **kw: Any) -> _ShardClient:
        return own

    monkeypatch.setattr("chimney_client.soak.probe_faults.AsyncClient.connect", connect)
    co = _Coordinator(_Daemon(inbox), inbox)
    co.rpc_addr = "127.0.0.1:1"
    co.args = type("Args", (), {"token": None})()
    rec = _nic_up_rec()
    rec["params"]["shard"] = "1"
    try:
        await co.inject_probed(rec, {"shard": 1})
    except OSError:
        pass  # a broken connection may end the check; the client must be closed still
    assert own.closed
