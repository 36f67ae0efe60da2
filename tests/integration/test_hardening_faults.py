"""Every fault the registry allows leaves the stack consistent (issue: a fault that wedges all).

Each case arms one fault on a real engine (invariant checker on), then runs a short realistic
workload round after round — connect offloaded, send and receive, query, update, upload,
re-offload, send again, invalidate, disconnect, close — until the fault is used up. Every request must be
answered within a bound (a hang fails the test, naming the step); a failure may only be one of
the outcomes the spec gives a failed call (an NDIS status, or a state that no longer allows the
call), never INTERNAL; the bytes that arrive are the bytes acknowledged, in order. Then a
fresh connection must do the whole workload without an error, and after everyone leaves every
gauge of every layer is 0 and the checker saw no violation.

The default selection runs every (kind, call, count and skip) with each call's default status;
the `soak` marker adds every status each call admits and every upload reason.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import EngineConfig, LayerConfig
from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.drivers.target import OffloadTarget
from chimneyd.engine import Engine, start_engine
from chimneyd.faults import KINDS
from chimneyd.ndis.status import (
    INITIATE_BLOCK_STATUSES,
    OFFLOADED_STATUSES,
    NdisStatus,
    TcpUploadReason,
)
from tests.integration.support import accept_planted_bugs, assert_clean, drained

#: every request of the workload is answered within this, or the case fails as a hang
STEP_S = 5.0
#: a `delay` long enough to reorder nothing by luck, short enough to keep the matrix quick
DELAY_MS = 15
#: hops kept per connection: all of a faulted workload's, to find the failed call in them
TRACE_DEPTH = 4096
#: rounds of the workload before a `fail_next` must have been used up
MAX_ROUNDS = 8
#: failures a faulted workload may see: the call's NDIS status, or a state that no longer
#: allows the call (a connection whose hardware state was lost, one already disconnected)
ALLOWED = frozenset({ErrorCode.NDIS_STATUS, ErrorCode.INVALID_STATE})
#: and where a layer is made to raise (`raise_next`): the requests it was serving, INTERNAL
BUGGED = ALLOWED | {ErrorCode.INTERNAL}

#: a hang must fail the run, not stall it: uvloop never lets SIGALRM's handler run while it
#: waits, so pytest-timeout's default method cannot interrupt a wedged loop
pytestmark = pytest.mark.timeout(120, method="thread")

_ACKED = re.compile(r"acknowledged (\d+) bytes")
_STATE_CALLS = {
    "MiniportTerminateOffload",
    "MiniportQueryOffload",
    "MiniportUpdateOffload",
    "MiniportInvalidateOffload",
}
_FAILURES = [
    s.name
    for s in NdisStatus
    if s not in (NdisStatus.NDIS_STATUS_SUCCESS, NdisStatus.NDIS_STATUS_PENDING)
]


def _statuses(call: str) -> list[str]:
    """The statuses a `fail_next` on `call` admits (faults.py refuses the others)."""
    if call.startswith("MiniportInitiateOffload"):
        return [s.name for s in INITIATE_BLOCK_STATUSES if s not in OFFLOADED_STATUSES]
    if call in _STATE_CALLS:
        return ["NDIS_STATUS_FAILURE"]
    return _FAILURES


FAILABLE = [("nic0", c) for c in sorted(OffloadTarget.failable_calls)] + [
    ("im0", c) for c in sorted(PassthroughIm.failable_calls)
]
DELAYABLE = [("nic0", c) for c in sorted(OffloadTarget.delayable_calls)] + [
    ("im0", c) for c in sorted(PassthroughIm.delayable_calls)
]
#: (count, skip): one and several, at once and after some calls went through
COUNT_SKIP = [(1, 0), (3, 0), (1, 2), (2, 1)]


@dataclass
class Outcome:
    """What a workload saw: errors by step, and every status named in them."""

    errors: list[tuple[str, EngineError]] = field(default_factory=list)

    def text(self) -> str:
        return "; ".join(f"{step}: {err}" for step, err in self.errors)


async def _step(
    out: Outcome, name: str, coro: Any, strict: bool, allowed: frozenset[ErrorCode] = ALLOWED
) -> Any:
    """One request of the workload: answered in time, and failing only as a call may fail
    (`allowed`: INTERNAL too where a layer is made to raise)."""
    try:
        return await asyncio.wait_for(coro, STEP_S)
    except TimeoutError:
        raise AssertionError(f"{name} was never answered (after: {out.text()})") from None
    except EngineError as err:
        out.errors.append((name, err))
        if strict or err.code not in allowed:
            raise AssertionError(f"{name} answered {err} (after: {out.text()})") from None
        return err


async def _echoed(
    engine: Engine,
    out: Outcome,
    conn: int,
    data: bytes,
    strict: bool,
    step: str,
    allowed: frozenset[ErrorCode] = ALLOWED,
) -> None:
    """Send `data`; read back what the peer acknowledged and echoed: exactly those bytes."""
    sent = await _step(out, f"send {step}", engine.send(conn, data), strict, allowed)
    if isinstance(sent, EngineError):
        match = _ACKED.search(str(sent))
        if match is None or "REQUEST_ABORTED" in str(sent):
            return  # reset, or a send a bug answered: what the peer echoed is not known
        acked = int(match.group(1))
    else:
        assert sent == len(data)
        acked = sent
    if not acked:
        return
    got = await _step(
        out, f"recv {step}", engine.recv(conn, acked, STEP_S - 1, True), strict, allowed
    )
    if isinstance(got, EngineError) and got.code is ErrorCode.INTERNAL:
        # a read a layer's bug answered took nothing: the bytes are the next read's (§6.3)
        got = await _step(
            out, f"recv {step} again", engine.recv(conn, acked, STEP_S - 1, True), True
        )
    if isinstance(got, EngineError):
        return
    assert got == data[:acked], f"{step}: echoed {got[:40]!r}…, sent {data[:40]!r}…"


async def workload(
    engine: Engine,
    port: int,
    tag: int,
    strict: bool = False,
    allowed: frozenset[ErrorCode] = ALLOWED,
) -> Outcome:
    """The realistic life of one offloaded connection, every request bounded."""
    out = Outcome()
    conn = await _step(out, "connect", engine.connect("127.0.0.1", port), strict, allowed)
    if strict:
        assert engine.conn_info(conn)["state"] == "offloaded"
    payload = bytes((tag + i) % 251 for i in range(3000))
    try:
        await _echoed(engine, out, conn, payload, strict, "1", allowed)
        await _step(out, "query", engine.query(conn), strict, allowed)
        changes = {"KaTimeout": 7_200_000, "RcvIndicationSize": 1024}
        await _step(out, "update", engine.update(conn, changes), strict, allowed)
        await _echoed(engine, out, conn, payload[::-1], strict, "2", allowed)
        await _step(out, "upload", engine.upload(conn), strict, allowed)
        await _echoed(engine, out, conn, b"in the host", strict, "3", allowed)
        await _step(out, "offload", engine.offload(conn), strict, allowed)
        await _echoed(engine, out, conn, payload[:777], strict, "4", allowed)
        # an invalidated object's connections are uploaded (spec §3.5); then offloaded again,
        # so that the disconnect goes through the chimney
        what = ("tcp", "path", "neighbor")[tag % 3]
        await _step(out, "invalidate", engine.invalidate(conn, what), strict, allowed)
        await _left_chimney(engine, conn)
        await _step(out, "offload again", engine.offload(conn), strict, allowed)
        await _echoed(engine, out, conn, payload[:99], strict, "5", allowed)
        # graceful and abortive in turn
        status = await _step(
            out, "disconnect", engine.disconnect(conn, tag % 2 == 1), strict, allowed
        )
        assert isinstance(status, EngineError) or status.startswith("NDIS_STATUS_"), status
        if strict:
            assert status == "NDIS_STATUS_SUCCESS", status
    finally:
        await _step(out, "close", engine.close(conn), True)
    return out


async def _left_chimney(engine: Engine, conn: int) -> None:
    """Wait (bounded) until the connection's upload after an invalidate is over."""
    for _ in range(int(STEP_S / 0.01)):
        if engine.conn_info(conn)["state"] in ("host", "closed"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"connection {conn} was never uploaded after its invalidate")


