"""The README's five-minute tour, as a test: a real daemon, a real `chimney-peer echo`."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from typing import Any

from chimney_client import AsyncClient
from tests.e2e.support import BIN, HOST, ROOT, Daemon, child_env, gauges, peer_process

PATH = ["tcpip", "im0", "nic0"]

#: One send's hops (rpc-contract "Example: the hops of one send"): (layer, call, what it carries).
SEND_HOPS = [
    ("tcpip", "NdisOffloadTcpSend", "handle"),
    ("im0", "MiniportTcpOffloadSend", "context"),
    ("im0", "NdisOffloadTcpSend", "handle"),
    ("nic0", "MiniportTcpOffloadSend", "context"),
    ("nic0", "NdisTcpOffloadSendComplete", "status"),
    ("im0", "ProtocolTcpOffloadSendComplete", "status"),
    ("im0", "NdisTcpOffloadSendComplete", "status"),
    ("tcpip", "ProtocolTcpOffloadSendComplete", "status"),
]


def nbl_ids(hop: dict[str, Any]) -> set[int]:
    nbl = hop.get("nbl")
    if nbl is None:
        return set()
    return set(nbl) if isinstance(nbl, list) else {nbl}


def find_send_hops(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seed hops of the first send, in order, all carrying one NBL id."""
    first = next(h for h in trace if h["call"] == "NdisOffloadTcpSend" and h["layer"] == "tcpip")
    (nbl,) = nbl_ids(first)
    found: list[dict[str, Any]] = []
    want = iter(SEND_HOPS)
    layer, call, _ = next(want)
    for hop in trace:
        if hop["layer"] == layer and hop["call"] == call and nbl in nbl_ids(hop):
            found.append(hop)
            step = next(want, None)
            if step is None:
                break
            layer, call, _ = step
    assert [(h["layer"], h["call"]) for h in found] == [(la, ca) for la, ca, _ in SEND_HOPS], (
        f"send hops of nbl {nbl} incomplete: {found}"
    )
    return found


async def recv_exactly(c: AsyncClient, conn: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await c.tcp_recv(conn, n - len(data), 10_000)
        assert chunk, f"end of stream after {len(data)} of {n} bytes"
        data += chunk
    return data


async def test_readme_tour(daemon: Daemon) -> None:
    with peer_process("echo") as (_, port):
        c = await daemon.aclient()
        try:
            conn = await c.tcp_connect(HOST, port)
            info = await c.tcp_info(conn)
            assert info["state"] == "offloaded"
            assert info["path"] == PATH
            assert info["remote"] == f"{HOST}:{port}"

            hello = b"hello, chimney"
            assert await c.tcp_send(conn, hello) == len(hello)
            assert await recv_exactly(c, conn, len(hello)) == hello

            trace = await c.trace_get(conn)
            assert [h["seq"] for h in trace] == sorted(h["seq"] for h in trace)
            hops = find_send_hops(trace)
            handles = info["handles"]
            # a different handle or context at every layer, as the contract's example shows
            assert hops[0]["handle"] == handles["tcpip"]["handle"]
            assert hops[1]["context"] == handles["im0"]["context"]
            assert hops[2]["handle"] == handles["im0"]["handle"]
            assert hops[3]["context"] == handles["nic0"]["context"]
            assert len({hops[0]["handle"], hops[2]["handle"]}) == 2
            assert len({hops[1]["context"], hops[3]["context"]}) == 2
            assert all(h["status"] == "NDIS_STATUS_SUCCESS" for h in hops[4:])

            assert (await c.tcp_upload(conn))["state"] == "host"
            assert (await c.tcp_info(conn))["state"] == "host"
            more = b"now in host mode"
            assert await c.tcp_send(conn, more) == len(more)
            assert await recv_exactly(c, conn, len(more)) == more

            assert await c.tcp_disconnect(conn) == "NDIS_STATUS_SUCCESS"
            assert await c.tcp_recv(conn, 100, 10_000) == b""  # the echo peer's FIN
            assert await c.tcp_close(conn) is True
            assert await c.tcp_list() == []

            stats = await c.stack_stats()
            assert stats["connections"] == 0
            assert all(v == 0 for layer in gauges(stats).values() for v in layer.values()), stats
            assert stats["layers"]["tcpip"]["bytes_sent"] == len(hello) + len(more)
        finally:
            await c.close()


def chimneyctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "chimneyctl"), "--rpc", daemon.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        stdin=subprocess.DEVNULL,
    )


def readme_tour() -> list[str]:
    """The tour's `chimneyctl run` arguments, read from the README itself (so the two cannot
    drift), with the peer's address as placeholders."""
    text = (ROOT / "README.md").read_text()
    start = text.index("$ .venv/bin/chimneyctl run ")
    command = text[start : text.index("\n", text.index("'stats'", start))]
    words = shlex.split(command.replace("\\\n", " ").removeprefix("$ "))
    args = words[words.index("run") + 1 :]
    return [a.replace("127.0.0.1 9000", "{host} {port}") for a in args]


