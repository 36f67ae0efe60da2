"""The daemon's HTTP side on aiohttp, in the daemon's own event loop: the live web view and
Prometheus `/metrics`.

Pages are static files served from the package (no build step, no network): `/` the topology
with live gauges and the latest events, `/connections` the paged connection list, `/conn/ID` a
connection's live sequence diagram, `/events` the event stream. They fetch JSON (`/api/...`) and
then listen on one WebSocket (`/ws`, see `live.py`) for what changes.

Access follows the RPC port's rules: loopback by default; a token, when the daemon has one, is
required (`config.web_token`): `Authorization: Bearer TOKEN` (Prometheus' `authorization`
setting), or `?token=TOKEN` once in the browser, which leaves a cookie and drops the token from
the address. On loopback without a token the `Host` header must name the loopback address (a
page elsewhere cannot rebind its DNS name onto this port), and the WebSocket only accepts pages
of its own origin.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import structlog
from aiohttp import web

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import http_address, is_loopback, web_token
from chimneyd.observe.metrics import CONTENT_TYPE, Metrics, layer_summary

from .live import LiveHub, StatsSource, conn_row

log = structlog.get_logger("chimneyd.web")

STATIC = resources.files("chimneyd.observe.web") / "static"
COOKIE = "chimneyd_web"
KEEPALIVE_S = 5.0
#: The web side's share of the daemon's stop (`rpc.shutdown_deadline_s`, docs/security.md): at
#: most this, and at most a quarter of the deadline; the rest is the RPC drain's.
STOP_S = 1.0
#: How long a request under way when the daemon stops has to finish (aiohttp's
#: `shutdown_timeout`, waited at most twice); what `stop`'s bound cuts short is aborted anyway.
REQUEST_GRACE_S = 0.25
#: A connection that has not sent a whole request head this long after it opened is closed:
#: an idle or trickling one would otherwise hold one of `web.max_connections` for the
#: keep-alive (docs/security.md, shared capacity).
FIRST_REQUEST_S = 2.0
BACKLOG = 128  # as aiohttp's TCPSite: a browser or a scraper, not a crowd
_REFUSED_BODY = b"too many HTTP connections to chimneyd\n"
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY)
)
#: route -> (the page's <main>, its title, its script, its `data-page`); `layout.html` holds
#: the head and the header bar every page shares
PAGES = {
    "/": ("index.html", "topology", "topology.js", "topology"),
    "/connections": ("connections.html", "connections", "connections.js", "connections"),
    "/events": ("events.html", "events", "events.js", "events"),
    # digits only, as /api/conn/{id}: any other address is not a connection's page (404)
    "/conn/{id:[0-9]+}": ("conn.html", "connection", "sequence.js", "conn"),
}


def render_page(main: str, title: str, script: str, page: str) -> bytes:
    """A whole page: the shared layout around one page's <main>."""
    layout = (STATIC / "layout.html").read_text("utf-8")
    parts = {
        "@TITLE@": title,
        "@SCRIPT@": script,
        "@PAGE@": page,
        "@MAIN@": (STATIC / main).read_text("utf-8"),
    }
    for marker, text in parts.items():
        layout = layout.replace(marker, text)
    return layout.encode("utf-8")


TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    # every script and style is ours; the socket goes back to this origin only
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _digest(token: str) -> str:
    return hashlib.sha256(b"chimneyd-web\0" + token.encode()).hexdigest()


