"""The soak's side of an echo peer's control port (see `echo_peer`): reset orders.

Kept apart from the peer itself so that importing the soak does not import the peer, which runs
as `python -m chimney_client.soak.echo_peer`."""

from __future__ import annotations

import asyncio


class PeerControl:
    """The soak's side of one peer's control port (one connection, one request at a time)."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self._lock = asyncio.Lock()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def reset(self, port: int, timeout: float = 10.0) -> dict[str, int]:
        """Ask the peer to reset the connection whose remote port is `port`; returns its
        `received` and `delivered` counts. Raises LookupError if it has no such connection."""
        async with self._lock, asyncio.timeout(timeout):
            if self._stream is None:
                self._stream = await asyncio.open_connection(*self.address)
            reader, writer = self._stream
            writer.write(f"reset {port}\n".encode())
            words = (await reader.readline()).decode().split()
        if not words or words[0] != "ok":
            raise LookupError(f"peer {self.address[0]}:{self.address[1]}: {' '.join(words)}")
        return {k: int(v) for k, _, v in (w.partition("=") for w in words[2:])}

    async def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None
