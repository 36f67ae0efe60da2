"""Splitting the layer above's offload trees into one tree per NIC (spec §1.6 [EMU]: the MUX
builds mirror trees, one per lower binding, instead of overlaying one).

A lower tree always has the spec's three levels, built from the MUX's own objects: a neighbor
block (the neighbor's instance on that NIC, or a placeholder), its path blocks, the connections
under them (spec §2.3). `MuxCall` is the MUX's call entry: which upper block each lower block
stands for, and what is still to come back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chimneyd.ndis.blocks import OffloadBlock, chain_append
from chimneyd.ndis.status import NdisStatus

from .objects import Instance, Lower, MuxConnection, VirtualObject

if TYPE_CHECKING:
    from .relink import Relink

MuxObject = Instance | MuxConnection


class LowerTree:
    """The tree going down to one NIC, built by object (not by the upper tree's shape)."""

    __slots__ = ("ends", "lower", "nodes", "root")

    def __init__(self, lower: Lower) -> None:
        self.lower = lower
        self.root: OffloadBlock | None = None
        self.nodes: dict[int, OffloadBlock] = {}  # virtual object id -> its block here
        # virtual object id -> the last block of its block's dependent list, built here alone:
        # a NIC's share of 10,000 connections under one path goes in without walking the list
        self.ends: dict[int, OffloadBlock] = {}

    def object_block(
        self, vobj: VirtualObject, make: Callable[[], OffloadBlock] | None = None
    ) -> OffloadBlock:
        """The block of `vobj` in this tree (made by `make`, a placeholder by default), under
        its parent's block."""
        block = self.nodes.get(vobj.id)
        if block is not None:
            return block
        block = make() if make is not None else OffloadBlock(vobj.header_type)
        self.nodes[vobj.id] = block
        # under the neighbor its copy hangs under on this NIC, which a next-hop change the
        # NIC could not undo leaves other than its own (`relink`): the NIC releases what a
        # terminate names dependents first, in the tree's order (spec §3.1)
        copy = vobj.instances.get(self.lower.binding.id)
        parent = copy.under.vobj if copy is not None and copy.under is not None else vobj.parent
        if parent is None:
            self.root = chain_append(self.root, block)
        else:
            self._under(parent, block)
        return block

    def connection_block(self, entry: MuxConnection, block: OffloadBlock) -> None:
        self._under(entry.path, block)

    def dependent_block(self, parent: VirtualObject, block: OffloadBlock) -> None:
        """`block` under `parent`'s block here, whatever `block`'s object hangs under now (a
        path moving to another neighbor, `relink`)."""
        self._under(parent, block)

    def _under(self, parent: VirtualObject, block: OffloadBlock) -> None:
        last = self.ends.get(parent.id)
        if last is None or last.next_block is not None:
            self.object_block(parent).add_dependent(block)
        else:
            last.next_block = block
        self.ends[parent.id] = block


class MuxCall:
    """One state operation in flight at the MUX: from the layer above (`upper_root`), or the
    MUX's own (`upper_root` None): the clean-up of instances no connection uses any more, or
    the invalidate of fresh copies of objects invalidated above."""

    __slots__ = (
        "failed_new",
        "held",
        "kept",
        "linkers",
        "links",
        "new_vobjs",
        "op",
        "pending",
        "refused",
        "relink",
        "saved_im_reserved",
        "stale",
        "trees",
        "upper_root",
    )

    def __init__(self, op: str, upper_root: OffloadBlock | None) -> None:
        self.op = op
        self.upper_root = upper_root
        self.saved_im_reserved: Any = upper_root.im_reserved if upper_root is not None else None
        self.trees: dict[int, LowerTree] = {}  # lower binding id -> its tree
        self.pending = 0  # lower trees not yet completed
        # (upper block or None, lower block, the MUX object it names)
        self.links: list[tuple[OffloadBlock | None, OffloadBlock, MuxObject]] = []
        # an initiate: lower binding id -> the copies its tree for that NIC names as linkers
        # (`Instance.linked`), let go when that NIC's part is back
        self.linkers: dict[int, list[Instance]] = {}
        self.new_vobjs: dict[int, VirtualObject] = {}  # id(upper block) -> its new object
        self.refused: dict[int, NdisStatus] = {}  # id(upper TCP block) -> why not placed
        # id(new object) -> a NIC's status for its instance, while no NIC has offloaded it
        self.failed_new: dict[int, NdisStatus] = {}
        # copies this initiate makes of objects invalidated above: invalidated in turn once
        # their NIC has offloaded them (`MuxIm._invalidate_copies`)
        self.stale: list[Instance] = []
        # a step of a next-hop change (the MUX's own call): its state, which its completion
        # goes to (`relink.completed`)
        self.relink: Relink | None = None
        # a terminate from above: the copies of the neighbors it names that it holds back
        # (`MuxIm._terminate`): with a copy of another neighbor's path still under them on
        # their NIC, or offloaded by a failed NIC at its RESUME. They go once that has gone,
        # or once offloaded; the terminate completes above after them
        self.held: set[Instance] = set()
        # copies it held back that its own dependents, found corrupt in it, keep below: the
        # terminate completes failed for their objects, which live on (spec §3.7)
        self.kept: set[Instance] = set()

    def tree(self, lower: Lower) -> LowerTree:
        tree = self.trees.get(lower.binding.id)
        if tree is None:
            tree = self.trees[lower.binding.id] = LowerTree(lower)
        return tree

    def link(self, upper: OffloadBlock | None, lower: OffloadBlock, obj: MuxObject) -> None:
        self.links.append((upper, lower, obj))


def mirror_block(upper: OffloadBlock, handle: Any) -> OffloadBlock:
    """A lower block standing for `upper`, with the MUX's own handle and the same trailing
    state structures and send NBLs (spec §1.6: the same state goes down, filled in place)."""
    return upper.mirror(handle)
