"""When a client has taken too long: the rules, as one pure function the server's sweep applies.

- unauthenticated: a token is set and the client has not authenticated `auth_timeout_s` after it
  connected (it holds a slot of `max_clients` and can do nothing else);
- partial frame: a frame was begun and not finished within `frame_timeout_s` (its bytes are held
  meanwhile; the clock stops while the server itself is not reading the client);
- idle: the client holds nothing (no connection, listener, subscription, request in flight) and
  sent nothing for `idle_timeout_s`. A client that holds something is never closed for idling:
  closing it would close its connections, and the limits on what it holds already bound it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Deadlines:
    auth_timeout_s: float
    idle_timeout_s: float
    frame_timeout_s: float

    @property
    def sweep_every_s(self) -> float:
        """How often to look: a quarter of the shortest deadline, at most a second."""
        return min(1.0, self.auth_timeout_s / 4, self.idle_timeout_s / 4, self.frame_timeout_s / 4)


@dataclass(slots=True)
class ClientClock:
    """The times a sweep needs about one client (loop time, seconds)."""

    connected_at: float
    last_heard: float  # bytes last arrived from it
    partial_since: float | None = None  # a partial frame began (None: none, or not reading)


def overdue(
    d: Deadlines, c: ClientClock, now: float, authed: bool, holds_nothing: bool
) -> str | None:
    """Why the client must be closed now, or None."""
    if not authed and now - c.connected_at > d.auth_timeout_s:
        return "not authenticated in time"
    if c.partial_since is not None and now - c.partial_since > d.frame_timeout_s:
        return "a frame not completed in time"
    if holds_nothing and now - c.last_heard > d.idle_timeout_s:
        return "idle"
    return None


__all__ = ["ClientClock", "Deadlines", "overdue"]
