"""Helpers for the e2e tests of layer topologies: `[[layer]]` tables, `--check-config` on one,
and a byte round trip through an echo peer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from chimney_client import AsyncClient
from tests.e2e.support import child_env

WAIT = 30.0  # bound on waiting for the child (a hang fails, nothing is timed)


def layers(*specs: tuple[object, ...]) -> str:
    """`[[layer]]` tables from (name, kind, lower?, extra?) tuples."""
    out: list[str] = []
    for spec in specs:
        name, kind, *rest = spec
        lower = rest[0] if rest else []
        extra = rest[1] if len(rest) > 1 else {}
        out += ["[[layer]]", f"name = {json.dumps(name)}", f"kind = {json.dumps(kind)}"]
        if lower:
            out.append(f"lower = {json.dumps(lower)}")
        for key, value in dict(extra).items():  # type: ignore[call-overload]
            out.append(f"{key} = {json.dumps(value)}")
        out.append("")
    return "\n".join(out)


def check_config(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    """`chimneyd --check-config` on `config`."""
    path = tmp_path / "topology.toml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "chimneyd", "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )


async def round_trip(c: AsyncClient, conn: int, data: bytes) -> None:
    """`data` sent on `conn` comes back whole from the echo peer."""
    await c.tcp_send(conn, data)
    got = b""
    while len(got) < len(data):
        got += await c.tcp_recv(conn, len(data) - len(got), 5000)
    assert got == data
