"""Connection events for subscribers (rpc-contract `events.subscribe`): the NDIS event names
and the state changes `offloaded`, `uploaded`, `closed`.

Besides the RPC subscribers, the hub has *observers* (the web view's event stream) that also hear
what the contract does not carry: a connection made (`connected`) and faults injected or cleared.
At debug level it logs one structured line per connection event, naming the connection and the
layer, and for an upload why it happened. With no observer and the level above debug, a
connection event costs what it did before: the subscriber loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import structlog

from chimneyd.api import EventCallback

log = structlog.get_logger("chimneyd.events")

#: Observers hear every event: (conn id, or None for a stack-wide one such as a fault; name; info).
Observer = Callable[[int | None, str, dict[str, Any]], None]

#: The log event name of each connection event (stable snake_case; the NDIS name is a field).
LOG_NAMES = {
    "connected": "conn_connected",
    "offloaded": "conn_offloaded",
    "uploaded": "conn_uploaded",
    "closed": "conn_closed",
    "TcpIndicateAbort": "conn_abort",
    "TcpIndicateDisconnect": "conn_peer_fin",
    "TcpIndicateRetrieve": "conn_retrieve",
    "TcpIndicateSendBacklogChange": "conn_send_backlog",
}
#: Why a connection went back to the host when no event asked for it: the application did.
APP_UPLOAD = "application (tcp.upload or tcp.close)"


def _debug_enabled() -> bool:
    """Whether structlog would emit a debug line (the filtering logger knows its level). An
    unconfigured structlog (tests that build an engine in-process) counts as not debugging."""
    if not structlog.is_configured():
        return False
    is_enabled_for = getattr(log, "is_enabled_for", None)
    if is_enabled_for is None:
        return False
    try:
        return bool(is_enabled_for(logging.DEBUG))
    except Exception:
        return False


def _no_layer(conn_id: int) -> str | None:
    return None


class EventHub:
    """Subscribers by connection id (None: every connection), and observers of everything."""

    __slots__ = ("debug", "layer_of", "noting", "observers", "subscribers", "why")

    def __init__(self, debug: bool | None = None) -> None:
        self.subscribers: dict[int | None, list[EventCallback]] = {}
        self.observers: list[Observer] = []
        # the layer an event concerns: the engine sets this (the NIC carrying the connection)
        self.layer_of: Callable[[int], str | None] = _no_layer
        self.debug = _debug_enabled() if debug is None else debug
        # the last reason the stack had to take a connection back, per connection (debug only)
        self.why: dict[int, str] = {}
        # whether anyone hears `note()`: callers skip building the info map when nobody does
        self.noting = self.debug

    def subscribe(self, conn_id: int | None, callback: EventCallback) -> Callable[[], None]:
        self.subscribers.setdefault(conn_id, []).append(callback)

        def unsubscribe() -> None:
            subs = self.subscribers.get(conn_id)
            if subs and callback in subs:
                subs.remove(callback)
                if not subs:
                    del self.subscribers[conn_id]

        return unsubscribe

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Hear every event, the contract's and the others; returns the function that stops it."""
        self.observers.append(observer)
        self.noting = True

        def stop() -> None:
            if observer in self.observers:
                self.observers.remove(observer)
            self.noting = self.debug or bool(self.observers)

        return stop

    def emit(self, conn_id: int, event: str, info: dict[str, Any]) -> None:
        for key in (conn_id, None):
            for cb in list(self.subscribers.get(key, ())):
                try:
                    cb(conn_id, event, info)
                except Exception:
                    log.exception("subscriber_failed", conn=conn_id, event_name=event)
        if self.noting:
            self._noted(conn_id, event, info)
        if event == "closed":
            self.subscribers.pop(conn_id, None)

    def note(self, conn_id: int | None, event: str, info: dict[str, Any]) -> None:
        """An event outside the contract (`connected`, `fault_injected`, `fault_cleared`): for
        observers and the debug log only. Callers check `noting` first."""
        if self.noting:
            self._noted(conn_id, event, info)

    def _noted(self, conn_id: int | None, event: str, info: dict[str, Any]) -> None:
        if self.debug and conn_id is not None:
            self._log(conn_id, event, info)
        for observer in list(self.observers):
            try:
                observer(conn_id, event, info)
            except Exception:
                log.exception("event_observer_failed", conn=conn_id, event_name=event)

    def _log(self, conn_id: int, event: str, info: dict[str, Any]) -> None:
        """One debug line per connection event, with the connection and the layer (faults
        have their own line, from the engine)."""
        name = LOG_NAMES.get(event, "conn_event")
        fields: dict[str, Any] = {"ndis_event": event} if event.startswith("Tcp") else {}
        fields["conn"] = conn_id
        fields["layer"] = self.layer_of(conn_id)
        if event == "TcpIndicateRetrieve":
            self.why[conn_id] = f"TcpIndicateRetrieve {info.get('reason')}"
        elif event == "TcpIndicateAbort" and info.get("path") != "upload":
            self.why[conn_id] = "TcpIndicateAbort"
        elif event == "uploaded":
            fields["why"] = self.why.pop(conn_id, APP_UPLOAD)
        elif event == "closed":
            self.why.pop(conn_id, None)
        for key, value in info.items():
            fields.setdefault(key if key != "event" else "info_event", value)
        log.debug(name, **fields)


__all__ = ["LOG_NAMES", "EventHub", "Observer"]
