"""The real host stack over real offload targets, with no socket and no event loop.

`HostRig` puts the host stack on one broker above one or more offload targets (each behind a
pass-through IM if asked), over `MemoryWire`s the test plays the peer of, with a `ManualClock`
and the invariant checker on. It drives the host's application requests the way the engine
does (a typed call with a `done` callback) and runs the host's `after_batch` whenever its inbox
would be drained, so what the host batches goes down as it does in the daemon. For the host's
rules — send pacing, uploads it decides itself, its reactions to events and failed
operations — where sockets add nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chimneyd.drivers.segment import build_segment
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.broker import Layer, Ndis
from chimneyd.ndis.nbl import NetBufferList, link_chain
from chimneyd.observe.invariants import InvariantChecker

from .clock import ManualClock, RecordingScheduler
from .factories import make_host, make_passthrough_on, make_target
from .memwire import MemoryWire, WireDirectory


class Reply:
    """The answer to one application request: `value` or `error` once `done`."""

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: Any = None

    def __call__(self, value: Any, error: Any) -> None:
        assert not self.done, "a request answered twice"
        self.done, self.value, self.error = True, value, error

    def __repr__(self) -> str:
        state = f"error={self.error}" if self.error else f"value={self.value!r}"
        return f"<Reply {state if self.done else 'pending'}>"


class HostRig:
    """host → [IM →] target(s), on MemoryWires."""

    def __init__(
        self,
        targets: tuple[str, ...] = ("nic0",),
        im: bool = False,
        host_options: dict[str, Any] | None = None,
        **target_options: Any,
    ) -> None:
        self.clock = ManualClock()
        self.scheduler = RecordingScheduler()
        self.ndis = Ndis(clock=self.clock, deliver=self.scheduler)
        self.checker = InvariantChecker()
        self.ndis.observer = self.checker
        self.wires = WireDirectory(self.ndis.post)
        self.host = make_host(self.ndis, self.clock.timers(self.ndis.post), **(host_options or {}))
        self.targets: dict[str, Any] = {}
        for name in targets:
            target = make_target(
                self.ndis,
                self.clock.timers(self.ndis.post),
                self.wires.find,
                name,
                **target_options,
            )
            self.targets[name] = target
            upper: Layer = self.host
            if im:
                im_layer = make_passthrough_on(
                    self.ndis, self.clock.timers(self.ndis.post), f"im-{name}"
                )
                self.ndis.bind(self.host, im_layer)
                upper = im_layer
            self.ndis.bind(upper, target)
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.host.emit = lambda conn, event, info: self.events.append((conn, event, dict(info)))
        self._conn_ids = 0

    @property
    def target(self) -> Any:
        """The first (or only) target."""
        return next(iter(self.targets.values()))

    def run(self) -> None:
        """Deliver everything, with the host's end-of-drain batch after each round, until idle."""
        while True:
            self.scheduler.run()
            self.host.after_batch()
            if not self.scheduler.queue:
                return

    def advance(self, seconds: float) -> None:
        """Move the clock, firing due timers, then run until idle."""
        self.clock.advance(seconds, settle=self.run)
        self.run()

    def open(self, **wire_options: Any) -> tuple[int, MemoryWire]:
        """A new established connection carried by the host."""
        wire = self.wires.open(**wire_options)
        self._conn_ids += 1
        self.host.attach(self._conn_ids, wire)
        self.run()
        return self._conn_ids, wire

    def call(self, request: Callable[..., None], conn_id: int, *args: Any) -> Reply:
        """An application request (`host.app_send`, …), run until idle; its `Reply`."""
        reply = Reply()
        request(conn_id, *args, reply)
        self.run()
        return reply

    def offload(self, conn_id: int, target: str | None = None) -> Reply:
        reply = self.call(self.host.app_offload, conn_id, target)
        assert reply.done and reply.error is None, reply
        return reply

    def query_held_below(self, conn_id: int) -> tuple[Reply, Any]:
        """Query the connection and keep the query below: deliver until `MiniportQueryOffload`
        is next and take it out of the queue. Returns the query's reply and the held delivery,
        to put back with `release`; meanwhile the host's terminate of the connection waits
        (spec §3.1)."""
        query = Reply()
        self.host.app_query(conn_id, query)
        return query, self.hold_below("MiniportQueryOffload")

    def half_close(self, conn_id: int, wire: MemoryWire) -> Reply:
        """Take the connection to FIN_WAIT_2, wherever it is carried: the application's
        graceful disconnect, then the peer acknowledges everything, the FIN too. No FIN_WAIT_2
        timer starts in FIN_WAIT_1, at any layer (the kernel retransmits the FIN, spec §8).
        The disconnect's `Reply`, completed SUCCESS."""
        before = self.fin_wait_2_timers()
        reply = self.call(self.host.app_disconnect, conn_id, False)
        assert not reply.done, reply
        assert self.fin_wait_2_timers() == before, "a FIN_WAIT_2 timer in FIN_WAIT_1"
        wire.ack()
        self.run()
        assert reply.done and reply.value == "NDIS_STATUS_SUCCESS", reply
        return reply

    def fin_wait_2_timers(self) -> int:
        """The FIN_WAIT_2 timers running (spec §8): the host's and every target's."""
        layers: list[Any] = [self.host, *self.targets.values()]
        return sum(int(layer.leftovers().get("fin_wait_2_timers", 0)) for layer in layers)

    def forward(self, conn_id: int, *segments: tuple[int, int]) -> None:
        """The host forwards `segments` (the peer's stream offset, flags), none with data, in
        one `NdisOffloadTcpForward` (spec §4.6), its NBLs marked as the host's own forward
        marks them (`offload.forward`); each acknowledges all we sent, our FIN too. Not run:
        the caller runs the rig when it wants the forward delivered."""
        tcb = self.host.tcbs[conn_id]
        wire = tcb.wire
        ack = seq(wire.isn, wire.bytes_written + (1 if wire.eof_written else 0))
        nbls = []
        for offset, flags in segments:
            raw = build_segment(
                wire.remote[1], wire.local[1], seq(wire.irs, offset), ack, flags, b""
            )
            nbl = NetBufferList.for_data(raw)
            nbl.trace = tcb.trace
            nbl.protocol_reserved = tcb
            nbls.append(nbl)
        head = link_chain(nbls)
        assert head is not None and tcb.handle is not None
        self.ndis.NdisOffloadTcpForward(self.host, tcb.handle, head)

    def hold_below(self, call: str) -> Any:
        """Deliver until the delivery of `call` (a handler's name, e.g.
        "MiniportInitiateOffload") is next and take it out of the queue; run until idle. The
        held delivery goes back with `release`."""
        self.run_until(call)
        held = self.scheduler.queue.popleft()
        self.run()
        return held

    def run_until(self, call: str) -> None:
        """Deliver, the host's batch first, until the delivery of `call` (a handler's name)
        is next in the queue; it stays there."""
        self.host.after_batch()
        queue = self.scheduler.queue
        while getattr(queue[0][1], "__name__", "") != call:
            self.scheduler.run_one()

    def release(self, held: Any) -> None:
        """Deliver a held delivery (`query_held_below`) at last, and run until idle."""
        self.scheduler.queue.append(held)
        self.run()

    def event_names(self, conn_id: int) -> list[str]:
        return [e for c, e, _ in self.events if c == conn_id]

    def contexts(self, target: str | None = None) -> list[Any]:
        """The target's live TCP contexts."""
        t = self.targets[target] if target else self.target
        return list(t.connections())

    def problems(self) -> list[str]:
        """What the invariant checker saw, and what is still queued."""
        out = list(self.checker.violations)
        if self.scheduler.queue:
            out.append(f"{len(self.scheduler.queue)} deliveries still queued")
        return out

    def layers(self) -> dict[str, Layer]:
        return dict(self.ndis.layers)


__all__ = ["HostRig", "Reply"]
