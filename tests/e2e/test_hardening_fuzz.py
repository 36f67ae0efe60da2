"""Fuzz a real daemon (`--invariants`) with random fault specs, update values and call sequences
from several clients at once, then check what no client may be able to do to it.

After each run: every request was answered within a bound, no answer was ever INTERNAL, no
client was dropped, every gauge of every layer is back to 0 once everyone has left, the
invariant checker saw no violation, no layer handler raised, and the daemon's memory and log
stayed bounded.

A run is seeded: the seed is printed, and `CHIMNEYD_FUZZ_SEED` replays its choices (the
interleaving of the clients still varies from run to run). The default run
is short (`CHIMNEYD_FUZZ_OPS` operations per client, 4 clients); the `soak` run is longer.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from chimney_client import AsyncClient, PeerServer, start_peer
from chimney_client.errors import CallTimeout, ChimneyError, RpcError
from chimneyd.config import DEFAULT_LAYERS
from chimneyd.drivers.base import DriverLayer
from chimneyd.drivers.mux import MuxIm
from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.drivers.target import OffloadTarget
from chimneyd.engine import cached_ranges
from chimneyd.faults import KINDS, MAX_FAULT_MS
from chimneyd.ndis.status import NdisStatus, TcpUploadReason
from tests.e2e.support import HOST, Daemon, all_zero, gauges

pytestmark = pytest.mark.timeout(600, method="thread")

CLIENTS = 4
OPS = int(os.environ.get("CHIMNEYD_FUZZ_OPS", "600"))
#: every request is answered within this (the longest legal wait asked for is 0.5 s, the
#: longest fault 0.4 s; the rest is a loaded machine)
ANSWER_S = 30.0
#: the daemon's peak memory and its log, for the whole run
MAX_RSS_MB = 400
MAX_LOG_BYTES = 32 * 1024 * 1024
#: the fuzz's own inspector: an admin sees every connection, whoever made it (for reports)
INSPECTOR_TOKEN = "fuzz-inspector"
CONFIG = f"""
[rpc]
shutdown_deadline_s = 5.0
admin_token = "{INSPECTOR_TOKEN}"
[engine]
max_queued_send_bytes = 1048576
max_pending_accepts = 8
"""

CALLS = sorted(OffloadTarget.failable_calls | OffloadTarget.delayable_calls)
STATUSES = [s.name for s in NdisStatus]
REASONS = [r.name for r in TcpUploadReason]
RANGES = cached_ranges(256 * 1024)
_DRIVERS: dict[str, type[DriverLayer]] = {
    "passthrough": PassthroughIm,
    "mux": MuxIm,
    "target": OffloadTarget,
}


@dataclass(frozen=True)
class Topology:
    """A stack the fuzz runs on: each layer's kind and the layers below it, top first."""

    name: str
    layers: tuple[tuple[str, str, tuple[str, ...]], ...]  # (name, kind, lower)
    extra: str = ""  # more keys of the mux's layer table (its policy)
    embedded: bool = False  # the daemon's embedded topology: the config names no layer

    @property
    def config(self) -> str:
        if self.embedded:
            return CONFIG
        tables = []
        for name, kind, lower in self.layers:
            table = f'[[layer]]\nname = "{name}"\nkind = "{kind}"\nlower = {list(lower)!r}\n'
            if kind == "mux" and self.extra:
                table += self.extra + "\n"
            tables.append(table.replace("'", '"'))
        return CONFIG + "\n".join(tables)

    def names(self, kind: str | None = None) -> list[str]:
        return [name for name, k, _ in self.layers if kind is None or k == kind]

    def driver(self, layer: str) -> type[DriverLayer]:
        """The driver class of `layer` (a pass-through IM's for a name the stack lacks)."""
        kind = next((k for name, k, _ in self.layers if name == layer), "passthrough")
        return _DRIVERS.get(kind, PassthroughIm)


#: The embedded default stack, and a team of three NICs under a MUX (deploy/teaming.toml's
#: shape), with the failover of active-standby or the spreading of least-loaded.
SINGLE = Topology(
    "default", tuple((la.name, la.kind, la.lower) for la in DEFAULT_LAYERS), embedded=True
)