class Guard:
    """Token, Host and Origin checks for one listening address."""

    def __init__(self, token: str, host: str, port: int) -> None:
        self.token = token
        self.host = f"[{host}]" if ":" in host else host
        self.loopback = is_loopback(host)
        self.port = port
        self.hosts: set[str] = set()

    def bound(self, port: int) -> None:
        """The real port (0 was asked): the `Host` values a loopback page may come with."""
        self.port = port
        names = {self.host, "127.0.0.1", "localhost", "[::1]"}
        self.hosts = {f"{h}:{port}" for h in names}
        if port == 80:
            self.hosts |= names

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and self.token_ok(header[7:].strip()):
            return True
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and hmac.compare_digest(cookie, _digest(self.token))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.loopback and not self.token and request.host not in self.hosts:
            return web.Response(status=421, text="wrong Host for this address\n")
        if self.token and not self.authorised(request):
            given = request.query.get("token")
            if not self.token_ok(given):
                return web.Response(
                    status=401,
                    # where the token comes from too: a newcomer's daemon got it from the
                    # variable the README starts it with (chimneyd.daemon.ADMIN_TOKEN_ENV)
                    text="chimneyd: this view needs the daemon's admin token (rpc.admin_token,"
                    " or CHIMNEYD_ADMIN_TOKEN in the daemon's environment; rpc.token when no"
                    " admin token is set): open the page once with ?token=TOKEN added to its"
                    " address (/?token=TOKEN; a cookie keeps it), or send Authorization: Bearer"
                    " TOKEN\n",
                    headers={"WWW-Authenticate": 'Bearer realm="chimneyd"'},
                )
            # keep it in a cookie and take it out of the address bar and history
            query = {k: v for k, v in request.query.items() if k != "token"}
            moved = web.HTTPSeeOther(request.rel_url.with_query(query))
            moved.set_cookie(
                COOKIE, _digest(self.token), httponly=True, samesite="Strict", path="/"
            )
            return moved
        if request.path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and origin not in (
                f"http://{request.host}",
                f"https://{request.host}",
            ):
                return web.Response(status=403, text="cross-origin WebSocket refused\n")
        resp = await handler(request)
        resp.headers.update(SECURITY_HEADERS)
        return resp


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str), status=status, content_type="application/json"
    )


