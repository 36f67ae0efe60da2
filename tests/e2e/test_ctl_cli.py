"""chimneyctl as people run it: the console script against a real daemon subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import (
    BIN,
    HOST,
    ROOT,
    Daemon,
    LineReader,
    child_env,
    peer_process,
    run_into_a_closed_pipe,
    sigint_default,
)

ADMIN = "adm1n"
ADMIN_CONFIG = f'[rpc]\nadmin_token = "{ADMIN}"\n'
SVG = "{http://www.w3.org/2000/svg}"


def ctl(
    daemon: Daemon, *args: str, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    auth = ["--token", token] if token else []
    return subprocess.run(
        [str(BIN / "chimneyctl"), "--rpc", daemon.address, *auth, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        stdin=subprocess.DEVNULL,
    )


def ctl_process(daemon: Daemon, *args: str) -> subprocess.Popen[bytes]:
    # faulthandler: one that is stuck prints every thread's stack on SIGABRT (exits_on_ctrl_c);
    # sigint_default: a test run in the background must not hand its ignored SIGINT down
    with sigint_default():
        return subprocess.Popen(
            [str(BIN / "chimneyctl"), "--rpc", daemon.address, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**child_env(), "PYTHONFAULTHANDLER": "1"},
        )


def exits_on_ctrl_c(proc: subprocess.Popen[bytes], err: LineReader) -> None:
    """Ctrl-C (SIGINT): chimneyctl exits 130 within 10 s. If it does not, the failure shows
    where it was: SIGABRT makes it print its stacks on stderr, which `err` drains."""
    proc.send_signal(signal.SIGINT)
    try:
        status = proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        err.join(2)
        where = "\n".join(err.lines[-60:])
        raise AssertionError(f"chimneyctl did not exit within 10 s of SIGINT:\n{where}") from None
    assert status == 130, "\n".join(err.lines[-20:])


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def echo_port() -> Iterator[int]:
    with peer_process("echo") as (_, port):
        yield port


@pytest.fixture
def admin_daemon(spawn_daemon: SpawnDaemon) -> Daemon:
    return spawn_daemon(ADMIN_CONFIG, admin_token=ADMIN)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


# -- --json --------------------------------------------------------------------------------------


def test_json_after_the_command_and_errors_on_stdout(daemon: Daemon) -> None:
    run = ctl(daemon, "stats", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert (doc["command"], doc["ok"]) == ("stats", True)
    assert set(doc["result"]["layers"]) == {"tcpip", "im0", "nic0"}

    run = ctl(daemon, "--json", "run", "ping", "close 99", "ping")
    assert (run.returncode, run.stderr) == (1, "")
    docs = json_lines(run.stdout)
    assert [(d["command"], d["ok"]) for d in docs] == [("ping", True), ("close 99", False)]
    assert docs[1]["error"]["symbol"] == "NOT_FOUND" and docs[1]["error"]["code"] == 3


def test_info_names_the_build_and_allocator_that_answer(daemon: Daemon) -> None:
    """Both move the daemon's CPU per round: `chimneyctl info` says them in its first line, as
    stack.info gives them."""
    run = ctl(daemon, "--json", "info")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)["result"]
    assert info["build"] in ("python", "compiled") and info["allocator"]
    run = ctl(daemon, "info")
    assert run.returncode == 0, run.stderr
    head = run.stdout.splitlines()[0]
    assert f"· {info['build']} build · allocator {info['allocator']}" in head, head


def test_query_update_metrics_and_live_info(daemon: Daemon, echo_port: int) -> None:
    run = ctl(
        daemon,
        "--json",
        "run",
        f"connect {HOST} {echo_port} as c",
        "send c hello",
        "recv c 100",
        "query c",
        "update c RcvIndicationSize=512",
        "info c",
        "info c --live",
        "upload c",
        "info c --live",
        "metrics",
        "close c",
    )
    assert run.returncode == 0, run.stderr
    docs = {d["command"]: d for d in json_lines(run.stdout)}
    query = docs["query c"]["result"]
    assert query["State"] == "TcpConnectionEstablished"
    assert query["SndUna"] == query["SndNxt"]  # hello was acknowledged
    assert docs["update c RcvIndicationSize=512"]["result"]["status"] == "NDIS_STATUS_SUCCESS"
    assert "delegated_live" not in docs["info c"]["result"]
    live = [d for d in json_lines(run.stdout) if d["command"] == "info c --live"]
    assert live[0]["result"]["delegated_live"]["SndUna"] == query["SndUna"]
    assert "delegated_live" not in live[1]["result"] and "not offloaded" in live[1]["note"]
    assert "chimney_offloads_active" in docs["metrics"]["result"]

    run = ctl(daemon, "run", f"connect {HOST} {echo_port} as c", "info c --live", "query c")
    assert run.returncode == 0, run.stderr
    assert "delegated (live: tcp.query now):" in run.stdout
    assert "delegated (as of offload/last query):" not in run.stdout


def test_info_shows_the_nics_of_a_mux(spawn_daemon: SpawnDaemon, echo_port: int) -> None:
    """A teaming daemon: `info` has a row per NIC under team0 with the connections each carries,
    and a NIC taken out shows it."""
    daemon = spawn_daemon((ROOT / "deploy" / "teaming.toml").read_text())
    connect = f"connect {HOST} {echo_port}"
    run = ctl(daemon, "run", connect, connect, "info", "fault inject nic_down layer=nic2", "info")
    assert run.returncode == 0, run.stderr
    assert "note: fault 1 stays on nic2" in run.stderr
    lines = run.stdout.splitlines()
    tables = []
    for at, line in enumerate(lines):
        if line.startswith("team0 (mux) · policy"):
            header = lines[at + 1].split()
            rows = [dict(zip(header, r.split(), strict=True)) for r in lines[at + 3 : at + 6]]
            tables.append({r["lower"]: r for r in rows})
    before, after = tables
    assert list(before) == ["nic0", "nic1", "nic2"]
    assert sum(int(r["connections"]) for r in before.values()) == 2
    assert before["nic2"]["in_service"] == "true"
    assert (after["nic2"]["in_service"], after["nic2"]["taken_out"]) == ("false", "true")
    ctl(daemon, "fault", "clear", "1")


# -- faults --------------------------------------------------------------------------------------


def test_a_run_that_stops_clears_the_faults_it_injected(daemon: Daemon, echo_port: int) -> None:
    run = ctl(
        daemon,
        "run",
        f"connect {HOST} {echo_port} as c",
        "fault inject delay layer=im0 call=MiniportTcpOffloadSend ms=1",
        "send c hi",
        # after the send (a stalled peer holds it), and long enough to be still armed when the
        # run stops: only faults still armed are named as cleared
        "fault inject stall conn=c ms=60000",
        "close 99",
    )
    assert run.returncode == 1
    assert "cleared faults" in run.stderr
    # a layer's fault outlives its maker: without the clean-up, the delay would still be there
    listed = ctl(daemon, "fault", "list", "--json")
    assert json.loads(listed.stdout)["result"] == []


def test_recv_waitall_takes_every_byte_asked(daemon: Daemon, echo_port: int) -> None:
    """`recv --waitall` is tcp.recv's waitall: exactly MAX bytes, over two sends the echo
    returns one by one; a waitall read the bytes do not fill times out (exit 1), and a short
    one leaves the rest to the next read."""
    run = ctl(
        daemon,
        "run",
        f"connect {HOST} {echo_port} as c",
        "send c hello",
        "send c world",
        "recv c 10 --waitall",
        "send c abc",
        "recv c 2 --waitall",
        "recv c 5",
        "close c",
    )
    assert run.returncode == 0, run.stderr
    assert "10 bytes: helloworld\n" in run.stdout, run.stdout
    assert "2 bytes: ab\n1 byte: c\n" in run.stdout, run.stdout
    short = ctl(
        daemon,
        "run",
        f"connect {HOST} {echo_port} as c",
        "send c abc",
        "recv c 5 --waitall --timeout-ms 300",
    )
    assert short.returncode == 1, short.stdout
    assert "TIMEOUT" in short.stderr, short.stderr


# -- one-shot commands ---------------------------------------------------------------------------


def test_one_shot_connect_says_its_connection_is_gone(daemon: Daemon, echo_port: int) -> None:
    run = ctl(daemon, "connect", HOST, str(echo_port))
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"conn \d+\n", run.stdout)
    assert "was closed when chimneyctl left" in run.stderr and "chimneyctl run" in run.stderr
    deadline = time.monotonic() + 10
    with daemon.client() as c:
        while c.stack_stats()["connections"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.stack_stats()["connections"] == 0


def test_subscribe_hints_without_admin_and_exits_130_on_ctrl_c(daemon: Daemon) -> None:
    proc = ctl_process(daemon, "subscribe", "*")
    try:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        out.wait_for("subscribed to this client's own connections (no admin token)", 30)
        assert err.wait_for("hint:", 10).startswith("hint: without the admin token")
        exits_on_ctrl_c(proc, err)
    finally:
        stop(proc)


def test_events_come_in_the_order_they_happened(daemon: Daemon, echo_port: int) -> None:
    """An offloaded connection's close uploads it first: `uploaded` comes before `closed`."""
    run = ctl(
        daemon,
        "--json",
        "run",
        f"connect {HOST} {echo_port} as c",
        "subscribe c",
        "upload c",
        "offload c",
        "close c",
        "events --count 4 --timeout-ms 30000",
    )
    assert run.returncode == 0, run.stderr
    events = [(d["event"], d["info"].get("reason")) for d in json_lines(run.stdout) if "event" in d]
    assert events == [
        ("uploaded", "terminate"),
        ("offloaded", None),
        ("uploaded", "terminate"),
        ("closed", None),
    ], run.stdout