async def _settle(engine: Engine) -> None:
    """Everyone left: every gauge back to 0, nothing violated, no handler raised."""
    assert engine.conn_ids() == []
    stats = await drained(engine)
    assert_clean(engine, stats)


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[..., Any]]:
    """Engines with the invariant checker on and every hop kept; torn down within bounds (a
    wedged engine fails its test instead of hanging the teardown)."""
    engines: list[Engine] = []

    async def make(layers: Any = None) -> Engine:
        config = EngineConfig(invariants=True, trace_depth=TRACE_DEPTH)
        engine = await (start_engine(config) if layers is None else start_engine(config, layers))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        try:
            for conn in engine.conn_ids():
                await asyncio.wait_for(engine.close(conn), STEP_S)
            report = await asyncio.wait_for(engine.shutdown(2.0), STEP_S)
        except TimeoutError:
            raise AssertionError("the engine could not be closed: wedged") from None
        assert report["left_over"] == {}


def _saw_status(engine: Engine, seen: Outcome, spec: dict[str, Any]) -> None:
    """The failed calls completed with the fault's status: a client was answered with it, or
    a hop of some connection's trace carries it."""
    status = spec.get("status", "NDIS_STATUS_FAILURE")
    if spec["call"].endswith(("[path]", "[neighbor]")):
        # the object's block has it; the connections below it are "never attempted" (§3.2.4)
        status = "NDIS_STATUS_FAILURE"
    if spec["layer"] == "im0" and status == "NDIS_STATUS_UPLOAD_IN_PROGRESS":
        status = "NDIS_STATUS_REQUEST_UPLOAD"  # what an IM that cannot relay says (spec §4.1)
    if status in seen.text():
        return
    if _objects_only(engine, spec):
        return  # a neighbor's or path's terminate, repeated by the host: nobody's request
    conns = range(1, engine._conn_ids + 1)
    hops = [hop for conn in conns for hop in engine.trace(conn, None)]
    assert any(hop["status"] == status for hop in hops), f"{status} never seen: {seen.text()}"