def _team(policy: str) -> Topology:
    return Topology(
        f"team-{policy}",
        (
            ("tcpip", "host", ("filter0",)),
            ("filter0", "passthrough", ("team0",)),
            ("team0", "mux", ("nic0", "nic1", "nic2")),
            ("nic0", "target", ()),
            ("nic1", "target", ()),
            ("nic2", "target", ()),
        ),
        f'policy = "{policy}"',
    )


ALL_TOPOLOGIES = [SINGLE, _team("active-standby"), _team("least-loaded")]


def _topologies(default: list[Topology]) -> list[Topology]:
    """The stacks a fuzz test runs on: CHIMNEYD_FUZZ_TOPOLOGIES names them (comma-separated,
    or `all`), else `default`."""
    wanted = os.environ.get("CHIMNEYD_FUZZ_TOPOLOGIES", "").split(",")
    if wanted == [""]:
        return default
    if "all" in wanted:
        return ALL_TOPOLOGIES
    chosen = [t for t in ALL_TOPOLOGIES if t.name in wanted]
    if len(chosen) != len(wanted):
        names = ", ".join(t.name for t in ALL_TOPOLOGIES)
        raise ValueError(f"CHIMNEYD_FUZZ_TOPOLOGIES={','.join(wanted)}: known are {names}, all")
    return chosen


#: `make test` runs the short fuzz on every stack, and the longer rounds (marker `soak`) once
#: on each stack, to keep CI's time; `make fuzz` and `make fuzz-team` run more of them.
SHORT_TOPOLOGIES = _topologies(ALL_TOPOLOGIES)
TOPOLOGIES = _topologies([SINGLE])


@dataclass
class Tally:
    """What the run saw, for the failure message and the checks."""

    seed: int
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    internal: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    flow_held: int = 0  # requests that waited on a peer not reading, let through by reading

    def where(self) -> str:
        return f"seed {self.seed} (CHIMNEYD_FUZZ_SEED={self.seed} replays its choices)"


def _layer_failures(d: Daemon) -> list[str]:
    """What the daemon logged of layer handlers that raised (the first few, short)."""
    out = []
    for event in d.events_named("layer_handler_failed")[:3]:
        exc = event.get("exception") or [{}]
        out.append(
            f"{event.get('layer')} {event.get('handler')}: "
            f"{exc[0].get('exc_type')}: {str(exc[0].get('exc_value'))[:300]}"
        )
    out += [str(e.get("what"))[:300] for e in d.events_named("invariant_violation")[:3]]
    return out


# -- random values ---------------------------------------------------------------------------------
def _nasty(rng: random.Random) -> Any:
    """A value no well-behaved client sends."""
    choice = rng.randrange(9)
    if choice == 0:
        value: Any = 1
        for _ in range(rng.choice([10, 200])):
            value = [value]
        return value
    if choice == 1:
        return "k" * rng.choice([100, 50_000])
    if choice == 2:
        return {"a": {"b": {"c": [1, 2, {"d": None}]}}}
    if choice == 3:
        return rng.choice([-1, 0, 1 << 63, -(1 << 63), 2**64 - 1])
    if choice == 4:
        return rng.choice([True, False, None, 1.5, float("inf")])
    if choice == 5:
        return b"\xff\xfe" * rng.randrange(1, 100)
    if choice == 6:
        return []
    if choice == 7:
        return {}
    return "".join(rng.choice("xyz\u00e9\u4e2d") for _ in range(rng.randrange(1, 20)))


