"""The `--faults` vocabulary: fault kinds (named as the RPC contract and chimneyctl name them),
their old names, keys and defaults, the schedule syntax, and when each injection happens."""

from __future__ import annotations

import bisect
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .limits import DEFAULT_NIC_OUTAGE_S, DEFAULT_STALL_MS, STAGGER_S
from .parsing import parse_duration
from .probe_faults import DELAY_CALLS


@dataclass(frozen=True, slots=True)
class FaultKind:
    """One kind of fault the soak can schedule, and what it must lead to."""

    name: str  # canonical: the contract's name where the contract has one
    scope: str  # "conn": aimed at one live connection by its owner; "layer": at a layer
    daemon_kind: str | None  # the fault.inject kind; None: the soak's echo peer does it
    keys: dict[str, str]  # keys it takes, with their defaults
    outcome: str  # what the soak checks (for --help)
    aliases: tuple[str, ...] = ()
    key_aliases: dict[str, str] = field(default_factory=dict)


_FAIL_NEXT_KEYS = {"n": "count"}

FAULT_KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind(
            "peer_reset",
            "conn",
            None,
            {},
            "the echo peer resets a random live connection (SO_LINGER {1,0}: the RST comes in "
            "from the wire); the daemon must raise TcpIndicateAbort on it, deliver every byte "
            "the peer had echoed before the RST, and the reopened slot must carry verified data",
        ),
        FaultKind(
            "daemon_reset",
            "conn",
            "peer_reset",
            {},
            "the daemon aborts its own socket of a random connection as if an RST had come in "
            "(fault.inject peer_reset, emulated inside the daemon): TcpIndicateAbort on it, "
            "then the reopened slot must carry verified data; every byte the daemon had read "
            "from that socket before (tcp.info bytes_received) must have come back (what was "
            "still in the socket goes with it)",
        ),
        FaultKind(
            "stall_peer",
            "conn",
            "stall_peer",
            {"ms": str(DEFAULT_STALL_MS)},
            "the daemon neither reads nor hears ACKs on a random connection for /ms=2000, "
            "injected by that connection's own loop between two round trips: the round trip it "
            "then begins must not come back before the stall ends, and bytes must be verified "
            "on it after that",
            aliases=("stall",),
        ),
        FaultKind(
            "retrieve",
            "conn",
            "retrieve",
            {"reason": ""},
            "the NIC raises TcpIndicateRetrieve on a random offloaded connection (/reason=NAME, "
            "default UploadRequested); it must be uploaded (optional reasons may be declined), "
            "offloaded again and carry verified data after",
        ),
        FaultKind(
            "target_failure",
            "layer",
            "target_failure",
            {"layer": "nic0", "for": f"{DEFAULT_NIC_OUTAGE_S:g}s", "shard": ""},
            "/layer=nic0 fails for /for=3s, then fault.clear: no connection may stay offloaded "
            "on it (UPLOAD_ALL), offloads are refused until it recovers, and every connection "
            "it uploaded must be offloaded again and carry verified data after",
            aliases=("nic_failure",),
        ),
        FaultKind(
            "nic_down",
            "layer",
            "nic_down",
            {"layer": "nic0", "for": f"{DEFAULT_NIC_OUTAGE_S:g}s", "shard": ""},
            "the teaming MUX above /layer=nic0 takes it out of service for /for=3s, then "
            "fault.clear: no connection may stay offloaded on it, every connection it carried "
            "must be asked up, offloaded again (onto the other NICs) and carry verified data "
            "after (needs a topology with a mux, e.g. --daemon-config deploy/teaming.toml)",
        ),
        FaultKind(
            "rebalance",
            "layer",
            "rebalance",
            {"layer": "team0", "shard": ""},
            "the teaming MUX /layer=team0 moves connections from its busiest NICs in service to "
            "its idlest until they differ by one at most: every connection it asks up must be "
            "offloaded again (onto another NIC) and carry verified data after, and its NICs "
            "must then be even (within one, or 5% of the connections where some opened and "
            "closed meanwhile); NICs that were even already move nothing (needs a topology "
            "with a mux; e.g. after a NIC came back empty: "
            "nic_down@5s/for=3s/layer=nic2,rebalance@15s)",
        ),
        FaultKind(
            "nic_up",
            "layer",
            "nic_up",
            {"layer": "nic0", "for": f"{DEFAULT_NIC_OUTAGE_S:g}s", "shard": ""},
            "the teaming MUX takes /layer=nic0 out of service (nic_down, never cleared) and "
            "/for=3s later puts it back with nic_up: the nic_down is judged as an outage, and "
            "then the NIC must be in service again at once (stack.info) with the nic_down "
            "still listed, nothing may move by itself, and a new connection of the soak's "
            "must be placed on it, its bytes verified (needs a mux)",
        ),
        FaultKind(
            "delay",
            "layer",
            "delay",
            {
                "layer": "im0",
                "call": "MiniportTcpOffloadSend",
                "ms": "200",
                "for": f"{DEFAULT_NIC_OUTAGE_S:g}s",
                "shard": "",
            },
            "every /call=MiniportTcpOffloadSend (or MiniportInitiateOffload) in /layer=im0 is "
            "held /ms=200 for /for=3s, then fault.clear: every byte must still be verified and "
            "the run complete; a probe call of the soak's own made meanwhile must take /ms at "
            "least, fault.list must list the delay while armed, and the layer must have got "
            "calls meanwhile (stack.stats; the report gives how many: all were held) or the "
            "delay delayed nothing",
        ),
        FaultKind(
            "invalidate",
            "layer",
            "invalidate",
            {"object": "neighbor", "layer": "nic0"},
            "the host invalidates the /object=neighbor (tcp, path) of a connection of the "
            "soak's own, offloaded to /layer=nic0 (spec §3.5): the host must call NdisInvalidateOffload (stack.stats), "
            "that connection be uploaded and carry verified data, in the host stack and "
            "offloaded again; every worker connection it asked up too (InvalidState, sharing "
            "the path or neighbor) must be offloaded again and carry verified data after",
        ),
        FaultKind(
            "host_event",
            "layer",
            "host_event",
            {
                "layer": "nic0",
                "event": "media_disconnect",
                "for": f"{DEFAULT_NIC_OUTAGE_S:g}s",
                "shard": "",
            },
            "the host uploads everything on /layer=nic0 for /event=media_disconnect "
            "(power_down, capability_disabled, net_event_pause) for /for=3s, then fault.clear "
            "(spec §6.2): nothing may stay offloaded on it, an offload pinned to it must be "
            "refused INVALID_STATE naming the event until the clear and work after it, and "
            "every connection it uploaded must be offloaded again and carry verified data after",
        ),
        FaultKind(
            "fail_next",
            "layer",
            "fail_next",
            {
                "layer": "nic0",
                "call": "MiniportTcpOffloadSend",
                "status": "NDIS_STATUS_REQUEST_ABORTED",
                "count": "1",
                "shard": "",
            },
            "the next /count=1 /call=MiniportTcpOffloadSend in /layer=nic0 complete with "
            "/status: each must reach a sender as that NDIS status, and the resent bytes must "
            "be verified; the NIC fails the sends after it too and asks for that connection's "
            "upload (a hole in the stream, spec §4.1), which must be offloaded again and carry "
            "verified data after (an upload status instead makes the host upload and send "
            "itself; call=MiniportInitiateOffload refuses offloads); each outcome must be on a "
            "connection the daemon says the fault failed a call of (fault.list used)",
            aliases=("fail_send",),
            key_aliases=_FAIL_NEXT_KEYS,
        ),
        FaultKind(
            "upload_send",
            "layer",
            "fail_next",
            {
                "layer": "im0",
                "call": "MiniportTcpOffloadSend",
                "status": "NDIS_STATUS_UPLOAD_IN_PROGRESS",
                "count": "1",
                "shard": "",
            },
            "fail_next in the IM with an upload status (/layer=im0): the IM asks for an upload "
            "(REQUEST_UPLOAD); the host must upload that connection and send the bytes itself; "
            "it must be offloaded again and carry verified data after",
            key_aliases=_FAIL_NEXT_KEYS,
        ),
        FaultKind(
            "refuse_offload",
            "layer",
            "fail_next",
            {
                "layer": "nic0",
                "call": "MiniportInitiateOffload",
                "status": "NDIS_STATUS_FAILURE",
                "count": "1",
                "shard": "",
            },
            "the next /count=1 offload initiates in /layer=nic0 fail: that connection stays in "
            "host mode, the soak offloads it again, and it must carry verified data after",
            key_aliases=_FAIL_NEXT_KEYS,
        ),
        FaultKind(
            "raise_next",
            "layer",
            "raise_next",
            {
                "layer": "nic0",
                "call": "MiniportTcpOffloadSend",
                "count": "1",
                "skip": "0",
                "shard": "",
            },
            "a bug planted in /layer=nic0: its next /count=1 /call=MiniportTcpOffloadSend "
            "handlers (after /skip=0) raise (spec §6.3; call: MiniportTcpOffloadSend, "
            "MiniportTcpOffloadReceive, MiniportInitiateOffload, MiniportTerminateOffload or "
            "MiniportTcpOffloadDisconnect). What each bug hit shows on the connections the "
            "daemon says it served (fault.list used), after it: an INTERNAL answer naming its "
            "layer and handler; an offload refused at connect (initiate); a reset (terminate). "
            "The bytes that come back are verified (a read a bug answered leaves its bytes to "
            "the next; after a send answered INTERNAL or a reset the slot closes and reopens); "
            "the connection, or its reopened slot, must carry verified data after (an initiate's: "
            "offloaded again first), unless the soak was closing it; the daemon must count "
            "exactly one layer error and one invariant violation per bug",
            key_aliases=_FAIL_NEXT_KEYS,
        ),
    )
}