def _objects_only(engine: Engine, spec: dict[str, Any]) -> bool:
    """Whether every call the fault failed was a terminate of neighbor and path objects only:
    the host terminates connections in a call of their own, before their path and neighbor
    (`terminate.flush_terminates`, spec §5.5), and terminates a corrupt object again (spec
    §3.7); no connection's request or trace hop carries that status."""
    (entry,) = [f for f in engine.fault_entries() if f["call"] == spec["call"]]
    return spec["call"] == "MiniportTerminateOffload" and not any(
        hit["conns"] for hit in entry["failed"]
    )


def _says_what_it_failed(engine: Engine, fid: int, spec: dict[str, Any]) -> None:
    """fault.list `used`: one entry per call the fault failed, naming its layer and call and
    the connections the call concerned (connections this engine made)."""
    (entry,) = [f for f in engine.fault_entries() if f["id"] == fid]
    failed = entry["failed"]
    assert len(failed) == spec.get("count", 1), failed
    made = set(range(1, engine._conn_ids + 1))
    for hit in failed:
        assert (hit["layer"], hit["call"]) == (spec["layer"], spec["call"]), hit
        assert set(hit["conns"]) <= made and hit["conns_total"] == len(hit["conns"]), hit
        # an invalidate naming a neighbor or a path concerns the connection on it (spec §3.7);
        # a terminate of a neighbor and path alone concerns none (`_objects_only`)
        assert hit["conns"] or hit["call"] == "MiniportTerminateOffload", hit


async def _run_case(engine: Engine, port: int, spec: dict[str, Any]) -> Outcome:
    seen = Outcome()
    fid = engine.fault_inject(spec)
    for rnd in range(MAX_ROUNDS):
        out = await workload(engine, port, rnd)
        seen.errors += out.errors
        if not any(f["id"] == fid for f in engine.fault_list()):
            break
    else:
        if spec["kind"] == "fail_next":
            raise AssertionError(f"{spec} never used up in {MAX_ROUNDS} rounds")
    if spec["kind"] == "fail_next":
        _saw_status(engine, seen, spec)
        _says_what_it_failed(engine, fid, spec)
    engine.fault_clear(None)
    # the fault is over: the stack carries on as if nothing had happened
    await workload(engine, port, 99, strict=True)
    await _settle(engine)
    return seen


