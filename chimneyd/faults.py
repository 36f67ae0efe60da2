"""Fault injection: one registry, one entry per fault kind (rpc-contract `fault.inject`).

Each kind names exactly the keys it accepts, their types, ranges and enum names; a spec is
checked whole before anything is applied, so a bad one changes nothing and its error names the
key. A kind's `apply` reaches the stack the way everything does: layers through their inbox
(`arm_fault`, `fail_adapter`, requests to the host), sockets through the runtime.

Kind names are the contract's; `nic_failure` and `stall` (the names `chimney-soak` used) are
accepted as aliases of `target_failure` and `stall_peer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import MAX_LAYER_NAME
from chimneyd.drivers.base import Delay, DriverLayer, FailNext, RaiseNext
from chimneyd.ndis.status import (
    INITIATE_BLOCK_STATUSES,
    OFFLOADED_STATUSES,
    NdisStatus,
    TcpUploadReason,
)

if TYPE_CHECKING:
    from chimneyd.engine import Engine

#: Upper bound of every fault duration (`delay` and `stall_peer` `ms`): a fault holds nothing
#: longer than this, and clearing it releases what it holds at once.
MAX_FAULT_MS = 60_000
#: The longest string a fault key takes: a layer's name is at most as long (config.py
#: refuses longer ones), so every layer the daemon runs can be named in a fault.
MAX_KEY_TEXT = MAX_LAYER_NAME
#: Upper bound of `fail_next`'s `count` and `skip`.
MAX_FAULT_COUNT = 1_000_000
#: What a raise_next or fail_next fault keeps of what it hit (fault.list `used`): its first
#: raises or failed calls, and of each the first connections (with their total).
HITS_KEPT = 256
HIT_CONNS_KEPT = 10_000
#: Where fault.list `used` lists what a fault of each kind hit, and what names each hit.
LISTED_HITS = {"raise_next": ("raised", "handler"), "fail_next": ("failed", "call")}


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a fault spec: its type and what values it admits."""

    kind: type
    required: bool = True
    default: Any = None
    low: int = 0
    high: int = 0
    choices: tuple[str, ...] = ()
    help: str = ""

    def check(self, name: str, value: Any) -> Any:
        if self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise _invalid(f"fault key {name!r} must be an integer")
            if not self.low <= value <= self.high:
                raise _invalid(f"fault key {name!r} must be {self.low}..{self.high}")
            return value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str) or not value or len(value) > MAX_KEY_TEXT:
            raise _invalid(
                f"fault key {name!r} must be a non-empty string of at most {MAX_KEY_TEXT}"
                " characters"
            )
        if self.choices and value not in self.choices:
            shown = ", ".join(self.choices[:12]) + (", …" if len(self.choices) > 12 else "")
            raise _invalid(f"fault key {name!r} must be one of {shown}")
        return value


@dataclass
class Fault:
    """An injected fault: its id, its checked spec, how to undo it and whether it is active."""

    id: int
    spec: dict[str, Any]
    undo: Callable[[], None] | None = None
    active: Callable[[], bool] = lambda: True
    # what it hit, listed by fault.list `used` (`LISTED_HITS`): a raise_next's "raised" (each
    # time it made a handler raise, the layer, the handler and the connections the handler
    # was serving: what the engine failed for it, spec §6.3); a fail_next's "failed" (each
    # call it failed, the layer, the call and the connections the call concerned)
    hits: list[dict[str, Any]] | None = None
    hits_dropped: int = 0


Apply = Callable[["Engine", Fault], None]


@dataclass(frozen=True, slots=True)
class FaultKind:
    name: str
    doc: str
    keys: Mapping[str, Key]
    apply: Apply
    aliases: tuple[str, ...] = field(default=())

    def check(self, spec: Mapping[Any, Any]) -> dict[str, Any]:
        """The spec with exactly this kind's keys, checked; raise naming the first bad key."""
        out: dict[str, Any] = {"kind": self.name}
        for key in spec:
            if key != "kind" and key not in self.keys:
                shown = repr(key)[:40]
                known = ", ".join(self.keys) or "none"
                raise _invalid(f"fault kind {self.name!r} has no key {shown} (keys: {known})")
        for name, key in self.keys.items():
            if name in spec:
                out[name] = key.check(name, spec[name])
            elif key.required:
                raise _invalid(f"fault kind {self.name!r} needs key {name!r} ({key.help})")
            elif key.default is not None:
                out[name] = key.default
        return out