# -- trace pictures ------------------------------------------------------------------------------


def test_trace_svg_and_mermaid(daemon: Daemon, echo_port: int, tmp_path: Path) -> None:
    svg = tmp_path / "send.svg"
    run = ctl(
        daemon,
        "run",
        f"connect {HOST} {echo_port} as c",
        'send c "hello, chimney"',
        "recv c 100",
        "close c",  # a closed connection's trace is still readable, and no longer grows
        f"trace c --svg {svg}",
        "trace c --mermaid",
        "trace c --json",
        "trace c --nbl first --json",
    )
    assert run.returncode == 0, run.stderr
    hops = json.loads(run.stdout.splitlines()[-2])["result"]
    seed = json.loads(run.stdout.splitlines()[-1])["result"]  # the first send, as in the seed
    assert [(h["layer"], h["call"]) for h in seed] == [
        ("tcpip", "NdisOffloadTcpSend"),
        ("im0", "MiniportTcpOffloadSend"),
        ("im0", "NdisOffloadTcpSend"),
        ("nic0", "MiniportTcpOffloadSend"),
        ("nic0", "NdisTcpOffloadSendComplete"),
        ("im0", "ProtocolTcpOffloadSendComplete"),
        ("im0", "NdisTcpOffloadSendComplete"),
        ("tcpip", "ProtocolTcpOffloadSendComplete"),
    ]
    assert len(hops) > 20

    root = ET.parse(svg).getroot()
    lanes = [g.get("data-name") for g in root.iter(f"{SVG}g") if g.get("class") == "lane"]
    assert lanes == ["tcpip", "NDIS", "im0", "NDIS", "nic0"]
    arrows = [g for g in root.iter(f"{SVG}g") if g.get("class") == "hop"]
    assert len(arrows) == len(hops)
    assert [int(g.get("data-seq", 0)) for g in arrows] == [h["seq"] for h in hops]
    colours: dict[str, set[str]] = {}
    for g, hop in zip(arrows, hops, strict=True):
        if hop["nbl"] is None:
            continue
        assert g.get("data-nbl") == str(hop["nbl"])
        texts = "".join(g.itertext())
        assert f"NBL {hop['nbl']}" in texts
        stroke = next(e.get("stroke") for e in g if e.get("stroke"))
        colours.setdefault(g.get("data-nbl", ""), set()).add(stroke or "")
    assert len(colours) >= 2  # the send and the echo's receive indication
    assert all(len(c) == 1 for c in colours.values())  # one NBL, one colour, all the way
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)
    send = next(h for h in hops if h["call"] == "NdisOffloadTcpSend")
    send_arrows = [g for g in arrows if g.get("data-nbl") == str(send["nbl"])]
    assert [g.get("data-style") for g in send_arrows[:4]] == ["down"] * 4

    mermaid = run.stdout[run.stdout.index("sequenceDiagram") :].split("\n{")[0].splitlines()
    assert len(mermaid) > 20
    assert mermaid[0] == "sequenceDiagram"
    participants = [line.split(" as ")[1] for line in mermaid if "participant " in line]
    assert participants == ["tcpip", "NDIS", "im0", "NDIS", "nic0"]
    messages = [line for line in mermaid if re.match(r"\s+P\d(->>|-->>|--\))P\d: ", line)]
    assert len(messages) == len(hops)
    depth = 0
    for line in mermaid:
        depth += line.strip().startswith("rect ") - (line.strip() == "end")
        assert depth in (0, 1)
    assert depth == 0
    assert not any(";" in line or "#" in line for line in messages)


