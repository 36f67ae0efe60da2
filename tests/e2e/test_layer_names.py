"""Every layer the daemon runs can be named in a fault: `layer.name` is at most 128 characters,
the longest a fault key takes, and a longer one is refused at the configuration check; the
fault's own refusal states the limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from chimney_client.errors import RpcError
from tests.e2e.conftest import SpawnDaemon
from tests.e2e.topologies import check_config, layers


def topology(nic: str) -> str:
    return layers(("tcpip", "host", ["im0"]), ("im0", "passthrough", [nic]), (nic, "target"))


def test_check_config_refuses_a_layer_name_over_128_characters(tmp_path: Path) -> None:
    run = check_config(tmp_path, topology("n" * 129))
    assert run.returncode == 2, (run.stdout, run.stderr)
    line = run.stderr.strip()
    assert "layer[2].name" in line and "129 characters, at most 128" in line, line


async def test_a_fault_naming_too_long_a_layer_says_the_limit(spawn_daemon: SpawnDaemon) -> None:
    d = spawn_daemon(topology("n" * 128))
    async with await d.aclient() as c:
        fid = await c.fault_inject("target_failure", layer="n" * 128)  # the longest name
        await c.fault_clear(fid)
        with pytest.raises(RpcError, match="'layer' must be a non-empty string of at most 128"):
            await c.fault_inject("target_failure", layer="n" * 129)
