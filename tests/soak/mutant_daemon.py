"""chimneyd with one thing broken on purpose, for the soak's and the bench's own tests: a run
against it must fail and say why. The break is made here, in this process, before the daemon starts; nothing in
chimneyd/ is changed.

    python tests/soak/mutant_daemon.py MUTATION --listen 127.0.0.1:0 --invariants

Mutations (MUTATIONS below): a fault that is accepted, answers with its id and does nothing,
offload that answers and does nothing, one byte of the stream handed to the client damaged, or
one request answered INTERNAL by a bug no fault planted, or the invariant checker never called.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import sys
from collections.abc import Callable
from typing import Any


def _noop_fault(name: str) -> None:
    """`fault.inject` of kind `name` answers as usual (and `fault.clear` clears it), but does
    nothing: what the fault must lead to never happens. A fail_next looks used up at once."""
    from chimneyd import faults

    def apply(engine: Any, fault: Any) -> None:
        if "conn" in fault.spec:
            engine.conn(fault.spec["conn"])  # NOT_FOUND as before for a wrong connection
        fault.active = lambda: False

    faults.KINDS[name] = dataclasses.replace(faults.KINDS[name], apply=apply)


def _damage_one_byte(nth: int) -> None:
    """The `nth` non-empty `tcp.recv` answer has its first byte flipped."""
    from chimneyd.engine import Engine

    real = Engine.start_recv
    answers = 0

    def start_recv(self: Any, *args: Any, **kw: Any) -> asyncio.Future[Any]:
        inner = real(self, *args, **kw)
        outer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def relay(f: asyncio.Future[Any]) -> None:
            nonlocal answers
            if outer.done():
                return
            if f.cancelled():
                outer.cancel()
            elif (exc := f.exception()) is not None:
                outer.set_exception(exc)
            else:
                data: bytes = f.result()
                if data:
                    answers += 1
                    if answers == nth:
                        data = bytes([data[0] ^ 0xFF]) + bytes(data[1:])
                outer.set_result(data)

        inner.add_done_callback(relay)
        outer.add_done_callback(lambda o: inner.cancel() if o.cancelled() else None)
        return outer

    Engine.start_recv = start_recv  # type: ignore[method-assign]


def _offload_off() -> None:
    """Offload turned off: `tcp.connect` connects without offloading whatever it is asked, and
    `tcp.offload` answers with the connection's state and offloads nothing: every byte goes
    through the host stack. Made in the RPC method table, which the server dispatches by on
    either build (a compiled caller never sees a replaced module function)."""
    from chimneyd.rpc import methods

    connect = methods.METHODS["tcp.connect"]

    async def tcp_connect(c: Any, p: list[Any]) -> Any:
        opts = p[2] if len(p) == 3 and isinstance(p[2], dict) else {}
        return await connect(c, [*p[:2], {**opts, "offload": False}])

    async def tcp_offload(c: Any, p: list[Any]) -> Any:
        return c.engine.conn_info(methods._conn(c, p[0]))

    methods.METHODS["tcp.connect"] = tcp_connect
    methods.METHODS["tcp.offload"] = tcp_offload


def _internal_send(nth: int) -> None:
    """The `nth` `tcp.send` raises inside its RPC method before it sends anything: a bug no
    fault planted, answered INTERNAL (with a trace id) like any bug in the daemon."""
    from chimneyd.rpc import methods

    send = methods.METHODS["tcp.send"]
    calls = 0

    async def tcp_send(c: Any, p: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth:
            raise RuntimeError("mutant: a bug in tcp.send")
        return await send(c, p)

    methods.METHODS["tcp.send"] = tcp_send


def _checker_detached() -> None:
    """--invariants builds the checker, but NDIS never calls it: it finds no violation because
    it hears nothing (what `engine.invariant_checked_nbls` shows)."""
    from chimneyd.engine import Engine

    real = Engine.__init__

    def init(self: Any, *args: Any, **kw: Any) -> None:
        real(self, *args, **kw)
        self.ndis.observer = None

    Engine.__init__ = init  # type: ignore[method-assign]


def _host_drops_unread_at_abort() -> None:
    """The host forgets the bytes its application has not read when a connection is reset:
    what the daemon had read before the RST never comes back."""
    from chimneyd.drivers.host import events, receive
    from chimneyd.ndis.status import TcpOffloadEventType

    real = events.tcp_event

    def tcp_event(h: Any, handle: Any, event: Any, info: int) -> None:
        real(h, handle, event, info)
        if event is TcpOffloadEventType.TcpIndicateAbort:
            receive.drop_app_rx(h, handle.owner)

    events.tcp_event = tcp_event


def _nic_drops_held_at_reset() -> None:
    """The NIC drops the bytes it holds (not yet taken by the host) when the RST comes, where
    it must hand them back at the terminate."""
    from chimneyd.drivers.target import receive

    real = receive.peer_reset

    def peer_reset(t: Any, c: Any) -> None:
        c.buffered = []
        c.buffered_bytes = 0
        real(t, c)

    receive.peer_reset = peer_reset


MUTATIONS: dict[str, Callable[[], None]] = {
    "none": lambda: None,  # the control: the same way of starting, nothing broken
    "stall_noop": lambda: _noop_fault("stall_peer"),
    "retrieve_noop": lambda: _noop_fault("retrieve"),
    "target_failure_noop": lambda: _noop_fault("target_failure"),
    "fail_next_noop": lambda: _noop_fault("fail_next"),
    "reset_noop": lambda: _noop_fault("peer_reset"),
    "raise_next_noop": lambda: _noop_fault("raise_next"),
    "rebalance_noop": lambda: _noop_fault("rebalance"),
    "internal_500th_send": lambda: _internal_send(500),
    "offload_off": _offload_off,
    "checker_detached": _checker_detached,
    "host_drops_unread_at_abort": _host_drops_unread_at_abort,
    "nic_drops_held_at_reset": _nic_drops_held_at_reset,
    # a soak's warm-up (a connection each, before the run) reads the first answers
    "damage_20th_answer": lambda: _damage_one_byte(20),
    "damage_500th_answer": lambda: _damage_one_byte(500),
}


#: mutations that replace a module function a compiled caller binds natively (`make
#: compiled`): for them the daemon runs from the Python sources even in the compiled build.
#: They test the soak's checks, not the build, so nothing is lost
SOURCE_ONLY = frozenset(
    {"checker_detached", "host_drops_unread_at_abort", "nic_drops_held_at_reset"}
)


def _from_sources() -> None:
    """Import chimneyd's modules from their `.py` files, not the compiled extension modules
    beside them: each of the package's directories gets a finder that knows sources only."""
    from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader
    from pathlib import Path

    spec = importlib.util.find_spec("chimneyd")
    assert spec is not None and spec.submodule_search_locations is not None
    root = Path(next(iter(spec.submodule_search_locations)))
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        finder = FileFinder(str(folder), (SourceFileLoader, SOURCE_SUFFIXES))
        sys.path_importer_cache[str(folder)] = finder


def main() -> int:
    name, argv = sys.argv[1], sys.argv[2:]
    if name in SOURCE_ONLY:
        _from_sources()
    MUTATIONS[name]()
    from chimneyd.daemon import main as daemon_main

    return daemon_main(argv)


if __name__ == "__main__":
    sys.exit(main())
