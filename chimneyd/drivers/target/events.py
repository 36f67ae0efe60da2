"""Connection events the target raises (spec §5.1, §5.2).

`TcpIndicateRetrieve` asks for one connection's upload (spec §5.2). An indication is an event
on the context's lifecycle too, so none can go up before its initiate completed (spec §9 item 5).
Adapter status (PAUSE / UPLOAD_ALL / RESUME) is in `adapter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.lifecycle import Event, Phase
from chimneyd.ndis.status import NdisStatus, TcpOffloadEventType, TcpUploadReason

from .contexts import TcpContext

if TYPE_CHECKING:
    from .target import OffloadTarget

S = NdisStatus
#: Phases in which a connection has already been asked to go, or is going.
_ASKED = frozenset({Phase.UPLOAD_REQUESTED, Phase.FAILED, Phase.TERMINATING, Phase.TERMINATED})


def indicate(t: OffloadTarget, c: TcpContext, event: TcpOffloadEventType, info: int) -> None:
    """`NdisTcpOffloadEventHandler` with the overlying driver's handle (spec §5.1)."""
    c.lifecycle.fire(Event.INDICATE)
    t.ndis.NdisTcpOffloadEventHandler(t, c.upper, event, int(info))


def request_upload(t: OffloadTarget, c: TcpContext, reason: TcpUploadReason) -> None:
    """`TcpIndicateRetrieve` with `reason` (spec §5.2). Asked once per reason strength: a
    mandatory reason after an optional one asks again, nothing asks twice."""
    phase = c.lifecycle.phase
    if phase in _ASKED or (phase is Phase.UPLOAD_SUGGESTED and not reason.mandatory):
        return
    c.lifecycle.fire(Event.RETRIEVE if reason.mandatory else Event.RETRIEVE_OPTIONAL)
    indicate(t, c, TcpOffloadEventType.TcpIndicateRetrieve, reason)