TOUR = readme_tour()


def readme_tour_output() -> str:
    """What the README shows the tour printing: its console block after the command."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n", text.index("'stats'", text.index("$ .venv/bin/chimneyctl run ")))
    return text[start + 1 : text.index("\n```", start)]


def shape(out: str) -> list[str]:
    """The output with what changes from run to run taken out: numbers, rule lengths, spacing,
    and the trace table's rows (how the echo's hops interleave with the send's varies)."""
    lines = []
    for line in out.splitlines():
        if re.match(r"\d+\s+\d+\.\d+\s", line):
            continue
        line = re.sub(r"─+", "─", re.sub(r"\d+", "N", line))
        lines.append(" ".join(line.split()))
    return lines


def test_readme_tour_with_chimneyctl(daemon: Daemon) -> None:
    with peer_process("echo") as (_, port):
        script = [line.format(host=HOST, port=port) for line in TOUR]
        for conn in (1, 2):  # connection ids are global: the second run gets conn 2
            run = chimneyctl(daemon, "run", *script)
            assert run.returncode == 0, run.stderr
            check_tour_output(run.stdout, conn)
            # the README shows what a reader gets: the same lines, rows and keys
            assert shape(run.stdout) == shape(readme_tour_output())


def check_tour_output(out: str, conn: int) -> None:
    lines = [line.rstrip() for line in out.splitlines()]
    assert lines[0] == f"conn {conn}"
    assert any(line.split() == ["state", "offloaded"] for line in lines), out
    assert any(line.split() == ["path", "tcpip", "→", "im0", "→", "nic0"] for line in lines), out
    assert "delegated (as of offload/last query):" in lines, out
    expected_in_order = [
        "sent 14 bytes (acknowledged)",
        "14 bytes: hello, chimney",
        f"conn {conn}: host",
        "sent 16 bytes (acknowledged)",
        "16 bytes: now in host mode",
        f"conn {conn}: offloaded via tcpip → im0 → nic0",
        "NDIS_STATUS_SUCCESS",
        "(end of stream)",
        f"conn {conn}: closed",
    ]
    positions = [lines.index(text) for text in expected_in_order]
    assert positions == sorted(positions), out
    # the trace table shows the send going down with its NBL
    trace_calls = [line.split()[3] for line in lines if len(line.split()) > 3]
    for call in ("NdisOffloadTcpSend", "MiniportTcpOffloadSend", "NdisTcpOffloadSendComplete"):
        assert call in trace_calls, out
    # the stats table: every gauge 0 after close, and no failed call (events are not failures)
    header = next(line.split() for line in lines if line.startswith("layer "))
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.split() and line.split()[0] in PATH and len(line.split()) == len(header)
    }
    assert set(rows) == set(PATH), out
    assert all(row[1:4] == ["0", "0", "0"] for row in rows.values()), out
    assert all(row[header.index("failed")] == "0" for row in rows.values()), out
    # every layer counts the bytes that pass through it: per tour, the 14 offloaded bytes each
    # way through im0 and nic0; the host also the 16 it carried itself while uploaded (the
    # counters are the daemon's totals, and each tour is one more connection)
    sent, received = header.index("bytes_sent"), header.index("bytes_received")
    counted = [(int(rows[n][sent]), int(rows[n][received])) for n in PATH]
    assert counted == [(30 * conn, 30 * conn), (14 * conn, 14 * conn), (14 * conn, 14 * conn)], out
    assert lines[-1].startswith("connections 0"), out


def test_chimneyctl_json(daemon: Daemon) -> None:
    with peer_process("echo") as (_, port):
        script = [
            f"connect {HOST} {port}",
            'send 1 "hi"',
            "recv 1 10",
            "disconnect 1",
            "recv 1 10",
            "close 1",
            "stats",
        ]
        run = chimneyctl(daemon, "--json", "run", *script)
    assert run.returncode == 0, run.stderr
    docs = [json.loads(line) for line in run.stdout.splitlines()]
    assert [d["command"] for d in docs] == script  # one object per command, tagged
    assert all(d["ok"] for d in docs)
    conn, sent, data, status, eof, closed, stats = (d["result"] for d in docs)
    assert conn == 1
    assert sent == 2
    assert data == {"base64": "aGk="}
    assert status == "NDIS_STATUS_SUCCESS"
    assert eof == {"base64": ""}
    assert closed is True
    assert stats["connections"] == 0
    assert all(v == 0 for layer in gauges(stats).values() for v in layer.values())
