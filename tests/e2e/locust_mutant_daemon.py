"""chimneyd with one thing broken on purpose, for the Locust user's own tests: a Locust run
against it must fail. The break is made in this process before the daemon starts (nothing in
chimneyd/ changes), in the RPC method table, which both builds dispatch through (the bytes a
`tcp.recv` answers, or a method's whole answer).

    python tests/e2e/locust_mutant_daemon.py MUTATION --listen 127.0.0.1:0

Each mutation strikes once, at the AT-th event of its kind (env CHIMNEY_MUTANT_AT, default 40),
except `close_leaves`, `offload_off` and `reset_noop`, which act every time.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

AT = int(os.environ.get("CHIMNEY_MUTANT_AT", "40"))


def _on_take(change: Callable[[bytes], bytes]) -> None:
    """The AT-th non-empty `tcp.recv` answer goes through `change(out)`. Made in the method
    table, which both builds dispatch through: in the compiled build the host's receive
    module calls its own functions directly, so replacing one of them there changes nothing."""
    from chimneyd.rpc import methods

    real = methods.METHODS["tcp.recv"]
    taken = 0

    async def recv(c: Any, p: list[Any]) -> Any:
        nonlocal taken
        out = real(c, p)
        if inspect.isawaitable(out):
            out = await out
        if isinstance(out, bytes | bytearray | memoryview) and len(out):
            taken += 1
            if taken == AT:
                return change(bytes(out))
        return out

    methods.METHODS["tcp.recv"] = recv


def _flip(out: bytes) -> bytes:
    b = bytearray(out)
    b[len(b) // 2] ^= 0x01
    return bytes(b)


def _drop(out: bytes) -> bytes:
    """A piece in the middle of the answer is lost (at least one byte)."""
    k = max(1, min(1000, len(out) // 4))
    mid = len(out) // 2
    return out[:mid] + out[mid + k :]


def _drop_tail(out: bytes) -> bytes:
    """The last bytes of the answer are lost (what a lost final segment looks like)."""
    k = max(1, min(1000, len(out) // 4))
    return out[:-k]


def _duplicate(out: bytes) -> bytes:
    """The answer's bytes are delivered twice."""
    return out + out


def _reorder(out: bytes) -> bytes:
    mid = len(out) // 2
    return out[mid:] + out[:mid]


def _nth(method: str, wrap: Callable[[Any, Any, list[Any]], Any]) -> None:
    """The AT-th call of `method` runs `wrap(real, c, p)` instead."""
    from chimneyd.rpc import methods

    real = methods.METHODS[method]
    calls = 0

    def method_(c: Any, p: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == AT:
            return wrap(real, c, p)
        return real(c, p)

    methods.METHODS[method] = method_


def _never(real: Any, c: Any, p: list[Any]) -> asyncio.Future[Any]:
    """Accepted and never answered (no timeout ends it)."""
    return asyncio.get_running_loop().create_future()


def _send_noop(real: Any, c: Any, p: list[Any]) -> asyncio.Future[Any]:
    """Answers success (bytes acknowledged) and sends nothing."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(len(p[1]))
    return fut


def _error(real: Any, c: Any, p: list[Any]) -> Any:
    raise RuntimeError("mutant: a bug in the daemon")


def _crash(real: Any, c: Any, p: list[Any]) -> Any:
    os._exit(70)


def _recv_eof(real: Any, c: Any, p: list[Any]) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(b"")
    return fut


def _close_leaves() -> None:
    """`tcp.close` answers True, forgets the connection's owner, and leaves it open."""
    from chimneyd.rpc import methods

    async def tcp_close(c: Any, p: list[Any]) -> bool:
        conn = methods._conn(c, p[0])
        c.ownership.conn_closed(conn)
        return True

    methods.METHODS["tcp.close"] = tcp_close


def _soak_mutation(name: str) -> Callable[[], None]:
    def apply() -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "soak"))
        import mutant_daemon  # type: ignore[import-not-found]

        mutant_daemon.MUTATIONS[name]()

    return apply


MUTATIONS: dict[str, Callable[[], None]] = {
    "none": lambda: None,
    "flip_byte": lambda: _on_take(_flip),
    "drop_bytes": lambda: _on_take(_drop),
    "drop_tail": lambda: _on_take(_drop_tail),
    "duplicate_chunk": lambda: _on_take(_duplicate),
    "reorder": lambda: _on_take(_reorder),
    "send_noop": lambda: _nth("tcp.send", _send_noop),
    "recv_hang": lambda: _nth("tcp.recv", _never),
    "send_hang": lambda: _nth("tcp.send", _never),
    "send_error": lambda: _nth("tcp.send", _error),
    "recv_eof": lambda: _nth("tcp.recv", _recv_eof),
    "crash": lambda: _nth("tcp.send", _crash),
    "close_leaves": _close_leaves,
    "offload_off": _soak_mutation("offload_off"),
    "reset_noop": _soak_mutation("reset_noop"),
}


def main() -> int:
    name, argv = sys.argv[1], sys.argv[2:]
    MUTATIONS[name]()
    from chimneyd.daemon import main as daemon_main

    return daemon_main(argv)


if __name__ == "__main__":
    sys.exit(main())
