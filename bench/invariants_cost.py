"""What the spec §9 invariant checker costs on the I/O path, measured side by side in one run.

python -m bench.invariants_cost [--rounds N] [--chain K] [--ims I] [--memory N] [--engine MIB]

A sans-IO stack — a protocol edge, I pass-through IMs, a miniport that completes at once — on
the broker's SyncScheduler: no sockets, no event loop, so the figure is the broker's and the
checker's own work. Two rounds per connection: a send chain of K NBLs down and its completion
up; one receive indication up, its return down and the receive-return. Each run alternates
the checker off and on; the ratio is the figure (absolute numbers on a shared machine are noise).
With --engine, also the bulk offloaded send of `bench.bulk_bench` (real sockets, layer tasks)
with the checker off and on, interleaved, best of three.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time
import tracemalloc
from typing import Any

from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.ndis.blocks import (
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.broker import Layer, Ndis, SyncScheduler
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import NdisStatus
from chimneyd.observe.invariants import InvariantChecker

SUCCESS = NdisStatus.NDIS_STATUS_SUCCESS


class _Ctx:
    def __init__(self) -> None:
        self.id = next_object_id()


class Host(Layer):
    """Takes every completion; accepts every indication and gives it straight back."""

    has_protocol_edge = True

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: Any, nbl: NetBufferList, status: Any
    ) -> None:
        self.ndis.NdisReturnReceiveIndication(self, nbl, SUCCESS, nbl.data_length)
        self.ndis.NdisOffloadTcpReceiveReturn(self, self.lower_bindings[0], nbl)


class Nic(Layer):
    """Offloads every new block and completes every send at once, acknowledged in full."""

    has_miniport_edge = True

    def MiniportInitiateOffload(self, root: Any) -> None:
        for block in walk(root):
            block.status = SUCCESS
            cell = block.miniport_offload_context
            assert cell is not None
            cell.miniport_offload_context = _Ctx()
        self.ndis.NdisMInitiateOffloadComplete(self, root)

    def MiniportTcpOffloadSend(self, ctx: Any, head: NetBufferList) -> None:
        for nbl in iter_chain(head):
            n = nbl.data_length
            nbl.status = SUCCESS
            nbl.tcp_offload_bytes_transferred = n
            nbl.advance(n)
        self.ndis.NdisTcpOffloadSendComplete(self, head)


def _ignore(self: Layer, *args: Any) -> None:
    """Every other chimney handler an edge must register (spec §1.3): not called here."""


for _cls, _names in (
    (
        Host,
        (
            "ProtocolInitiateOffloadComplete",
            "ProtocolTerminateOffloadComplete",
            "ProtocolUpdateOffloadComplete",
            "ProtocolInvalidateOffloadComplete",
            "ProtocolQueryOffloadComplete",
            "ProtocolIndicateOffloadEvent",
            "ProtocolTcpOffloadSendComplete",
            "ProtocolTcpOffloadReceiveComplete",
            "ProtocolTcpOffloadDisconnectComplete",
            "ProtocolTcpOffloadForwardComplete",
            "ProtocolTcpOffloadEvent",
        ),
    ),
    (
        Nic,
        (
            "MiniportTerminateOffload",
            "MiniportUpdateOffload",
            "MiniportInvalidateOffload",
            "MiniportQueryOffload",
            "MiniportTcpOffloadReceive",
            "MiniportTcpOffloadDisconnect",
            "MiniportTcpOffloadForward",
            "MiniportTcpOffloadReceiveReturn",
            "ReceiveIndicateReturned",
        ),
    ),
):
    for _name in _names:
        setattr(_cls, _name, _ignore)


class _Timers:
    def call_later(self, delay: float, fn: Any, *args: Any) -> Any:
        raise AssertionError("no timers here")


class Stack:
    """host → `ims` pass-through IMs → nic on the SyncScheduler, `conns` connections offloaded
    under one neighbor and path (as on loopback)."""

    def __init__(self, ims: int, checker: bool, conns: int = 1) -> None:
        self.scheduler = SyncScheduler()
        self.ndis = Ndis(clock=lambda: 0, deliver=self.scheduler)
        self.checker = InvariantChecker(raise_on_violation=True) if checker else None
        self.ndis.observer = self.checker
        self.host = Host("tcpip", self.ndis)
        layers: list[Layer] = [self.host]
        layers += [PassthroughIm(f"im{i}", self.ndis, _Timers()) for i in range(ims)]
        self.nic = Nic("nic0", self.ndis)
        layers.append(self.nic)
        for upper, lower in itertools.pairwise(layers):
            self.ndis.bind(upper, lower)
        self.handles = [
            NdisOffloadHandle("tcpip", f"TCB{i}", self.ndis.new_trace(i + 1)) for i in range(conns)
        ]
        root = new_neighbor_block(NdisOffloadHandle("tcpip", "N"))
        path = root.add_dependent(new_path_block(NdisOffloadHandle("tcpip", "P")))
        for handle in self.handles:
            path.add_dependent(new_tcp_block(handle, delegated=TcpOffloadStateDelegated()))
        self.ndis.NdisInitiateOffload(self.host, self.host.lower_bindings[0], root)
        self.scheduler.run()
        # the handle the NIC indicates with: the host's, or the last IM's own
        below: Any = self.handles[0]
        for _ in range(ims):
            below = below.miniport_offload_context.handle
        self.nic_upper: NdisOffloadHandle = below


def _run(ims: int, checker: bool, rounds: int, chain: int, payload: bytes) -> tuple[float, float]:
    st = Stack(ims, checker)
    ndis, host, nic, scheduler = st.ndis, st.host, st.nic, st.scheduler
    handle, nic_upper = st.handles[0], st.nic_upper
    trace = handle.trace

    t0 = time.perf_counter()
    for _ in range(rounds):
        nbls = [NetBufferList.for_data(payload) for _ in range(chain)]
        for nbl in nbls:
            nbl.trace = trace
        head = link_chain(nbls)
        assert head is not None
        ndis.NdisOffloadTcpSend(host, handle, head)
        scheduler.run()
    send_ns = (time.perf_counter() - t0) * 1e9 / (rounds * chain)

    t0 = time.perf_counter()
    for _ in range(rounds):
        nbl = NetBufferList.for_data(payload)
        nbl.trace = trace
        ndis.NdisTcpOffloadReceiveHandler(nic, nic_upper, nbl)
        scheduler.run()
    indicate_ns = (time.perf_counter() - t0) * 1e9 / rounds
    assert st.checker is None or not st.checker.violations
    return send_ns, indicate_ns


def _memory(ims: int, conns: int) -> float:
    """Bytes the checker holds per offloaded connection, all of them idle."""
    held = {}
    for checker in (False, True):
        gc.collect()
        tracemalloc.start()
        st = Stack(ims, checker, conns)
        gc.collect()
        held[checker] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del st
    return (held[True] - held[False]) / conns


async def _engine(mib: int, ims: int) -> tuple[float, float]:
    """Best MB/s of the engine's bulk send with the checker off, then on."""
    import bench.bulk_bench as bulk_bench
    from bench.common import child, ports_of
    from chimneyd.config import EngineConfig

    best = {False: 0.0, True: 0.0}
    with child("-m", "bench.peers", "sink") as sink:
        port = ports_of(sink.expect("ready "))[0]
        for _ in range(3):
            for checker in (False, True):
                config = EngineConfig(invariants=checker)
                run = await bulk_bench.engine_bulk(ims, mib * 1024 * 1024, port, config=config)
                best[checker] = max(best[checker], run["mbps"])
    return best[False], best[True]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--chain", type=int, default=8, help="NBLs per send call")
    parser.add_argument("--ims", type=int, default=1, help="pass-through IMs between")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--engine", type=int, default=0, metavar="MIB", help="also bulk-send MIB")
    parser.add_argument(
        "--memory", type=int, default=0, metavar="N", help="also the memory of N connections"
    )
    args = parser.parse_args()
    payload = bytes(1460)
    off: dict[str, list[float]] = {"send": [], "indicate": []}
    on: dict[str, list[float]] = {"send": [], "indicate": []}
    for _ in range(args.repeat):
        for checker, into in ((False, off), (True, on)):
            send_ns, ind_ns = _run(args.ims, checker, args.rounds, args.chain, payload)
            into["send"].append(send_ns)
            into["indicate"].append(ind_ns)
    print(f"host → {args.ims} IM(s) → nic, sans-IO, best of {args.repeat} runs")
    for what, unit in (
        ("send", "per send NBL (down + completion)"),
        ("indicate", "per indication (up + return + receive-return)"),
    ):
        a, b = min(off[what]), min(on[what])
        print(
            f"  {what:9s} {unit:48s} off {a:7.0f} ns  on {b:7.0f} ns  "
            f"ratio {b / a:4.2f}  (+{b - a:.0f} ns)"
        )
    if args.memory:
        per = _memory(args.ims, args.memory)
        print(f"  memory    {args.memory} idle offloaded connections: +{per:.0f} bytes each")
    if args.engine:
        import uvloop

        off_mbps, on_mbps = uvloop.run(_engine(args.engine, args.ims))
        print(
            f"  engine bulk send, {args.engine} MiB, real sockets: off {off_mbps:.0f} MB/s  "
            f"on {on_mbps:.0f} MB/s  ratio {on_mbps / off_mbps:4.2f}"
        )


if __name__ == "__main__":
    main()
