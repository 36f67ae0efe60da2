"""Keys `--check-config` must refuse because they cannot work: a connection capacity on a
layer that is not a target (ignored), two listeners on one address (the second fails at
start with "address already in use"), and a number outside its range."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chimneyd.config import (
    LIMITS,
    ConfigError,
    DaemonConfig,
    EngineConfig,
    LayerConfig,
    MetricsConfig,
    RpcConfig,
    WebConfig,
    from_raw,
    max_shards,
)

ROOT = Path(__file__).resolve().parents[2]

HOST = {"name": "tcpip", "kind": "host", "lower": ["im0"]}
IM = {"name": "im0", "kind": "passthrough", "lower": ["nic0"]}
NIC = {"name": "nic0", "kind": "target"}


@pytest.mark.parametrize("which", [0, 1])
def test_max_connections_only_on_a_target(which: int) -> None:
    layers = [dict(HOST), dict(IM), dict(NIC)]
    layers[which]["max_connections"] = 5
    with pytest.raises(ConfigError, match=rf"layer\[{which}\]\.max_connections"):
        from_raw({"layer": layers})


@pytest.mark.parametrize("which", [0, 1])
def test_tcp_chimney_off_only_on_a_target(which: int) -> None:
    layers = [dict(HOST), dict(IM), dict(NIC)]
    layers[which]["tcp_chimney"] = False
    with pytest.raises(ConfigError, match=rf"layer\[{which}\]\.tcp_chimney"):
        from_raw({"layer": layers})
    off = from_raw({"layer": [dict(HOST), dict(IM), {**NIC, "tcp_chimney": False}]})
    assert [layer.tcp_chimney for layer in off.layers] == [True, True, False]


def test_the_same_listen_address_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rpc\.listen"):
        from_raw({"rpc": {"listen": ["127.0.0.1:7522", "127.0.0.1:7522"]}})


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1:7524", "localhost:7524"),
        ("localhost:7524", "127.0.0.1:7524"),
        ("[::1]:7524", "[0:0:0:0:0:0:0:1]:7524"),
    ],
)
def test_one_socket_named_two_ways_is_refused(first: str, second: str) -> None:
    """`localhost` binds what it resolves to (127.0.0.1 on any Linux), an address its written
    forms: the second listener would fail at start with "address already in use"."""
    with pytest.raises(ConfigError, match=r"rpc\.listen: .* is already rpc\.listen's address"):
        from_raw({"rpc": {"listen": [first, second]}})


def test_localhost_takes_every_loopback_address_it_resolves_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where localhost is ::1 as well, the server binds both: `[::1]:P` collides too, on the
    web port as on the RPC one; other ports and 127.0.0.2 do not."""
    resolved = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 7525, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 7525)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: resolved)
    with pytest.raises(ConfigError, match=r"web\.listen: .*\(\[::1\]:7525\)"):
        from_raw({"rpc": {"listen": "[::1]:7525"}, "web": {"listen": "localhost:7525"}})
    from_raw({"rpc": {"listen": ["127.0.0.2:7525", "localhost:7526", "[::1]:7527"]}})


def test_web_on_the_rpc_address_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"web\.listen"):
        from_raw({"rpc": {"listen": "127.0.0.1:7523"}, "web": {"listen": "127.0.0.1:7523"}})


# Every numeric setting has a range (LIMITS); past either end, nan and inf are refused naming
# the key: a shutdown deadline of 1e300 s would never end with a read in flight.

SECTIONS = {
    "rpc": RpcConfig,
    "engine": EngineConfig,
    "web": WebConfig,
    "metrics": MetricsConfig,
    "daemon": DaemonConfig,
    "layer": LayerConfig,
}


def numeric_keys() -> list[str]:
    return [
        f"{section}.{f.name}"
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if type(f.default) in (int, float)
    ]