def fault_spec(rng: random.Random, conns: list[int], topology: Topology = SINGLE) -> dict[Any, Any]:
    """A fault spec: mostly valid ones of every kind, with bad keys, values and kinds mixed in.
    NICs are named most often: their faults are the ones the layers above must survive."""
    kind = rng.choice([*KINDS, "nic_failure", "stall", "no_such_kind"])
    conn = rng.choice(conns) if conns and rng.random() < 0.9 else rng.randrange(1, 10_000)
    nics = topology.names("target")
    layer = rng.choice([*topology.names(), *nics, *nics, "nic9"])
    spec: dict[Any, Any] = {"kind": kind}
    if kind in ("peer_reset", "invalidate", "retrieve", "stall_peer", "stall"):
        spec["conn"] = conn
    if kind in ("target_failure", "nic_failure", "fail_next", "delay"):
        spec["layer"] = layer
    if kind in ("fail_next", "delay"):
        target = topology.driver(layer)
        pool = target.failable_calls if kind == "fail_next" else target.delayable_calls
        spec["call"] = rng.choice(sorted(pool)) if rng.random() < 0.85 else rng.choice(CALLS)
    if kind in ("delay", "stall_peer", "stall"):
        spec["ms"] = (
            rng.randint(1, 400) if rng.random() < 0.85 else rng.choice([0, -5, MAX_FAULT_MS + 1])
        )
    if kind == "fail_next":
        if rng.random() < 0.5:
            spec["status"] = rng.choice(STATUSES)
        if rng.random() < 0.5:
            spec["count"] = rng.choice([1, 1, 2, 3, 0, -1])
        if rng.random() < 0.3:
            spec["skip"] = rng.choice([0, 1, 2, -1])
    if kind == "invalidate" and rng.random() < 0.7:
        spec["object"] = rng.choice(["tcp", "path", "neighbor", "table"])
    if kind == "retrieve" and rng.random() < 0.7:
        spec["reason"] = rng.choice([*REASONS, "BecauseISaidSo"])
    if rng.random() < 0.15:
        # a key of the wrong type, an extra key, or a nasty value in a known one
        key = rng.choice([*spec, "extra", "Kind", 7])
        spec[key] = _nasty(rng)
    return spec


