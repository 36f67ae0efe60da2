"""The fault kinds chimneyctl knows (rpc-contract `fault.inject` and the README's extensions):
their keys, what each does and an example, for `fault inject --help`, `fault kinds`, shell
completion, and a check of a spec before it is sent."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any


class FaultSpecError(ValueError):
    """An unknown kind, or a missing or unknown key; the message names what is expected."""


@dataclass(frozen=True)
class FaultKind:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    what: str
    example: str

    @property
    def keys(self) -> str:
        return " ".join([*self.required, *(f"[{k}]" for k in self.optional)])


FAULT_KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind(
            "peer_reset",
            ("conn",),
            (),
            "the peer resets the connection (RST): the target indicates TcpIndicateAbort",
            "fault inject peer_reset conn=c",
        ),
        FaultKind(
            "target_failure",
            ("layer",),
            (),
            "the offload target fails: it pauses offload and every connection through it is "
            "uploaded (NDIS_STATUS_UPLOAD_ALL); clearing the fault recovers it",
            "fault inject target_failure layer=nic0",
        ),
        FaultKind(
            "fail_next",
            ("layer", "call"),
            ("status", "count", "skip"),
            "the next COUNT (default 1) calls of handler CALL at LAYER, after SKIP let through, "
            "complete with STATUS (default NDIS_STATUS_FAILURE); CALL may also be "
            "MiniportInitiateOffload[path] or [neighbor]",
            "fault inject fail_next layer=nic0 call=MiniportTcpOffloadSend "
            "status=NDIS_STATUS_REQUEST_ABORTED count=1",
        ),
        FaultKind(
            "delay",
            ("layer", "call", "ms"),
            (),
            "LAYER runs handler CALL MS milliseconds late, until the fault is cleared",
            "fault inject delay layer=im0 call=MiniportTcpOffloadSend ms=50",
        ),
        FaultKind(
            "raise_next",
            ("layer", "call"),
            ("count", "skip"),
            "the next COUNT (default 1) calls of handler CALL at LAYER, after SKIP let through, "
            "raise inside the layer as a driver bug would: the requests they serve are answered "
            "INTERNAL and the call is failed for the layer (docs/spec.md §6.3)",
            "fault inject raise_next layer=nic0 call=MiniportTcpOffloadSend",
        ),
        FaultKind(
            "stall_peer",
            ("conn", "ms"),
            (),
            "for MS ms the peer neither sends nor acknowledges (the daemon stops reading the "
            "socket and hears no ACK news)",
            "fault inject stall_peer conn=c ms=2000",
        ),
        FaultKind(
            "invalidate",
            ("conn",),
            ("object",),
            "the host invalidates the connection's OBJECT (tcp, path or neighbor; default "
            "neighbor): every dependent connection is asked to upload (InvalidState)",
            "fault inject invalidate conn=c object=path",
        ),
        FaultKind(
            "retrieve",
            ("conn",),
            ("reason",),
            "the target raises TcpIndicateRetrieve with a TCP_UPLOAD_REASON name (default "
            "UploadRequested; e.g. LowActivity, HardwareFailure)",
            "fault inject retrieve conn=c reason=LowActivity",
        ),
        FaultKind(
            "host_event",
            ("layer", "event"),
            (),
            "the host uploads every connection offloaded to target LAYER and offloads none to it "
            "until cleared, for EVENT power_down, media_disconnect, capability_disabled or "
            "net_event_pause (a power change completes once all are uploaded)",
            "fault inject host_event layer=nic0 event=power_down",
        ),
        FaultKind(
            "nic_down",
            ("layer",),
            (),
            "the teaming MUX above NIC LAYER takes it out of service: only that NIC's "
            "connections are asked up (TcpIndicateRetrieve) and offloaded again onto the other "
            "NICs; clearing the fault puts it back",
            "fault inject nic_down layer=nic1",
        ),
        FaultKind(
            "nic_up",
            ("layer",),
            (),
            "the teaming MUX above NIC LAYER puts it back in service",
            "fault inject nic_up layer=nic1",
        ),
        FaultKind(
            "rebalance",
            ("layer",),
            (),
            "the MUX LAYER moves connections from its busiest NICs to its idlest until they "
            "differ by one at most",
            "fault inject rebalance layer=team0",
        ),
    )
}
#: Older names the daemon also accepts; chimneyctl sends the contract's name.
FAULT_ALIASES = {"nic_failure": "target_failure", "stall": "stall_peer"}
#: Kinds whose fault stays after its maker leaves (they are on a layer, not a connection).
LAYER_FAULTS = frozenset(
    {
        "target_failure",
        "fail_next",
        "raise_next",
        "delay",
        "host_event",
        "nic_down",
    }
)
#: Kinds that name a layer but act once, as they are injected: nothing stays to clear (the
#: daemon does not list them), so no one is told to clear them.
AT_ONCE_FAULTS = frozenset({"nic_up", "rebalance"})


def fault_kinds_help(width: int = 96) -> str:
    """The kinds as help text: each with its keys, what it does and an example."""

    def para(text: str, indent: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent)

    lines = ["fault kinds (KIND key=value ...; [key] is optional):"]
    for k in FAULT_KINDS.values():
        lines.append(f"  {k.name} {k.keys}")
        lines += para(k.what, "      ")
        lines.append(f"      e.g. chimneyctl {k.example}")
    aliases = ", ".join(f"{alias} = {name}" for alias, name in FAULT_ALIASES.items())
    lines += para(
        f"aliases: {aliases}. conn= takes an id, a name made with `as NAME`, or $last. A fault "
        "on a layer stays until `fault clear ID` (also after its maker left), but "
        f"{' and '.join(sorted(AT_ONCE_FAULTS))} act at once and leave nothing to clear; one on "
        "a connection goes with the connection. --unchecked sends a kind or key this chimneyctl "
        "does not know.",
        "  ",
    )
    return "\n".join(lines)


#: The whole-number keys and their least value, as the daemon checks them (chimneyd/faults.py):
#: a negative count or delay is a usage error here, before anything is sent.
NUMBER_KEYS = {"count": 1, "skip": 0, "ms": 1}


def check_fault(kind: str, keys: dict[str, Any]) -> str:
    """The contract's name of `kind`; a usage error for an unknown kind, a missing or
    unknown key, or a count, skip or ms that is not a whole number at least its least value
    (NUMBER_KEYS), naming what is expected."""
    kind = FAULT_ALIASES.get(kind, kind)
    spec = FAULT_KINDS.get(kind)
    if spec is None:
        raise FaultSpecError(
            f"fault inject: unknown kind {kind!r}; kinds: {', '.join(FAULT_KINDS)} "
            "(`chimneyctl fault kinds` lists their keys)"
        )
    missing = [k for k in spec.required if k not in keys]
    unknown = [k for k in keys if k not in spec.required and k not in spec.optional]
    if missing or unknown:
        why = []
        if missing:
            why.append(f"missing {', '.join(missing)}")
        if unknown:
            why.append(f"unknown key {', '.join(unknown)}")
        raise FaultSpecError(
            f"fault inject {kind}: {'; '.join(why)}; keys: {spec.keys} (e.g. {spec.example})"
        )
    for key, low in NUMBER_KEYS.items():
        value = keys.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise FaultSpecError(
                f"fault inject {kind}: {key} must be a whole number, at least {low}"
                f" (got {value!r}; e.g. {spec.example})"
            )
    return kind