# -- fail_next ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("count", "skip"), COUNT_SKIP, ids=lambda v: str(v))
@pytest.mark.parametrize(("layer", "call"), FAILABLE, ids=lambda v: str(v))
async def test_fail_next(
    make_engine: Any, echo_port: int, layer: str, call: str, count: int, skip: int
) -> None:
    engine = await make_engine()
    spec = {"kind": "fail_next", "layer": layer, "call": call, "count": count, "skip": skip}
    await _run_case(engine, echo_port, spec)


def _status_cases() -> list[Any]:
    cases = []
    for layer, call in FAILABLE:
        for status in _statuses(call):
            for count, skip in ((1, 0), (2, 1)):
                cases.append(pytest.param(layer, call, status, count, skip, marks=pytest.mark.soak))
    return cases


@pytest.mark.parametrize(("layer", "call", "status", "count", "skip"), _status_cases())
async def test_fail_next_every_status(
    make_engine: Any, echo_port: int, layer: str, call: str, status: str, count: int, skip: int
) -> None:
    engine = await make_engine()
    spec = {
        "kind": "fail_next",
        "layer": layer,
        "call": call,
        "status": status,
        "count": count,
        "skip": skip,
    }
    await _run_case(engine, echo_port, spec)


# -- delay -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("layer", "call"), DELAYABLE, ids=lambda v: str(v))
async def test_delay(make_engine: Any, echo_port: int, layer: str, call: str) -> None:
    engine = await make_engine()
    spec = {"kind": "delay", "layer": layer, "call": call, "ms": DELAY_MS}
    # a delay stays until cleared: run the workload twice under it
    engine.fault_inject(spec)
    for rnd in range(2):
        out = await workload(engine, echo_port, rnd)
        assert out.errors == [], out.text()  # a delay changes timing only
    engine.fault_clear(None)
    await workload(engine, echo_port, 99, strict=True)
    await _settle(engine)


# -- raise_next: a bug in a layer -----------------------------------------------------------------
#: the workload forwards nothing (no initiate is held while the peer sends): the forward's
#: bug is test_layer_errors.py's
RAISABLE = [
    (layer, call)
    for layer, kind in (("nic0", OffloadTarget), ("im0", PassthroughIm))
    for call in sorted(kind.raisable_calls - {"MiniportTcpOffloadForward"})
]


@pytest.mark.parametrize(("count", "skip"), [(1, 0), (2, 1)], ids=lambda v: str(v))
@pytest.mark.parametrize(("layer", "call"), RAISABLE, ids=lambda v: str(v))
async def test_raise_next(
    make_engine: Any, echo_port: int, layer: str, call: str, count: int, skip: int
) -> None:
    """A layer raises in a call, once or twice, in the middle of the workload: the requests
    it was serving may be answered INTERNAL, every other one as the call may fail, none hangs;
    the echoed bytes are the acknowledged ones; afterwards the stack carries on as if nothing
    had happened and drains, the planted bugs its only violations (docs/spec.md §6.3)."""
    engine = await make_engine()
    spec = {"kind": "raise_next", "layer": layer, "call": call, "count": count, "skip": skip}
    fid = engine.fault_inject(spec)
    seen = Outcome()
    for rnd in range(MAX_ROUNDS):
        seen.errors += (await workload(engine, echo_port, rnd, allowed=BUGGED)).errors
        if not any(f["id"] == fid for f in engine.fault_list()):
            break
    else:
        raise AssertionError(f"{spec} never used up in {MAX_ROUNDS} rounds: {seen.text()}")
    assert engine.layer_errors == count
    await workload(engine, echo_port, 99, strict=True)
    assert engine.conn_ids() == []
    stats = await drained(engine)
    accept_planted_bugs(engine, count)
    assert_clean(engine, stats)


# -- faults on a connection, injected mid-workload ------------------------------------------------
CONN_FAULTS: list[Any] = [
    {"kind": "peer_reset"},
    {"kind": "stall_peer", "ms": 50},
    {"kind": "invalidate", "object": "tcp"},
    {"kind": "invalidate", "object": "path"},
    {"kind": "invalidate", "object": "neighbor"},
    {"kind": "retrieve", "reason": "UploadRequested"},
    {"kind": "retrieve", "reason": "HardwareFailure"},
] + [
    pytest.param({"kind": "retrieve", "reason": r.name}, marks=pytest.mark.soak)
    for r in TcpUploadReason
    if r.name not in ("UploadRequested", "HardwareFailure")
]