# -- live views ----------------------------------------------------------------------------------


def test_watch_prints_hops_as_they_happen(admin_daemon: Daemon, echo_port: int) -> None:
    with admin_daemon.client() as owner:
        conn = owner.tcp_connect(HOST, echo_port)
        proc = ctl_process(admin_daemon, "--token", ADMIN, "watch", str(conn), "--interval", "0.05")
        try:
            out = LineReader(proc.stdout)
            out.wait_for("1 ", 30)  # the first hop: NdisInitiateOffload
            assert owner.tcp_send(conn, b"hi") == 2
            deadline = time.monotonic() + 30
            while not any("NdisOffloadTcpSend" in line for line in out.lines):
                assert time.monotonic() < deadline, out.lines
                time.sleep(0.02)
            owner.tcp_close(conn)
            assert proc.wait(30) == 0
        finally:
            stop(proc)
    out.join()
    assert out.lines[-1] == f"conn {conn}: closed"
    calls = [line.split()[3] for line in out.lines[1:-1] if len(line.split()) > 3]
    assert calls[0] == "NdisInitiateOffload"
    assert "NdisTerminateOffload" in calls
    seqs = [int(line.split()[0]) for line in out.lines[1:-1] if line.split()[0].isdigit()]
    assert seqs == sorted(set(seqs))  # each hop once, in order


