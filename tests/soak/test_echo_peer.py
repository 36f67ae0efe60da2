"""The soak's echo peer on real loopback sockets: it echoes, and on a reset order the RST comes
in from the wire after every echoed byte was delivered, with counts that say so."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from chimney_client.soak.echo_peer import EchoPeer
from chimney_client.soak.peer_control import PeerControl


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), 10)


@pytest.mark.timeout(30)
async def test_reset_order_sends_an_rst_after_the_echo() -> None:
    peer = EchoPeer()
    await peer.start("127.0.0.1", 0)
    control = PeerControl(*peer.control)
    reader, writer = await asyncio.open_connection(*peer.address)
    try:
        data = bytes(range(256)) * 400  # 100 KiB
        writer.write(data)
        assert await _read_exactly(reader, len(data)) == data
        port = writer.get_extra_info("sockname")[1]
        counts = await control.reset(port)
        # everything it read it had echoed, and we had acknowledged the echo: all delivered
        assert counts == {"received": len(data), "delivered": len(data)}
        with pytest.raises(ConnectionResetError):
            while True:  # the RST, not a FIN: reading ends in ECONNRESET, not b""
                if not await asyncio.wait_for(reader.read(65536), 10):
                    raise AssertionError("FIN instead of RST")
        with pytest.raises(LookupError, match="missing"):
            await control.reset(port)  # gone now
        assert peer.resets == 1
    finally:
        writer.close()
        await control.close()
        await peer.close()


@pytest.mark.timeout(30)
async def test_bytes_the_peer_never_read_are_past_the_cut() -> None:
    """Bytes still unread in the peer's socket when it resets are not counted as received: the
    soak excuses exactly those."""
    peer = EchoPeer()
    await peer.start("127.0.0.1", 0)
    control = PeerControl(*peer.control)
    reader, writer = await asyncio.open_connection(*peer.address)
    try:
        writer.write(b"x" * 1000)
        await _read_exactly(reader, 1000)
        port = writer.get_extra_info("sockname")[1]
        (conn,) = peer.by_port.values()
        conn.transport.pause_reading()  # a peer busy elsewhere: the next bytes wait in its socket
        writer.write(b"y" * 5000)
        await writer.drain()
        counts = await control.reset(port)
        assert counts == {"received": 1000, "delivered": 1000}
    finally:
        writer.close()
        await control.close()
        await peer.close()


#: a stand-in for chimney-soak: starts a peer as the soak does, then waits to be killed
PARENT = """
import os, subprocess, sys, time
peer = subprocess.Popen(
    [sys.executable, "-m", "chimney_client.soak.echo_peer", "--listen", "127.0.0.1:0",
     "--parent-pid", str(os.getpid())],
    stdout=subprocess.PIPE, start_new_session=True,
)
print(peer.pid, peer.stdout.readline().decode().strip(), flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.timeout(60)
def test_a_peer_stops_by_itself_when_the_soak_that_started_it_is_killed() -> None:
    """`chimney-soak` killed outright (SIGKILL) cannot stop its echo peers; started with
    --parent-pid they notice the parent is gone and stop."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    pid_s, ready = parent.stdout.readline().decode().split(" ", 1)
    peer_pid = int(pid_s)
    assert "listening on" in ready
    time.sleep(1.0)
    assert _alive(peer_pid)  # the parent lives: the peer serves on
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(peer_pid):
        assert time.monotonic() < deadline, "the echo peer outlived its killed parent"
        time.sleep(0.05)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"])
def test_the_echo_peer_listens_on_loopback_only(
    listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its control port, on the same host, takes reset orders: never off loopback."""
    from chimney_client.soak.echo_peer import main

    with pytest.raises(SystemExit) as stopped:
        main(["--listen", listen])
    assert stopped.value.code == 2
    assert "is not a loopback address" in capsys.readouterr().err
