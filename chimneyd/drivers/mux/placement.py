"""Which NIC a new connection goes to: the MUX's policy (teaming / LBFO load distribution).

Every policy skips a NIC out of service, one without room (its advertised capacity, spec §8)
and one that does not offload the connection's IP version. `moves` (a rebalance) names the
NIC a given connection must go to next.

A connection may come with a placement wish from the host [EMU, not NDIS: carried in its trace,
ndis/trace.py]: the NIC the application pinned it to (`tcp.connect`'s `target`), which is then
the only NIC it may go to, and the NICs the host keeps its connections off (`host_event`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from chimneyd.ndis.blocks import PlacementWish

from .objects import Key, Lower

#: Whether a NIC may take a given connection, from its placement wish.
Fit = Callable[[Lower], bool]

#: active-standby: the first NIC in service takes every connection, the others wait;
#: round-robin: in turn; least-loaded: the fewest connections; least-bytes: the fewest bytes
#: sent and not yet acknowledged; hash: the 4-tuple, as 802.3ad's layer 3+4 policy.
POLICIES = ("active-standby", "round-robin", "least-loaded", "least-bytes", "hash")


class Placement:
    __slots__ = ("moves", "policy", "turn")

    def __init__(self, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown MUX policy {policy!r}")
        self.policy = policy
        self.turn = 0
        self.moves: dict[Key, Lower] = {}  # a rebalance: where these connections go next

    def choose(
        self, lowers: list[Lower], key: Key, ipv6: bool, fit: Fit | None = None
    ) -> Lower | None:
        """The NIC for a new connection, or None when none can take it (none in service with
        room for its IP version, or none of those its wish `fit` allows)."""
        fits = [lo for lo in lowers if usable(lo, ipv6) and (fit is None or fit(lo))]
        if not fits:
            return None
        moved = self.moves.pop(key, None)
        if moved is not None and moved in fits:
            return moved
        if self.policy == "active-standby":
            return fits[0]
        if self.policy == "round-robin":
            # in turn over every NIC, passing those that cannot take it now
            for i in range(len(lowers)):
                lower = lowers[(self.turn + i) % len(lowers)]
                if lower in fits:
                    self.turn = (self.turn + i + 1) % len(lowers)
                    return lower
        if self.policy == "least-loaded":
            return min(fits, key=lambda lo: lo.connections)
        if self.policy == "least-bytes":
            return min(fits, key=lambda lo: (lo.outstanding_bytes, lo.connections))
        # hash: the same connection always lands on the same NIC while the set in service holds
        src, lport, dst, rport = key
        digest = zlib.crc32(src + dst + lport.to_bytes(2, "big") + rport.to_bytes(2, "big"))
        return fits[digest % len(fits)]


def usable(lower: Lower, ipv6: bool) -> bool:
    """Whether `lower` can take a new connection of that IP version now."""
    return offers(lower, ipv6) and lower.room()


def offers(lower: Lower, ipv6: bool) -> bool:
    """Whether `lower`, in service, offloads connections of that IP version at all, room or
    not: its chimney on (spec §1.3) and the version in its capabilities (spec §8)."""
    caps = lower.caps
    if not lower.in_service or caps is None or not caps.recognised():
        return False
    return caps.SupportIPv6 if ipv6 else caps.SupportIPv4


def fit_of(wish: PlacementWish | None) -> Fit | None:
    """Which NICs a connection with `wish` may go to (None: any)."""
    if wish is None:
        return None
    pin, avoid = wish

    def fits(lower: Lower) -> bool:
        nics = nics_below(lower.binding.lower)
        return (pin is None or pin in nics) and not nics <= avoid

    return fits


def nics_below(layer: Any) -> frozenset[str]:
    """The targets at or below `layer`: the layers with none below them (one, as a mux's lower
    is a NIC or IMs over one: a mux below a mux is refused by the configuration)."""
    if not layer.lower_bindings:
        return frozenset((layer.name,))
    return frozenset().union(*(nics_below(b.lower) for b in layer.lower_bindings))