def _invalid(detail: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_PARAMS, detail)


# -- the kinds ----------------------------------------------------------------------------------
CONN = Key(int, low=1, high=1 << 62, help="a connection id")
LAYER = Key(str, help="a layer name")
MS = Key(int, low=1, high=MAX_FAULT_MS, help=f"milliseconds, at most {MAX_FAULT_MS}")
_FAILURE_STATUSES = tuple(
    s.name
    for s in NdisStatus
    if s not in (NdisStatus.NDIS_STATUS_SUCCESS, NdisStatus.NDIS_STATUS_PENDING)
)
#: State operations a target can fail: their blocks then report corrupt hardware state with
#: NDIS_STATUS_FAILURE, the only failure status they allow (spec §3.1 item 5, §3.7).
_STATE_CALLS = frozenset(
    {
        "MiniportTerminateOffload",
        "MiniportQueryOffload",
        "MiniportUpdateOffload",
        "MiniportInvalidateOffload",
    }
)
_REASONS = tuple(r.name for r in TcpUploadReason)


def _peer_reset(engine: Engine, fault: Fault) -> None:
    engine.sockets.wire_of(engine.conn(fault.spec["conn"])).inject_reset()
    fault.active = lambda: False


def _held_by_another(engine: Engine, fault: Fault) -> bool:
    """Another fault of the same kind holds the same layer out: the NIC a `target_failure`
    failed, the NIC a `nic_down` took out, the target a `host_event` of the same event
    withholds. A fault being injected is not in the registry yet, one being cleared no
    longer is."""
    key = _outage(engine, fault)
    return any(
        f is not fault and f.spec["kind"] == fault.spec["kind"] and _outage(engine, f) == key
        for f in engine.faults.faults.values()
    )


def _outage(engine: Engine, fault: Fault) -> tuple[Any, ...]:
    """What `fault` holds out: its kind, layer and event. A `nic_down` holds out the MUX's
    binding on its side, whichever name it was given: a NIC under IMs and the IMs between it
    and the MUX are one (docs/faults.md `nic_down`, `Engine.team_above`)."""
    spec = fault.spec
    layer = spec.get("layer")
    if spec["kind"] == "nic_down":
        layer = engine.mux_above(str(layer))[1].lower.name
    return (spec["kind"], layer, spec.get("event"))


def _target_failure(engine: Engine, fault: Fault) -> None:
    nic = engine.target_layer(fault.spec["layer"])
    # one NIC failed twice is failed once: it indicated PAUSE and UPLOAD_ALL already, and it
    # works again (RESUME, spec §5.5) only when no target_failure of it is listed any more;
    # the first clear's RESUME would have the host offload to a NIC still failed
    if not _held_by_another(engine, fault):
        nic.inbox.push(nic.fail_adapter, ())
    _undo_when_last(engine, fault, lambda: nic.inbox.push(nic.recover_adapter, ()))


def _undo_when_last(engine: Engine, fault: Fault, end: Callable[[], None]) -> None:
    """Clearing `fault` runs `end` (the outage's end: a RESUME, `lower_up`, the host event's
    end) only when no other fault of its kind holds the same layer out (`_held_by_another`):
    two outages of one layer overlap, and the layer comes back with the last one cleared."""

    def undo() -> None:
        if not _held_by_another(engine, fault):
            end()

    fault.undo = undo


def _layer_for(engine: Engine, spec: dict[str, Any], calls: str, verb: str) -> DriverLayer:
    """The layer a fault on one of its calls goes into; refused when the layer's `calls`
    (`failable_calls`, …) do not name the spec's call, with the ones they do."""
    layer = engine.driver_layer(spec["layer"])
    allowed: frozenset[str] = getattr(layer, calls)
    if spec["call"] not in allowed:
        known = ", ".join(sorted(allowed)) or "none"
        raise _invalid(
            f"layer {layer.name} cannot {verb} {spec['call']!r} (it can {verb}: {known})"
        )
    return layer