@pytest.mark.parametrize("after", ["connect", "send"])
@pytest.mark.parametrize("extra", CONN_FAULTS, ids=lambda s: "-".join(map(str, s.values())))
async def test_connection_fault(
    make_engine: Any, echo_port: int, extra: dict[str, Any], after: str
) -> None:
    engine = await make_engine()
    out = Outcome()
    bystander = await engine.connect("127.0.0.1", echo_port)
    conn = await _step(out, "connect", engine.connect("127.0.0.1", echo_port), True)
    if after == "send":
        await _echoed(engine, out, conn, b"x" * 5000, True, "before")
    try:
        engine.fault_inject({**extra, "conn": conn})
    except EngineError as err:
        # retrieve needs an offloaded connection; anything else must be accepted
        assert extra["kind"] == "retrieve" and err.code is ErrorCode.INVALID_STATE, err
    await _echoed(engine, out, conn, b"after the fault" * 100, False, "after")
    await _step(out, "query", engine.query(conn), False)
    await _step(out, "upload", engine.upload(conn), False)
    await _step(out, "offload", engine.offload(conn), False)
    await _echoed(engine, out, conn, b"again", False, "again")
    await _step(out, "disconnect", engine.disconnect(conn, False), False)
    await _step(out, "close", engine.close(conn), True)
    # the other connection never noticed
    await _echoed(engine, Outcome(), bystander, b"bystander", True, "bystander")
    await _step(out, "close bystander", engine.close(bystander), True)
    engine.fault_clear(None)
    await workload(engine, echo_port, 99, strict=True)
    await _settle(engine)


async def test_target_failure_then_clear(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    out = Outcome()
    conn = await _step(out, "connect", engine.connect("127.0.0.1", echo_port), True)
    fid = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    # the NIC fails: the connection goes on in the host, new offloads are refused
    await _echoed(engine, out, conn, b"through the host" * 50, True, "failed")
    for _ in range(200):
        if engine.conn_info(conn)["state"] == "host":
            break
        await asyncio.sleep(0.01)
    assert engine.conn_info(conn)["state"] == "host"
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.offload(conn), STEP_S)
    assert "NDIS_STATUS_OFFLOAD_PAUSE" in str(err.value)
    failed = await workload(engine, echo_port, 1)
    # offloads are refused; what needs an offloaded connection is refused for want of one
    assert all("OFFLOAD_PAUSE" in str(e) or "not offloaded" in str(e) for _, e in failed.errors), (
        failed.text()
    )
    engine.fault_clear(fid)
    # the NIC resumes through its inbox, then tells the host (OFFLOAD_RESUME): soon, not at once
    for _ in range(int(STEP_S / 0.01)):
        try:
            assert (await asyncio.wait_for(engine.offload(conn), STEP_S))["state"] == "offloaded"
            break
        except EngineError as exc:
            assert "OFFLOAD_PAUSE" in str(exc)
            await asyncio.sleep(0.01)
    assert engine.conn_info(conn)["state"] == "offloaded"
    await _step(out, "close", engine.close(conn), True)
    await workload(engine, echo_port, 99, strict=True)
    await _settle(engine)


@pytest.mark.parametrize(
    "event", ["power_down", "media_disconnect", "capability_disabled", "net_event_pause"]
)
async def test_host_event_then_clear(make_engine: Any, echo_port: int, event: str) -> None:
    engine = await make_engine()
    out = Outcome()
    conn = await _step(out, "connect", engine.connect("127.0.0.1", echo_port), True)
    fid = engine.fault_inject({"kind": "host_event", "layer": "nic0", "event": event})
    # the host uploads what it has on the target and goes on in the host stack (spec §6.2)
    await _echoed(engine, out, conn, b"through the host" * 50, True, "during")
    for _ in range(200):
        if engine.conn_info(conn)["state"] == "host":
            break
        await asyncio.sleep(0.01)
    assert engine.conn_info(conn)["state"] == "host"
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.offload(conn), STEP_S)
    assert err.value.code is ErrorCode.INVALID_STATE and event in str(err.value)
    failed = await workload(engine, echo_port, 1)
    assert all(e.code in ALLOWED for _, e in failed.errors), failed.text()
    engine.fault_clear(fid)
    assert (await asyncio.wait_for(engine.offload(conn), STEP_S))["state"] == "offloaded"
    await _step(out, "close", engine.close(conn), True)
    await workload(engine, echo_port, 99, strict=True)
    await _settle(engine)


