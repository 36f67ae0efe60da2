"""End-to-end support: the real daemon as a subprocess on a free loopback port.

`spawn_daemon(config=..., token=...)` starts `python -m chimneyd --listen 127.0.0.1:0
--invariants [--config FILE]`, waits for its ready line, and at teardown checks what a clean
daemon owes: a final `stack.stats` without invariant violations, exit 0 on SIGTERM within a
deadline, and a `daemon_stopped` log event with nothing left over. Every process started here is
killed in `finally`, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from chimney_client import AsyncClient, CallTimeout, Client

READY_TIMEOUT = 30.0
STOP_DEADLINE = 30.0
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def sigint_default() -> Iterator[None]:
    """Children started inside get SIGINT's default action, as from a terminal.

    A non-interactive shell starts a background job (`make test &`, `nohup ... &`) with SIGINT
    ignored, and an ignored signal stays ignored across fork and exec: Python then never
    installs the handler that raises KeyboardInterrupt, and a child that should stop on Ctrl-C
    ignores it. A handler (not SIG_IGN) is reset to the default by exec. Main thread only."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if old is None else old)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "clients"), env.get("PYTHONPATH", "")) if p
    )
    return env


class LineReader:
    """Drains a child's pipe on a thread so it never blocks on a full pipe."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line starting {prefix!r} within {timeout} s")
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(f"the process exited before printing {prefix!r}")
            if line.startswith(prefix):
                return line

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


@dataclass
class Daemon:
    """A running `chimneyd` subprocess."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stdout: LineReader
    stderr: LineReader
    token: str = ""
    admin_token: str = ""
    returncode: int | None = None
    stopped: bool = False
    #: invariant violations a test caused on purpose (a `raise_next` fault's planted bugs)
    planted_bugs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc status")

    def rss_kb(self) -> int:
        """Resident memory now (VmRSS)."""
        return self._status_kb("VmRSS")

    def rss_peak_kb(self) -> int:
        """The most resident memory the daemon ever had (VmHWM)."""
        return self._status_kb("VmHWM")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.stderr.lines:
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    events.append(obj)
        return events

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("event") == name]

    def wait_events(self, name: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """`events_named`, once it has `count` of them (or what there is after `timeout`): a
        line the daemon wrote before answering reaches `stderr.lines` on the reader's thread,
        which may not have run by the time the answer is read."""
        deadline = time.monotonic() + timeout
        while len(found := self.events_named(name)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return found

    def client(self, **kw: Any) -> Client:
        """A blocking client, authenticated when the daemon has a token."""
        token = self.admin_token or self.token or None
        return Client.connect(self.address, token=token, call_timeout=15.0, **kw)

    async def aclient(self, token: str | None = None, **kw: Any) -> AsyncClient:
        if token is None:
            token = self.token or None
        kw.setdefault("call_timeout", 15.0)
        return await AsyncClient.connect(self.address, token=token, **kw)

    def stop(self, deadline: float = STOP_DEADLINE) -> int:
        """SIGTERM and wait; kill (and fail) if it does not exit within `deadline`."""
        if self.stopped:
            assert self.returncode is not None
            return self.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(deadline)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(
                    f"chimneyd did not exit within {deadline} s of SIGTERM\n" + self.log_tail()
                ) from None
        self.stdout.join()
        self.stderr.join()
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.stderr.lines[-n:])

    def check_final_stats(self) -> None:
        """While still running: the invariant checker (on: `--invariants`) saw no violation but
        the bugs a test planted."""
        with self.client() as c:
            stats = c.stack_stats()
        violations = stats.get("engine", {}).get("invariant_violations")
        # None would mean the checker is off, which no daemon started here may be
        want = self.planted_bugs
        assert violations == want, f"invariant violations: {violations}\n{self.log_tail()}"

    def assert_clean_stop(self) -> None:
        rc = self.stop()
        assert rc == 0, f"chimneyd exited {rc}\n{self.log_tail()}"
        stopped = self.events_named("daemon_stopped")
        assert len(stopped) == 1, f"no daemon_stopped event\n{self.log_tail()}"
        assert stopped[0].get("left_over") == {}, stopped[0]
        assert not self.events_named("daemon_state_left_over"), self.log_tail()
        internal = self.events_named("rpc_internal_error")
        assert not internal, f"INTERNAL errors logged: {internal}"


def popen_chimneyd(
    *args: str, cwd: Path | None = None, stderr: Any = subprocess.PIPE, session: bool = False
) -> subprocess.Popen[bytes]:
    """`python -m chimneyd ARGS` with this checkout on its path, stdout piped, stdin closed;
    `session`: in a session (and process group) of its own, so a test can signal the group."""
    return subprocess.Popen(
        [sys.executable, "-m", "chimneyd", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=child_env(),
        cwd=cwd,
        start_new_session=session,
    )


def run_into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` run with its stdout a pipe whose reader left before the first write (`| head`
    done early): what it says on stderr and how it exits."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            list(argv),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=child_env(),
        )
    finally:
        os.close(write)


def run_on_a_taken_address(cwd: Path) -> tuple[str, subprocess.CompletedProcess[str]]:
    """`python -m chimneyd --listen ADDR` while a socket of this process listens on ADDR: the
    address and the finished run (the daemon cannot listen, so it exits by itself)."""
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        addr = f"{HOST}:{taken.getsockname()[1]}"
        run = subprocess.run(
            [sys.executable, "-m", "chimneyd", "--listen", addr],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
            cwd=cwd,
        )
    return addr, run


def start_daemon(
    tmp_path: Path,
    config: str | None = None,
    *,
    token: str = "",
    admin_token: str = "",
    args: tuple[str, ...] = (),
) -> Daemon:
    cmd = [
        "--listen",
        f"{HOST}:0",
        "--invariants",
        "--log-format",
        "json",
        "--parent-pid",  # a test run killed outright leaves no daemon behind
        str(os.getpid()),
        *args,
    ]
    if config is not None:
        path = tmp_path / f"chimneyd-{time.monotonic_ns()}.toml"
        path.write_text(config)
        cmd += ["--config", str(path)]
    proc = popen_chimneyd(*cmd, cwd=tmp_path)
    out, err = LineReader(proc.stdout), LineReader(proc.stderr)
    try:
        line = out.wait_for("chimneyd listening on ", READY_TIMEOUT)
    except BaseException:
        proc.kill()
        proc.wait(5)
        err.join()
        raise AssertionError("chimneyd did not become ready:\n" + "\n".join(err.lines)) from None
    addr = line.split()[3]
    host, _, port = addr.rpartition(":")
    assert host == HOST, line
    return Daemon(proc, host, int(port), out, err, token=token, admin_token=admin_token)


@contextlib.contextmanager
def peer_process(mode: str = "echo", *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`chimney-peer MODE --listen 127.0.0.1:0` as a subprocess; yields (process, port)."""
    proc = subprocess.Popen(
        [str(BIN / "chimney-peer"), mode, "--listen", f"{HOST}:0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    out, err = LineReader(proc.stdout), LineReader(proc.stderr)
    try:
        try:
            line = out.wait_for(f"chimney-peer {mode} listening on ", READY_TIMEOUT)
        except (TimeoutError, EOFError):
            err.join()
            raise AssertionError("chimney-peer did not start:\n" + "\n".join(err.lines)) from None
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# -- raw wire helpers (bad input, conformance) ------------------------------------------------


class RawConn:
    """A plain socket speaking msgpack by hand, for what no well-behaved client would send."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, msgid: Any, method: Any, params: Any) -> None:
        self.send(msgpack.packb([0, msgid, method, params], use_bin_type=True))

    def read_message(self) -> Any:
        """The next message, or raise EOFError if the daemon closed the connection."""
        for obj in self.unpacker:
            return obj
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                raise EOFError("closed by the daemon")
            self.unpacker.feed(data)
            for obj in self.unpacker:
                return obj

    def call(self, msgid: int, method: Any, params: Any) -> Any:
        self.request(msgid, method, params)
        return self.read_message()

    def closed_by_peer(self) -> bool:
        """Drain until EOF; True if the daemon closed (any leftover messages are read)."""
        try:
            while True:
                self.read_message()
        except EOFError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assert_daemon_serves(d: Daemon) -> None:
    """The daemon is alive and ANOTHER, fresh client gets `ping` → "pong"."""
    assert d.alive(), "chimneyd died\n" + d.log_tail()
    with RawConn((d.host, d.port)) as other:
        if d.token:
            assert other.call(1, "auth", [d.token]) == [1, 1, None, True]
        assert other.call(7, "ping", []) == [1, 7, None, "pong"]


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll an async predicate until true; fails (never times a result) after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def gauges(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        name: {k: layer[k] for k in ("offloads_active", "handles", "outstanding_nbls")}
        for name, layer in stats["layers"].items()
    }


def all_zero(stats: dict[str, Any]) -> bool:
    return all(v == 0 for layer in gauges(stats).values() for v in layer.values())


async def settled(
    stats_of: Callable[[], Awaitable[dict[str, Any]]], timeout: float = 10.0
) -> dict[str, Any]:
    """`stack.stats` once no connection is left and every layer's gauges are back at zero.
    A close is answered when its connection is uploaded; the path and neighbor it leaves unused
    go up after that (spec §3.1), so the gauges get there a little later. Fails with the last
    stats after `timeout` (nothing is timed)."""
    seen: list[dict[str, Any]] = []

    async def done() -> bool:
        seen.append(stats := await stats_of())
        return bool(stats["connections"] == 0 and all_zero(stats))

    try:
        await wait_until(done, timeout)
    except AssertionError:
        raise AssertionError(f"the daemon did not settle: {seen[-1]}") from None
    return seen[-1]


class HandPeer:
    """A loopback TCP server whose accepted sockets the test drives by hand."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((HOST, 0))
        self.srv.listen(16)
        self.port: int = self.srv.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            self.socks.append(s)

    def wait(self, n: int = 1) -> socket.socket:
        deadline = time.monotonic() + 10
        while len(self.socks) < n:
            assert time.monotonic() < deadline, "peer never accepted"
            time.sleep(0.01)
        return self.socks[n - 1]

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.srv.close()


class MsgidClient:
    """A `RawConn` with msgids, answers read by msgid."""

    def __init__(self, d: Daemon, token: str | None = None) -> None:
        self.raw = RawConn((d.host, d.port), timeout=15.0)
        self.msgid = 0
        self.early: dict[int, list[Any]] = {}
        if token:
            assert self.call("auth", token) == [None, True]

    def send(self, method: str, *params: Any) -> int:
        self.msgid += 1
        self.raw.request(self.msgid, method, list(params))
        return self.msgid

    def answer(self, msgid: int) -> list[Any]:
        if msgid in self.early:
            return self.early.pop(msgid)
        while True:
            m = self.raw.read_message()
            if m[0] != 1:
                continue  # a notification
            if m[1] == msgid:
                return [m[2], m[3]]
            self.early[m[1]] = [m[2], m[3]]

    def call(self, method: str, *params: Any) -> list[Any]:
        return self.answer(self.send(method, *params))

    def ok(self, method: str, *params: Any) -> Any:
        err, res = self.call(method, *params)
        assert err is None, (method, params, err)
        return res

    def close(self) -> None:
        self.raw.close()


def echo(c: Client, conn: int, data: bytes) -> None:
    """Send `data` on an echo peer's connection and read it all back, byte for byte."""
    assert c.tcp_send(conn, data) == len(data)
    got = b""
    while len(got) < len(data):
        chunk = c.tcp_recv(conn, len(data) - len(got), 10_000)
        assert chunk, "the echo peer closed"
        got += chunk
    assert got == data


async def assert_a_lost_read_loses_no_bytes(
    c: AsyncClient,
    echo_port: int,
    lost_read: Callable[[int], Awaitable[object]],
    raises: type[BaseException],
) -> None:
    """A read of a connection to the echo peer on `echo_port` (`lost_read(conn)`) that ends in
    `raises` loses nothing: the bytes sent after it all come back to the next reads (contract
    tcp.recv: no data is lost by a timeout), none doubled. Closes `c`."""
    try:
        cid = await c.tcp_connect(HOST, echo_port)
        with pytest.raises(raises):
            await lost_read(cid)
        assert await c.tcp_send(cid, b"hello") == 5
        got = b""
        while len(got) < 5:  # reads of more than was sent: a byte doubled would show
            got += await c.tcp_recv(cid, 100, 2000)
        assert got == b"hello", f"{got!r}; dropped responses: {c._codec.dropped_responses}"
        await c.tcp_close(cid)
    finally:
        await c.close()


async def assert_a_lost_accept_loses_no_connection(
    c: AsyncClient, lost_accept: Callable[[int], Awaitable[object]], raises: type[BaseException]
) -> None:
    """An accept on a new listener (`lost_accept(listener)`) that ends in `raises` loses
    nothing: the connection that comes after it is the next accept's, and the only one there
    is. Closes `c`."""
    try:
        lid = await c.tcp_listen(HOST, 0)
        port = (await c.tcp_listener_info(lid))["port"]
        with pytest.raises(raises):
            await lost_accept(lid)
        _reader, writer = await asyncio.open_connection(HOST, port)
        try:
            cid = await c.tcp_accept(lid, 2000)
            assert await c.tcp_list() == [cid]
            await c.tcp_close(cid)
        finally:
            writer.close()
    finally:
        await c.close()


def assert_a_blocking_lost_read_loses_no_bytes(
    d: Daemon, echo_port: int, call_timeout: float, lost_read: Callable[[Client, int], object]
) -> None:
    """`assert_a_lost_read_loses_no_bytes` for the blocking client, whose `call_timeout` ends
    `lost_read(c, conn)` in `CallTimeout`. Blocks: run it off the loop the echo peer is on."""
    token = d.admin_token or d.token or None
    with Client.connect(d.address, token=token, call_timeout=call_timeout) as c:
        cid = c.tcp_connect(HOST, echo_port)
        with pytest.raises(CallTimeout):
            lost_read(c, cid)
        assert c.tcp_send(cid, b"hello") == 5
        got = b""
        while len(got) < 5:
            got += c.tcp_recv(cid, 100, 2000)
        assert got == b"hello", got
        c.tcp_close(cid)
