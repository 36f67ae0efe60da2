"""Errors raised by the NDIS model when a layer breaks the chimney rules (spec §6.3)."""

from __future__ import annotations


class ChimneyProtocolError(Exception):
    """A layer did something NDIS leaves undefined (a real driver would crash): spec §6.3."""


class TableFullError(ChimneyProtocolError):
    """A fixed-capacity handle or context table has no free entry."""


class IllegalTransition(ChimneyProtocolError):
    """A call not allowed in the object's current lifecycle state (spec §3.9)."""

    def __init__(self, obj: str, state: str, call: str) -> None:
        super().__init__(f"{call} is illegal for {obj} in state {state}")
        self.obj = obj
        self.state = state
        self.call = call
