"""The kernel's timeout that the target meets after the host's terminate began travels up the
ordinary path hop by hop, behind the segments the target indicated before it (spec §3.6.4,
§4.7, §5.2).

Once the terminate began the connection is the host's: what the target still gets from the
socket goes up the ordinary path (`NdisMIndicateReceiveNetBufferLists`), and each IM relays it
in its own turn. The kernel's timeout is no segment (a plain RST up that path reads as
"connection reset"), and it went to the host straight, past every IM: it then overtook the
segments an IM had not relayed yet, and the host processed the connection's death before
bytes and a FIN the kernel had before it gave up. Here the order the host's layer processes
them is observed (the scheduler's log), not only what the application reads: the timeout
comes after every segment the target indicated before it, through no, one or two
pass-through IMs.

The real host stack over the target, on MemoryWires: no sockets, no sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.drivers.target import events
from chimneyd.ndis.broker import Layer, Ndis
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.observe.invariants import InvariantChecker
from chimneyd.testing.clock import Delivery, ManualClock, RecordingScheduler
from chimneyd.testing.factories import make_host, make_passthrough_on, make_target
from chimneyd.testing.hostrig import HostRig
from chimneyd.testing.memwire import WireDirectory

ORDINARY = "ProtocolReceiveNetBufferLists"


#: the layers between the host and the target: none, one or two pass-through IMs, or the
#: teaming topology (deploy/teaming.toml: a pass-through IM over a MUX over two NICs)
TOPOLOGIES = ["direct", "im", "two_ims", "team"]


class Rig(HostRig):
    """host → the layers of `topology` → the target(s), on MemoryWires (`HostRig` stacks at
    most one IM)."""

    def __init__(self, topology: str) -> None:
        self.clock = ManualClock()
        self.scheduler = RecordingScheduler()
        self.ndis = Ndis(clock=self.clock, deliver=self.scheduler)
        self.checker = InvariantChecker()
        self.ndis.observer = self.checker
        self.wires = WireDirectory(self.ndis.post)
        self.host = make_host(self.ndis, self._timers())
        self.targets: dict[str, Any] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.host.emit = lambda conn, event, info: self.events.append((conn, event, dict(info)))
        self._conn_ids = 0
        ims = {"direct": 0, "im": 1, "two_ims": 2, "team": 1}[topology]
        upper: Layer = self.host
        for i in range(ims):
            im = make_passthrough_on(self.ndis, self._timers(), f"im{i}")
            self.ndis.bind(upper, im)
            upper = im
        nics = ("nic0", "nic1") if topology == "team" else ("nic0",)
        if topology == "team":
            timers = self._timers()
            mux = MuxIm("team0", self.ndis, timers, "round-robin")
            timers.bind(mux)
            self.ndis.bind(upper, mux)
            upper = mux
        for name in nics:
            self.targets[name] = make_target(self.ndis, self._timers(), self.wires.find, name)
            self.ndis.bind(upper, self.targets[name])
        self.run()

    def _timers(self) -> Any:
        return self.clock.timers(self.ndis.post)

    @property
    def target(self) -> Any:
        """The target that carries the (one) offloaded connection, else the first."""
        for t in self.targets.values():
            if list(t.connections()):
                return t
        return next(iter(self.targets.values()))


class HostTimeline:
    """What the host's layer processes, in order: the segments of the ordinary path (and the
    socket's own data) by offset, and the one delivery that told it of the kernel's timeout
    (the one after which its TCB knows the kernel timed out, whatever carried it)."""

    def __init__(self, rig: HostRig, conn: int) -> None:
        self.rig = rig
        self.tcb = rig.host.tcbs[conn]
        self.target = rig.target  # the one carrying the connection, before the terminate
        self.seen: list[tuple[Delivery, bool]] = []
        self.im_held_segments_at_timeout = False
        rig.scheduler.observers.append(self._observe)

    def _observe(self, d: Delivery) -> None:
        if d.layer is self.rig.host:
            self.seen.append((d, self.tcb.kernel_timed_out))
        elif d.layer is self.target and d.handler == "WireTimeout":
            # the precondition: an IM still holds ordinary-path segments to relay
            self.im_held_segments_at_timeout = any(
                getattr(fn, "__name__", "") == ORDINARY
                and layer is not self.rig.host
                and layer is not self.target
                for layer, fn, _ in self.rig.scheduler.queue
            )

    def order(self) -> list[str]:
        """ "data@offset", "fin@offset", "rst@offset" for the segments the host's layer got,
        and "timeout" where it learnt of the timeout."""
        out: list[str] = []
        told = [flag for _, flag in self.seen[1:]] + [self.tcb.kernel_timed_out]
        for (d, before), after in zip(self.seen, told, strict=True):
            if after and not before:
                out.append("timeout")
            elif d.handler == ORDINARY:
                _, _, offset, data, flags = d.args
                kind = "data" if data else "fin" if flags & 1 else "rst" if flags & 4 else "?"
                out.append(f"{kind}@{offset}")
        return out


def _until_the_target_s_terminate(rig: HostRig, conn: int, asked: bool) -> None:
    if asked:
        (ctx,) = rig.contexts()
        events.request_upload(rig.target, ctx, TcpUploadReason.UploadRequested)
    else:
        rig.host.app_upload(conn, lambda value, error: None)
    rig.host.after_batch()
    queue = rig.scheduler.queue
    while not (
        queue[0][0] is rig.target
        and getattr(queue[0][1], "__name__", "") == "MiniportTerminateOffload"
    ):
        rig.scheduler.run_one()
        rig.host.after_batch()


def _read_all(rig: HostRig, conn: int) -> tuple[bytes, str]:
    got = b""
    for _ in range(16):
        read = rig.call(rig.host.app_recv, conn, 64, False)
        assert read.done, read
        if read.error is not None:
            return got, str(read.error)
        if not read.value:
            return got, "eof"
        got += read.value
    raise AssertionError("reads never ended")


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("asked", [False, True], ids=["host_upload", "after_upload_requested"])
def test_bytes_behind_the_terminate_reach_the_host_before_the_timeout(
    topology: str, asked: bool
) -> None:
    """The target's inbox: the terminate, the peer's bytes, the kernel's timeout. The bytes
    go up the ordinary path; the timeout must not overtake them in an IM."""
    rig = Rig(topology)
    conn, wire = rig.open()
    rig.offload(conn)
    _until_the_target_s_terminate(rig, conn, asked)
    timeline = HostTimeline(rig, conn)
    wire.peer_send(b"late bytes")  # posted to the target, behind the terminate
    wire.kernel_timeout()  # and its WireTimeout behind them
    rig.run()
    assert timeline.im_held_segments_at_timeout is (topology != "direct")
    assert timeline.order() == ["data@0", "timeout"]
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.RESET
    got, ended = _read_all(rig, conn)
    assert got == b"late bytes" and "timed out" in ended, (got, ended)
    aborts = [i for c, e, i in rig.events if c == conn and e == "TcpIndicateAbort"]
    assert aborts == [{"path": "host", "reason": "TimeoutExpiration"}], rig.events
    assert rig.problems() == []


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_what_the_target_held_for_the_host_reaches_it_before_the_timeout(topology: str) -> None:
    """After a mandatory upload request the target holds the peer's bytes and FIN, and hands
    them up the ordinary path at the terminate (spec §5.2); the kernel's timeout, queued at
    the target behind the terminate, comes after them: the peer's FIN, which the kernel had
    before it gave up, is the end of the stream the application reads (spec §5.1)."""
    rig = Rig(topology)
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    events.request_upload(rig.target, ctx, TcpUploadReason.UploadRequested)
    rig.host.after_batch()
    wire.peer_send(b"held")  # after the request: held for the ordinary path
    wire.peer_fin()
    queue = rig.scheduler.queue
    while not (
        queue[0][0] is rig.target
        and getattr(queue[0][1], "__name__", "") == "MiniportTerminateOffload"
    ):
        rig.scheduler.run_one()
        rig.host.after_batch()
    timeline = HostTimeline(rig, conn)
    wire.kernel_timeout()  # its WireTimeout is posted to the target, behind the terminate
    rig.run()
    assert timeline.im_held_segments_at_timeout is (topology != "direct")
    assert timeline.order() == ["data@0", "fin@4", "timeout"]
    names = rig.event_names(conn)
    assert names.count("TcpIndicateDisconnect") == 1, names
    assert _read_all(rig, conn) == (b"held", "eof")
    assert rig.problems() == []


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("end", ["kernel_timeout", "peer_reset"])
def test_the_socket_s_own_news_after_the_target_let_go_comes_after_what_it_held(
    topology: str, end: str
) -> None:
    """The other road: the socket is the host's again once the target's terminate began
    (spec §3.6.4), and tells the host itself, straight, of the kernel's timeout (or the
    peer's RST). That can still overtake what the target handed up through the IMs at its
    terminate: the host's upload replays what it queued meanwhile in offset order with an
    RST last at its offset (`host.terminate`), so the peer's FIN the kernel had first is
    still the end of the stream the application reads (spec §5.1)."""
    rig = Rig(topology)
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    events.request_upload(rig.target, ctx, TcpUploadReason.UploadRequested)
    rig.host.after_batch()
    wire.peer_send(b"held")  # after the request: held for the ordinary path
    wire.peer_fin()
    target = rig.target
    queue = rig.scheduler.queue
    while not (
        queue[0][0] is target and getattr(queue[0][1], "__name__", "") == "MiniportTerminateOffload"
    ):
        rig.scheduler.run_one()
        rig.host.after_batch()
    rig.scheduler.run_one()  # the target's terminate: the socket is the host's again
    assert wire.owner is rig.host
    getattr(wire, end)()
    rig.run()
    names = rig.event_names(conn)
    assert names.count("TcpIndicateDisconnect") == 1, names
    assert _read_all(rig, conn) == (b"held", "eof")
    assert rig.problems() == []
