"""NET_BUFFER_LIST / NET_BUFFER / MDL, zero-copy over memoryviews (spec §2.4).

One `NetBufferList` object is created by the layer that starts an I/O and the very same object
travels down every layer and back up with its completion (spec §4.0). Payload bytes are never
copied between layers: an `Mdl` holds a memoryview of the caller's buffer.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any, Final

from .status import NdisStatus

_nbl_ids: Final = itertools.count(1)
# read once: on Python 3.11 an enum class's attribute goes through `EnumType.__getattr__`'s
# slot even when found, ~800 instructions against a global's few (callgrind), and every NBL
# made starts PENDING
_PENDING: Final = NdisStatus.NDIS_STATUS_PENDING


class Mdl:
    """One memory descriptor: a view of a buffer, chained with `next`."""

    __slots__ = ("buffer", "next")

    def __init__(self, buffer: memoryview, next: Mdl | None = None) -> None:
        self.buffer = buffer
        self.next = next

    @property
    def byte_count(self) -> int:
        return len(self.buffer)


class NetBuffer:
    """A NET_BUFFER: a data window (`DataOffset`, `DataLength`) over an MDL chain."""

    __slots__ = (
        "current_mdl",
        "current_mdl_offset",
        "data_length",
        "data_offset",
        "mdl_chain",
        "next",
    )

    def __init__(self, mdl_chain: Mdl | None, data_length: int, data_offset: int = 0) -> None:
        self.next: NetBuffer | None = None
        self.mdl_chain = mdl_chain
        self.data_offset = data_offset
        self.data_length = data_length
        self.current_mdl = mdl_chain
        self.current_mdl_offset = 0
        if data_offset:
            self._seek(data_offset)

    def _seek(self, delta: int) -> None:
        mdl, off = self.current_mdl, self.current_mdl_offset + delta
        while mdl is not None and off >= len(mdl.buffer) and mdl.next is not None:
            off -= len(mdl.buffer)
            mdl = mdl.next
        self.current_mdl, self.current_mdl_offset = mdl, off

    def views(self, limit: int | None = None) -> list[memoryview]:
        """Memoryviews of the data window (at most `limit` bytes), in order, no copy."""
        want = self.data_length if limit is None else min(limit, self.data_length)
        out: list[memoryview] = []
        mdl, off = self.current_mdl, self.current_mdl_offset
        while want > 0 and mdl is not None:
            view = mdl.buffer[off : off + want]
            if view:
                out.append(view)
                want -= len(view)
            mdl, off = mdl.next, 0
        return out

    def copy_in(self, offset: int, data: memoryview) -> int:
        """Copy `data` into the window at `offset` (receive requests); returns bytes copied."""
        room = self.data_length - offset
        n = min(room, len(data))
        if n <= 0:
            return 0
        done = 0
        mdl, off = self.current_mdl, self.current_mdl_offset + offset
        while mdl is not None and off >= len(mdl.buffer):
            off -= len(mdl.buffer)
            mdl = mdl.next
        while done < n and mdl is not None:
            k = min(len(mdl.buffer) - off, n - done)
            mdl.buffer[off : off + k] = data[done : done + k]
            done += k
            mdl, off = mdl.next, 0
        return done


def NdisAdvanceNetBufferDataStart(net_buffer: NetBuffer, data_offset_delta: int) -> None:
    """Consume `data_offset_delta` bytes from the front of the window (spec §2.4)."""
    if data_offset_delta < 0 or data_offset_delta > net_buffer.data_length:
        raise ValueError(
            f"cannot advance {data_offset_delta} bytes in a NET_BUFFER of {net_buffer.data_length}"
        )
    if data_offset_delta:
        net_buffer.data_offset += data_offset_delta
        net_buffer.data_length -= data_offset_delta
        net_buffer._seek(data_offset_delta)


class NetBufferList:
    """A NET_BUFFER_LIST with the chimney `NetBufferListInfo` values as attributes.

    `source_bindings` is the per-NBL stack NDIS keeps of the bindings the NBL came down through,
    so completions (which carry no handle) route back up by binding (spec §1.5 item 8 [EMU]).
    `trace` is the connection's trace buffer, an emulator annotation that lets every layer record
    its hop without knowing the connection.
    """

    __slots__ = (
        "first_net_buffer",
        "id",
        "miniport_reserved",
        "next",
        "protocol_reserved",
        "source_bindings",
        "status",
        "tcp_offload_bytes_transferred",
        "tcp_receive_bytes_transferred",
        "tcp_receive_no_push",
        "trace",
    )

    def __init__(self, first_net_buffer: NetBuffer | None) -> None:
        self.id = next(_nbl_ids)
        self.next: NetBufferList | None = None
        self.first_net_buffer = first_net_buffer
        self.status = _PENDING
        self.tcp_offload_bytes_transferred = 0
        self.tcp_receive_no_push = False
        self.tcp_receive_bytes_transferred = 0
        self.source_bindings: list[Any] = []
        self.miniport_reserved: Any = None
        self.protocol_reserved: Any = None
        self.trace: Any = None

    # -- construction helpers -------------------------------------------------------------
    @classmethod
    def for_data(cls, data: bytes | bytearray | memoryview) -> NetBufferList:
        """An NBL whose one NB describes `data` (no copy)."""
        view = data if isinstance(data, memoryview) else memoryview(data)
        return cls(NetBuffer(Mdl(view), len(view)))

    @classmethod
    def for_views(cls, views: Iterable[memoryview]) -> NetBufferList:
        """One NB over an MDL chain of several views (a multi-MDL indication or send)."""
        head: Mdl | None = None
        tail: Mdl | None = None
        total = 0
        for view in views:
            mdl = Mdl(view)
            total += len(view)
            if tail is None:
                head = tail = mdl
            else:
                tail.next = mdl
                tail = mdl
        return cls(NetBuffer(head, total))

    @classmethod
    def for_receive(
        cls, capacity: int, no_push: bool = False, buffer: bytearray | None = None
    ) -> NetBufferList:
        """A posted receive request over an application buffer of `capacity` bytes: `buffer`,
        one the host keeps to post again, or a fresh one."""
        nbl = cls.for_data(bytearray(capacity) if buffer is None else buffer)
        nbl.tcp_receive_no_push = no_push
        return nbl

    # -- data access ------------------------------------------------------------------------
    @property
    def data_length(self) -> int:
        total = 0
        nb = self.first_net_buffer
        while nb is not None:
            total += nb.data_length
            nb = nb.next
        return total

    def views(self) -> list[memoryview]:
        out: list[memoryview] = []
        nb = self.first_net_buffer
        while nb is not None:
            out.extend(nb.views())
            nb = nb.next
        return out

    def advance(self, nbytes: int) -> None:
        """`NdisAdvanceNetBufferDataStart` across the NBs, front first."""
        nb = self.first_net_buffer
        while nbytes > 0 and nb is not None:
            # `NdisAdvanceNetBufferDataStart(nb, k)` and its `_seek` written out: a send the
            # peer acknowledged and a filled receive request each advance once per echo round.
            # 0 <= k <= its DataLength, so its range check always passes here (k is 0 only
            # for an empty NB, which nothing moves)
            length = nb.data_length
            k = nbytes if nbytes < length else length
            if k:
                nb.data_offset += k
                nb.data_length = length - k
                mdl, off = nb.current_mdl, nb.current_mdl_offset + k
                while mdl is not None and off >= len(mdl.buffer) and mdl.next is not None:
                    off -= len(mdl.buffer)
                    mdl = mdl.next
                nb.current_mdl, nb.current_mdl_offset = mdl, off
            nbytes -= k
            nb = nb.next
        if nbytes:
            raise ValueError("advanced past the end of the NET_BUFFER_LIST")

    def __repr__(self) -> str:
        return f"<NetBufferList {self.id} len={self.data_length} status={self.status:#x}>"


def iter_chain(head: NetBufferList | None) -> Iterable[NetBufferList]:
    """Walk an NBL chain by `Next`; safe against relinking of the yielded NBL."""
    # a chain of one NBL (most I/O: one send, one posted receive) as a tuple: what the walk
    # would yield, its `Next` read before it is yielded, without a generator to make and resume
    if head is not None and head.next is None:
        return (head,)
    return _walk(head)


def _walk(head: NetBufferList | None) -> Iterator[NetBufferList]:
    while head is not None:
        nxt = head.next
        yield head
        head = nxt


def link_chain(nbls: Iterable[NetBufferList]) -> NetBufferList | None:
    """Chain NBLs with `Next` in the given order and return the head."""
    head: NetBufferList | None = None
    prev: NetBufferList | None = None
    for nbl in nbls:
        nbl.next = None
        if prev is None:
            head = nbl
        else:
            prev.next = nbl
        prev = nbl
    return head


def chain_of(nbls: list[NetBufferList]) -> NetBufferList:
    """`link_chain` of a list known not to be empty: its head."""
    head = link_chain(nbls)
    assert head is not None
    return head


def unlink_chain(head: NetBufferList | None) -> list[NetBufferList]:
    """Break a chain into a list, clearing every `Next`."""
    out = []
    while head is not None:
        nxt = head.next
        head.next = None
        out.append(head)
        head = nxt
    return out
