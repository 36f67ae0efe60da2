"""The `chimneyd` command: --check-config on good and bad files, and the real daemon as a
subprocess (ready line, RPC, SIGHUP log reopen, SIGTERM → exit 0)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # bound on waiting for the child (a hang fails, nothing is timed)

GOOD = """
[rpc]
listen = ["127.0.0.1:7999", "unix:/tmp/chimneyd-test.sock"]
token = "s3cret"
max_in_flight = 7

[log]
format = "json"
level = "debug"

[engine]
trace_depth = 32
invariants = true

[[layer]]
name = "tcpip"
kind = "host"
lower = ["team0"]

[[layer]]
name = "team0"
kind = "passthrough"
lower = ["nic0"]

[[layer]]
name = "nic0"
kind = "target"
max_connections = 100
"""

HOST_IM = '[[layer]]\nname = "tcpip"\nkind = "host"\nlower = ["im0"]\n'
IM_NIC = '[[layer]]\nname = "im0"\nkind = "passthrough"\nlower = ["nic0"]\n'
NIC = '[[layer]]\nname = "nic0"\nkind = "target"\n'

BAD = {
    "unknown key": ("[rpc]\nbogus = 1\n", "rpc.bogus", "unknown key"),
    "unknown section": ("[rcp]\n", "rcp", "unknown section"),
    "wrong type": ('[rpc]\nmax_in_flight = "many"\n', "rpc.max_in_flight", "integer"),
    "not positive": ("[rpc]\nmax_message_bytes = 0\n", "rpc.max_message_bytes", "positive"),
    "bool for int": ("[engine]\ntrace_depth = true\n", "engine.trace_depth", "integer"),
    "nan deadline": ("[rpc]\nshutdown_deadline_s = nan\n", "rpc.shutdown_deadline_s", "number"),
    "bad listen": ('[rpc]\nlisten = "localhost"\n', "rpc.listen", "host:port"),
    "off loopback": ('[rpc]\nlisten = "0.0.0.0:7411"\n', "rpc.listen", "token"),
    "bad log format": ('[log]\nformat = "xml"\n', "log.format", '"xml"'),
    "bad log level": ('[log]\nlevel = "loud"\n', "log.level", '"loud"'),
    "missing lower": (
        HOST_IM + IM_NIC.replace('"nic0"]', '"nic9"]') + NIC,
        "layer[1].lower",
        'no layer named "nic9"',
    ),
    "bad kind": (HOST_IM + IM_NIC + NIC.replace('"target"', '"nicc"'), "layer[2].kind", "nicc"),
    "two hosts": (HOST_IM + IM_NIC + NIC + HOST_IM.replace("tcpip", "tcp2"), "layer[3]", "host"),
    "no host": (IM_NIC + NIC, "layer", "host"),
    "duplicate name": (HOST_IM + IM_NIC + NIC + NIC, "layer[3].name", '"nic0"'),
    "target with lower": (
        HOST_IM + IM_NIC + NIC + 'lower = ["im0"]\n',
        "layer[2].lower",
        "target",
    ),
    "passthrough with two": (
        HOST_IM + IM_NIC.replace('["nic0"]', '["nic0", "nic1"]') + NIC + NIC.replace("0", "1"),
        "layer[1].lower",
        "exactly one",
    ),
    "mux without lower": (
        HOST_IM.replace("im0", "mx") + '[[layer]]\nname = "mx"\nkind = "mux"\n' + NIC,
        "layer[1].lower",
        "at least one",
    ),
    "mux bad policy": (
        HOST_IM.replace("im0", "mx")
        + '[[layer]]\nname = "mx"\nkind = "mux"\nlower = ["nic0"]\npolicy = "random"\n'
        + NIC,
        "layer[1].policy",
        "round-robin",
    ),
    "policy off a mux": (HOST_IM + IM_NIC + 'policy = "hash"\n' + NIC, "layer[1].policy", "mux"),
    "nic under two layers": (
        HOST_IM.replace('["im0"]', '["mx"]')
        + '[[layer]]\nname = "mx"\nkind = "mux"\nlower = ["im0", "nic0"]\n'
        + IM_NIC
        + NIC,
        "layer[2].lower",
        "bound by layer[1]",
    ),
    "cycle": (
        HOST_IM
        + IM_NIC.replace('["nic0"]', '["im1"]')
        + '[[layer]]\nname = "im1"\nkind = "passthrough"\nlower = ["im0"]\n',
        "lower",
        "cycle",
    ),
    "ip version off a target": (
        HOST_IM + IM_NIC + "ipv6 = false\n" + NIC,
        "layer[1].ipv6",
        "target",
    ),
    "a target offloading neither ip version": (
        HOST_IM + IM_NIC + NIC + "ipv4 = false\nipv6 = false\n",
        "layer[2]",
        "IPv4, IPv6 or both",
    ),
    "layer missing name": ('[[layer]]\nkind = "host"\n', "layer[0].name", "missing"),
    "not toml": ("[rpc\nlisten = ", "not valid TOML", ""),
}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "clients"), env.get("PYTHONPATH", "")) if p
    )
    return env


def chimneyd(
    tmp_path: Path, *args: str, config: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "chimneyd", *args]
    if config is not None:
        path = tmp_path / "chimneyd.toml"
        path.write_text(config)
        cmd += ["--config", str(path)]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )


def test_check_config_good_file(tmp_path: Path) -> None:
    run = chimneyd(tmp_path, "--check-config", config=GOOD)
    assert run.returncode == 0, run.stderr
    cfg = json.loads(run.stdout)
    assert cfg["rpc"]["listen"] == ["127.0.0.1:7999", "unix:/tmp/chimneyd-test.sock"]
    assert cfg["rpc"]["token"] == "<set>"  # never printed
    assert "s3cret" not in run.stdout
    assert cfg["rpc"]["max_in_flight"] == 7
    assert cfg["rpc"]["max_connections_per_client"] == 10000  # defaults fill in
    assert cfg["rpc"]["max_message_bytes"] == 8 * 1024 * 1024
    assert cfg["log"] == {"format": "json", "level": "debug", "file": ""}
    assert cfg["engine"]["trace_depth"] == 32 and cfg["engine"]["invariants"] is True
    assert [(la["name"], la["kind"], la["lower"]) for la in cfg["layer"]] == [
        ("tcpip", "host", ["team0"]),
        ("team0", "passthrough", ["nic0"]),
        ("nic0", "target", []),
    ]
    assert cfg["layer"][2]["max_connections"] == 100


def test_check_config_default_and_overrides(tmp_path: Path) -> None:
    run = chimneyd(tmp_path, "--check-config")
    assert run.returncode == 0, run.stderr
    cfg = json.loads(run.stdout)
    assert cfg["rpc"]["listen"] == ["127.0.0.1:7411"]
    assert [(la["name"], la["kind"], la["lower"]) for la in cfg["layer"]] == [
        ("tcpip", "host", ["im0"]),
        ("im0", "passthrough", ["nic0"]),
        ("nic0", "target", []),
    ]
    run = chimneyd(
        tmp_path,
        "--check-config",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "unix:/tmp/x.sock",
        "--log-format",
        "console",
        "--log-level",
        "warning",
    )
    assert run.returncode == 0, run.stderr
    cfg = json.loads(run.stdout)
    assert cfg["rpc"]["listen"] == ["127.0.0.1:0", "unix:/tmp/x.sock"]
    assert cfg["log"]["format"] == "console" and cfg["log"]["level"] == "warning"
    # over a file: the command line replaces the file's addresses, the rest of the file stays
    run = chimneyd(tmp_path, "--check-config", "--listen", "127.0.0.1:0", config=GOOD)
    assert run.returncode == 0, run.stderr
    cfg = json.loads(run.stdout)
    assert cfg["rpc"]["listen"] == ["127.0.0.1:0"] and cfg["rpc"]["max_in_flight"] == 7


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_check_config_bad_file(tmp_path: Path, case: str) -> None:
    config, key, reason = BAD[case]
    run = chimneyd(tmp_path, "--check-config", config=config)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr  # one line, no traceback
    assert key in lines[0] and reason in lines[0], lines[0]


def test_missing_config_file(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "chimneyd", "--check-config", "--config", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=child_env(),
    )
    assert run.returncode == 2 and "No such file" in run.stderr


def test_bad_config_refused_at_start(tmp_path: Path) -> None:
    run = chimneyd(tmp_path, "--listen", "127.0.0.1:0", config="[engine]\ntrace_depht = 3\n")
    assert run.returncode == 2
    assert "engine.trace_depht" in run.stderr and "unknown key" in run.stderr
    assert "listening" not in run.stdout


def test_non_loopback_listen_needs_a_token(tmp_path: Path) -> None:
    run = chimneyd(tmp_path, "--check-config", "--listen", "0.0.0.0:0")
    assert run.returncode == 2 and "rpc.listen" in run.stderr and "token" in run.stderr
    run = chimneyd(
        tmp_path, "--check-config", "--listen", "0.0.0.0:0", config='[rpc]\ntoken = "t"\n'
    )
    assert run.returncode == 0, run.stderr


# -- the real daemon -------------------------------------------------------------------------------


class Child:
    """A daemon subprocess; stdout lines are read on a thread so a wait can be bounded."""

    def __init__(
        self, args: list[str], cwd: Path, command: tuple[str, ...] = ("-m", "chimneyd")
    ) -> None:
        self.stderr_path = cwd / "stderr.log"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *command, *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            cwd=cwd,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def ready_line(self) -> str:
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("no ready line:\n" + self.stderr()) from None
        assert line is not None, "the daemon exited:\n" + self.stderr()
        return line

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(WAIT)
        finally:
            self._stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        self._stderr.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    children: list[Child] = []

    def start(*args: str) -> Child:
        child = Child(list(args), tmp_path)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def call(sock: socket.socket, msgid: int, method: str, *params: Any) -> list[Any]:
    sock.sendall(msgpack.packb([0, msgid, method, list(params)]))
    unpacker = msgpack.Unpacker(raw=False)
    while True:
        data = sock.recv(1 << 16)
        assert data, "the daemon closed the connection"
        unpacker.feed(data)
        for msg in unpacker:
            if msg[0] == 1 and msg[1] == msgid:
                return list(msg)


def test_daemon_serves_and_stops_cleanly(spawn: Any, tmp_path: Path) -> None:
    """The default topology on a free port and a unix socket: ready line, RPC, SIGHUP reopens the
    log file, SIGTERM with a listener open → exit 0 with nothing left over."""
    sock_path = tmp_path / "rpc.sock"
    log_path = tmp_path / "chimneyd.log"
    config = tmp_path / "c.toml"
    config.write_text(f'[log]\nfile = "{log_path}"\nformat = "json"\n')
    child = spawn(
        "--config", str(config), "--listen", "127.0.0.1:0", "--listen", f"unix:{sock_path}"
    )
    line = child.ready_line()
    prefix = "chimneyd listening on "
    assert line.startswith(prefix), line
    tcp, unix = line[len(prefix) :].split(" ")
    host, port = tcp.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0  # the port actually bound
    assert unix == f"unix:{sock_path}"

    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        assert call(sock, 1, "ping") == [1, 1, None, "pong"]
        info = call(sock, 2, "stack.info")[3]
        assert info["contract"] == 1
        assert [la["name"] for la in info["layers"]] == ["tcpip", "im0", "nic0"]
        assert tcp in info["rpc"]["listen"]
        lid = call(sock, 3, "tcp.listen", "127.0.0.1", 0)[3]
        assert isinstance(lid, int)
    with socket.socket(socket.AF_UNIX) as usock:
        usock.settimeout(WAIT)
        usock.connect(str(sock_path))
        assert call(usock, 1, "ping") == [1, 1, None, "pong"]

    # SIGHUP: after a rotation the daemon writes to a new file at the old path
    rotated = tmp_path / "chimneyd.log.1"
    log_path.rename(rotated)
    child.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while not log_path.exists():  # the reopen creates the file again
        assert time.monotonic() < deadline, "SIGHUP did not reopen the log file"
        time.sleep(0.02)
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        assert call(sock, 1, "ping")[3] == "pong"
        # the connect/disconnect lines of this client land in the reopened file
    assert child.stop(signal.SIGTERM) == 0, child.stderr()
    events = [json.loads(x)["event"] for x in rotated.read_text().splitlines()]
    assert "daemon_ready" in events
    new_lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    new_events = [x["event"] for x in new_lines]
    assert "daemon_stopped" in new_events and "rpc_client_connected" in new_events
    stopped = next(x for x in new_lines if x["event"] == "daemon_stopped")
    assert stopped["left_over"] == {} and stopped["errors"] == []
    assert "daemon_state_left_over" not in new_events
    assert not sock_path.exists()  # the unix socket is removed at exit


@pytest.mark.parametrize(("given", "runs_on"), [(None, "malloc"), ("pymalloc", "pymalloc")])
def test_the_daemon_says_which_allocator_it_runs_on(
    spawn: Any, monkeypatch: pytest.MonkeyPatch, given: str | None, runs_on: str
) -> None:
    """Unless PYTHONMALLOC is set, chimneyd re-executes itself on malloc; `stack.info` says
    which allocator answers (it moves the CPU per round, README "Memory")."""
    if given is None:
        monkeypatch.delenv("PYTHONMALLOC", raising=False)
    else:
        monkeypatch.setenv("PYTHONMALLOC", given)
    child = spawn("--listen", "127.0.0.1:0")
    host, port = child.ready_line().rsplit(" ", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        assert call(sock, 1, "stack.info")[3]["allocator"] == runs_on
    assert child.stop(signal.SIGTERM) == 0, child.stderr()


def test_log_file_that_cannot_be_opened(tmp_path: Path) -> None:
    run = chimneyd(
        tmp_path, "--listen", "127.0.0.1:0", config=f'[log]\nfile = "{tmp_path}/no/such/dir/x"\n'
    )
    assert run.returncode == 2
    assert "log.file" in run.stderr


#: The directories the systemd units make before the daemon starts (RuntimeDirectory=,
#: LogsDirectory=): --check-config insists that a unix socket's and the log file's exist.
UNIT_DIRECTORIES = ("/run/chimneyd", "/var/log/chimneyd")


def deployed(config: Path, tmp_path: Path) -> Path:
    """A deploy configuration as on its machine: the units' directories made, under tmp_path."""
    text = config.read_text()
    for directory in UNIT_DIRECTORIES:
        here = tmp_path / directory.strip("/")
        here.mkdir(parents=True, exist_ok=True)
        text = text.replace(directory + "/", f"{here}/")
    copy = tmp_path / config.name
    copy.write_text(text)
    return copy


