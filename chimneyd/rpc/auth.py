"""Token checks, and a bound on how fast any one peer address may guess.

`token` gates the port (only `ping` and `auth` are open before it); `admin_token` alone does not
gate it, it lifts ownership for whoever presents it. Tokens are compared in constant time.

Failed attempts are limited per peer address with a token bucket: `per_peer` failures at once,
refilled over `window_s`. Past it, `auth` from that address is refused without looking at the
token, so a guesser cannot go faster by opening more connections. The cost: every client on
the same address (all local clients share 127.0.0.1) is refused auth too until the bucket
refills; a correct token is never learned faster than the refill rate.
"""

from __future__ import annotations

import enum
import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from chimneyd.api import EngineError, ErrorCode

MAX_PEERS_TRACKED = 4096  # peer addresses with recent failures kept; the oldest are forgotten


class Role(enum.Enum):
    USER = "user"
    ADMIN = "admin"


class Authenticator:
    """Checks tokens for every session of one server; keeps the per-peer failure buckets."""

    def __init__(
        self,
        token: str,
        admin_token: str,
        per_peer: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token.encode("utf-8", "surrogateescape")
        self._admin = admin_token.encode("utf-8", "surrogateescape")
        self.capacity = float(per_peer)
        self.refill_per_s = per_peer / window_s
        self.clock = clock
        # peer → (failures it may still make, when that was computed)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def required(self) -> bool:
        """Whether clients must authenticate before anything but `ping` and `auth`."""
        return bool(self._token)

    def verify(self, peer: str, given: str) -> Role:
        """The role `given` grants, or DENIED (a failure, counted against `peer`)."""
        left = self._left(peer)
        if left < 1.0:
            wait = math.ceil((1.0 - left) / self.refill_per_s)
            raise EngineError(
                ErrorCode.DENIED,
                f"too many failed auth attempts from this address; try again in {wait} s",
            )
        raw = given.encode("utf-8", "surrogateescape")
        if self._admin and hmac.compare_digest(raw, self._admin):
            return Role.ADMIN
        if self._token and hmac.compare_digest(raw, self._token):
            return Role.USER
        if not self._token and not self._admin:
            return Role.USER  # nothing to check against: auth is a no-op
        self._buckets[peer] = (left - 1.0, self.clock())
        self._buckets.move_to_end(peer)
        while len(self._buckets) > MAX_PEERS_TRACKED:
            self._buckets.popitem(last=False)
        raise EngineError(ErrorCode.DENIED, "bad token")

    def _left(self, peer: str) -> float:
        entry = self._buckets.get(peer)
        if entry is None:
            return self.capacity
        left, stamp = entry
        left = min(self.capacity, left + (self.clock() - stamp) * self.refill_per_s)
        if left >= self.capacity:
            del self._buckets[peer]  # back to full: nothing to remember
        return left


__all__ = ["MAX_PEERS_TRACKED", "Authenticator", "Role"]
