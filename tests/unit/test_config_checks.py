"""Keys `--check-config` must refuse because they cannot work: a connection capacity on a
layer that is not a target (ignored), and two listeners on one address (the second fails at
start with "address already in use")."""

from __future__ import annotations

import pytest

from chimneyd.config import ConfigError, from_raw

HOST = {"name": "tcpip", "kind": "host", "lower": ["im0"]}
IM = {"name": "im0", "kind": "passthrough", "lower": ["nic0"]}
NIC = {"name": "nic0", "kind": "target"}


@pytest.mark.parametrize("which", [0, 1])
def test_max_connections_only_on_a_target(which: int) -> None:
    layers = [dict(HOST), dict(IM), dict(NIC)]
    layers[which]["max_connections"] = 5
    with pytest.raises(ConfigError, match=rf"layer\[{which}\]\.max_connections"):
        from_raw({"layer": layers})


def test_the_same_listen_address_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rpc\.listen"):
        from_raw({"rpc": {"listen": ["127.0.0.1:7522", "127.0.0.1:7522"]}})


def test_web_on_the_rpc_address_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"web\.listen"):
        from_raw({"rpc": {"listen": "127.0.0.1:7523"}, "web": {"listen": "127.0.0.1:7523"}})