def _fail_next(engine: Engine, fault: Fault) -> None:
    spec = fault.spec
    layer = _layer_for(engine, spec, "failable_calls", "fail")
    call = spec["call"]
    status = NdisStatus[spec["status"]]
    if call.startswith("MiniportInitiateOffload") and (
        status not in INITIATE_BLOCK_STATUSES or status in OFFLOADED_STATUSES
    ):
        # PARTIAL_SUCCESS says the block *was* offloaded: the host would hold a connection the
        # target never took
        raise _invalid(
            f"status {status.name} is not an initiate block failure status (spec §3.2.4)"
        )
    if call in _STATE_CALLS and status is not NdisStatus.NDIS_STATUS_FAILURE:
        raise _invalid(f"{call} fails only with NDIS_STATUS_FAILURE (spec §3.1)")
    fn = FailNext(fault.id, call, status, spec["count"], spec["skip"])
    fault.hits = []
    # by id, through the registry: a hook that held the fault would make a cycle (fault ->
    # active -> fn -> hook -> fault) that outlives the fault's clearing
    fn.failed = partial(engine.faults.note_hit, fault.id)
    _arm(layer, fn, fault)
    fault.active = lambda: fn.count > 0


def _delay(engine: Engine, fault: Fault) -> None:
    spec = fault.spec
    layer = _layer_for(engine, spec, "delayable_calls", "delay")
    _arm(layer, Delay(fault.id, spec["call"], spec["ms"]), fault)


def _raise_next(engine: Engine, fault: Fault) -> None:
    spec = fault.spec
    layer = _layer_for(engine, spec, "raisable_calls", "raise in")
    fn = RaiseNext(fault.id, spec["call"], spec["count"], spec["skip"])
    _arm(layer, fn, fault)
    fault.active = lambda: fn.count > 0
    fault.hits = []


def _arm(layer: DriverLayer, armed: FailNext | Delay | RaiseNext, fault: Fault) -> None:
    layer.inbox.push(layer.arm_fault, (armed,))
    fid = fault.id  # not the fault: its own undo holding it would be a cycle
    fault.undo = lambda: layer.inbox.push(layer.disarm_fault, (fid,))


def _stall_peer(engine: Engine, fault: Fault) -> None:
    seconds = fault.spec["ms"] / 1000.0
    wire = engine.sockets.wire_of(engine.conn(fault.spec["conn"]))
    wire.stall(seconds)
    until = engine.loop.time() + seconds
    fault.active = lambda: engine.loop.time() < until and not wire.closed
    fault.undo = wire.unstall


def _invalidate(engine: Engine, fault: Fault) -> None:
    conn = engine.conn(fault.spec["conn"])
    engine.post_host(engine.host.app_invalidate, conn, fault.spec["object"], _ignore)
    fault.active = lambda: False


def _retrieve(engine: Engine, fault: Fault) -> None:
    conn = engine.conn(fault.spec["conn"])
    owner, ctx = engine.sockets.wire_of(conn).owner
    retrieve = getattr(owner, "retrieve", None)
    if retrieve is None:
        raise EngineError(ErrorCode.INVALID_STATE, f"connection {conn} is not offloaded")
    owner.inbox.push(retrieve, (ctx, TcpUploadReason[fault.spec["reason"]]))
    fault.active = lambda: False


def _host_event(engine: Engine, fault: Fault) -> None:
    nic = engine.target_layer(fault.spec["layer"])
    target, event = nic.name, fault.spec["event"]
    # [EMU] a NIC of a team: its condition reaches the MUX bound on it too, at the start and
    # at the clear (`MuxIm.lower_withheld`), pushed now, so a rebalance asked after the
    # clear finds the NIC free. The host hears after it (spec §6.2); its offloads meanwhile
    # say nothing the MUX goes by for a NIC it was told of
    team = engine.team_above(nic)

    def tell(on: bool) -> None:
        if team is not None:
            mux, binding = team
            mux.inbox.push(mux.lower_withheld, (binding, event, on))
        engine.post_host(engine.host.host_event, target, event, on)

    tell(True)
    # the event ends for the target only when no host_event of it is listed any more
    _undo_when_last(engine, fault, lambda: tell(False))


def _nic_down(engine: Engine, fault: Fault) -> None:
    layer = fault.spec["layer"]
    # taken out again even if another nic_down holds it: a `nic_up` may have put it back
    engine.nic_in_service(layer, False)
    # back in service only when no nic_down of it is listed any more (as target_failure)
    _undo_when_last(engine, fault, lambda: engine.nic_in_service(layer, True))


def _nic_up(engine: Engine, fault: Fault) -> None:
    engine.nic_in_service(fault.spec["layer"], True)
    fault.active = lambda: False


def _rebalance(engine: Engine, fault: Fault) -> None:
    mux = engine.mux_layer(fault.spec["layer"])
    mux.inbox.push(mux.rebalance, ())
    fault.active = lambda: False