#: The faults that take a NIC out for a while, and what the soak says they do.
OUTAGES = {
    "target_failure": "failed",
    "nic_down": "taken out of service by its MUX",
    "rebalance": "rebalanced",
    # a nic_down with no clear, ended by a nic_up: its moves are judged as a nic_down's
    "nic_up": "taken out of service, then put back with nic_up",
}
#: An outage with no duration: the MUX moves connections once (judged like an outage that
#: is over as soon as it went in).
MOVES = ("rebalance",)

#: Old names still accepted in --faults, mapped to the canonical kind.
ALIASES: dict[str, str] = {alias: k.name for k in FAULT_KINDS.values() for alias in k.aliases}

#: The calls whose failure the soak can tell apart and judge.
JUDGED_CALLS = ("MiniportTcpOffloadSend", "MiniportInitiateOffload")
#: The calls a raise_next may plant a bug in: the soak's traffic makes each, and each bug
#: shows on the connections it served: an INTERNAL answer to the request waiting (tcp.send,
#: tcp.recv, tcp.offload, tcp.upload, tcp.disconnect, tcp.close), or where none waits an
#: offload refused at connect (an initiate's) or a reset (a terminate's, spec §3.7).
INITIATE_CALL = "MiniportInitiateOffload"
TERMINATE_CALL = "MiniportTerminateOffload"
BUG_CALLS = (
    "MiniportTcpOffloadSend",
    "MiniportTcpOffloadReceive",
    INITIATE_CALL,
    TERMINATE_CALL,
    "MiniportTcpOffloadDisconnect",
)
#: Send completions that mean "the host sends these itself after an upload" (spec §4.1).
UPLOAD_STATUSES = (
    "NDIS_STATUS_UPLOAD_IN_PROGRESS",
    "NDIS_STATUS_REQUEST_UPLOAD",
    "NDIS_STATUS_UPLOAD_REQUESTED",
)


