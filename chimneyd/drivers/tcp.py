"""TCP rules the host stack and the offload target share: sequence numbers and reassembly.

A connection's bytes reach a layer with their stream offsets, sometimes by two roads (the wire
and `NdisOffloadTcpForward`, or the chimney and the ordinary path, spec §4.6, §3.6.4), so each
layer puts them back in order exactly as TCP does with sequence numbers. The connection *state*
(ESTABLISHED, FIN_WAIT_1, …) is a transition table in `chimneyd.ndis.lifecycle`.
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar, cast

from chimneyd.compiled import mypyc_attr

SEQ_MOD: Final = 1 << 32


def seq(initial: int, offset: int) -> int:
    """The 32-bit sequence number of the byte at stream `offset` (the SYN takes one)."""
    return (initial + 1 + offset) % SEQ_MOD


def offset_of(initial: int, sequence: int, near: int) -> int:
    """The stream offset of `sequence`, taking the one closest to offset `near`."""
    base = seq(initial, near)
    delta = (sequence - base + (1 << 31)) % SEQ_MOD - (1 << 31)
    return near + delta


# bound, not restricted to the two values: mypyc compiles no TypeVar with values, and this
# module is on the compiled build's I/O path (deploy/compiled-modules.txt). A layer's
# `Reassembly` holds one of the two types (its `rx` annotation), as before
D = TypeVar("D", bound=bytes | memoryview)


# a test plants a bug in a subclass (tests/integration/test_layer_errors.py)
@mypyc_attr(allow_interpreted_subclasses=True)
class Reassembly(Generic[D]):
    """In-sequence delivery of one direction of a stream (RFC 793 §3.9, "segment arrives").

    `rcv_nxt` is the offset of the next byte expected; segments ahead of it wait in `ooo` (by
    offset) until the gap fills; `fin` is the offset of the peer's FIN once known.
    """

    __slots__ = ("fin", "ooo", "rcv_nxt")

    def __init__(self, rcv_nxt: int) -> None:
        self.rcv_nxt = rcv_nxt
        # out-of-order segments: offset -> (data, flags); made when the first one comes, since
        # loopback never reorders and an empty dict per direction counts at 10,000 connections
        self.ooo: dict[int, tuple[D, int]] | None = None
        self.fin: int | None = None

    @property
    def fin_reached(self) -> bool:
        """Every byte before the peer's FIN has arrived in sequence."""
        return self.fin is not None and self.rcv_nxt >= self.fin

    def segment(
        self, offset: int, data: D, flags: int, fin: bool
    ) -> tuple[list[tuple[D, int]], bool]:
        """A segment at stream `offset`: returns the pieces now in sequence (each with its
        flags), and whether this segment brought the stream to its FIN."""
        was = self.fin_reached
        if fin and self.fin is None:
            self.fin = offset + len(data)
        ready: list[tuple[D, int]] = []
        end = offset + len(data)
        if data and end > self.rcv_nxt:
            ooo = self.ooo
            if offset > self.rcv_nxt:
                if ooo is None:
                    ooo = self.ooo = {}
                ooo[offset] = (data, flags)
            else:
                self._take(ready, cast(D, data[self.rcv_nxt - offset :]), flags)
                while ooo:
                    due = sorted(o for o in ooo if o <= self.rcv_nxt)
                    if not due:
                        break
                    for o in due:
                        piece, fl = ooo.pop(o)
                        if o + len(piece) > self.rcv_nxt:
                            self._take(ready, cast(D, piece[self.rcv_nxt - o :]), fl)
        return ready, self.fin_reached and not was

    def _take(self, ready: list[tuple[D, int]], data: D, flags: int) -> None:
        ready.append((data, flags))
        self.rcv_nxt += len(data)

    def drain_ooo(self) -> list[tuple[int, D, int]]:
        """Hand over the segments still waiting for a gap to fill, in offset order."""
        if not self.ooo:
            return []
        out = [(o, d, f) for o, (d, f) in sorted(self.ooo.items())]
        self.ooo = None
        return out


__all__ = ["SEQ_MOD", "Reassembly", "offset_of", "seq"]