TEAM = (
    LayerConfig("tcpip", "host", ("team0",)),
    LayerConfig("team0", "mux", ("nic0", "nic1"), policy="round-robin"),
    LayerConfig("nic0", "target"),
    LayerConfig("nic1", "target"),
)


@pytest.mark.parametrize("kind", ["nic_down", "nic_up", "rebalance"])
async def test_mux_fault_mid_workload(make_engine: Any, echo_port: int, kind: str) -> None:
    """A MUX fault while connections work on both NICs: none fails, each goes on (moved or
    not), and the MUX's NICs serve a strict workload after the fault is cleared."""
    engine = await make_engine(TEAM)
    out = Outcome()
    conns = [
        await _step(out, "connect", engine.connect("127.0.0.1", echo_port), True) for _ in range(4)
    ]
    spec = {"kind": kind, "layer": "team0" if kind == "rebalance" else "nic1"}
    if kind == "rebalance":
        await _step(out, "close", engine.close(conns.pop(0)), True)  # nic0 one short
        await _step(out, "close", engine.close(conns.pop(1)), True)
        conns.append(await _step(out, "connect", engine.connect("127.0.0.1", echo_port), True))
    fid = engine.fault_inject(spec)
    sends = [_echoed(engine, out, c, b"while it moves" * 300, True, "during") for c in conns]
    await asyncio.gather(*sends)
    for c in conns:
        await _echoed(engine, out, c, b"after" * 100, True, "after")
        await _step(out, "close", engine.close(c), True)
    engine.fault_clear(fid)
    await workload(engine, echo_port, 99, strict=True)
    await _settle(engine)


def test_the_matrix_covers_every_kind() -> None:
    """A new fault kind must get a case here."""
    covered = (
        {"fail_next", "delay", "raise_next", "target_failure", "host_event"}
        | {"nic_down", "nic_up"}
        | {"rebalance"}
        | {(c if isinstance(c, dict) else c.values[0])["kind"] for c in CONN_FAULTS}
    )
    assert covered == set(KINDS)


async def test_a_refused_first_initiate_wedges_nobody(make_engine: Any, echo_port: int) -> None:
    """The issue's example: with nothing offloaded yet, the first initiate's TCP block fails.
    The path and neighbor offloaded with it stay offloaded (OFFLOAD_PARTIAL_SUCCESS, spec
    §3.2.4) and go with their last connection; every later connect is answered, offloaded."""
    engine = await make_engine()
    engine.fault_inject(
        {"kind": "fail_next", "layer": "nic0", "call": "MiniportInitiateOffload", "count": 1}
    )
    first = await asyncio.wait_for(engine.connect("127.0.0.1", echo_port), STEP_S)
    assert engine.conn_info(first)["state"] == "host"
    await asyncio.wait_for(engine.close(first), STEP_S)
    # as from several clients at once
    conns = await asyncio.wait_for(
        asyncio.gather(*(engine.connect("127.0.0.1", echo_port) for _ in range(8))), STEP_S
    )
    assert [engine.conn_info(c)["state"] for c in conns] == ["offloaded"] * 8
    for conn in conns:
        await _echoed(engine, Outcome(), conn, b"answered", True, str(conn))
        await asyncio.wait_for(engine.close(conn), STEP_S)
    await _settle(engine)


