"""The daemon's configuration: a TOML file (stdlib `tomllib`) or the embedded default.

Every setting has a documented default; a bad file is refused at start with the key and the
reason (`ConfigError('layer[1].lower: no layer named "nic9"')`).

Longer than most modules because every key is defined here, once, with its default, its bounds
and its check.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:7411"
INT_MAX = (1 << 31) - 1  # no integer setting goes past it (each has its own bound in LIMITS)
LAYER_KINDS = ("host", "passthrough", "mux", "target")
#: The MUX's placement policies (drivers/mux/placement.py says what each does).
MUX_POLICIES = ("active-standby", "round-robin", "least-loaded", "least-bytes", "hash")
DEFAULT_POLICY = "least-loaded"
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


MiB = 1024 * 1024
GiB = 1024 * MiB

#: Every numeric setting's range, `section.key` → (lowest, highest), both allowed; the same
#: for each `[[layer]]` (docs/configuration.md lists them). A value past either end is refused
#: with the key, as nan and infinity are: a deadline of 1e300 s would make a shutdown with a
#: read in flight never end, a tick of 1e-300 s a busy loop. The upper ends are far above any
#: real use; they exist so that a typo fails `--check-config` instead of the daemon.
LIMITS: dict[str, tuple[int, int] | tuple[float, float]] = {
    # rpc: a frame must hold a request; past 1 GiB one client could hold the machine's memory
    "rpc.max_message_bytes": (1024, GiB),
    "rpc.max_in_flight": (1, 65536),
    "rpc.max_connections_per_client": (1, 1_000_000),  # past the open-file limit anyway
    "rpc.max_listeners_per_client": (1, 65536),
    "rpc.max_clients": (1, 1_000_000),
    "rpc.shutdown_deadline_s": (0.1, 3600.0),
    "rpc.auth_timeout_s": (0.1, 3600.0),
    # the deadline checker ticks at a quarter of the shortest timeout (rpc/deadlines.py)
    "rpc.idle_timeout_s": (0.1, 86400.0),
    "rpc.frame_timeout_s": (0.1, 3600.0),
    "rpc.max_buffered_frame_bytes": (1, INT_MAX),  # and at least rpc.max_message_bytes
    "rpc.max_auth_failures": (1, 1000),
    "rpc.auth_failures_per_peer": (1, 1_000_000),
    "rpc.auth_failure_window_s": (0.1, 86400.0),
    # 0: every client at debug, summed up; a window of a day at most, so a summary still comes
    "rpc.client_lines_per_window": (0, 1_000_000),
    "rpc.client_lines_window_s": (1.0, 86400.0),
    "engine.trace_depth": (1, 1_000_000),
    # TCP's largest window (RFC 7323 window scaling) is 1 GiB: the delegated RcvWnd cannot say more
    "engine.rx_buffer_bytes": (1, GiB),
    "engine.push_ticks_ms": (1, 60_000),  # spec §4.2
    "engine.nce_stale_ms": (1, 3_600_000),  # spec §5.4
    "engine.user_timeout_ms": (0, 86_400_000),  # spec §8; 0: the kernel's own
    "engine.max_queued_send_bytes": (1, GiB),
    "engine.max_pending_accepts": (1, 65535),  # as the kernel's own somaxconn
    "web.push_interval_ms": (50, 60_000),  # a browser cannot show faster than ~20 pushes a second
    "web.page_size": (1, 1000),  # what a page request may ask for at most (web/server.py)
    "web.max_clients": (1, 1024),
    "web.max_watched": (1, 4096),
    # and at least web.max_clients (WebConfig); more would be most of a common open-file limit
    "web.max_connections": (1, 16384),
    "metrics.probe_interval_ms": (10, 60_000),
    "daemon.shards": (1, INT_MAX),  # then at most SHARDS_PER_CPU per CPU (_check_daemon)
    "daemon.control_timeout_s": (0.1, 600.0),
    # shards report every second (shards.cluster.COUNTS_INTERVAL_S): a few seconds at least, so
    # that a shard late on a loaded machine is not taken for hung; a day in effect turns it off
    "daemon.heartbeat_timeout_s": (5.0, 86400.0),
    "layer.max_connections": (1, 1_000_000),
}


def _q(name: str) -> str:
    """A name quoted for a message: `"nic9"` (JSON quoting, so odd characters stay visible)."""
    return json.dumps(name)


class ConfigError(ValueError):
    """A configuration the daemon refuses; the message names the key and the reason."""


@dataclass(frozen=True, slots=True)
class RpcConfig:
    """The RPC port and the limits that keep one client from harming the others
    (docs/security.md says why each exists)."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)  # "host:port" or "unix:/path"
    token: str = ""  # required first (`auth`) when set; needed to listen off loopback
    admin_token: str = ""  # a client that authenticates with it sees every connection
    max_message_bytes: int = 8 * 1024 * 1024
    max_in_flight: int = 256  # requests per client answered concurrently; more get LIMIT
    max_connections_per_client: int = 10_000  # made, being made, or waiting on its listeners
    max_listeners_per_client: int = 1024
    max_clients: int = 1024
    shutdown_deadline_s: float = 10.0
    # clients that never finish
    auth_timeout_s: float = 10.0  # with a token: closed if not authenticated by then
    idle_timeout_s: float = 300.0  # closed if holding nothing and silent this long
    frame_timeout_s: float = 30.0  # a frame begun must be complete within this
    # bytes in all clients' unfinished frames; past it the client holding the largest is dropped
    max_buffered_frame_bytes: int = 128 * 1024 * 1024
    # guessing tokens
    max_auth_failures: int = 3  # wrong tokens on one connection before it is closed
    auth_failures_per_peer: int = 20  # wrong tokens one peer address may send per window
    auth_failure_window_s: float = 60.0
    unix_socket_mode: str = "0600"  # octal: who may connect to a unix socket listener
    # the log lines of RPC clients (rpc/server.py `ClientLines`): the first this many of a
    # window are logged at info, the rest at debug and summed up when the window ends
    client_lines_per_window: int = 10
    client_lines_window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "auto"  # auto: JSON lines when not on a terminal, console on a terminal
    level: str = "info"
    file: str = ""  # log to this file instead of stderr; SIGHUP reopens it