def update_values(rng: random.Random) -> dict[Any, Any]:
    """Cached variables at and around their bounds, and things that are not."""
    changes: dict[Any, Any] = {}
    for _ in range(rng.randint(1, 3)):
        key = rng.choice([*RANGES, *RANGES, "RcvNxt", "Bogus"])
        low, high = RANGES.get(key, (0, 10))
        changes[key] = rng.choice(
            [low, high, (low + high) // 2, low - 1, high + 1, -1, 1 << 40, _nasty(rng)]
        )
    return changes


# -- one client ------------------------------------------------------------------------------------
class Fuzzer:
    def __init__(
        self,
        d: Daemon,
        client: AsyncClient,
        rng: random.Random,
        tally: Tally,
        ports: list[int],
        listener_ports: dict[int, int],
        topology: Topology = SINGLE,
    ) -> None:
        self.d = d
        self.topology = topology
        self.c = client
        self.rng = rng
        self.tally = tally
        self.ports = ports
        self.listener_ports = listener_ports  # every client's listeners: others connect to them
        self.conns: list[int] = []
        self.listeners: list[int] = []
        self.faults: list[int] = []
        # NIC failures this client ends: an initiate in flight when a NIC fails is queued until
        # RESUME (spec §5.5), and so is every request on its connection; a failure nobody ends
        # would hold them past ANSWER_S by design, not by a fault of the daemon
        self.recoveries: list[asyncio.Task[Any]] = []
        self.flow_seen: Any = None  # the last `tcp.info` the flow check read (for reports)
        self.reads: dict[int, dict[str, int]] = {}  # what its reading got (for reports)
        self.all: list[Fuzzer] = []  # every client of the run (a held send's peer is one's)

    async def call(self, method: str, *params: Any) -> Any:
        """One request: answered within ANSWER_S; INTERNAL is recorded; an error is a value.

        One wait is legal past ANSWER_S: TCP flow control. A send (or a graceful disconnect
        behind sends) waits while the peer's application does not read, and here the peers'
        applications are these clients, reading at random. Such a request is let through by
        reading: if `tcp.info` shows its bytes written but not acknowledged with the peer's
        window too small for them (0, or a few KiB: Linux sends nothing into a window smaller
        than a segment it has queued, and probes), this connection and, when its peer is a
        daemon connection, that one are read until the request is answered, within ANSWER_S
        more. (A peer still waiting in a listener's accept queue is accepted first: nobody can
        read it before.)"""
        self.tally.calls += 1
        # the bounds here decide (ANSWER_S, then ANSWER_S more while reading): the client's
        # own timer only backs them up. At ANSWER_S it would race the flow check, and a
        # request held by TCP flow control would be reported unanswered before it ran
        pending = asyncio.ensure_future(self.c.call(method, *params, timeout=3 * ANSWER_S))
        try:
            done, _ = await asyncio.wait({pending}, timeout=ANSWER_S)
            readers: list[tuple[Fuzzer, int]] = []
            if not done:
                readers = await self.held_by_flow(params)
                if readers:
                    await self.read_until(pending, readers, ANSWER_S)
            if not pending.done():
                pending.cancel()
                if len(readers) > 1:
                    peer_f, peer = readers[-1]
                    peer_info = await peer_f.quiet_call("tcp.info", peer)
                    seen = (
                        f"; still held after reading conns {[c for _, c in readers]}: reads "
                        f"{self.reads!r}; the peer's tcp.info {peer_info!r:.1500}"
                    )
                elif readers:
                    seen = f"; no client holds its peer; the flow check saw {self.flow_seen!r:.300}"
                else:  # what the flow check saw, for the report: why it found no reader
                    seen = f"; the flow check saw {self.flow_seen!r:.300}"
                raise CallTimeout(f"{method}: no response within {ANSWER_S:g} s{seen}")
            return pending.result()
        except RpcError as err:
            symbol = type(err).symbol
            self.tally.errors[symbol] = self.tally.errors.get(symbol, 0) + 1
            if symbol == "INTERNAL" or err.wire_code == 10:
                self.tally.internal.append(f"{method}{params!r:.200}: {err}")
            return err
        except ChimneyError as err:  # no answer in time, or the client was dropped
            self.tally.unanswered.append(f"{method}{params!r:.200}: {err!r}")
            self.tally.unanswered.append(await self.diagnose(params))
            raise

    async def held_by_flow(self, params: tuple[Any, ...]) -> list[tuple[Fuzzer, int]]:
        """The readers that hold a request by not reading (spec: TCP flow control), or [] if
        the socket shows nothing waiting for the peer's window (then the wait is a hang)."""
        conn = params[0] if params and type(params[0]) is int else None
        if conn is None:
            return []
        info = await self.quiet_call("tcp.info", conn)
        self.flow_seen = info
        view = info.get("socket") if isinstance(info, dict) else None
        if not view or view["written"] <= view["acked"]:
            return []
        window = view["peer_window"]
        if window is not None and window >= view["written"] - view["acked"]:
            return []  # room for every byte waiting: the kernel would have sent them
        if not view["open"]:
            return []  # a closed socket is acknowledged nothing more: no reading helps
        self.tally.flow_held += 1
        readers = [(self, conn)]
        peer = await self.find_peer(info["local"], info["remote"])
        if peer is not None:
            readers.append(peer)
        return readers

    async def find_peer(self, local: str, remote: str) -> tuple[Fuzzer, int] | None:
        """The daemon connection at the other end of local-remote, when a client holds it. It
        may still wait in a listener's accept queue: then its client accepts (as a server
        application would), taking the connections queued before it too."""
        for f in self.all:
            for other in list(f.conns):
                if _faces(await f.quiet_call("tcp.info", other), local, remote):
                    return f, other
        port = int(remote.rsplit(":", 1)[1])
        for f in self.all:
            for listener in list(f.listeners):
                if f.listener_ports.get(id(f) * 100 + listener) != port:
                    continue
                for _ in range(256):  # each accept takes the oldest: the peer comes in turn
                    got = await f.quiet_call("tcp.accept", listener, 1)
                    if type(got) is not int:
                        break
                    f.conns.append(got)
                    if _faces(await f.quiet_call("tcp.info", got), local, remote):
                        return f, got
        return None

    async def read_until(
        self, pending: asyncio.Future[Any], readers: list[tuple[Fuzzer, int]], limit: float
    ) -> None:
        """Read the readers' connections, as their applications would, until `pending` is
        answered or `limit` seconds have passed."""
        deadline = time.monotonic() + limit
        self.reads = {}
        while not pending.done() and time.monotonic() < deadline:
            for f, conn in readers:
                got = await f.quiet_call("tcp.recv", conn, 262144, 20)
                # for the report: what reading each one gave, by kind of answer
                if type(got) is bytes:
                    kind = "data" if got else "end of stream"
                else:
                    kind = repr(got)[:120]
                counts = self.reads.setdefault(conn, {})
                counts[kind] = counts.get(kind, 0) + 1
            await asyncio.sleep(0)

    async def quiet_call(self, method: str, *params: Any) -> Any:
        """A call the fuzz makes to look or to unblock, not to test: errors are values."""
        try:
            return await self.c.call(method, *params, timeout=5)
        except (RpcError, ChimneyError) as err:
            return err

    async def diagnose(self, params: tuple[Any, ...]) -> str:
        """What the daemon says of the connection a request hung on (for the report)."""
        conn = params[0] if params and isinstance(params[0], int) else None
        out = []
        for method, args in (("tcp.info", (conn,)), ("trace.get", (conn,)), ("fault.list", ())):
            if conn is None and args:
                continue
            try:
                got = await self.c.call(method, *args, timeout=5)
            except ChimneyError as err:
                got = err
            if method == "trace.get" and isinstance(got, list):
                got = [  # the last hops, short
                    " ".join(str(h.get(k)) for k in ("layer", "call", "nbl", "status", "event"))
                    for h in got[-16:]
                ]
            out.append(f"{method}: {got!r:.2500}")
        try:  # what the host waits for: its objects, connections waiting for an initiate
            info = await self.c.call("stack.info", timeout=5)
            host = next(la for la in info["layers"] if la.get("kind") == "host")
            out.append(f"host: {host!r:.2500}")
            for mux in (la for la in info["layers"] if la.get("kind") == "mux"):
                out.append(f"{mux.get('name')}: {mux!r:.1500}")
        except (ChimneyError, KeyError, StopIteration, TypeError) as err:
            out.append(f"host: {err!r}")
        if isinstance(info := await self.quiet_call("tcp.info", conn), dict):
            # how its socket went, if it went without the daemon closing it (`wire_lost`)
            lost = [
                {k: e.get(k) for k in ("how", "why", "owner", "written", "acked")}
                for e in self.d.events_named("wire_lost")
                if e.get("local") == info.get("local") and e.get("remote") == info.get("remote")
            ]
            out.append(f"wire_lost: {lost!r:.800}")
        out.append(await carried(self.d))
        return "\n".join(out)

    def conn(self) -> int:
        if self.conns and self.rng.random() < 0.93:
            return self.rng.choice(self.conns)
        return self.rng.randrange(1, 5000)  # someone else's, closed, or never made

    async def step(self) -> None:
        rng = self.rng
        op = rng.choices(list(OPS_TABLE), weights=[w for w, _ in OPS_TABLE.values()], k=1)[0]
        await OPS_TABLE[op][1](self)

    # -- the operations --------------------------------------------------------------------------
    async def op_connect(self) -> None:
        port = self.rng.choice(self.ports + list(self.listener_ports.values()))
        opts: dict[str, Any] = {"offload": self.rng.random() < 0.8}
        if self.rng.random() < 0.1:
            below = self.topology.names()[1:]  # any layer under the host, or none such
            opts["target"] = self.rng.choice([*below, "nic9"])
        got = await self.call("tcp.connect", HOST, port, opts)
        if isinstance(got, int):
            self.conns.append(got)

    async def op_listen(self) -> None:
        if len(self.listeners) >= 2:
            return
        got = await self.call("tcp.listen", HOST, 0, {"offload": self.rng.random() < 0.7})
        if isinstance(got, int):
            self.listeners.append(got)
            info = await self.call("tcp.listener_info", got)
            if isinstance(info, dict):
                self.listener_ports[id(self) * 100 + got] = info["port"]

    async def op_accept(self) -> None:
        if not self.listeners:
            return
        got = await self.call(
            "tcp.accept", self.rng.choice(self.listeners), self.rng.randint(1, 300)
        )
        if isinstance(got, int):
            self.conns.append(got)

    async def op_close_listener_by_leaving(self) -> None:
        """Listeners close when their client leaves; nothing to do mid-run."""

    async def op_send(self) -> None:
        size = self.rng.choice([1, 100, 4096, 65536, 300_000])
        await self.call("tcp.send", self.conn(), self.rng.randbytes(size))

    async def op_recv(self) -> None:
        await self.call(
            "tcp.recv", self.conn(), self.rng.choice([1, 1000, 65536]), self.rng.randint(1, 500)
        )

    async def op_state(self) -> None:
        method = self.rng.choice(
            ["tcp.offload", "tcp.upload", "tcp.query", "tcp.info", "trace.get"]
        )
        await self.call(method, self.conn())

    async def op_update(self) -> None:
        await self.call("tcp.update", self.conn(), update_values(self.rng))

    async def op_disconnect(self) -> None:
        await self.call("tcp.disconnect", self.conn(), self.rng.random() < 0.4)

    async def op_close(self) -> None:
        conn = self.conn()
        got = await self.call("tcp.close", conn)
        if got is True and conn in self.conns:
            self.conns.remove(conn)

    async def op_fault(self) -> None:
        spec = fault_spec(self.rng, self.conns, self.topology)
        got = await self.call("fault.inject", spec)
        if isinstance(got, int):
            self.faults.append(got)
            if spec.get("kind") in ("target_failure", "nic_failure"):
                self.recoveries.append(asyncio.ensure_future(self._recover(got)))

    async def _recover(self, fault: int) -> None:
        """The NIC works again after a while (fault.clear: RESUME), unless cleared before."""
        await asyncio.sleep(self.rng.uniform(0.05, 3.0))
        await self.call("fault.clear", fault)

    async def op_clear(self) -> None:
        which: Any = "*"
        if self.faults and self.rng.random() < 0.7:
            which = self.rng.choice(self.faults)
        elif self.rng.random() < 0.2:
            which = self.rng.randrange(1, 1000)
        await self.call("fault.clear", which)

    async def op_observe(self) -> None:
        method = self.rng.choice(["fault.list", "stack.stats", "tcp.list", "stack.info"])
        await self.call(method)

    async def op_subscribe(self) -> None:
        await self.call("events.subscribe", self.rng.choice(["*", self.conn()]))

    async def op_pipeline(self) -> None:
        """Several requests at once on one connection: sends, a disconnect, a close."""
        conn = self.conn()
        calls = [self.call("tcp.send", conn, b"p" * 5000) for _ in range(self.rng.randint(1, 6))]
        calls.append(
            self.call(self.rng.choice(["tcp.upload", "tcp.query", "tcp.disconnect"]), conn)
        )
        if self.rng.random() < 0.3:
            calls.append(self.call("tcp.close", conn))
        await asyncio.gather(*calls)

    async def leave(self) -> None:
        """Clean up like a careful client half the time; otherwise just go (the daemon cleans)."""
        await asyncio.gather(*self.recoveries)
        if self.rng.random() < 0.5:
            await self.call("fault.clear", "*")
            for conn in list(self.conns):
                await self.call("tcp.close", conn)
        await self.c.close()


OpFn = Callable[[Fuzzer], Any]
OPS_TABLE: dict[str, tuple[int, OpFn]] = {
    "connect": (12, Fuzzer.op_connect),
    "listen": (2, Fuzzer.op_listen),
    "accept": (4, Fuzzer.op_accept),
    "send": (14, Fuzzer.op_send),
    "recv": (8, Fuzzer.op_recv),
    "state": (10, Fuzzer.op_state),
    "update": (8, Fuzzer.op_update),
    "disconnect": (4, Fuzzer.op_disconnect),
    "close": (6, Fuzzer.op_close),
    "fault": (10, Fuzzer.op_fault),
    "clear": (5, Fuzzer.op_clear),
    "observe": (4, Fuzzer.op_observe),
    "subscribe": (2, Fuzzer.op_subscribe),
    "pipeline": (4, Fuzzer.op_pipeline),
}


# -- a run -----------------------------------------------------------------------------------------
async def _settled(d: Daemon, tally: Tally) -> dict[str, Any]:
    """Once everyone has left: every gauge 0 and no connection, within a bound."""
    checker = await d.aclient()
    try:
        await checker.fault_clear("*")  # layer faults outlive their makers (docs/security.md)
        deadline = time.monotonic() + 30
        while True:
            stats = await checker.stack_stats()
            if stats["connections"] == 0 and all_zero(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not drained: {stats['connections']} connections, {gauges(stats)}; "
                    + tally.where()
                )
            await asyncio.sleep(0.1)
    finally:
        await checker.close()


def _faces(info: Any, local: str, remote: str) -> bool:
    """Whether `info` (a `tcp.info` answer, or an error) is of the connection at the other end
    of local-remote."""
    return isinstance(info, dict) and (info.get("local"), info.get("remote")) == (remote, local)


_STATUS_CALLS = frozenset({"NdisMIndicateStatusEx", "ProtocolStatusEx"})


async def carried(d: Daemon, most: int = 6) -> str:
    """For a report: the connections below the host (offloaded, or on their way), as an admin
    sees them whoever made them, each with its last hops but status indications."""
    try:
        inspector = await d.aclient(token=INSPECTOR_TOKEN)
    except ChimneyError as err:
        return f"carried: {err!r}"
    out = []
    try:
        for conn in await inspector.call("tcp.list", timeout=5):
            info = await inspector.call("tcp.info", conn, timeout=5)
            if info.get("state") in ("host", "closed"):
                continue
            hops = await inspector.call("trace.get", conn, timeout=5)
            # status indications reach every connection of a binding and would crowd out
            # the connection's own calls (a retrieve asked, a terminate begun)
            own = [h for h in hops if h.get("call") not in _STATUS_CALLS]
            last = [
                " ".join(str(h.get(k)) for k in ("layer", "call", "status", "event"))
                for h in own[-16:]
            ]
            phases = info.get("phases")
            out.append(f"{conn} {info.get('state')} {info.get('handles')!r} {phases!r} {last!r}")
            if len(out) >= most:
                break
    except ChimneyError as err:
        out.append(repr(err))
    finally:
        await inspector.close()
    return "carried: " + ("\n  ".join(out) or "none")


async def fuzz_run(d: Daemon, seed: int, ops: int, topology: Topology = SINGLE) -> Tally:
    print(f"fuzz seed {seed} on {topology.name}: CHIMNEYD_FUZZ_SEED={seed} replays its choices")
    tally = Tally(seed)
    rng = random.Random(seed)
    peers: list[PeerServer] = [
        await start_peer("echo", HOST, 0),
        await start_peer("sink", HOST, 0),
        await start_peer("echo", HOST, 0, stall_ms=300),
    ]
    listener_ports: dict[int, int] = {}
    try:
        fuzzers = [
            Fuzzer(
                d,
                await d.aclient(call_timeout=ANSWER_S),
                random.Random(rng.randrange(1 << 32)),
                tally,
                [p.port for p in peers],
                listener_ports,
                topology,
            )
            for _ in range(CLIENTS)
        ]
        for f in fuzzers:
            f.all = fuzzers

        async def run(f: Fuzzer) -> None:
            for _ in range(ops):
                await f.step()
            await f.leave()

        results = await asyncio.gather(*(run(f) for f in fuzzers), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not tally.unanswered, (
            "unanswered: "
            + "\n".join(tally.unanswered[:4])
            + f"\n{_layer_failures(d)}\n{tally.where()}"
        )
        assert not failures, f"{failures[:3]!r}; {tally.where()}"
        assert not tally.internal, (
            f"INTERNAL answers: {tally.internal[:3]}; {_layer_failures(d)}; {tally.where()}"
        )
        stats = await _settled(d, tally)
        engine = stats["engine"]
        assert engine["invariant_violations"] == 0, f"{_layer_failures(d)}; {tally.where()}"
        assert engine["layer_errors"] == 0, f"{_layer_failures(d)}; {tally.where()}"
        assert d.alive(), d.log_tail()
        rss_mb = d.rss_peak_kb() / 1024
        log_bytes = sum(len(line) + 1 for line in d.stderr.lines)
        print(
            f"fuzz seed {seed}: {tally.calls} calls, errors {tally.errors}, "
            f"{tally.flow_held} held by flow control, peak RSS "
            f"{rss_mb:.0f} MB, log {log_bytes} bytes"
        )
        assert rss_mb < MAX_RSS_MB, f"peak RSS {rss_mb:.0f} MB; {tally.where()}"
        assert log_bytes < MAX_LOG_BYTES, f"log {log_bytes} bytes; {tally.where()}"
    finally:
        for peer in peers:
            await peer.close()
    return tally


async def test_the_flow_check_reads_a_peer_still_waiting_to_be_accepted(
    spawn_daemon: Any,
) -> None:
    """The fuzz's own check: a send held because its peer waits, unaccepted, in a listener's
    queue is let through: the listener's client accepts it and reads. (Before, the check read
    only connections some client held and reported such a send as a hang.)"""
    d: Daemon = spawn_daemon()
    tally = Tally(0)
    listener_ports: dict[int, int] = {}
    server, sender = [
        Fuzzer(
            d, await d.aclient(call_timeout=ANSWER_S), random.Random(i), tally, [], listener_ports
        )
        for i in range(2)
    ]
    server.all = sender.all = [server, sender]
    lid = await server.call("tcp.listen", HOST, 0, {"offload": True})
    server.listeners.append(lid)
    port = (await server.call("tcp.listener_info", lid))["port"]
    listener_ports[id(server) * 100 + lid] = port
    conn = await sender.call("tcp.connect", HOST, port, {"offload": True})
    assert type(conn) is int, conn
    chunk = random.Random(3).randbytes(1 << 20)
    for _ in range(64):  # until the receiver's buffers are full: a send stays held
        pending = asyncio.ensure_future(sender.c.call("tcp.send", conn, chunk, timeout=60))
        done, _ = await asyncio.wait({pending}, timeout=2)
        if not done:
            break
        assert pending.result() == len(chunk)
    assert not pending.done(), "64 MiB went through with nobody reading"
    readers = await sender.held_by_flow((conn,))
    assert [f for f, _ in readers] == [sender, server], readers
    assert server.conns == [readers[1][1]]
    await sender.read_until(pending, readers, ANSWER_S)
    assert pending.done() and pending.result() == len(chunk)
    for client in (server, sender):
        await client.c.close()


#: The seeds `make test` runs, so that CI is repeatable: a red run names a seed that replays
#: the same choices. `make fuzz` draws fresh seeds (CHIMNEYD_FUZZ_RANDOM=1) to find new
#: sequences; CHIMNEYD_FUZZ_SEED replays one. (Timing still varies from run to run: the daemon
#: is real.)
FIXED_SEEDS = (3696161988, 2237249951, 809732096, 3825012741, 3186349564)


def _seed(round_: int) -> int:
    env = os.environ.get("CHIMNEYD_FUZZ_SEED")
    if env:
        return int(env)
    if os.environ.get("CHIMNEYD_FUZZ_RANDOM"):
        return random.SystemRandom().randrange(1 << 32)
    return FIXED_SEEDS[round_ % len(FIXED_SEEDS)]


@pytest.mark.parametrize("topology", SHORT_TOPOLOGIES, ids=lambda t: t.name)
async def test_fuzz_faults_updates_and_calls(spawn_daemon: Any, topology: Topology) -> None:
    d: Daemon = spawn_daemon(topology.config)
    # the last seed: the longer rounds below take the others, so no round replays this one
    tally = await fuzz_run(d, _seed(len(FIXED_SEEDS) - 1), OPS, topology)
    assert tally.calls >= CLIENTS * OPS
    # the run did reach the interesting answers, not only refusals
    assert tally.errors.get("INVALID_PARAMS", 0) > 0, tally.errors


#: Rounds of the longer fuzz on each stack chosen (CHIMNEYD_FUZZ_ROUNDS; `make fuzz` runs ten).
ROUNDS = int(os.environ.get("CHIMNEYD_FUZZ_ROUNDS", "2"))


def _longer_rounds() -> list[Any]:
    """(stack, round) of the longer fuzz: ROUNDS on each stack CHIMNEYD_FUZZ_TOPOLOGIES names
    (the default stack if none); with neither variable set (`make test`), one round on each
    stack, each on a seed of its own.

    One round on the default stack, not two: what a round reaches, counted as (method, fault
    kind, answer) of every call, the second round's seed reached nothing the first round's and
    the short fuzz's did not (only other random strings as the kind of a refused fault). Its
    seed stays in FIXED_SEEDS, and `make fuzz` runs ten rounds."""
    if os.environ.get("CHIMNEYD_FUZZ_TOPOLOGIES") or "CHIMNEYD_FUZZ_ROUNDS" in os.environ:
        chosen = [(t, r) for t in TOPOLOGIES for r in range(ROUNDS)]
    else:
        teams = [t for t in ALL_TOPOLOGIES if t is not SINGLE]
        chosen = [(SINGLE, 0)]
        # the teams keep the seeds they had when the default stack ran two rounds (2 and 3)
        chosen += [(t, 2 + i) for i, t in enumerate(teams)]
    return [pytest.param(t, r, id=f"{t.name}-{r}") for t, r in chosen]


@pytest.mark.soak
@pytest.mark.parametrize(("topology", "round_"), _longer_rounds())
async def test_fuzz_longer(spawn_daemon: Any, topology: Topology, round_: int) -> None:
    d: Daemon = spawn_daemon(topology.config)
    await fuzz_run(d, _seed(round_), OPS * 4, topology)
