"""The daemon's configuration: a TOML file (stdlib `tomllib`) or the embedded default.

Every setting has a documented default; a bad file is refused at start with the key and the
reason (`ConfigError('layer[1].lower: no layer named "nic9"')`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:7411"
INT_MAX = (1 << 31) - 1  # integer settings are sizes and counts; this keeps them sane
LAYER_KINDS = ("host", "passthrough", "mux", "target")
MUX_POLICIES = ("least-loaded",)
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _q(name: str) -> str:
    """A name quoted for a message: `"nic9"` (JSON quoting, so odd characters stay visible)."""
    return json.dumps(name)


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

    def as_dict(self, redact: bool = True) -> dict[str, Any]:
        """Plain data for `--check-config` (tokens shown as `"<set>"`, not printed)."""
        d = dataclasses.asdict(self)
        d["layer"] = d.pop("layers")
        if redact:
            for key in ("token", "admin_token"):
                if d["rpc"][key]:
                    d["rpc"][key] = "<set>"
        return d


def _section(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(value, _default(fields[key]), f"{where}.{key}")
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


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check `value` against the type of the key's default (bool before int: bool is an int)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= INT_MAX:
            raise ConfigError(f"{where}: must be a positive integer (at most {INT_MAX})")
        return value
    if isinstance(default, float):
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
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


def validate(config: Config) -> Config:
    rpc, log = config.rpc, config.log
    check_listen(rpc.listen, rpc.token)
    if log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: {_q(log.format)} is not one of {', '.join(LOG_FORMATS)}")
    if log.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log.level: {_q(log.level)} is not one of {', '.join(LOG_LEVELS)}")
    _check_layers(config.layers)
    return config


def _check_layers(layers: tuple[LayerConfig, ...]) -> None:
    names = [layer.name for layer in layers]
    for i, layer in enumerate(layers):
        where = f"layer[{i}]"
        if not layer.name:
            raise ConfigError(f"{where}.name: must not be empty")
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
                f" (got {len(layer.lower)})"
            )
        if layer.kind == "mux":
            if not layer.lower:
                raise ConfigError(f"{where}.lower: a mux binds to at least one lower layer")
            # the engine runs a mux as a pass-through so far: more lowers would be ignored
            if len(layer.lower) > 1:
                raise ConfigError(f"{where}.lower: only one lower binding per mux is supported")
            if layer.policy not in MUX_POLICIES:
                raise ConfigError(
                    f"{where}.policy: {_q(layer.policy)} is not one of {', '.join(MUX_POLICIES)}"
                )
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
        reached.add(name)
        for lower in by_name[name].lower:
            walk(lower, (*path, name))

    walk(layers[hosts[0]].name, ())
    for i, layer in enumerate(layers):
        if layer.name not in reached:
            raise ConfigError(f"layer[{i}]: {_q(layer.name)} is not below the host layer")


#: `load_config` overrides: dotted key → (section, field); values are checked like the file's.
OVERRIDABLE = {
    "rpc.listen",
    "rpc.token",
    "log.format",
    "log.level",
    "log.file",
    "engine.invariants",
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
    unknown = sorted(set(raw) - {"rpc", "log", "engine", "layer"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: rpc, log, engine, layer)")
    rpc = _section(RpcConfig, raw.get("rpc", {}), "rpc")
    log = _section(LogConfig, raw.get("log", {}), "log")
    engine = _section(EngineConfig, raw.get("engine", {}), "engine")
    layers: tuple[LayerConfig, ...] = DEFAULT_LAYERS
    if "layer" in raw:
        if not isinstance(raw["layer"], list) or not raw["layer"]:
            raise ConfigError("layer: must be a non-empty array of tables ([[layer]])")
        layers = tuple(_layer(item, i) for i, item in enumerate(raw["layer"]))
    return validate(Config(rpc, log, engine, layers))


def _layer(item: Any, i: int) -> LayerConfig:
    where = f"layer[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table")
    for key in ("name", "kind"):
        if key not in item:
            raise ConfigError(f"{where}.{key}: missing")
    layer: LayerConfig = _section(LayerConfig, item, where)
    return layer