@dataclass(frozen=True, slots=True)
class EngineConfig:
    trace_depth: int = 64  # hop records kept per connection
    rx_buffer_bytes: int = 256 * 1024  # received bytes held per connection before back-pressure
    push_ticks_ms: int = 500  # the target's push timer (spec §4.2)
    # a neighbor nobody has heard from this long is queried before a send (spec §5.4)
    nce_stale_ms: int = 15_000
    invariants: bool = False  # the spec §9 invariant checker
    # the host uploads a connection when the target asks for an optional reason (spec §5.2)
    honor_optional_retrieve: bool = True
    # TCP_USER_TIMEOUT on offloaded sockets (ms): the retransmit / zero-window probe limit of
    # spec §8 (TcpMaximumRetransmissions); 0 leaves the kernel's own
    user_timeout_ms: int = 0
    # bytes of `tcp.send`s one connection may have unanswered (queued, in flight, unacknowledged);
    # a send that would pass it is answered LIMIT before anything of it is queued
    max_queued_send_bytes: int = 16 * 1024 * 1024
    # connections a listener holds accepted but not taken by `tcp.accept`; past it new ones are
    # reset (RST) and counted in stack.stats `engine.pending_overflows`
    max_pending_accepts: int = 1024


MAX_WEB_CONNECTIONS = int(LIMITS["web.max_connections"][1])


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The live web view (`--web ADDR`): topology, connections, sequence diagrams, events."""

    listen: str = ""  # "host:port"; empty: off. Off loopback it needs rpc.token (see web_token)
    push_interval_ms: int = 1000  # stats and the shown connections page, pushed while watched
    page_size: int = 100  # connections per page (paged on the server: thousands stay light)
    max_clients: int = 32  # browser connections (WebSockets) at once; more are refused
    max_watched: int = 64  # connections whose hops are pushed live at once
    # HTTP connections at once per address (WebSockets included): each is a descriptor the
    # RPC data path shares (docs/security.md); past it a newcomer is closed at once
    max_connections: int = 128

    def __post_init__(self) -> None:
        if not self.max_clients <= self.max_connections <= MAX_WEB_CONNECTIONS:
            raise ConfigError(
                f"web.max_connections: must be from web.max_clients ({self.max_clients}: a"
                f" page's WebSocket is an HTTP connection too) to {MAX_WEB_CONNECTIONS}"
            )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus `/metrics`: on the web port, and on `listen` alone (`--metrics ADDR`)."""

    listen: str = ""  # "host:port"; empty: only on the web port (when that is on)
    # latency histograms (send completion, hop per layer, RPC per method) while served over HTTP
    histograms: bool = True
    probe_interval_ms: int = 200  # the hop-latency probe through each layer's inbox


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The daemon's processes (design: scale): `shards` engine processes behind one RPC
    address, each RPC client and all it owns living in one of them."""

    shards: int = 1  # engine processes; `"auto"` in a file or on the command line: one per CPU
    # how long a request that needs every shard (stack.stats, fault.inject on a layer, ...)
    # waits for each one before it answers TIMEOUT naming the slow shard
    control_timeout_s: float = 5.0
    # a shard silent on its control channel this long (it reports every second) is taken as
    # hung: killed (SIGKILL) and started again, as one that died
    heartbeat_timeout_s: float = 30.0


#: Shards one CPU may carry at most: each is a process with its own event loop; past a few per
#: CPU they only add context switches and ~40 MB each. More than one per CPU still pays where
#: the open-file limit, not the CPU, is what runs out (each shard holds ≈19.9k sockets).
SHARDS_PER_CPU = 4


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, which a cgroup cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - Linux has it
        return os.cpu_count() or 1


def max_shards() -> int:
    return SHARDS_PER_CPU * cpu_count()


#: what a target offloads at most when its layer does not say (`layer.max_connections`)
DEFAULT_MAX_CONNECTIONS = 16384


@dataclass(frozen=True, slots=True)
class LayerConfig:
    name: str
    kind: str
    lower: tuple[str, ...] = ()
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # targets: offloaded TCP connections
    ipv4: bool = True  # targets: offloads IPv4 connections (NDIS_TCP_CONNECTION_OFFLOAD)
    ipv6: bool = True  # targets: offloads IPv6 connections
    # targets: TCP chimney on; off, the NIC's capabilities advertise no encapsulation the host
    # recognises (spec §1.3) and it offloads nothing, as a NIC whose chimney is disabled
    tcp_chimney: bool = True
    policy: str = DEFAULT_POLICY  # mux: which NIC takes a new connection


DEFAULT_LAYERS = (
    LayerConfig("tcpip", "host", ("im0",)),
    LayerConfig("im0", "passthrough", ("nic0",)),
    LayerConfig("nic0", "target"),
)


@dataclass(frozen=True, slots=True)
class Config:
    rpc: RpcConfig = field(default_factory=RpcConfig)
    log: LogConfig = field(default_factory=LogConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    layers: tuple[LayerConfig, ...] = DEFAULT_LAYERS
    web: WebConfig = field(default_factory=WebConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)

    def as_dict(self, redact: bool = True) -> dict[str, Any]:
        """Plain data for `--check-config` (tokens shown as `"<set>"`, not printed)."""
        d = dataclasses.asdict(self)
        d["layer"] = d.pop("layers")
        if redact:
            for key in ("token", "admin_token"):
                if d["rpc"][key]:
                    d["rpc"][key] = "<set>"
        return d


def _section(cls: type[Any], data: Any, where: str, section: str = "") -> Any:
    """`data` as a `cls`; `section` (default: `where`) is the name in LIMITS ("layer" for
    `layer[2]`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(fields))})")
        limits = LIMITS.get(f"{section or where}.{key}")
        kwargs[key] = _coerce(value, _default(fields[key]), f"{where}.{key}", limits)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ""  # required fields (layer name, kind) are strings