async def test_fail_next_names_the_connection_of_each_call_it_failed(
    make_engine: Any, echo_port: int
) -> None:
    """fault.list `used`: a fail_next lists each call it failed with the connection it was
    for, among several live ones: a send in the NIC and in the IM, and an offload initiate
    refused at connect."""
    engine = await make_engine()
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(3)]
    for layer, conn in (("nic0", conns[1]), ("im0", conns[2])):
        spec = {"kind": "fail_next", "layer": layer, "call": "MiniportTcpOffloadSend"}
        fid = engine.fault_inject(spec)
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(engine.send(conn, b"failed"), STEP_S)
        assert err.value.code == ErrorCode.NDIS_STATUS
        (entry,) = [f for f in engine.fault_entries() if f["id"] == fid]
        assert not entry["active"]
        call = "MiniportTcpOffloadSend"
        assert entry["failed"] == [
            {"layer": layer, "call": call, "conns": [conn], "conns_total": 1}
        ]
    call = "MiniportInitiateOffload"
    fid = engine.fault_inject({"kind": "fail_next", "layer": "nic0", "call": call})
    (entry,) = [f for f in engine.fault_entries() if f["id"] == fid]
    assert entry["active"] and entry["failed"] == []
    refused = await asyncio.wait_for(engine.connect("127.0.0.1", echo_port), STEP_S)
    assert engine.conn_info(refused)["state"] == "host"
    (entry,) = [f for f in engine.fault_entries() if f["id"] == fid]
    assert entry["failed"] == [
        {"layer": "nic0", "call": call, "conns": [refused], "conns_total": 1}
    ]
    for conn in [*conns, refused]:
        await asyncio.wait_for(engine.close(conn), STEP_S)
    await _settle(engine)


@pytest.mark.parametrize("what", ["tcp", "path", "neighbor"])
async def test_a_failed_invalidate_names_every_connection_it_took_down(
    make_engine: Any, echo_port: int, what: str
) -> None:
    """An invalidate a fail_next fails finds the state of what it names corrupt (spec §3.7):
    a path's or neighbor's connections are lost with it, all three here, and the fault's
    `failed` entry names each of them; a TCP object's failure takes down that one only."""
    engine = await make_engine()
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(3)]
    call = "MiniportInvalidateOffload"
    fid = engine.fault_inject({"kind": "fail_next", "layer": "nic0", "call": call})
    try:
        await asyncio.wait_for(engine.invalidate(conns[1], what), STEP_S)
    except EngineError as exc:
        assert exc.code == ErrorCode.NDIS_STATUS, exc
    (entry,) = [f for f in engine.fault_entries() if f["id"] == fid]
    lost = [conns[1]] if what == "tcp" else conns
    assert entry["failed"] == [
        {"layer": "nic0", "call": call, "conns": lost, "conns_total": len(lost)}
    ]
    for conn in conns:
        await asyncio.wait_for(engine.close(conn), STEP_S)
    await _settle(engine)


_UPLOAD_STATUSES = [
    "NDIS_STATUS_UPLOAD_IN_PROGRESS",
    "NDIS_STATUS_REQUEST_UPLOAD",
    "NDIS_STATUS_UPLOAD_REQUESTED",
]


@pytest.mark.parametrize("status", _UPLOAD_STATUSES)
@pytest.mark.parametrize("layer", ["nic0", "im0"])
async def test_pipelined_sends_across_an_upload_refusal_keep_their_order(
    make_engine: Any, recording: Any, layer: str, status: str
) -> None:
    """A send refused for an upload is sent by the host after it; sends and the FIN posted
    behind it went down meanwhile and reached the wire first (the peer read B before A, and
    a FIN before A's bytes). The layer that refused now refuses what follows too."""
    port, peers = recording
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", port)
    engine.fault_inject(
        {"kind": "fail_next", "layer": layer, "call": "MiniportTcpOffloadSend", "status": status}
    )
    first = asyncio.ensure_future(engine.send(conn, b"A" * 1000))
    await asyncio.sleep(0)  # the next ones go down in later chains
    second = asyncio.ensure_future(engine.send(conn, b"B" * 1000))
    await asyncio.sleep(0)
    bye = asyncio.ensure_future(engine.disconnect(conn, False))
    answers = await asyncio.wait_for(asyncio.gather(first, second, bye), STEP_S)
    assert answers == [1000, 1000, "NDIS_STATUS_SUCCESS"]
    for _ in range(int(STEP_S / 0.01)):
        if peers and peers[0].eof:
            break
        await asyncio.sleep(0.01)
    assert bytes(peers[0].received) == b"A" * 1000 + b"B" * 1000 and peers[0].eof
    await engine.close(conn)
    await _settle(engine)