def test_deploy_configurations_need_the_units_directories(tmp_path: Path) -> None:
    """Without the directories the units make, --check-config names the missing one (as
    start-up would fail on it), rather than passing a file the daemon cannot start with."""
    run = chimneyd(tmp_path, "--config", str(ROOT / "deploy" / "chimneyd.toml"), "--check-config")
    if all(os.path.isdir(d) and os.access(d, os.W_OK) for d in UNIT_DIRECTORIES):
        assert run.returncode == 0, run.stderr  # a machine that has them: nothing to miss
        return
    assert run.returncode == 2
    assert "does not exist" in run.stderr or "not writable" in run.stderr, run.stderr


def test_the_fleet_unit_runs_a_shard_per_cpu_on_a_valid_configuration(tmp_path: Path) -> None:
    """deploy/fleet: the unit's flags (`--shards auto`) pass --check-config with its config."""
    unit = (ROOT / "deploy" / "fleet" / "chimneyd.service").read_text()
    (exec_start,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    _, *flags = exec_start.removeprefix("ExecStart=").split()
    assert flags[flags.index("--shards") + 1] == "auto"
    assert "LogsDirectory=chimneyd" in unit
    config = deployed(ROOT / "deploy" / "fleet" / "chimneyd.toml", tmp_path)
    flags[flags.index("--config") + 1] = str(config)
    run = chimneyd(tmp_path, *flags, "--check-config")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["daemon"]["shards"] == len(os.sched_getaffinity(0))


def test_deploy_files_are_a_valid_configuration(tmp_path: Path) -> None:
    """deploy/chimneyd.toml passes --check-config with the flags the systemd unit starts with."""
    unit = (ROOT / "deploy" / "chimneyd.service").read_text()
    (exec_start,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    binary, *flags = exec_start.removeprefix("ExecStart=").split()
    assert binary.endswith("/chimneyd")
    assert flags[flags.index("--config") + 1] == "/etc/chimneyd/chimneyd.toml"
    assert "RuntimeDirectory=chimneyd" in unit and "LogsDirectory=chimneyd" in unit
    flags[flags.index("--config") + 1] = str(deployed(ROOT / "deploy" / "chimneyd.toml", tmp_path))
    run = chimneyd(tmp_path, *flags, "--check-config")
    assert run.returncode == 0, run.stderr
    cfg = json.loads(run.stdout)
    assert [la["name"] for la in cfg["layer"]] == ["tcpip", "im0", "im1", "nic0"]
    assert cfg["log"]["file"] == f"{tmp_path}/var/log/chimneyd/chimneyd.log"
    assert f"unix:{tmp_path}/run/chimneyd/chimneyd.sock" in cfg["rpc"]["listen"]
    # the unit's TimeoutStopSec against the daemon's own stop: tests/docs/test_deploy_units.py


def test_parent_pid_must_be_our_parent(tmp_path: Path) -> None:
    run = chimneyd(tmp_path, "--listen", "127.0.0.1:0", "--parent-pid", "1")
    assert run.returncode == 2
    assert "--parent-pid 1 is not our parent" in run.stderr
    assert "listening" not in run.stdout


#: A stand-in for a tool that spawns the daemon (the soak, the bench, a test run): it names
#: itself with --parent-pid, says the daemon's pid, and waits to be killed.
_SPAWNER = """
import os, subprocess, sys, time
args = ["--listen", "127.0.0.1:0", "--log-format", "json", "--parent-pid", str(os.getpid())]
d = subprocess.Popen([sys.executable, "-m", "chimneyd", *args] + sys.argv[1:])
print("daemon pid", d.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.parametrize("shards", ["1", "2"])
def test_a_daemon_started_with_parent_pid_stops_when_its_parent_is_killed(
    tmp_path: Path, shards: str
) -> None:
    """The tool that started it is killed outright (SIGKILL): the daemon (with shards, their
    supervisor) stops by itself, gracefully (its stop report is written), instead of serving
    for ever with nobody to stop it."""
    spawner = Child(["--shards", shards], tmp_path, command=("-c", _SPAWNER))
    try:
        first = spawner.ready_line()  # the daemon shares the spawner's stdout and stderr
        assert first.startswith("daemon pid "), first
        pid = int(first.split()[2])
        assert spawner.ready_line().startswith("chimneyd listening on "), spawner.stderr()
        assert not _gone(pid)
        spawner.kill()
        deadline = time.monotonic() + WAIT
        while not _gone(pid):
            assert time.monotonic() < deadline, "the daemon outlived the tool that started it"
            time.sleep(0.05)
    finally:
        spawner.kill()
    events = [json.loads(x)["event"] for x in spawner.stderr().splitlines() if x[:1] == "{"]
    assert "daemon_parent_gone" in events
    assert "daemon_stopped" in events or "supervisor_stopped" in events
