"""`chimneyctl trace --svg/--mermaid` against a real daemon on deploy/teaming.toml, of a
connection a `nic_down` moved to another NIC: each NIC it used is a lane of its own under the
MUX, and every arrow joins its layer's lane and the NDIS lane its call passes through (spec
§5.5)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import BIN, HOST, child_env, echo, peer_process
from tests.integration.trace_lanes import check_geometry, expected_uppers

TEAMING = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"
SVG = "{http://www.w3.org/2000/svg}"
MOVE_BOUND_S = 10.0
ADMIN = "adm1n"


def test_trace_of_a_moved_connection(spawn_daemon: SpawnDaemon, tmp_path: Path) -> None:
    # chimneyctl reads the trace of a connection another client opened: with the admin token
    daemon = spawn_daemon(
        f'{TEAMING.read_text()}\n[rpc]\nadmin_token = "{ADMIN}"\n', admin_token=ADMIN
    )
    svg, mermaid = tmp_path / "moved.svg", tmp_path / "moved.mmd"
    with peer_process("echo") as (_, port), daemon.client() as c:
        conn = c.tcp_connect(HOST, port)
        echo(c, conn, b"first nic " * 100)
        first = str(c.tcp_info(conn)["path"][-1])
        fault = c.fault_inject("nic_down", layer=first)
        end = time.monotonic() + MOVE_BOUND_S
        while (info := c.tcp_info(conn))["state"] != "offloaded" or info["path"][-1] == first:
            assert time.monotonic() < end, f"conn {conn} never left {first}: {info}"
            time.sleep(0.02)
        second = str(info["path"][-1])
        echo(c, conn, b"second nic " * 100)
        args = ["--json", "trace", str(conn), "--svg", str(svg), "--mermaid", str(mermaid)]
        run = subprocess.run(
            [str(BIN / "chimneyctl"), "--rpc", daemon.address, "--token", ADMIN, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
            stdin=subprocess.DEVNULL,
        )
        assert run.returncode == 0, run.stderr
        hops = c.trace_get(conn)
        layers = c.stack_info()["layers"]
        c.fault_clear(fault)
        c.tcp_close(conn)
    nics = [la["name"] for la in layers if la["name"] in (first, second)]
    want = ["tcpip", "NDIS", "filter0", "NDIS", "team0", "NDIS", *nics]
    assert json.loads(run.stdout)["result"]["lanes"] == want
    upper = expected_uppers(layers)

    root = ET.parse(svg).getroot()
    title = root.find(f"{SVG}title")
    assert (
        title is not None
        and title.text == f"conn {conn}: tcpip → filter0 → team0 → ({' | '.join(nics)})"
    )
    heads = [g for g in root.iter(f"{SVG}g") if g.get("class") == "lane"]
    lanes = []
    for g in heads:
        line = g.find(f"{SVG}line")
        assert line is not None
        lanes.append((str(g.get("data-name")), float(str(line.get("x1")))))
    assert [name for name, _ in lanes] == want
    ends = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") != "hop":
            continue
        line, path = g.find(f"{SVG}line"), g.find(f"{SVG}path")
        if line is not None:
            ends[int(str(g.get("data-seq")))] = (
                float(str(line.get("x1"))),
                float(str(line.get("x2"))),
            )
        else:
            assert path is not None
            x0 = float(str(path.get("d")).split()[0][1:])
            ends[int(str(g.get("data-seq")))] = (x0, x0)
    # the picture holds the hops of the trace as chimneyctl read it (a prefix of the newest)
    drawn = [h for h in hops if h["seq"] in ends]
    assert len(drawn) == len(ends) and {first, second} <= {h["layer"] for h in drawn}
    check_geometry(drawn, lanes, ends, upper)

    text = mermaid.read_text()
    participants = re.findall(r"^ {4}participant P(\d+) as (.+)$", text, re.M)
    assert [name for _, name in participants] == want
    arrows = re.findall(r"^\s+P(\d+)(?:->>|-->>|--\))P(\d+): (\d+) ", text, re.M)
    m_ends = {int(seq): (float(a), float(b)) for a, b, seq in arrows if int(seq) in ends}
    assert len(m_ends) == len(drawn)
    check_geometry(drawn, [(n, float(i)) for i, n in participants], m_ends, upper)