def raw_with(key: str, value: object) -> dict[str, Any]:
    """A configuration with `key` set to `value` (on the target, for a layer key)."""
    section, name = key.split(".")
    if section == "layer":
        return {"layer": [dict(HOST), dict(IM), {**NIC, name: value}]}
    return {section: {name: value}}


def where(key: str) -> str:
    return re.escape("layer[2]." + key.split(".")[1] if key.startswith("layer.") else key)


def test_every_numeric_setting_has_a_range() -> None:
    assert set(numeric_keys()) == set(LIMITS)
    for key, (low, high) in LIMITS.items():
        section, name = key.split(".")
        default = next(f.default for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
        assert type(low) is type(high) is type(default), key
        assert low <= default <= high, key


@pytest.mark.parametrize("key", sorted(LIMITS))
def test_past_the_upper_end_is_refused(key: str) -> None:
    high = LIMITS[key][1]
    shown = f"{high:g}" if isinstance(high, float) else str(high)
    with pytest.raises(ConfigError, match=rf"^{where(key)}: must be .* to {shown} \(got "):
        from_raw(raw_with(key, high * 10 if key != "daemon.shards" else high + 1))


@pytest.mark.parametrize("key", sorted(LIMITS))
def test_below_the_lower_end_is_refused(key: str) -> None:
    low, _ = LIMITS[key]
    below = low - 1 if isinstance(low, int) else low / 2
    with pytest.raises(ConfigError, match=rf"^{where(key)}: must be "):
        from_raw(raw_with(key, below))


@pytest.mark.parametrize("key", sorted(k for k in LIMITS if isinstance(LIMITS[k][0], float)))
@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, 10**400], ids=["nan", "inf", "-inf", "1e400"]
)
def test_nan_inf_and_huge_numbers_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{where(key)}: must be a positive number"):
        from_raw(raw_with(key, value))


@pytest.mark.parametrize("key", sorted(LIMITS))
def test_both_ends_are_allowed(key: str) -> None:
    low, high = LIMITS[key]
    if key == "daemon.shards":
        high = max_shards()  # and no more than the machine holds
    if key == "rpc.max_buffered_frame_bytes":
        low = LIMITS["rpc.max_message_bytes"][0]  # it must hold one message too
    for value in (low, high):
        raw = raw_with(key, value)
        if key == "rpc.max_message_bytes":  # the frame budget must hold one message
            raw["rpc"]["max_buffered_frame_bytes"] = value
        if key == "rpc.max_buffered_frame_bytes":
            raw["rpc"]["max_message_bytes"] = low
        # web.max_connections counts the pages' WebSockets too: at least web.max_clients
        if key == "web.max_clients":
            raw["web"]["max_connections"] = max(value, 128)
        if key == "web.max_connections":
            raw["web"]["max_clients"] = min(value, 32)
        from_raw(raw)


def test_a_huge_shutdown_deadline_fails_check_config(tmp_path: Path) -> None:
    path = tmp_path / "slip.toml"
    path.write_text("[rpc]\nshutdown_deadline_s = 1e300\n")
    run = subprocess.run(
        [sys.executable, "-m", "chimneyd", "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "clients")))},
    )
    assert run.returncode == 2, run.stderr
    assert "rpc.shutdown_deadline_s: must be a positive number from 0.1 to 3600" in run.stderr


@pytest.mark.parametrize("value", [0, -3, 2.5, "two", True])
def test_a_shard_count_that_is_no_count_says_what_is(value: object) -> None:
    """`--shards 0` is told the bound that holds (SHARDS_PER_CPU per CPU, not the integer
    range) and that "auto" is a choice too."""
    with pytest.raises(ConfigError) as refused:
        from_raw({"daemon": {"shards": value}})
    message = str(refused.value)
    assert message.startswith("daemon.shards: must be a positive integer, at most ")
    assert f"at most {max_shards()} here" in message and '"auto"' in message
    assert "2147483647" not in message