def _ignore(result: Any, err: Any) -> None:
    """The `done` of a request whose outcome nobody waits for."""


KINDS: dict[str, FaultKind] = {
    kind.name: kind
    for kind in (
        FaultKind(
            "peer_reset",
            "the daemon's socket of the connection is closed with an RST, as if the peer had "
            "sent one (both ends see a reset)",
            {"conn": CONN},
            _peer_reset,
        ),
        FaultKind(
            "target_failure",
            "the NIC fails: it pauses offloads and asks for every connection's upload "
            "(NDIS_STATUS_OFFLOAD_PAUSE, NDIS_STATUS_UPLOAD_ALL); clearing it resumes it",
            {"layer": LAYER},
            _target_failure,
            aliases=("nic_failure",),
        ),
        FaultKind(
            "fail_next",
            "the next `count` calls of `call` at `layer` (after `skip` that go through) "
            "complete with `status`",
            {
                "layer": LAYER,
                "call": Key(str, help="an NDIS handler name the layer can fail"),
                "status": Key(
                    str, required=False, default="NDIS_STATUS_FAILURE", choices=_FAILURE_STATUSES
                ),
                "count": Key(int, required=False, default=1, low=1, high=MAX_FAULT_COUNT),
                "skip": Key(int, required=False, default=0, low=0, high=MAX_FAULT_COUNT),
            },
            _fail_next,
        ),
        FaultKind(
            "delay",
            "every `call` at `layer` is held `ms` milliseconds (order is kept); clearing it "
            "releases what it holds",
            {"layer": LAYER, "call": Key(str, help="a Miniport* handler name"), "ms": MS},
            _delay,
        ),
        FaultKind(
            "raise_next",
            "the next `count` calls of `call` at `layer` (after `skip` that run) raise inside "
            "the layer's handler, as a bug in the driver would: the requests waiting on the "
            "connections they name are answered INTERNAL, and NDIS fails the call for the layer "
            "so the stack unwinds (docs/spec.md §6.3) [EMU]",
            {
                "layer": LAYER,
                "call": Key(str, help="a Miniport* handler name the layer can raise in"),
                "count": Key(int, required=False, default=1, low=1, high=MAX_FAULT_COUNT),
                "skip": Key(int, required=False, default=0, low=0, high=MAX_FAULT_COUNT),
            },
            _raise_next,
        ),
        FaultKind(
            "stall_peer",
            "for `ms` the connection's peer seems to neither send nor acknowledge (the daemon "
            "stops reading the socket and hears no ACK news) [EMU]",
            {"conn": CONN, "ms": MS},
            _stall_peer,
            aliases=("stall",),
        ),
        FaultKind(
            "invalidate",
            "the host invalidates the connection's TCP, path or neighbor object (spec §3.5)",
            {
                "conn": CONN,
                "object": Key(
                    str, required=False, default="neighbor", choices=("tcp", "path", "neighbor")
                ),
            },
            _invalidate,
        ),
        FaultKind(
            "retrieve",
            "the target asks for the connection's upload with a TCP_UPLOAD_REASON (spec §5.2)",
            {
                "conn": CONN,
                "reason": Key(str, required=False, default="UploadRequested", choices=_REASONS),
            },
            _retrieve,
        ),
        # -- the host's own reasons to upload (spec §3.6.1, §6.2) --------------------------------
        FaultKind(
            "host_event",
            "the host uploads every connection offloaded to the target `layer` and offloads none "
            "to it until cleared, for a power change away from D0 (which completes only once "
            "they are all uploaded), a media disconnect, a capability it disables, or "
            "NetEventPause (spec §6.2)",
            {
                "layer": LAYER,
                "event": Key(
                    str,
                    choices=(
                        "power_down",
                        "media_disconnect",
                        "capability_disabled",
                        "net_event_pause",
                    ),
                    help="power_down, media_disconnect, capability_disabled or net_event_pause",
                ),
            },
            _host_event,
        ),
        # -- teaming (a mux over several NICs) -----------------------------------------------------
        FaultKind(
            "nic_down",
            "the NIC `layer` is taken out of service by the mux above it: the mux pauses above, "
            "asks for the upload of only that NIC's connections, and resumes; the host offloads "
            "them again onto the other NICs (clearing it puts the NIC back)",
            {"layer": LAYER},
            _nic_down,
        ),
        FaultKind(
            "nic_up",
            "the NIC `layer` is put back in service by the mux above it: new connections may go "
            "to it again",
            {"layer": LAYER},
            _nic_up,
        ),
        FaultKind(
            "rebalance",
            "the mux `layer` moves connections from its busiest NICs to its idlest, until they "
            "differ by one at most (each moved connection is uploaded and offloaded again)",
            {"layer": LAYER},
            _rebalance,
        ),
    )
}
ALIASES = {alias: kind.name for kind in KINDS.values() for alias in kind.aliases}


