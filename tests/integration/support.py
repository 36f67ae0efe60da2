"""Helpers for engine tests on real loopback sockets: peers, topologies, drain checks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from chimneyd.config import LayerConfig
from chimneyd.engine import Engine


def examples(default: int) -> int:
    """How many examples a property test draws: `default` in `make test`, more under
    `make properties` (`CHIMNEYD_PROPERTY_EXAMPLES`)."""
    return int(os.environ.get("CHIMNEYD_PROPERTY_EXAMPLES", default))


class EchoPeer(asyncio.Protocol):
    """A loopback peer that returns every byte and answers FIN with FIN."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.write_eof()
        return True


class RecordingPeer(asyncio.Protocol):
    """A loopback peer that keeps what it receives and can send, FIN or RST on demand."""

    instances: list[RecordingPeer]

    def __init__(self, registry: list[RecordingPeer]) -> None:
        registry.append(self)
        self.received = bytearray()
        self.eof = False
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def topology(n_im: int) -> tuple[LayerConfig, ...]:
    """host → n_im pass-through IMs → nic0."""
    names = ["tcpip", *[f"im{i}" for i in range(n_im)], "nic0"]
    layers = [LayerConfig("tcpip", "host", (names[1],))]
    for i in range(n_im):
        layers.append(LayerConfig(f"im{i}", "passthrough", (names[i + 2],)))
    layers.append(LayerConfig("nic0", "target"))
    return tuple(layers)


async def drained(engine: Engine, timeout: float = 5.0) -> dict[str, Any]:
    """Wait until every layer's gauges are back to zero; return the stats."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        stats = engine.ndis.stats()
        busy = any(
            s["offloads_active"] or s["handles"] or s["outstanding_nbls"] for s in stats.values()
        )
        if not busy or loop.time() > end:
            return stats
        await asyncio.sleep(0.01)


async def eventually(
    predicate: Callable[[], Any], what: str = "the awaited condition", timeout: float = 5.0
) -> None:
    """Wait (bounded) until `predicate()` holds: a condition, never a fixed sleep; a hang fails
    the test, nothing is timed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


def assert_clean(engine: Engine, stats: dict[str, Any]) -> None:
    for name, s in stats.items():
        for gauge in ("offloads_active", "handles", "outstanding_nbls"):
            assert s[gauge] == 0, f"{name}.{gauge} = {s[gauge]} after drain"
    assert engine.layer_errors == 0, "a layer handler raised"
    if engine.checker is not None:
        assert engine.checker.violations == []
        left = engine.checker.check_drained(stats)
        assert left == [], left


EngineFactory = Callable[..., "asyncio.Future[Engine]"]


def accept_planted_bugs(engine: Engine, count: int) -> None:
    """The `count` bugs a test planted (raise_next) are the engine's only layer errors and
    invariant violations; once checked they are cleared, so that `assert_clean` (the
    make_engine fixture's teardown) checks for any other."""
    assert engine.layer_errors == count, "a handler raised beyond the planted bugs"
    assert engine.checker is not None
    bugs = engine.checker.violations
    assert len(bugs) == count and all("PlantedBug" in v for v in bugs), bugs
    bugs.clear()
    engine.layer_errors = 0


def fail_next(engine: Engine, layer: str, call: str, **extra: Any) -> int:
    """A `fail_next` fault with NDIS_STATUS_FAILURE (a corrupt hardware state, spec §3.7) on
    `call` of `layer`; `extra` adds keys (`count`, `skip`). Returns the fault's id."""
    spec = {"kind": "fail_next", "layer": layer, "call": call, "status": "NDIS_STATUS_FAILURE"}
    return engine.fault_inject({**spec, **extra})
