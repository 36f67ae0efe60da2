"""What a teaming MUX keeps: its lower NICs, the objects the layer above offloaded to it, their
instances on each NIC, and its connections.

To the layer above the MUX is one miniport: a neighbor or path offloaded to it is one
`VirtualObject`. Below, each NIC that carries connections depending on that object holds its
own copy, an `Instance`, offloaded by the MUX with the state it keeps, and reference-counted
per NIC (spec §2.3 rules hold on each NIC: an instance goes when its last dependent there does).
A connection lives on exactly one NIC (`MuxConnection`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chimneyd.ndis.blocks import OffloadBlock, PlacementWish
from chimneyd.ndis.broker import Binding
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.lifecycle import Lifecycle, Phase, Role
from chimneyd.ndis.oid import NdisTcpConnectionOffload
from chimneyd.ndis.status import OffloadStateType

from ..base import TimerHandle
from ..passthrough import ImOffloadEntry
from ..queues import NO_ITEMS

#: A connection's 4-tuple: (source address, local port, destination address, remote port).
Key = tuple[bytes, int, bytes, int]


class Lower:
    """One NIC below the MUX: its binding, whether it is in service, what it can carry."""

    __slots__ = (
        "binding",
        "caps",
        "connections",
        "failed",
        "outstanding_bytes",
        "paused",
        "taken_out",
    )

    def __init__(self, binding: Binding) -> None:
        self.binding = binding
        self.caps: NdisTcpConnectionOffload | None = None  # None until it answers
        self.connections = 0  # MUX connections placed here (offloaded or being offloaded)
        self.outstanding_bytes = 0  # sent down and not yet completed (least-bytes policy)
        self.paused = False  # it indicated NDIS_STATUS_OFFLOAD_PAUSE
        self.failed = False  # it asked for every upload (NDIS_STATUS_UPLOAD_ALL)
        self.taken_out = False  # nic_down: out of service by decision

    @property
    def name(self) -> str:
        return self.binding.lower.name

    @property
    def in_service(self) -> bool:
        return not (self.paused or self.failed or self.taken_out) and self.caps is not None

    def room(self) -> bool:
        return self.caps is not None and self.connections < self.caps.TcpConnectionOffloadCapacity

    def describe(self) -> dict[str, Any]:
        return {
            "in_service": self.in_service,
            "failed": self.failed,
            "taken_out": self.taken_out,
            "connections": self.connections,
            "outstanding_bytes": self.outstanding_bytes,
            "capacity": self.caps.TcpConnectionOffloadCapacity if self.caps else None,
        }


class VirtualObject(Lifecycle):
    """A neighbor or path as the layer above sees it at the MUX (its context in the upper
    slot), with the state to offload copies of it to NICs."""

    __slots__ = (
        "avoid",
        "cached",
        "const",
        "delegated",
        "header_type",
        "id",
        "instances",
        "parent",
        "relinking",
        "upper",
    )

    def __init__(
        self, upper: NdisOffloadHandle, block: OffloadBlock, parent: VirtualObject | None
    ) -> None:
        self.id = next_object_id()
        self.upper = upper
        self.header_type: OffloadStateType = block.header_type
        self.const = block.const
        self.cached = block.cached
        self.delegated = block.delegated
        self.parent = parent  # a path's neighbor
        self.instances: dict[int, Instance] = {}  # lower binding id -> its copy there
        # lower binding ids of the NICs that kept finding its copy corrupt: no connection of
        # it (of a neighbor: of a path under it) goes there again (`MuxIm._corrupt_again`)
        self.avoid: set[int] = set()
        self.relinking = False  # a path in a next-hop change under way (`relink`)
        Lifecycle.__init__(self, None, Role.OFFLOADED_OBJECT)

    def __str__(self) -> str:
        return f"MUX {self.header_type.name} {self.id}"


class Instance(Lifecycle):
    """A virtual object's copy on one NIC, offloaded by the MUX's protocol edge."""

    __slots__ = (
        "corrupt",
        "handle",
        "id",
        "linked",
        "lower",
        "missed",
        "pending_ops",
        "refs",
        "retry",
        "under",
        "vobj",
    )

    def __init__(self, layer: str, vobj: VirtualObject, lower: Lower) -> None:
        self.id = next_object_id()
        self.vobj = vobj
        self.lower = lower
        self.handle = NdisOffloadHandle(layer, self)
        # the MUX offloads it as the host offloads its objects
        Lifecycle.__init__(self, None, Role.HOST_OBJECT)
        self.refs = 0  # its dependents on this NIC: paths of a neighbor, connections of a path
        # a path's copy: the neighbor's copy it hangs under on its NIC, which counts it while
        # it has connections. Its own, not looked up from `vobj.parent`: a next-hop change
        # moves the copies NIC by NIC (`relink`), and one a NIC could not move back after
        # another NIC failed its part stays where that NIC has it
        self.under: Instance | None = None
        # queries, updates and invalidates relayed to it and not yet completed: no terminate
        # before they are (spec §3.1, §9 item 7)
        self.pending_ops = 0
        # initiates sent to its NIC that name it as a linker (a new connection or path goes
        # under it there) and are not yet back from that NIC: no terminate before they are
        # (spec §3.1, §2.3), or the NIC, taking the initiate after the terminate, would link
        # the new state under an object it no longer has. Not `pending_ops`: a next-hop change
        # need not wait for them (the NIC takes the new state under the path where it hangs
        # by then), and a failed NIC may hold them until its RESUME (spec §5.5)
        self.linked = 0
        self.corrupt = 0  # terminates that found its hardware state corrupt (spec §3.7)
        # found corrupt more than once: the MUX terminates it again only when this fires
        self.retry: TimerHandle | None = None
        # an update went ahead without it (a failed NIC held its offload, `MuxIm._update`): it
        # has the values from before, and takes no new connection (`_missed`) until it goes
        self.missed = False

    @property
    def upper(self) -> NdisOffloadHandle:
        """Indications about it go up with the virtual object's upper handle (spec §5.6)."""
        return self.vobj.upper

    def __str__(self) -> str:
        return f"{self.vobj} on {self.lower.name}"