def fail_next_effect(call: str, status: str) -> str:
    """What a fail_next does to the soak's traffic: `send_failure` (a sender sees the status),
    `send_upload` (the host uploads the connection and sends itself) or `offload_refusal`."""
    if call == "MiniportInitiateOffload":
        return "offload_refusal"
    return "send_upload" if status in UPLOAD_STATUSES else "send_failure"


def _help() -> str:
    """The `--faults` part of `--help`: one line per item, each wrapped to the terminal by
    `chimney-soak`'s help formatter (soak/cli.py), its text hanging under its name."""
    lines = [
        "fault schedule (--faults): comma-separated items KIND[:COUNT][@TIME][/KEY=VALUE]...",
        "  COUNT  injections of this kind (default 1); without @TIME they are spread evenly over "
        "the hold, and a layer fault (an outage too) waits while a NIC outage before it settles",
        "  @TIME  all COUNT injections at TIME after the hold starts (20s, 500ms, 1.5m)",
        "  /shard=K  a layer fault in shard K only, on a daemon of several shards (default: the "
        "layer in every shard, where a fail_next or raise_next uses its /count in each)",
        "  kinds (each must show its outcome where it hit, or the soak fails):",
    ]
    lines += [f"    {k.name:<16}{k.outcome}" for k in FAULT_KINDS.values()]
    lines.append("  old names, still accepted:")
    lines.append("    " + ", ".join(f"{a} = {c}" for a, c in ALIASES.items()) + "; key n = count")
    # examples short enough to stay one line (to copy) in an 80-column terminal
    lines.append("  example: --faults peer_reset:5,stall_peer:2/ms=3000,fail_next:3")
    lines.append("  example: --faults target_failure@20s/for=4s,retrieve:2")
    lines.append(
        "  delay, invalidate, host_event and nic_up are checked with connections of the soak's own:"
    )
    lines.append("  example: --faults delay@5s/layer=im0/for=5s/ms=300,invalidate@12s")
    return "\n".join(lines) + "\n"