def kind_of(spec: Mapping[Any, Any]) -> FaultKind:
    name = spec.get("kind")
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if not isinstance(name, str):
        raise _invalid("fault spec needs a string 'kind'")
    kind = KINDS.get(ALIASES.get(name, name))
    if kind is None:
        raise _invalid(f"unknown fault kind {name[:40]!r} (kinds: {', '.join(KINDS)})")
    return kind


class FaultRegistry:
    """The faults injected into one engine. Ids count up from `id_base` + 1 (a shard's own
    range of ids, so that ids stay unique daemon-wide: design: scale)."""

    def __init__(self, id_base: int = 0) -> None:
        self.faults: dict[int, Fault] = {}
        self._next_id = id_base + 1

    def reserve(self) -> int:
        """A new fault id, for a fault about to be put into several shards under one id."""
        fid = self._next_id
        self._next_id += 1
        return fid

    def inject(self, engine: Engine, spec: Mapping[Any, Any], fid: int | None = None) -> Fault:
        """Check and apply `spec`, under the next id or under `fid` (one `reserve`d here or in
        another shard). Raises before anything is applied when the spec or target is wrong."""
        kind = kind_of(spec)
        if fid is not None and fid in self.faults:
            raise EngineError(ErrorCode.INVALID_STATE, f"fault {fid} exists already")
        fault = Fault(self._next_id if fid is None else fid, kind.check(spec))
        kind.apply(engine, fault)
        if fid is None:
            self._next_id += 1
        self.faults[fault.id] = fault
        return fault

    def entries(self) -> list[dict[str, Any]]:
        """Every fault held, used up or not, with `active` and what a raise_next `raised` or
        a fail_next `failed` (a shard's part of fault.list)."""
        return [
            {"id": fid, **f.spec, "active": f.active(), **_hits(f)}
            for fid, f in list(self.faults.items())
        ]

    def note_hit(self, fault_id: int, layer: str, name: str, conns: list[int]) -> None:
        """A raise_next fault made handler `name` raise in `layer` while it served `conns`,
        or a fail_next fault failed call `name` there: kept for fault.list (`used`), so a
        client can tell what each planted bug or failure hit."""
        fault = self.faults.get(fault_id)
        if fault is not None:  # else cleared meanwhile
            _note_hit(fault, layer, name, conns)

    def clear(self, fault_id: int | None) -> None:
        if fault_id is None:
            ids = list(self.faults)
        elif fault_id not in self.faults:
            raise EngineError(ErrorCode.NOT_FOUND, f"no fault {fault_id}")
        else:
            ids = [fault_id]
        for fid in ids:
            fault = self.faults.pop(fid)
            if fault.undo is not None:
                fault.undo()

    def active(self) -> list[dict[str, Any]]:
        return [{"id": fid, **f.spec} for fid, f in list(self.faults.items()) if f.active()]


def _note_hit(fault: Fault, layer: str, name: str, conns: list[int]) -> None:
    """One hit of a raise_next (`name`: the handler that raised) or fail_next (the call it
    failed), kept up to `HITS_KEPT`, each with at most `HIT_CONNS_KEPT` of its connections."""
    hits = fault.hits
    if hits is None:
        return
    if len(hits) >= HITS_KEPT:
        fault.hits_dropped += 1
        return
    what = LISTED_HITS[fault.spec["kind"]][1]
    hits.append(
        {"layer": layer, what: name, "conns": conns[:HIT_CONNS_KEPT], "conns_total": len(conns)}
    )


def _hits(fault: Fault) -> dict[str, Any]:
    if fault.hits is None:
        return {}
    key = LISTED_HITS[fault.spec["kind"]][0]
    out: dict[str, Any] = {key: list(fault.hits)}
    if fault.hits_dropped:
        out[f"{key}_dropped"] = fault.hits_dropped
    return out


__all__ = ["ALIASES", "KINDS", "MAX_FAULT_MS", "Fault", "FaultKind", "FaultRegistry", "kind_of"]