def _coerce(
    value: Any,
    default: Any,
    where: str,
    limits: tuple[int, int] | tuple[float, float] | None = None,
) -> Any:
    """Check `value` against the type of the key's default (bool before int: bool is an int)
    and, for a number, against its `limits` (LIMITS)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false")
        return value
    if isinstance(default, int):
        low, high = limits or (0 if default == 0 else 1, INT_MAX)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            kind = "a non-negative" if low == 0 else "a positive"
            raise ConfigError(f"{where}: must be {kind} integer from {low} to {high}{_got(value)}")
        return value
    if isinstance(default, float):
        lo, hi = limits or (0.0, math.inf)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or value <= 0
            # nan compares false with everything and inf is above every bound: both refused;
            # an int is compared as it is (a huge one does not fit a float)
            or not lo <= value <= hi
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise ConfigError(
                f"{where}: must be a positive number from {lo:g} to {hi:g}{_got(value)}"
            )
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if isinstance(value, tuple):  # from `Config.as_dict`
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: must be a string or a list of strings")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string")
    return value


def _got(value: Any) -> str:
    """What a refused number was, for its message (` (got 1e+300)`); nothing for other types,
    which the message's "integer" or "number" already refuses."""
    if isinstance(value, float):
        return f" (got {value:g})"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**20:
        return f" (got {value})"  # a longer one would drown the message
    return ""


