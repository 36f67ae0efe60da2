"""Where the shards listen: one RPC address, the kernel handing each new client to one shard
(design: scale; docs/architecture.md "Scale" says why this way).

- TCP: every shard binds the same host:port with `SO_REUSEPORT`; the kernel hashes each new
  connection to one shard's listening socket (each shard has its own accept queue). The
  supervisor picks the port once (port 0 included) and holds it with a socket that is bound,
  never listening, so the port stays ours while a shard restarts: it binds first *without*
  `SO_REUSEPORT` — which fails if anyone holds the port, a sharded daemon included — and only
  then turns the option on for the shards to join.
- Unix sockets (no `SO_REUSEPORT` there): the supervisor creates the listening socket once
  (mode, stale-socket check and removal at exit as `rpc.unix`), and every shard inherits it and
  accepts on it: one accept queue shared by all, the kernel giving each connection to the shard
  that accepts first — the classic pre-fork way.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field

from chimneyd.config import ConfigError, http_address, parse_listen, unix_mode
from chimneyd.rpc.server import BACKLOG
from chimneyd.rpc.unix import BoundUnixSocket, bind_unix


@dataclass
class Reservation:
    """What the supervisor holds for its shards: the TCP ports (bound, not listening) and the
    unix listening sockets, by the address shards use."""

    tcp: list[tuple[str, socket.socket]] = field(default_factory=list)  # "host:port" → holder
    unix: list[tuple[str, BoundUnixSocket]] = field(default_factory=list)  # "unix:/p" → socket
    http: list[socket.socket] = field(default_factory=list)  # the web view's and /metrics' ports

    @property
    def addresses(self) -> list[str]:
        """The RPC addresses, as shards bind them and as the daemon reports them."""
        return [a for a, _ in self.tcp] + [a for a, _ in self.unix]

    def unix_fds(self) -> dict[str, int]:
        return {addr: bound.sock.fileno() for addr, bound in self.unix}

    def close(self) -> None:
        """Release the ports and remove the unix socket paths that are still ours."""
        for sock in [s for _, s in self.tcp] + self.http:
            sock.close()
        for _, bound in self.unix:
            bound.unlink_if_ours()
            bound.sock.close()
        self.tcp.clear()
        self.unix.clear()
        self.http.clear()


def reserve(listen: tuple[str, ...], unix_socket_mode: str) -> Reservation:
    """Hold every RPC address for the shards. Raises OSError (what was held is released)."""
    held = Reservation()
    try:
        for addr in listen:
            target = parse_listen(addr)
            if isinstance(target, str):
                bound = bind_unix(target, unix_mode(unix_socket_mode), BACKLOG)
                held.unix.append((f"unix:{target}", bound))
            else:
                held.tcp.extend(hold_port(*target))
    except BaseException:
        held.close()
        raise
    return held


def reserve_http(held: Reservation, key: str, addr: str) -> str:
    """Hold the web view's (or /metrics') port for the shard that serves it; its address."""
    host, port = http_address(key, addr)
    got = hold_port(host, port)
    held.http.extend(s for _, s in got)
    return got[0][0]


def hold_port(host: str, port: int) -> list[tuple[str, socket.socket]]:
    """Bind `host:port` (every address `host` resolves to; port 0: one free port for all of
    them) so that nobody else can, then allow our shards to join it with `SO_REUSEPORT`."""
    infos = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    out: list[tuple[str, socket.socket]] = []
    try:
        seen: set[tuple[int, str]] = set()
        for family, kind, proto, _, sockaddr in infos:
            ip = str(sockaddr[0])
            if (family, ip) in seen:
                continue
            seen.add((family, ip))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                # without SO_REUSEPORT: this bind fails if any socket holds the port (another
                # daemon, sharded or not), so our shards never join someone else's group
                sock.bind((ip, port, *sockaddr[2:]))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            except BaseException:
                sock.close()
                raise
            bound = sock.getsockname()
            port = port or bound[1]
            shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
            out.append((f"{shown}:{bound[1]}", sock))
    except BaseException:
        for _, sock in out:
            sock.close()
        raise
    if not out:
        raise OSError(f"{host}: no address to listen on")
    return out


def shard_socket(addr: str) -> socket.socket:
    """A shard's own listening socket on a TCP address the supervisor holds (joins its
    `SO_REUSEPORT` group)."""
    target = parse_listen(addr)
    if isinstance(target, str):
        raise ConfigError(f"rpc.listen: {addr}: a unix socket is inherited, not bound")
    host, port = target
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    return sock


__all__ = ["Reservation", "hold_port", "reserve", "reserve_http", "shard_socket"]
