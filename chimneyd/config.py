"""The daemon's configuration: a TOML file (stdlib `tomllib`) or the embedded default.

Every setting has a documented default; a bad file is refused at start with the key and the
reason (`ConfigError("layer[1].lower: no layer named 'nic9'")`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:7411"
LAYER_KINDS = ("host", "passthrough", "mux", "target")


class ConfigError(ValueError):
    """A configuration the daemon refuses; the message names the key and the reason."""


@dataclass(frozen=True, slots=True)
class RpcConfig:
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)  # "host:port" or "unix:/path"
    token: str = ""  # required first (`auth`) when set; needed to listen off loopback
    admin_token: str = ""  # a client that authenticates with it sees every connection
    max_message_bytes: int = 8 * 1024 * 1024
    max_in_flight: int = 256  # requests per client answered concurrently; more get LIMIT
    max_connections_per_client: int = 10_000
    max_clients: int = 1024
    shutdown_deadline_s: float = 10.0


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
    invariants: bool = False  # the spec §9 invariant checker
    max_nbls: int = 1_000_000


@dataclass(frozen=True, slots=True)
class LayerConfig:
    name: str
    kind: str
    lower: tuple[str, ...] = ()
    max_connections: int = 16384  # targets: offloaded TCP connections
    policy: str = "least-loaded"  # mux only


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

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer"] = d.pop("layers")
        return d


def _section(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(fields))})")
        default = fields[key].default
        if default is dataclasses.MISSING:
            default = None
        kwargs[key] = _coerce(value, default, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}: must be a positive integer")
        return value
    if isinstance(default, float):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}: must be a positive number")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: must be a string or a list of strings")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string")
    return value


def parse_listen(addr: str) -> tuple[str, int] | str:
    """`host:port` → (host, port); `unix:/path` → the path."""
    if addr.startswith("unix:"):
        path = addr[5:]
        if not path:
            raise ConfigError(f"rpc.listen: {addr!r}: empty unix socket path")
        return path
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ConfigError(f"rpc.listen: {addr!r}: expected host:port or unix:/path")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"rpc.listen: {addr!r}: port is not a number") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"rpc.listen: {addr!r}: port out of range")
    return host, p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(config: Config) -> Config:
    rpc, log = config.rpc, config.log
    for addr in rpc.listen:
        parsed = parse_listen(addr)
        if isinstance(parsed, tuple) and not is_loopback(parsed[0]) and not rpc.token:
            raise ConfigError(
                f"rpc.listen: {addr!r} is not loopback: set rpc.token to listen there"
            )
    if not rpc.listen:
        raise ConfigError("rpc.listen: at least one address is needed")
    if log.format not in ("auto", "json", "console"):
        raise ConfigError("log.format: must be auto, json or console")
    if log.level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError("log.level: must be debug, info, warning, error or critical")
    layers = config.layers
    names = [layer.name for layer in layers]
    for i, layer in enumerate(layers):
        where = f"layer[{i}]"
        if not layer.name:
            raise ConfigError(f"{where}.name: must not be empty")
        if names.count(layer.name) > 1:
            raise ConfigError(f"{where}.name: {layer.name!r} is used twice")
        if layer.kind not in LAYER_KINDS:
            raise ConfigError(
                f"{where}.kind: {layer.kind!r} is not one of {', '.join(LAYER_KINDS)}"
            )
        for lower in layer.lower:
            if lower not in names:
                raise ConfigError(f"{where}.lower: no layer named {lower!r}")
            if lower == layer.name:
                raise ConfigError(f"{where}.lower: a layer cannot bind to itself")
        if layer.kind == "target" and layer.lower:
            raise ConfigError(f"{where}.lower: a target has no layer below it")
        if layer.kind in ("host", "passthrough") and len(layer.lower) != 1:
            raise ConfigError(
                f"{where}.lower: a {layer.kind} layer binds to exactly one lower layer"
            )
        if layer.kind == "mux" and not layer.lower:
            raise ConfigError(f"{where}.lower: a mux binds to at least one lower layer")
        if layer.kind == "mux" and len(layer.lower) > 1:
            raise ConfigError(f"{where}.lower: only one lower binding per mux is supported so far")
    hosts = [layer for layer in layers if layer.kind == "host"]
    if len(hosts) != 1:
        raise ConfigError(f"layer: exactly one layer of kind 'host' is needed (found {len(hosts)})")
    by_name = {layer.name: layer for layer in layers}
    # no cycles, and every target reachable from the host
    seen: set[str] = set()

    def walk(name: str, stack: tuple[str, ...]) -> None:
        if name in stack:
            raise ConfigError(f"layer: bindings form a cycle through {name!r}")
        seen.add(name)
        for lower in by_name[name].lower:
            walk(lower, (*stack, name))

    walk(hosts[0].name, ())
    for i, layer in enumerate(layers):
        if layer.name not in seen:
            raise ConfigError(f"layer[{i}]: {layer.name!r} is not below the host")
    return config


def load_config(path: str | Path | None = None, listen: list[str] | None = None) -> Config:
    """Read and validate `path` (None: the embedded default); `listen` overrides rpc.listen."""
    config = Config()
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        unknown = set(raw) - {"rpc", "log", "engine", "layer"}
        if unknown:
            raise ConfigError(
                f"{sorted(unknown)[0]}: unknown section (known: rpc, log, engine, layer)"
            )
        rpc = _section(RpcConfig, raw.get("rpc", {}), "rpc")
        log = _section(LogConfig, raw.get("log", {}), "log")
        engine = _section(EngineConfig, raw.get("engine", {}), "engine")
        layers: tuple[LayerConfig, ...] = DEFAULT_LAYERS
        if "layer" in raw:
            if not isinstance(raw["layer"], list) or not raw["layer"]:
                raise ConfigError("layer: must be a non-empty array of tables ([[layer]])")
            layers = tuple(_layer(item, i) for i, item in enumerate(raw["layer"]))
        config = Config(rpc, log, engine, layers)
    if listen:
        config = dataclasses.replace(
            config, rpc=dataclasses.replace(config.rpc, listen=tuple(listen))
        )
    return validate(config)


def _layer(item: Any, i: int) -> LayerConfig:
    where = f"layer[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table")
    for key in ("name", "kind"):
        if key not in item:
            raise ConfigError(f"{where}.{key}: missing")
    layer: LayerConfig = _section(LayerConfig, item, where)
    return layer