def parse_listen(addr: str) -> tuple[str, int] | str:
    """`host:port` (IPv6 as `[::1]:port`) → (host, port); `unix:/path` → the path."""
    if addr.startswith("unix:"):
        path = addr[5:]
        if not path:
            raise ConfigError(f"rpc.listen: {_q(addr)}: empty unix socket path")
        return path
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ConfigError(f"rpc.listen: {_q(addr)}: expected host:port or unix:/path")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"rpc.listen: {_q(addr)}: port is not a number") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"rpc.listen: {_q(addr)}: port out of range 0..65535")
    return host, p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_listen(listen: tuple[str, ...], token: str) -> None:
    """Every address parses; one off loopback needs a token (design: reliability/security)."""
    if not listen:
        raise ConfigError("rpc.listen: at least one address is needed")
    for addr in listen:
        parsed = parse_listen(addr)
        if isinstance(parsed, tuple) and not is_loopback(parsed[0]) and not token:
            raise ConfigError(
                f"rpc.listen: {_q(addr)} is not loopback: set rpc.token to listen there"
            )


def http_address(key: str, addr: str) -> tuple[str, int]:
    """An HTTP address (web view, metrics) as (host, port); the error names `key`."""
    try:
        parsed = parse_listen(addr)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {str(exc).split(': ', 1)[1]}") from None
    if isinstance(parsed, str):
        raise ConfigError(f"{key}: {_q(addr)}: expected host:port (no unix socket here)")
    return parsed


def check_http_listen(key: str, addr: str, token: str) -> None:
    """Empty (off) or host:port; off loopback it needs a token, as the RPC port does."""
    if not addr:
        return
    host, _ = http_address(key, addr)
    if not is_loopback(host) and not token:
        raise ConfigError(f"{key}: {_q(addr)} is not loopback: set rpc.token to listen there")


def web_token(rpc: RpcConfig) -> str:
    """What the web view and `/metrics` ask for when set: the web view shows every connection,
    so the admin token when there is one (it sees all over RPC too), else the token."""
    return rpc.admin_token or rpc.token


def unix_mode(text: str) -> int:
    """`rpc.unix_socket_mode` as a number: `"0600"` → 0o600."""
    if not 3 <= len(text) <= 4 or any(ch not in "01234567" for ch in text) or int(text, 8) > 0o777:
        raise ConfigError(f'rpc.unix_socket_mode: {_q(text)} is not an octal mode such as "0600"')
    return int(text, 8)


def _check_rpc(rpc: RpcConfig) -> None:
    check_listen(rpc.listen, rpc.token)
    unix_mode(rpc.unix_socket_mode)
    if rpc.max_buffered_frame_bytes < rpc.max_message_bytes:
        raise ConfigError(
            "rpc.max_buffered_frame_bytes: must be at least rpc.max_message_bytes"
            f" ({rpc.max_message_bytes}), or one large request would always be dropped"
        )