def _int(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(key, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{key} must be an integer\n") from None
    return min(max(value, low), high)


@dataclass(frozen=True, slots=True)
class DaemonView:
    """What the web view of a daemon of several shards asks every shard for (served by shard
    0, docs/metrics.md): the stats summed and the connection list of them all."""

    stats: Callable[[], Awaitable[dict[str, Any]]]
    conns_page: Callable[[int, int], Awaitable[dict[str, Any]]]


def layer_panels(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the topology's layer boxes show (`/api/stats`): each layer's `layer_summary`, and
    a target's `unsent_acks` by kind as it reports them (docs/metrics.md): the ACKs it would
    answer forwarded segments with and cannot send (spec §5.2), not NDIS calls, so not in
    `calls`. A layer that reports none has none here."""
    panels: dict[str, dict[str, Any]] = dict(layer_summary(stats))
    for name, st in (stats.get("layers") or {}).items():
        unsent = st.get("unsent_acks") if isinstance(st, dict) else None
        if isinstance(unsent, dict) and name in panels:
            panels[name] = {**panels[name], "unsent_acks": dict(unsent)}
    return panels


class WebApp:
    """Routes of the web view (and `/metrics`) over one engine."""

    def __init__(
        self,
        engine: Any,
        stats: StatsSource,
        metrics: Metrics,
        config: Any,
        info: Any,
        exposition: Callable[[], Awaitable[bytes]] | None = None,
        daemon: DaemonView | None = None,
    ) -> None:
        self.engine = engine
        self.stats = stats
        self.metrics = metrics
        # `/metrics` of a daemon of several shards: every shard's, asked for at each scrape
        self.exposition = exposition
        # `/api/stats` and `/api/conns` of a daemon of several shards: every shard's, likewise
        self.daemon = daemon
        self.config = config
        self.info_extra = info  # () -> dict: what the daemon adds to `info` (addresses)
        self.hub = LiveHub(engine, stats, config)

    def routes(self, app: web.Application) -> None:
        r = app.router
        for path, parts in PAGES.items():
            r.add_get(path, self._page(render_page(*parts)))
        r.add_get("/static/{name}", self.static)
        r.add_get("/api/info", self.api_info)
        r.add_get("/api/stats", self.api_stats)
        r.add_get("/api/conns", self.api_conns)
        r.add_get("/api/conn/{id}", self.api_conn)
        r.add_get("/ws", self.hub.handle)
        r.add_get("/metrics", self.serve_metrics)

    def _page(self, body: bytes) -> Handler:
        async def page(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type="text/html")

        return page

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        kind = TYPES.get(name[name.rfind(".") :] if "." in name else "")
        if kind is None or "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        path = STATIC / name
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=kind)

    async def api_info(self, request: web.Request) -> web.StreamResponse:
        return _json(
            {
                **self.engine.info(),
                **self.info_extra(),
                "web": {
                    "page_size": self.config.page_size,
                    "push_interval_ms": self.config.push_interval_ms,
                },
            }
        )

    async def api_stats(self, request: web.Request) -> web.StreamResponse:
        if self.daemon is not None:
            try:
                stats = await self.daemon.stats()
            except EngineError as exc:  # a shard did not answer in time
                return _json({"error": exc.message}, 503)
        else:
            stats = self.stats()
        return _json({"layers": layer_panels(stats), "connections": stats.get("connections")})

    async def api_conns(self, request: web.Request) -> web.StreamResponse:
        size = _int(request, "size", self.config.page_size, 1, 1000)
        page = _int(request, "page", 0, 0, 1 << 30)
        if self.daemon is not None:
            try:
                return _json(await self.daemon.conns_page(page, size))
            except EngineError as exc:
                return _json({"error": exc.message}, 503)
        return _json(self.hub.conns_page(page, size))

    async def api_conn(self, request: web.Request) -> web.StreamResponse:
        try:
            conn_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        try:
            hops = self.engine.trace(conn_id, None)
        except EngineError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return _json({"error": exc.message}, 404)
            raise
        return _json({"conn": conn_id, "info": conn_row(self.engine, conn_id), "hops": hops})

    async def serve_metrics(self, request: web.Request) -> web.StreamResponse:
        if self.exposition is not None:
            try:
                body = await self.exposition()
            except EngineError as exc:  # a shard did not answer in time
                return web.Response(status=503, text=f"{exc.message}\n")
        else:
            body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


class ConnectionGate:
    """HTTP connections at once on one address, counted from accept to close: each holds a
    descriptor, and descriptors are what the RPC data path's sockets need too (docs/security.md:
    shared capacity is bounded so that no client can take all of one). Past `limit` a newcomer
    is answered 503 and closed at once."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server = server  # aiohttp's: makes each connection's request handler
        self.limit = limit
        self.open = 0
        self.refused = 0
        self.full = False

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory of the listening socket: called once per accepted connection."""
        if self.open >= self.limit:
            self.refused += 1
            if not self.full:  # once per time it fills: a flood must not flood the log too
                self.full = True
                log.warning("http_connections_full", limit=self.limit)
            return _Refused()
        self.open += 1
        return _Counted(self, self.server())

    def closed(self) -> None:
        self.open -= 1
        if self.open < self.limit:
            self.full = False


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.write(REFUSED)
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's request handler, counted by its gate, and closed if the first request head
    does not come within FIRST_REQUEST_S (aiohttp would wait for the keep-alive)."""

    __slots__ = ("gate", "head", "inner", "timer", "transport")

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head = b""  # the last bytes seen until the head's blank line

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(FIRST_REQUEST_S, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            seen = self.head + data
            if b"\r\n\r\n" in seen:
                self.timer.cancel()
                self.timer = None
                self.head = b""
            else:
                self.head = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None
        self.gate.closed()
        self.inner.connection_lost(exc)


class HttpSite:
    """One listening HTTP address: the web view, or `/metrics` alone."""

    def __init__(
        self,
        app: web.Application,
        guard: Guard,
        host: str,
        port: int,
        reuse_port: bool = False,
        max_connections: int = 128,
    ) -> None:
        self.reuse_port = reuse_port  # a shard's: its supervisor holds the port
        self.max_connections = max_connections
        self.app = app
        self.guard = guard
        self.host = host
        self.port = port
        # an idle keep-alive connection holds a handler task: let a closed page's go soon
        self.runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=KEEPALIVE_S,
            shutdown_timeout=REQUEST_GRACE_S,
        )
        self.address = ""
        self.listener: asyncio.Server | None = None
        self.gate: ConnectionGate | None = None

    async def start(self) -> str:
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        # aiohttp's low-level way to serve (its TCPSite does the same), with the gate between
        # accept and aiohttp's handler
        self.gate = ConnectionGate(server, self.max_connections)
        self.listener = await asyncio.get_running_loop().create_server(
            self.gate.protocol,
            self.host,
            self.port,
            backlog=BACKLOG,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        sockets = self.listener.sockets
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.guard.bound(port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"{host}:{port}"
        return self.address

    async def stop(self, timeout: float) -> None:
        """Stop listening and close every connection, within `timeout`: what is still open
        then (a handler that does not end, a client that does not read) is cut."""
        server = self.runner.server
        if self.listener is not None:
            self.listener.close()  # accept nothing more
            self.listener = None
        try:
            async with asyncio.timeout(timeout):
                await self.runner.cleanup()
        except TimeoutError:
            cut = 0
            for handler in server.connections if server is not None else ():
                if handler.transport is not None:
                    handler.transport.abort()
                    cut += 1
            log.warning("http_stop_cut", address=self.address, connections=cut)


class HttpServers:
    """The web view (`web.listen`) and `/metrics` alone (`metrics.listen`), as configured."""

    def __init__(
        self,
        engine: Any,
        stats: StatsSource,
        metrics: Metrics,
        config: Any,
        exposition: Callable[[], Awaitable[bytes]] | None = None,
        reuse_port: bool = False,
        daemon: DaemonView | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.reuse_port = reuse_port
        self.sites: list[HttpSite] = []
        self.web_address = ""
        self.metrics_address = ""
        self.webapp = WebApp(
            engine, stats, metrics, config.web, self._addresses, exposition, daemon
        )
        self.metrics = metrics

    def _addresses(self) -> dict[str, Any]:
        return {"http": {"web": self.web_address, "metrics": self.metrics_address}}

    def _site(self, addr: str, metrics_only: bool) -> HttpSite:
        key = "metrics.listen" if metrics_only else "web.listen"
        host, port = http_address(key, addr)
        guard = Guard(web_token(self.config.rpc), host, port)
        app = web.Application(middlewares=[guard.middleware], client_max_size=64 * 1024)
        if metrics_only:
            app.router.add_get("/metrics", self.webapp.serve_metrics)
        else:
            self.webapp.routes(app)
        return HttpSite(app, guard, host, port, self.reuse_port, self.config.web.max_connections)

    async def start(self) -> None:
        """Bind what is configured; on a failure, what was bound is closed and it raises."""
        try:
            if self.config.web.listen:
                site = self._site(self.config.web.listen, metrics_only=False)
                self.sites.append(site)
                self.web_address = await site.start()
                log.info("web_listening", url=f"http://{self.web_address}/")
            if self.config.metrics.listen:
                site = self._site(self.config.metrics.listen, metrics_only=True)
                self.sites.append(site)
                self.metrics_address = await site.start()
                log.info("metrics_listening", url=f"http://{self.metrics_address}/metrics")
        except BaseException:
            await self.stop()
            raise

    async def stop(self, deadline: float = 4 * STOP_S) -> None:
        """Close every browser connection and stop listening, within a quarter of the daemon's
        stop `deadline` and at most `STOP_S`."""
        timeout = min(STOP_S, deadline / 4)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        await self.webapp.hub.close(timeout / 2)
        sites, self.sites = self.sites, []
        left = max(end - loop.time(), 0.0)
        await asyncio.gather(*(site.stop(left) for site in sites))


__all__ = ["DaemonView", "HttpServers", "WebApp"]