#: Phases of a connection the MUX can ask the layer above to upload (`MuxIm.retrieve_all`): one
#: that is not on its way up already (asked up by its NIC, terminated by the layer above) nor
#: found corrupt (spec §3.7: only the layer above's terminate is left for it).
ASKABLE = frozenset({Phase.OFFLOADED, Phase.UPLOAD_SUGGESTED, Phase.INVALIDATED})

#: How strongly the layer above was asked to upload a connection (`MuxConnection.asked`).
NOT_ASKED = 0
ASKED_OPTIONAL = 1
ASKED_MANDATORY = 2


class MuxConnection(ImOffloadEntry):
    """A connection the MUX placed on one NIC: an IM offload entry with its path and 4-tuple."""

    __slots__ = ("asked", "completing", "early", "key", "path", "wish")

    def __init__(
        self, layer: str, upper: NdisOffloadHandle, lower: Binding, path: VirtualObject, key: Key
    ) -> None:
        super().__init__(layer, upper, lower)
        self.path = path
        self.key = key
        # what its NIC indicated before the MUX completed the initiate upward: (handler,
        # arguments), delivered once it has (spec §9 item 5); the shared empty one until then
        self.early: list[tuple[Callable[..., None], tuple[Any, ...]]] = NO_ITEMS
        # its NIC failed its part of a terminate the MUX has not yet completed above: what the
        # NIC indicates next waits in `early` too (spec §3.7: the completion comes first)
        self.completing = False
        # the strongest upload request the layer above has had for it, from its NIC or from
        # the MUX (`MuxIm.retrieve_all`): NOT_ASKED, ASKED_OPTIONAL or ASKED_MANDATORY. The
        # MUX passes up no second request that says nothing new (spec §5.2, `MuxIm._news`)
        self.asked = NOT_ASKED
        # [EMU] the host's placement wish as its offload of the connection carried it: its pin
        # (the NIC the application pinned it to) keeps a rebalance from moving it
        # (`failover._barred`); for the NICs the host withholds the MUX reads
        # `MuxIm.host_avoid` (what the NICs' indications told it). Kept from that offload's
        # request (`OffloadBlock.wish`), the MUX's own per-connection record of it from then
        # on (spec §3.2: the request is gone once completed): the MUX knows of the pin only
        # what an offload told it (docs/architecture.md, "A pin and the host's reasons reach
        # the placement")
        self.wish: PlacementWish | None = None
