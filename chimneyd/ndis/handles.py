"""NDIS_OFFLOAD_HANDLE, its MiniportOffloadContext cell, and fixed-capacity tables (spec §1.2, §1.5)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from .errors import ChimneyProtocolError, TableFullError

# One id space for the whole NDIS instance: a trace then never shows two objects with one id.
_ids = itertools.count(1)


def next_object_id() -> int:
    """A fresh non-zero id for a handle or a miniport context."""
    return next(_ids)


class NdisOffloadHandle:
    """`NDIS_OFFLOAD_HANDLE { NdisReserved[1]; MiniportOffloadContext; }` (spec §1.2).

    A protocol edge (host TCB or IM offload entry) owns one per offloaded object. The slot
    `miniport_offload_context` is the cell the layer below fills at initiate with its own
    context; NDIS reads it to route I/O down (spec §1.5 [EMU]). `ndis_reserved` is where NDIS
    keeps the binding the object was offloaded through, and `failed_at` the layer whose
    initiate completion failed the connection (`Ndis._state_complete`). `owner` is the
    protocol edge's own context (the TCB or IM entry): a container-of, used only by the layer
    that owns the handle.
    """

    __slots__ = (
        "dead",
        "failed_at",
        "id",
        "layer",
        "miniport_offload_context",
        "ndis_reserved",
        "owner",
        "trace",
    )

    def __init__(self, layer: str, owner: Any, trace: Any = None) -> None:
        self.id = next_object_id()
        self.layer = layer
        self.owner = owner
        self.miniport_offload_context: Any = None
        self.ndis_reserved: Any = None  # the binding the object was offloaded through
        # [EMU] NDIS-private too: the lowest layer whose completion failed the connection's
        # last initiate below this handle (None: none did); what `tcp.info`'s
        # `offload_refused` names (`adapter.refused`)
        self.failed_at: str | None = None
        self.trace = trace
        self.dead = False

    def context(self) -> Any:
        """The lower layer's context behind this handle, or raise (spec §6.3)."""
        ctx = self.miniport_offload_context
        if ctx is None or self.dead:
            raise ChimneyProtocolError(
                f"NDIS_OFFLOAD_HANDLE {self.id} of {self.layer} is "
                + ("dead (terminated)" if self.dead else "not offloaded")
            )
        return ctx

    def release(self) -> None:
        """The owning layer is done with this handle: let go of the context below and of the
        owner. Both point back at the handle (the owner holds it, the context indicates up on
        it), so a handle that kept them would keep a closed connection's records at every
        layer for the cycle collector instead of letting them go at once. Only the owning
        layer calls it: after its terminate completed (spec §3.9: the handle is dead; NDIS
        delivers nothing on it any more), or after its initiate failed (spec §3.2.4: never
        offloaded, nothing comes on it)."""
        self.miniport_offload_context = None
        self.owner = None

    def __repr__(self) -> str:
        return f"<NdisOffloadHandle {self.id} of {self.layer}>"


T = TypeVar("T")


class HandleTable(Generic[T]):
    """A per-layer table of live handles or contexts with a fixed capacity (ids never 0)."""

    __slots__ = ("_live", "capacity", "name")

    def __init__(self, name: str, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("table capacity must be positive")
        self.name = name
        self.capacity = capacity
        self._live: dict[int, T] = {}

    def add(self, object_id: int, obj: T) -> None:
        if object_id == 0:
            raise ChimneyProtocolError("object id 0 is reserved")
        if len(self._live) >= self.capacity:
            raise TableFullError(f"{self.name} is full ({self.capacity} entries)")
        if object_id in self._live:
            raise ChimneyProtocolError(f"{self.name}: id {object_id} already present")
        self._live[object_id] = obj

    def remove(self, object_id: int) -> T:
        try:
            return self._live.pop(object_id)
        except KeyError:
            raise ChimneyProtocolError(f"{self.name}: no live entry {object_id}") from None

    def get(self, object_id: int) -> T | None:
        return self._live.get(object_id)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._live

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._live.values()))

    @property
    def full(self) -> bool:
        return len(self._live) >= self.capacity
