"""A mux below a mux is refused by the configuration check, at start and by `--check-config`.

Nested teams ran before, but the inner mux's PAUSE and RESUME stopped at the outer mux, which
never indicated them above: a connection the inner mux moved at a NIC failure (`target_failure`
or `nic_down`) was uploaded and never offloaded again. The spec describes one MUX over its NICs
(§5.5); a team of teams is refused with the layers that make it (bind every NIC to one mux).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.topologies import check_config, layers

NICS = (("nic0", "target"), ("nic1", "target"), ("nic2", "target"))
#: a mux bound directly under a mux
DIRECT = layers(
    ("tcpip", "host", ["top"]),
    ("top", "mux", ["inner", "nic2"], {"policy": "active-standby"}),
    ("inner", "mux", ["nic0", "nic1"], {"policy": "active-standby"}),
    *NICS,
)
#: a mux under a mux with an IM between them
THROUGH_IM = layers(
    ("tcpip", "host", ["top"]),
    ("top", "mux", ["im0", "nic2"]),
    ("im0", "passthrough", ["inner"]),
    ("inner", "mux", ["nic0", "nic1"]),
    *NICS,
)


@pytest.mark.parametrize(
    ("config", "chain"),
    [(DIRECT, "top -> inner"), (THROUGH_IM, "top -> im0 -> inner")],
    ids=["direct", "through-im"],
)
def test_check_config_refuses_a_mux_below_a_mux(tmp_path: Path, config: str, chain: str) -> None:
    run = check_config(tmp_path, config)
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr  # one line, no traceback
    assert "layer[1].lower" in lines[0], lines[0]
    assert 'mux "inner" is below mux "top"' in lines[0] and chain in lines[0], lines[0]