def _check_daemon(daemon: DaemonConfig) -> None:
    most = max_shards()
    if daemon.shards > most:
        raise ConfigError(
            f"daemon.shards: {daemon.shards} is more than this machine can hold: at most {most}"
            f" ({SHARDS_PER_CPU} per CPU, {cpu_count()} CPU(s))"
        )


def _check_distinct_listens(config: Config) -> None:
    """No two listeners on one address: the second would fail at start ("address already in
    use") after the check passed. Port 0 (any free port) never collides."""
    seen: dict[tuple[str, int] | str, str] = {}
    keys = [("rpc.listen", a) for a in config.rpc.listen]
    keys += [
        (k, a)
        for k, a in (("web.listen", config.web.listen), ("metrics.listen", config.metrics.listen))
        if a
    ]
    for key, addr in keys:
        parsed = parse_listen(addr)
        if isinstance(parsed, tuple) and parsed[1] == 0:
            continue
        bound = _bound(parsed)
        for sock in bound:
            if sock in seen:
                also = "" if isinstance(sock, str) or len(bound) == 1 else f" ({_sock(sock)})"
                raise ConfigError(f"{key}: {_q(addr)} is already {seen[sock]}'s address{also}")
        seen.update(dict.fromkeys(bound, key))


def _bound(parsed: tuple[str, int] | str) -> list[tuple[str, int] | str]:
    """The sockets a listener binds: a unix path, or (address, port) for each address its host
    stands for. `localhost` is resolved as the server resolves it (getaddrinfo): 127.0.0.1, and
    often ::1 too, so `localhost:P` takes `127.0.0.1:P`. Only loopback is resolved; another
    name is compared as written (off loopback it needs a token anyway)."""
    if isinstance(parsed, str):
        return [parsed]
    host, port = parsed
    try:
        return [(ipaddress.ip_address(host).compressed, port)]
    except ValueError:
        pass
    if host != "localhost":  # the one name is_loopback takes
        return [(host, port)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        infos = []
    found = [str(info[4][0]) for info in infos]
    loopback = [a for a in found if ipaddress.ip_address(a.partition("%")[0]).is_loopback]
    return [(ipaddress.ip_address(a).compressed, port) for a in loopback or ["127.0.0.1", "::1"]]


def _sock(sock: tuple[str, int]) -> str:
    host, port = sock
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def validate(config: Config) -> Config:
    rpc, log = config.rpc, config.log
    _check_daemon(config.daemon)
    _check_rpc(rpc)
    check_http_listen("web.listen", config.web.listen, web_token(rpc))
    check_http_listen("metrics.listen", config.metrics.listen, web_token(rpc))
    _check_distinct_listens(config)
    if log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: {_q(log.format)} is not one of {', '.join(LOG_FORMATS)}")
    if log.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log.level: {_q(log.level)} is not one of {', '.join(LOG_LEVELS)}")
    _check_layers(config.layers)
    return config


#: The longest layer name: a fault's `layer` key (chimneyd/faults.py) takes no longer, and
#: every layer must be one a fault can name.
MAX_LAYER_NAME = 128


def _check_layers(layers: tuple[LayerConfig, ...]) -> None:
    names = [layer.name for layer in layers]
    for i, layer in enumerate(layers):
        where = f"layer[{i}]"
        if not layer.name:
            raise ConfigError(f"{where}.name: must not be empty")
        if len(layer.name) > MAX_LAYER_NAME:
            raise ConfigError(
                f"{where}.name: {len(layer.name)} characters, at most {MAX_LAYER_NAME}"
            )
        if names.index(layer.name) != i:
            raise ConfigError(
                f"{where}.name: {_q(layer.name)} is already layer[{names.index(layer.name)}]"
            )
        if layer.kind not in LAYER_KINDS:
            raise ConfigError(
                f"{where}.kind: {_q(layer.kind)} is not one of {', '.join(LAYER_KINDS)}"
            )
        for lower in layer.lower:
            if lower not in names:
                raise ConfigError(f"{where}.lower: no layer named {_q(lower)}")
            if lower == layer.name:
                raise ConfigError(f"{where}.lower: {_q(lower)} cannot bind to itself")
        if len(set(layer.lower)) != len(layer.lower):
            raise ConfigError(f"{where}.lower: a layer is named twice")
        if layer.kind == "target" and layer.lower:
            raise ConfigError(f"{where}.lower: a target has no layer below it")
        if layer.kind in ("host", "passthrough") and len(layer.lower) != 1:
            raise ConfigError(
                f"{where}.lower: a {layer.kind} layer binds to exactly one lower layer"
                f" (got {len(layer.lower)}; a mux binds to several)"
            )
        if layer.kind == "mux" and not layer.lower:
            raise ConfigError(f"{where}.lower: a mux binds to at least one lower layer")
        if layer.kind == "mux" and layer.policy not in MUX_POLICIES:
            raise ConfigError(
                f"{where}.policy: {_q(layer.policy)} is not one of {', '.join(MUX_POLICIES)}"
            )
        if layer.kind != "mux" and layer.policy != DEFAULT_POLICY:
            raise ConfigError(f"{where}.policy: only a mux has a policy")
        if layer.kind != "target" and layer.max_connections != DEFAULT_MAX_CONNECTIONS:
            # a mux offers the sum of its NICs', an IM its lower layer's, the host none
            raise ConfigError(f"{where}.max_connections: only a target has a connection capacity")
        for version in ("ipv4", "ipv6"):
            if layer.kind != "target" and not getattr(layer, version):
                raise ConfigError(
                    f"{where}.{version}: only a target says which IP versions it offloads"
                )
        if layer.kind != "target" and not layer.tcp_chimney:
            raise ConfigError(f"{where}.tcp_chimney: only a target turns its TCP chimney off")
        if not (layer.ipv4 or layer.ipv6):
            raise ConfigError(f"{where}: a target offloads IPv4, IPv6 or both (ipv4, ipv6)")
    hosts = [i for i, layer in enumerate(layers) if layer.kind == "host"]
    if len(hosts) != 1:
        where = f"layer[{hosts[1]}].kind" if hosts else "layer"
        raise ConfigError(
            f'{where}: exactly one layer of kind "host" is needed (found {len(hosts)})'
        )
    by_name = {layer.name: layer for layer in layers}
    reached: set[str] = set()

    def walk(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            i = names.index(path[-1])
            raise ConfigError(
                f"layer[{i}].lower: bindings form a cycle: {' -> '.join((*path, name))}"
            )
        if name in reached:
            return  # explored already (a layer bound twice is refused below)
        reached.add(name)
        for lower in by_name[name].lower:
            walk(lower, (*path, name))

    walk(layers[hosts[0]].name, ())
    bound_by: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for lower in layer.lower:
            if lower in bound_by:
                raise ConfigError(
                    f"layer[{i}].lower: {_q(lower)} is bound by layer[{bound_by[lower]}] already:"
                    " a layer has one layer above it (teaming is a mux over several)"
                )
            bound_by[lower] = i
    for i, layer in enumerate(layers):
        if layer.name not in reached:
            raise ConfigError(f"layer[{i}]: {_q(layer.name)} is not below the host layer")
    _check_no_nested_mux(layers, by_name)


def _check_no_nested_mux(layers: tuple[LayerConfig, ...], by_name: dict[str, LayerConfig]) -> None:
    """A mux below a mux, bound directly or through IMs, is refused: the inner team's PAUSE and
    RESUME stop at the outer one, which never passes them up, so a connection the inner team
    moves at a NIC failure would stay in the host for good. The spec describes one MUX over
    its NICs (§5.5), not teams of teams."""

    def first_mux_below(name: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for lower in by_name[name].lower:
            if by_name[lower].kind == "mux":
                return (*path, lower)
            found = first_mux_below(lower, (*path, lower))
            if found is not None:
                return found
        return None

    for i, layer in enumerate(layers):
        if layer.kind != "mux":
            continue
        nested = first_mux_below(layer.name, (layer.name,))
        if nested is not None:
            raise ConfigError(
                f"layer[{i}].lower: mux {_q(nested[-1])} is below mux {_q(layer.name)}"
                f" ({' -> '.join(nested)}): a mux cannot be below another mux;"
                " bind every NIC of the team to one mux"
            )


def check_paths(config: Config) -> None:
    """What the daemon makes on disk at start, each unix socket of `rpc.listen` and
    `log.file`, must have a directory that exists and that it may write in (a log file that
    exists already must be writable). Only looks, creates nothing: `--check-config` runs it
    as start-up does, so a file that passes the check does not fail at start for a missing
    directory. Raises ConfigError naming the key, the address or file, and the directory."""
    for addr in config.rpc.listen:
        target = parse_listen(addr)
        if isinstance(target, str):
            _check_directory(f"rpc.listen: {_q(addr)}", target)
    path = config.log.file
    if not path:
        return
    where = f"log.file: {_q(path)}"
    if os.path.isdir(path):
        raise ConfigError(f"{where}: is a directory")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{where}: the file is not writable by this user")
        return
    _check_directory(where, path)


def _check_directory(where: str, path: str) -> None:
    """The directory `path` would be made in exists and this user may create files in it."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(directory):
        raise ConfigError(
            f"{where}: the directory {directory} does not exist (create it, or choose another path)"
        )
    if not os.path.isdir(directory):
        raise ConfigError(f"{where}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: the directory {directory} is not writable by this user")


#: `load_config` overrides: dotted key → (section, field); values are checked like the file's.
OVERRIDABLE = {
    "rpc.listen",
    "rpc.token",
    "rpc.admin_token",
    "log.format",
    "log.level",
    "log.file",
    "engine.invariants",
    "web.listen",
    "metrics.listen",
    "daemon.shards",
}


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Read and validate `path` (None: the embedded default), then apply `overrides`
    (dotted keys such as `{"rpc.listen": ["127.0.0.1:0"], "log.level": "debug"}`; None values are
    skipped) and validate the result."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in OVERRIDABLE:
            raise ConfigError(f"{key}: cannot be overridden")
        section, name = key.split(".")
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            break  # the section's own error is reported below
        table[name] = value
    return from_raw(raw)


SECTIONS = ("rpc", "log", "engine", "layer", "web", "metrics", "daemon")


def from_raw(raw: Mapping[str, Any]) -> Config:
    """A configuration from plain data shaped like the TOML file (or `Config.as_dict(False)`,
    which is how a shard gets its parent's effective configuration), checked as a file is."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(SECTIONS)})")
    rpc = _section(RpcConfig, raw.get("rpc", {}), "rpc")
    log = _section(LogConfig, raw.get("log", {}), "log")
    engine = _section(EngineConfig, raw.get("engine", {}), "engine")
    layers: tuple[LayerConfig, ...] = DEFAULT_LAYERS
    if "layer" in raw:
        if not isinstance(raw["layer"], list | tuple) or not raw["layer"]:
            raise ConfigError("layer: must be a non-empty array of tables ([[layer]])")
        layers = tuple(_layer(item, i) for i, item in enumerate(raw["layer"]))
    web = _section(WebConfig, raw.get("web", {}), "web")
    metrics = _section(MetricsConfig, raw.get("metrics", {}), "metrics")
    daemon = _section(DaemonConfig, _auto_shards(raw.get("daemon", {})), "daemon")
    return validate(Config(rpc, log, engine, layers, web, metrics, daemon))


def _auto_shards(table: Any) -> Any:
    """`shards = "auto"`: one shard per CPU this process may run on. A value that is neither
    is refused here, with the bound that matters (a machine's, `_check_daemon`), not LIMITS'."""
    if not isinstance(table, dict) or "shards" not in table:
        return table
    value = table["shards"]
    if value == "auto":
        return {**table, "shards": cpu_count()}
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"daemon.shards: must be a positive integer, at most {max_shards()} here"
            f' ({SHARDS_PER_CPU} per CPU, {cpu_count()} CPU(s)), or "auto"{_got(value)}'
        )
    return table


def _layer(item: Any, i: int) -> LayerConfig:
    where = f"layer[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table")
    for key in ("name", "kind"):
        if key not in item:
            raise ConfigError(f"{where}.{key}: missing")
    layer: LayerConfig = _section(LayerConfig, item, where, "layer")
    return layer