FAULT_HELP = _help()


@dataclass(frozen=True, slots=True)
class FaultSpec:
    kind: str  # canonical name
    count: int = 1
    at: float | None = None  # seconds after the hold starts; None: spread over the hold
    params: tuple[tuple[str, str], ...] = ()

    def param(self, key: str) -> str:
        return str(dict(self.params).get(key, FAULT_KINDS[self.kind].keys.get(key, "")))

    @property
    def scope(self) -> str:
        return FAULT_KINDS[self.kind].scope

    @property
    def effect(self) -> str | None:
        """For fail_next kinds, what it does to the traffic (`fail_next_effect`)."""
        if FAULT_KINDS[self.kind].daemon_kind != "fail_next":
            return None
        return fail_next_effect(self.param("call"), self.param("status"))


_FAULT_RE = re.compile(
    r"^(?P<kind>[a-z_]+)(?::(?P<count>\d+))?(?:@(?P<at>[^/]+))?(?P<rest>(?:/.*)?)$"
)


def canonical_kind(name: str) -> str | None:
    """The canonical name of a kind or of one of its old names (None: unknown)."""
    return name if name in FAULT_KINDS else ALIASES.get(name)


def parse_faults(text: str | None) -> list[FaultSpec]:
    """Parse the `--faults` schedule (syntax in `FAULT_HELP`); raises ValueError naming the item."""
    if text is None or not text.strip():
        return []
    out: list[FaultSpec] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        m = _FAULT_RE.match(item)
        if m is None:
            raise ValueError(f"fault {item!r}: expected KIND[:COUNT][@TIME][/KEY=VALUE]...")
        kind = canonical_kind(m.group("kind"))
        if kind is None:
            known = [*FAULT_KINDS, *ALIASES]
            raise ValueError(
                f"fault {item!r}: unknown kind {m.group('kind')!r} (known: {', '.join(known)})"
            )
        fk = FAULT_KINDS[kind]
        count = int(m.group("count")) if m.group("count") is not None else 1
        if count < 1:
            raise ValueError(f"fault {item!r}: count must be at least 1")
        at = _duration(item, m.group("at")) if m.group("at") is not None else None
        params: dict[str, str] = {}
        for kv in filter(None, m.group("rest").split("/")):
            key, eq, value = kv.partition("=")
            if not eq or not value:
                raise ValueError(f"fault {item!r}: expected /KEY=VALUE, got /{kv}")
            key = fk.key_aliases.get(key, key)
            if key not in fk.keys:
                raise ValueError(
                    f"fault {item!r}: {kind} takes no key {key!r} "
                    f"(keys: {', '.join(fk.keys) or 'none'})"
                )
            _check_value(item, key, value)
            params[key] = value
        spec = FaultSpec(kind, count, at, tuple(params.items()))
        if spec.effect is not None and spec.param("call") not in JUDGED_CALLS:
            raise ValueError(
                f"fault {item!r}: the soak judges fail_next only on {', '.join(JUDGED_CALLS)}"
            )
        if kind == "delay" and spec.param("call") not in DELAY_CALLS:
            raise ValueError(
                f"fault {item!r}: the soak judges delay only on {', '.join(DELAY_CALLS)}"
            )
        if kind in _CHOICES and spec.param(_CHOICES[kind][0]) not in _CHOICES[kind][1]:
            key, choices = _CHOICES[kind]
            raise ValueError(f"fault {item!r}: {key} is one of {', '.join(choices)}")
        if fk.daemon_kind == "raise_next" and spec.param("call") not in BUG_CALLS:
            raise ValueError(
                f"fault {item!r}: the soak judges raise_next only on {', '.join(BUG_CALLS)}"
            )
        out.append(spec)
    return out


#: Keys whose values the daemon takes from a list (chimneyd.faults): a value past it would be
#: refused only when the hold injects it.
_CHOICES = {
    "invalidate": ("object", ("tcp", "path", "neighbor")),
    "host_event": (
        "event",
        ("power_down", "media_disconnect", "capability_disabled", "net_event_pause"),
    ),
}


