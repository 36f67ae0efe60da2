"""The msgpack-RPC server: listens on the configured addresses and serves `Session`s.

It owns what is shared by every client: the `Ownership` maps, the `Authenticator` (with its
per-peer failure buckets), the daemon-wide `FrameBudget`, the admission of new clients
(`max_clients`) and the sweep that closes clients past their deadlines (`deadlines`).
Shutdown is `stop_accepting` then `drain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from chimneyd.api import ClusterAPI, EngineAPI, EngineError
from chimneyd.config import RpcConfig, check_listen, is_loopback, parse_listen, unix_mode

from .auth import Authenticator
from .deadlines import Deadlines, overdue
from .frame_budget import FrameBudget
from .methods import METHODS, Method
from .ownership import Ownership
from .session import Session
from .unix import BoundUnixSocket, bind_unix

log = structlog.get_logger("chimneyd.rpc")

BACKLOG = 4096  # perf-notes: past ~4096 unaccepted connects the accept queue overflows
EVICT_GRACE_S = (
    1.0  # at max_clients, a newcomer may evict a client idle (holding nothing) this long
)
#: The defaults of `rpc.client_lines_per_window` and `rpc.client_lines_window_s`: the first
#: this many clients of a window have their own lines at info (`rpc_client_connected`,
#: `rpc_client_disconnected`); later ones at debug, summed up at info when the window ends
#: (`rpc_clients`). A client by hand is logged as ever; a soak of 10,000 clients or a
#: `chimneyctl` loop is not two lines a client (`ClientLines`).
CLIENT_LINES_PER_WINDOW = RpcConfig().client_lines_per_window
CLIENT_LINES_WINDOW_S = RpcConfig().client_lines_window_s


class ClientLines:
    """How the RPC clients are logged, and counted for the summaries.

    A window opens with the first client (or refusal) after the last one closed and lasts
    `window_s`. Its first `per_window` clients are logged at info, connection and departure;
    the rest at debug, and when the window ends, if any was, one info line sums the window up:
    `rpc_clients` (connected, left, refused, logged at debug, peak, clients now). The stop
    logs `rpc_clients_served` for the server's whole life. What an operator needs whatever the
    rate stays a line of its own: evictions, timeouts, auth failures (warnings), and a client
    that ends in an error (its departure at info). Refusals (`rpc_client_refused`) are
    warnings for the first `per_window` of a window, then debug lines counted in its summary:
    a client loop against a full daemon would be a warning a connect. A client refused because
    the server is stopping has no line of its own: it spends none of that budget (a server
    started again, or full in the same window, warns from its first refusal as ever), and is
    counted in `refused` and in `stopping_refused` of the summaries.

    Every count goes to the window open when it happens: a departure logged at info while no
    window is open (its client's window ended) opens none and is counted in the life's
    summary only, not in a later window's `left` (whose clients had not left)."""

    def __init__(self, clients: Callable[[], int], per_window: int, window_s: float) -> None:
        self.clients = clients  # how many are connected now
        self.per_window = per_window
        self.window_s = window_s
        self.window_end: float | None = None  # loop time the open window ends; None: none open
        self._timer: asyncio.TimerHandle | None = None
        self.window = self._zero()
        self.life = self._zero()
        # a client logged at debug left in the window: it is summed up too (`departed`)
        self.quiet_left = False
        # a refusal of the window was logged at debug (`refused`): it is summed up too
        self.quiet_refused = False
        # refusals of the window that had a warning of their own: the budget of `refused`
        self.warned = 0
        self.stopped = False

    @staticmethod
    def _zero() -> dict[str, int]:
        return {
            "connected": 0,
            "left": 0,
            "refused": 0,
            "stopping_refused": 0,
            "at_debug": 0,
            "peak": 0,
        }

    def _open(self) -> None:
        if self.window_end is None and not self.stopped:
            loop = asyncio.get_running_loop()
            self.window_end = loop.time() + self.window_s
            self._timer = loop.call_later(self.window_s, self.end_window)
            self.window["peak"] = self.clients()

    def arrived(self) -> bool:
        """A client admitted (already counted in `clients()`): whether its own lines go at
        info."""
        self._open()
        now = self.clients()
        for c in (self.window, self.life):
            c["connected"] += 1
            c["peak"] = max(c["peak"], now)
        loud = self.window["connected"] <= self.per_window
        if not loud:
            self.window["at_debug"] += 1
            self.life["at_debug"] += 1
        return loud

    def departed(self, quiet: bool) -> None:
        """A client left; `quiet`: its lines went at debug. Its departure may come windows
        after its arrival (a soak's clients connect in a burst and leave minutes later): it
        opens a window, whose summary counts it, or it would show at info only at the stop."""
        if quiet:
            self._open()
            self.quiet_left = True
        if self.window_end is not None:  # else no window: its own line at info says it
            self.window["left"] += 1
        self.life["left"] += 1

    def refused(self, stopping: bool = False) -> bool:
        """A client refused: whether its `rpc_client_refused` line goes at warning. The first
        `per_window` of a window do; later ones (a client loop against a full daemon) go at
        debug, counted in the window's summary, which they make due. One refused because the
        server is `stopping` has no line: it is counted, and spends nothing of the budget."""
        self._open()
        for c in (self.window, self.life):
            c["refused"] += 1
            if stopping:
                c["stopping_refused"] += 1
        if stopping:
            self.quiet_refused = True
            return False
        self.warned += 1
        loud = self.warned <= self.per_window
        if not loud:
            self.quiet_refused = True
        return loud

    def end_window(self) -> None:
        """The window ends (its timer; a test at will): summed up if some of its clients were
        logged at debug only, arriving, leaving or refused."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self.window_end = None
        window, self.window = self.window, self._zero()
        quiet = self.quiet_left or self.quiet_refused
        self.quiet_left = self.quiet_refused = False
        self.warned = 0
        if window["at_debug"] or quiet:
            log.info("rpc_clients", **window, clients=self.clients(), window_s=self.window_s)

    def stop(self) -> None:
        """At the server's stop: the open window's summary, then the life's."""
        if self.stopped:
            return
        self.stopped = True
        if self._timer is not None:
            self.end_window()
        life = dict(self.life)
        life["served"] = life.pop("connected")
        log.info("rpc_clients_served", **life)


class RpcServer:
    """The RPC port of one daemon."""

    def __init__(
        self, engine: EngineAPI, config: RpcConfig, cluster: ClusterAPI | None = None
    ) -> None:
        """`cluster`: the daemon's other shards, when this server is one shard's (then
        `stack.*` and `fault.*` answer for all of them: `sharded`)."""
        self.engine = engine
        self.config = config
        self.cluster = cluster
        self.methods: dict[str, Method] = METHODS
        if cluster is not None:
            from .sharded import SHARDED_METHODS, ShardParts

            self.methods = SHARDED_METHODS
            self.parts = ShardParts(cluster.index, engine, self)
        self.ownership = Ownership()
        self.auth = Authenticator(
            config.token,
            config.admin_token,
            config.auth_failures_per_peer,
            config.auth_failure_window_s,
        )
        self.budget: FrameBudget[Session] = FrameBudget(config.max_buffered_frame_bytes)
        self.deadlines = Deadlines(
            config.auth_timeout_s, config.idle_timeout_s, config.frame_timeout_s
        )
        self.sessions: set[Session] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.addresses: list[str] = []
        self.unix_sockets: list[BoundUnixSocket] = []
        self.cleanups: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self._sweep: asyncio.TimerHandle | None = None
        self.client_lines = ClientLines(
            lambda: len(self.sessions), config.client_lines_per_window, config.client_lines_window_s
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        # the clock of every deadline; a builtin, read once per read from a client
        self.now: Callable[[], float] = time.monotonic
        # the owner maps are sized for the peak of a soak: trim them with the engine's tables
        for holder in (self, self.ownership, self.budget):
            engine.keep_lean(holder)

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> list[str]:
        """Bind every address; returns them as bound (the real port where 0 was asked).
        Raises `ConfigError` for an address off loopback without a token, OSError if a bind
        fails or a live server answers on a unix socket path (what was bound is closed).

        `sockets`: listening sockets made elsewhere, by address — a shard's (its own
        `SO_REUSEPORT` socket, or the unix socket its supervisor made and removes)."""
        check_listen(self.config.listen, self.config.token)
        self.stopping = False
        loop = self._loop = asyncio.get_running_loop()
        try:
            for addr in self.config.listen:
                target = parse_listen(addr)
                given = (sockets or {}).get(addr)
                if given is not None:
                    server = await self._serve_on(given, isinstance(target, str))
                    self.addresses.append(addr)
                elif isinstance(target, str):
                    bound = bind_unix(target, unix_mode(self.config.unix_socket_mode), BACKLOG)
                    self.unix_sockets.append(bound)  # its path is ours to remove from now on
                    try:
                        server = await loop.create_unix_server(
                            lambda: Session(self), sock=bound.sock, backlog=BACKLOG
                        )
                    except BaseException:
                        bound.sock.close()  # once served, the server closes it, not us
                        raise
                    self.addresses.append(f"unix:{target}")
                else:
                    host, port = target
                    if not is_loopback(host):
                        # check_listen let it through, so a token protects it
                        log.warning(
                            "rpc_token_over_plain_tcp",
                            listen=addr,
                            hint="the token and all traffic cross the network in clear text;"
                            " put the port behind TLS or a tunnel, or keep it on loopback",
                        )
                    server = await loop.create_server(
                        lambda: Session(self), host, port, backlog=BACKLOG, reuse_address=True
                    )
                    for sock in server.sockets:
                        name = sock.getsockname()
                        h = name[0] if ":" not in name[0] else f"[{name[0]}]"
                        self.addresses.append(f"{h}:{name[1]}")
                self.servers.append(server)
        except BaseException:
            await self.stop_accepting()
            raise
        log.info("rpc_listening", listen=self.addresses)
        return self.addresses

    async def _serve_on(self, sock: socket.socket, unix: bool) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        if unix:
            return await loop.create_unix_server(lambda: Session(self), sock=sock, backlog=BACKLOG)
        return await loop.create_server(lambda: Session(self), sock=sock, backlog=BACKLOG)

    # -- what sessions use (session.Server) -------------------------------------------------------
    def admit(self, session: Session) -> bool:
        """A new client: in, unless the daemon is stopping or full. When full, the client idle
        longest among those holding nothing makes room, if there is one (so idle sockets cannot
        lock everyone out); otherwise the newcomer is refused."""
        if self.stopping:
            self.client_lines.refused(stopping=True)
            return False
        if len(self.sessions) >= self.config.max_clients and not self._evict_one():
            # past the window's first few, at debug: a client loop against a full daemon is
            # summed up (`ClientLines`), not a warning a connect
            loud = self.client_lines.refused()
            (log.warning if loud else log.debug)(
                "rpc_client_refused", client=session.peer, clients=len(self.sessions)
            )
            return False
        self.sessions.add(session)
        if self._sweep is None:
            self._arm_sweep()
        return True

    def _evict_one(self) -> bool:
        now = self.now()
        idle = [
            s
            for s in self.sessions
            if not s.closing
            and s.in_flight == 0
            and s.wide_in_flight == 0  # not counted in in_flight, but waiting all the same
            and s.holdings.holds_nothing()
            and now - s.clock.last_heard >= EVICT_GRACE_S
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.clock.last_heard)
        victim.drop("rpc_client_evicted", idle_s=round(now - victim.clock.last_heard, 3))
        self.left(victim)  # its place is free now, not when its transport says so
        return True

    def loud_client(self) -> bool:
        """A client just admitted: whether its own log lines go at info (`ClientLines`)."""
        return self.client_lines.arrived()

    def left(self, session: Session) -> None:
        if session in self.sessions:  # once per client (an evicted one leaves twice)
            self.client_lines.departed(quiet=not session.loud)
        self.sessions.discard(session)
        self.budget.release(session)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "listen": list(self.addresses),
            "auth": bool(c.token or c.admin_token),
            "limits": {
                "max_message_bytes": c.max_message_bytes,
                "max_in_flight": c.max_in_flight,
                "max_connections_per_client": c.max_connections_per_client,
                "max_listeners_per_client": c.max_listeners_per_client,
                "max_clients": c.max_clients,
                "max_buffered_frame_bytes": c.max_buffered_frame_bytes,
                "auth_timeout_s": c.auth_timeout_s,
                "idle_timeout_s": c.idle_timeout_s,
                "frame_timeout_s": c.frame_timeout_s,
                "max_auth_failures": c.max_auth_failures,
            },
        }

    def rpc_stats(self) -> dict[str, Any]:
        return {
            "clients": len(self.sessions),
            "in_flight": sum(s.in_flight for s in self.sessions),
            "buffered_frame_bytes": self.budget.total,
        }

    def background(self, work: Awaitable[Any]) -> None:
        """Clean-up work that belongs to no request; awaited by `drain`."""

        async def run() -> None:
            with contextlib.suppress(EngineError):
                await work

        task = asyncio.get_running_loop().create_task(run())
        self.cleanups.add(task)
        task.add_done_callback(self.cleanups.discard)

    # -- deadlines -------------------------------------------------------------------------------
    def _arm_sweep(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        self._sweep = loop.call_later(self.deadlines.sweep_every_s, self.sweep)

    def sweep(self) -> None:
        """Close every client past a deadline; runs only while there are clients (an idle
        daemon has no timer)."""
        self._sweep = None
        now = self.now()
        for s in list(self.sessions):
            why = overdue(self.deadlines, s.clock, now, s.authed, _holds_nothing(s))
            if why is not None:
                s.drop("rpc_client_timed_out", why=why)
                self.left(s)
        if self.sessions:
            self._arm_sweep()

    # -- shutdown --------------------------------------------------------------------------------
    async def stop_accepting(self) -> None:
        """Close the listening sockets (new clients are refused); existing clients stay. A unix
        socket path is removed only while it is still the socket this server created."""
        self.stopping = True
        servers, self.servers = self.servers, []
        for server in servers:
            server.close()
        for bound in self.unix_sockets:
            if not bound.unlink_if_ours():
                log.info("rpc_unix_socket_left", path=bound.path, why="not ours any more")
        self.unix_sockets = []

    async def drain(self, deadline: float) -> int:
        """Stop reading requests, let those in flight finish within `deadline` seconds, cancel
        the rest (answered TIMEOUT), close every client. Returns how many were cancelled.
        Every request read is answered: the requests running are taken again until none is
        left or the deadline comes (one may have started after the drain began), and the last
        ones are cancelled just before the clients are closed."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline  # one deadline for all of it, never one per step
        sessions = list(self.sessions)
        for session in sessions:
            if session.transport is not None and not session.closing:
                session.transport.pause_reading()

        def running() -> list[asyncio.Future[Any]]:
            return [t for s in sessions for t in s.tasks if not t.done()]

        while (tasks := running()) and (left := end - loop.time()) > 0:
            await asyncio.wait(tasks, timeout=left)
        pending = running()
        for task in pending:
            task.cancel()
        cancelled = len(pending)
        if pending:
            # let the cancellations run, so their clients get a TIMEOUT answer first
            await asyncio.wait(pending, timeout=min(1.0, deadline))
        for session in sessions:
            session.close()
        await asyncio.sleep(0)  # let the transports write what close() flushed
        # a closed transport still writes what it holds, up to many answers of a client that
        # read slowly: the daemon exiting meanwhile would lose them. Wait for it (a client
        # leaves `sessions` when its transport is done), within the deadline
        while any(s in self.sessions for s in sessions) and loop.time() < end:
            await asyncio.sleep(0.01)
        if self.cleanups:
            await asyncio.wait(list(self.cleanups), timeout=max(0.0, end - loop.time()))
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.client_lines.stop()
        return cancelled


def _holds_nothing(s: Session) -> bool:
    return s.in_flight == 0 and s.wide_in_flight == 0 and s.holdings.holds_nothing()


__all__ = ["BACKLOG", "RpcServer", "Session"]