def test_watch_ctrl_c_exits_130(admin_daemon: Daemon, echo_port: int) -> None:
    with admin_daemon.client() as owner:
        conn = owner.tcp_connect(HOST, echo_port)
        proc = ctl_process(admin_daemon, "--token", ADMIN, "watch", str(conn))
        try:
            err = LineReader(proc.stderr)
            LineReader(proc.stdout).wait_for("1 ", 30)
            exits_on_ctrl_c(proc, err)
        finally:
            stop(proc)
        owner.tcp_close(conn)


def test_top_once(admin_daemon: Daemon, echo_port: int) -> None:
    with admin_daemon.client() as owner:
        conns = [owner.tcp_connect(HOST, echo_port) for _ in range(3)]
        for size, conn in zip((100, 3000, 20), conns, strict=True):
            owner.tcp_send(conn, b"x" * size)
        run = ctl(
            admin_daemon,
            "top",
            "--once",
            "--interval",
            "0.2",
            "--conns",
            "2",
            "--json",
            token=ADMIN,
        )
        assert run.returncode == 0, run.stderr
        frame = json.loads(run.stdout)["result"]
        assert [r["layer"] for r in frame["layers"]] == ["tcpip", "im0", "nic0"]
        nic0 = frame["layers"][2]
        assert nic0["offloads_active"] >= 3 and nic0["inbox"] is not None  # + path, neighbor
        assert nic0["bytes_sent_per_s"] is not None and nic0["calls"] > 0
        assert frame["conns_visible"] == 3
        assert [c["conn"] for c in frame["conns"]] == [conns[1], conns[0]]
        assert frame["note"] is None

        run = ctl(admin_daemon, "top", "--once", "--interval", "0.1")  # not admin
        assert run.returncode == 0, run.stderr
        assert "offloads_active" in run.stdout and "busiest connections" in run.stdout
        assert "admin token" in run.stdout
        for conn in conns:
            owner.tcp_close(conn)


