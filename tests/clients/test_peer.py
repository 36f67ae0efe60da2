"""chimney-peer over real loopback sockets: byte-exact echo/sink/source, half-close, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chimney_client import PatternStream, start_peer
from chimney_client.peer import main as peer_main
from chimney_client.peer import remote_listen


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    # Test-side plumbing only; the peer itself runs on Protocols.
    return await asyncio.wait_for(reader.read(), 30)


async def test_echo_is_byte_exact_and_half_close_finishes_writing() -> None:
    async with await start_peer("echo", "127.0.0.1", 0) as peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
        payload = PatternStream(11).read(4 * 1024 * 1024)  # more than the echo's write buffer
        writer.write(payload)
        writer.write_eof()  # half-close: the echo must still return everything, then FIN
        got = await _read_all(reader)
        writer.close()
        assert got == payload
        await writer.wait_closed()
    assert peer.stats.bytes_received == peer.stats.bytes_sent == len(payload)
    assert peer.stats.eofs == 1


async def test_sink_counts_and_closes_on_fin() -> None:
    async with await start_peer("sink", "127.0.0.1", 0) as peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
        writer.write(b"x" * 100_000)
        writer.write_eof()
        assert await _read_all(reader) == b""
        writer.close()
        await writer.wait_closed()
        assert peer.stats.bytes_received == 100_000


async def test_source_sends_seeded_stream_then_fin() -> None:
    async with await start_peer("source", "127.0.0.1", 0, source_bytes=3_000_001, seed=5) as peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
        got = await _read_all(reader)
        assert got == PatternStream(5).read(3_000_001)
        writer.close()
        await writer.wait_closed()


async def test_many_connections_and_reset() -> None:
    async with await start_peer("echo", "127.0.0.1", 0, max_conns=3) as peer:
        conns = [await asyncio.open_connection("127.0.0.1", peer.port) for _ in range(3)]
        for i, (_, w) in enumerate(conns):
            w.write(b"%d" % i)
        for i, (r, _) in enumerate(conns):
            assert await asyncio.wait_for(r.readexactly(1), 10) == b"%d" % i
        # Over the limit: reset at once (seen as a reset, or as an empty read if it raced).
        r4, w4 = await asyncio.open_connection("127.0.0.1", peer.port)
        try:
            assert await asyncio.wait_for(r4.read(), 10) == b""
        except ConnectionResetError:
            pass
        w4.close()
        # An RST from our side does not disturb the peer.
        conns[0][1].transport.abort()
        for _, w in conns[1:]:
            w.close()
        while peer.stats.active:
            await asyncio.sleep(0.01)
        assert peer.stats.rejected == 1


async def test_stalled_echo_still_returns_everything() -> None:
    async with await start_peer("echo", "127.0.0.1", 0, stall_ms=1) as peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
        payload = PatternStream(1).read(200_000)
        writer.write(payload)
        writer.write_eof()
        assert await _read_all(reader) == payload
        writer.close()


def test_subprocess_ready_line_port_file_and_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chimney_client.peer",
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("chimney-peer echo listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert port > 0 and int(port_file.read_text()) == port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"ping")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(10) == b"ping"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("listen", ["0.0.0.0:9001", "[::]:9001", "192.0.2.1:9001", "peer:9001"])
def test_the_command_refuses_an_address_off_loopback(
    listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """chimneyd dials loopback peers only: an address off loopback would serve no daemon and
    open the peer to the network, so it takes --allow-remote (nothing is bound here)."""
    with pytest.raises(SystemExit) as stopped:
        peer_main(["echo", "--listen", listen])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "--allow-remote" in err, err


def test_loopback_addresses_pass_and_allow_remote_warns() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert remote_listen(host, allow_remote=False) is None
    warning = remote_listen("0.0.0.0", allow_remote=True)
    assert warning is not None and "off loopback" in warning