def _duration(item: str, text: str) -> float:
    """A duration in the item `item` (@TIME, /for=); the error names the item."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"fault {item!r}: {exc}") from None


#: The daemon's own bounds of fault.inject (chimneyd.faults MAX_FAULT_MS, MAX_FAULT_COUNT): a
#: value past them would be refused only when the hold injects it.
_KEY_MAX = {"ms": 60_000, "count": 1_000_000, "skip": 1_000_000}


def _check_value(item: str, key: str, value: str) -> None:
    if key in ("ms", "count") and (not value.isdigit() or int(value) < 1):
        raise ValueError(f"fault {item!r}: {key} must be a positive integer")
    if key == "skip" and not value.isdigit():
        raise ValueError(f"fault {item!r}: skip is a number of calls (0, 1, ...)")
    if key in _KEY_MAX and int(value) > _KEY_MAX[key]:
        raise ValueError(f"fault {item!r}: {key} is at most {_KEY_MAX[key]}")
    if key == "shard" and not value.isdigit():
        raise ValueError(f"fault {item!r}: shard is a shard number (0, 1, ...)")
    if key == "for" and _duration(item, value) <= 0:
        raise ValueError(f"fault {item!r}: for must be more than 0")
    if key == "status" and not value.startswith("NDIS_STATUS_"):
        raise ValueError(f"fault {item!r}: status is an NDIS_STATUS_ name")


def take_due(
    pending: deque[ScheduledFault],
    elapsed: float,
    since_last: float,
    nic_settling: bool,
    last_t: float = float("-inf"),
) -> ScheduledFault | None:
    """The next fault to inject, `elapsed` s into the hold and `since_last` s after the last
    injection (scheduled at `last_t`), or None. Its time has come; a spread one (no @) comes
    as far after the one before as the schedule put it, up to STAGGER_S, even when the
    injector is late (it waited on a daemon busy re-offloading a NIC's connections), since
    faults injected at once go off on the same next calls (where the hold left the schedule
    no room, it goes in as scheduled: later would be after the hold); and a
    spread layer fault waits while a NIC outage and its RESUME's re-offloads are under way
    (`nic_settling`): armed while nothing is offloaded, or while the first connections are
    offloaded again, every one would go off on those few connections; a spread outage too,
    since two at once move the same connections and neither's outcome can be told apart (the
    coordinator stops saying so for the hold's last second, so that they still go off within
    it). One given with @ goes in on time."""
    for sf in pending:  # in time order
        if elapsed < sf.t:
            return None
        if sf.spec.at is not None:
            break
        if since_last < min(STAGGER_S, sf.t - last_t):
            return None
        if not (nic_settling and sf.spec.scope == "layer"):
            break  # (a connection fault goes in past a layer fault that waits)
    else:
        return None
    pending.remove(sf)  # (tags are unique)
    return sf


@dataclass(frozen=True, slots=True)
class ScheduledFault:
    tag: int  # unique in the run
    t: float  # seconds after the hold starts
    spec: FaultSpec


def schedule_faults(specs: Sequence[FaultSpec], hold_s: float) -> list[ScheduledFault]:
    """Injection times: `@TIME` as given, else COUNT injections evenly inside the hold, each
    moved on by STAGGER_S while it falls that close to one already placed and the hold has
    room after it: two faults injected at once would hit the next call of the same connection,
    and its outcome would be the sum of both, which is no fault's."""
    plan: list[tuple[float, FaultSpec]] = []
    for spec in specs:
        if spec.at is not None:
            plan += [(spec.at, spec)] * spec.count
    # the times placed so far, sorted: whether one lies within STAGGER_S of `t` is one
    # bisection, not a scan of the plan (a scan per step made a thousand faults packed
    # closely take seconds to place)
    placed = sorted(t for t, _ in plan)

    def clashes(t: float) -> bool:
        # the nearest time below and above `t` are the closest of all
        i = bisect.bisect_left(placed, t)
        return any(abs(t - u) < STAGGER_S for u in placed[max(i - 1, 0) : i + 1])

    for spec in specs:
        for i in range(spec.count if spec.at is None else 0):
            t = hold_s * (i + 1) / (spec.count + 1)
            while clashes(t) and t + STAGGER_S < hold_s:
                t += STAGGER_S
            plan.append((t, spec))
            bisect.insort(placed, t)
    for t, spec in plan:
        if t >= hold_s:
            raise ValueError(
                f"fault {spec.kind}@{t:g}s is not inside the {hold_s:g} s hold (--duration)"
            )
    plan.sort(key=lambda p: p[0])
    return [ScheduledFault(i + 1, t, spec) for i, (t, spec) in enumerate(plan)]