# -- shell completion ----------------------------------------------------------------------------


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`chimneyctl completion bash | head`: once the reader is gone, no "Broken pipe" error or
    traceback, and the exit status a shell gives a writer SIGPIPE ended."""
    run = run_into_a_closed_pipe(str(BIN / "chimneyctl"), "completion", "bash")
    assert (run.returncode, run.stderr) == (141, "")


ZSH = "/usr/bin/zsh"


def complete(script: Path, *words: str, shell: str = "bash") -> list[str]:
    """What `shell` completes for the command line `words` (the last word is being typed).
    Under zsh's bashcompinit, `compgen -W` returns every word and zsh's matcher then keeps
    those that begin with what was typed: for zsh that second step is done here."""
    quoted = " ".join(f"'{w}'" for w in words)
    call = (
        f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        f'_{words[0].replace("-", "_")}; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    # zsh -f: no user start-up files; stdin closed, so compinit never waits for an answer
    argv = ["bash", "-c", call] if shell == "bash" else [ZSH, "-f", "-c", call]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    if shell == "bash":
        return run.stdout.split()
    assert not run.stderr, run.stderr
    return [w for w in run.stdout.split() if w.startswith(words[-1])]


def completion_script(shell: str, path: Path) -> str:
    """`chimneyctl completion SHELL`, written to `path`; returns the script."""
    run = subprocess.run(
        [str(BIN / "chimneyctl"), "completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert run.returncode == 0, run.stderr
    path.write_text(run.stdout)
    return run.stdout


def test_bash_completion(tmp_path: Path) -> None:
    script = tmp_path / "chimney.bash"
    text = completion_script("bash", script)
    top = complete(script, "chimneyctl", "")
    for name in ("connect", "send", "trace", "top", "watch", "fault", "query", "completion"):
        assert name in top
    assert complete(script, "chimneyctl", "fa") == ["fault"]
    assert complete(script, "chimneyctl", "fault", "in") == ["inject"]
    assert "peer_reset" in complete(script, "chimneyctl", "fault", "inject", "p")
    assert "--svg" in complete(script, "chimneyctl", "trace", "1", "--")
    (tmp_path / "figure.svg").write_text("")
    assert str(tmp_path / "figure.svg") in complete(
        script, "chimneyctl", "trace", "1", "--svg", str(tmp_path / "fig")
    )
    assert complete(script, "chimneyctl", "--rpc", "") == []  # a value, not a command
    assert "--json" in complete(script, "chimneyctl", "--j")
    assert complete(script, "chimney-peer", "e") == ["echo"]
    assert "--connections" in complete(script, "chimney-soak", "--conn")
    assert "complete -F _chimney_soak chimney-soak" in text


def test_zsh_completion_offers_what_bash_does(tmp_path: Path) -> None:
    assert Path(ZSH).exists(), f"{ZSH} is missing: install Debian's zsh package (.ci/run does)"
    zsh_script, bash_script = tmp_path / "chimney.zsh", tmp_path / "chimney.bash"
    assert "bashcompinit" in completion_script("zsh", zsh_script)
    completion_script("bash", bash_script)
    lines = [
        ("chimneyctl", ""),
        ("chimneyctl", "fa"),
        ("chimneyctl", "fault", "in"),
        ("chimneyctl", "fault", "inject", ""),
        ("chimneyctl", "trace", "1", "--"),
        ("chimneyctl", "--rpc", ""),  # a value: nothing
        ("chimneyctl", "--j"),
        ("chimney-peer", "e"),
        ("chimney-soak", "--conn"),
    ]
    for words in lines:
        assert sorted(complete(zsh_script, *words, shell="zsh")) == sorted(
            complete(bash_script, *words)
        )
    # and the lists are the right ones, not two equal wrong ones
    assert complete(zsh_script, "chimneyctl", "fa", shell="zsh") == ["fault"]
    assert "peer_reset" in complete(zsh_script, "chimneyctl", "fault", "inject", "", shell="zsh")
    assert complete(zsh_script, "chimneyctl", "--rpc", "", shell="zsh") == []
    assert "--svg" in complete(zsh_script, "chimneyctl", "trace", "1", "--", shell="zsh")


class InteractiveZsh:
    """zsh -f on a pseudo-terminal with the completion script sourced: lines are typed, TAB
    included, and what zsh's line editor shows is read back, so completion runs as it does for
    a user (zsh's own matcher, file names, listings)."""

    def __init__(self, script: Path, cwd: Path) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [ZSH, "-f", "-i"],
            cwd=cwd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**child_env(), "TERM": "dumb"},
            start_new_session=True,
        )
        os.close(slave)
        self.fd = master
        self.shown = b""
        # the quotes keep the echo of the typed line from matching what `print` writes
        self.type(f"PS1='> '; source {script}; print RE''ADY\n")
        self.wait_for("READY\r\n")

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        want = text.encode()
        end = time.monotonic() + timeout
        while want not in self.shown:
            left = end - time.monotonic()
            assert left > 0, f"zsh never showed {text!r}; it showed {self.shown[-300:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.shown += os.read(self.fd, 65536)
                except OSError:  # the shell is gone
                    raise AssertionError(f"zsh ended; it showed {self.shown[-300:]!r}") from None

    def tab(self, line: str, shows: str) -> None:
        """Type `line` and TAB; zsh must then show `shows`. The line is erased after."""
        self.shown = b""
        self.type(line + "\t")
        self.wait_for(shows)
        self.type("\x15")  # ^U: kill the line

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.fd)


def test_zsh_completes_as_a_user_sees_it(tmp_path: Path) -> None:
    assert Path(ZSH).exists(), f"{ZSH} is missing: install Debian's zsh package (.ci/run does)"
    script = tmp_path / "chimney.zsh"
    completion_script("zsh", script)
    (tmp_path / "figure.svg").write_text("")
    zsh = InteractiveZsh(script, cwd=tmp_path)  # short lines: zle scrolls a long one
    try:
        zsh.tab("chimneyctl fa", "chimneyctl fault ")  # one match: completed, then a space
        zsh.tab("chimneyctl fault inject peer_r", "chimneyctl fault inject peer_reset ")
        zsh.tab("chimneyctl trace 1 --svg fig", "chimneyctl trace 1 --svg figure.svg ")
        zsh.tab("chimney-soak --conn", "--conns-per-rpc")  # two matches: both listed
        zsh.tab("chimney-peer e", "chimney-peer echo ")
    finally:
        zsh.close()
