"""Draw the README's figures from a real run: `make figure` (python -m tests.docs.seed_figure DIR).

A fresh daemon on a free loopback port and a `chimney-peer echo`, then one `chimneyctl shell`:
connect, send "hello, chimney", wait until the echo has been indicated up to tcpip, read it, and
draw with `chimneyctl trace`:

- `send.svg` / `send.mmd`: the hops of the connection's first NBL, the send, down every layer
  and its completion back up;
- `conn.svg` / `conn.mmd`: every hop of the connection before its close: the offload, the send,
  the echo coming up as a receive indication and its return.

The read waits for the indication because the echo takes the other road if `recv` comes first:
with a receive request posted, the target must fill it instead of indicating (spec §4.2, §4.4).
Waiting on the trace, not on a clock, makes every run draw the same path.

Both processes are stopped afterwards. tests/docs/test_figures.py runs this again and checks that
the committed figures have the shape a run gives.

Drawing into a directory that holds the figures already (`make figure` on a clean tree) keeps a
figure, byte for byte, when the run drew the same thing (`same`): the hops' times (every run's
own), seq numbers and ids, and the order in which the send's completion and the echo's hops
interleave after the offload (the one choice a run's timing makes, with the target's send
backlog event, spec §5.3) are not what the figure shows. A figure that shows something else is
written; `--rewrite` writes every figure the run drew.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
FILES = ("send.svg", "send.mmd", "conn.svg", "conn.mmd")
TEXT = b"hello, chimney"
#: the last hop of the echo's indication: its return to the target at the bottom layer
INDICATED = ("nic0", "NdisTcpOffloadReceiveHandler:return")
#: the figures, each drawn as an SVG and a Mermaid file (`FILES`)
FIGURES = ("send", "conn")
#: the conn figure's first hops: the offload down the layers and its completion back up, in
#: the same order in every run
OFFLOAD_HOPS = 8
#: the event the target sends only when the send waited for its acknowledgement (spec §5.3)
BACKLOG = "TcpIndicateSendBacklogChange"
TIME = re.compile(r"\+[\d.]+ (?:ns|µs|ms|s)\b")  # a hop's time since the first: `+2.9 µs`
NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")  # seq numbers, handles, ids (not `P1`, a lane)
#: how long the echo may take to come up (seconds), polled this often
WAIT_S = 30.0
POLL_S = 0.02


def _start(*cmd: str, ready: str) -> tuple[subprocess.Popen[str], str]:
    """Start `cmd` and wait for its line `ready ... ADDR`; (process, ADDR)."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(ready):
            return proc, line.split()[-1]
    proc.wait(10)
    raise SystemExit(f"{cmd[0]} exited before it was ready (status {proc.returncode})")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _ask(ctl: subprocess.Popen[str], line: str) -> Any:
    """Run one line in the `chimneyctl --json shell`; its result (SystemExit if it failed)."""
    assert ctl.stdin is not None and ctl.stdout is not None
    ctl.stdin.write(line + "\n")
    ctl.stdin.flush()
    reply = ctl.stdout.readline()
    if not reply:
        raise SystemExit(f"chimneyctl exited at {line!r} (status {ctl.wait(10)})")
    answer = json.loads(reply)
    if not answer.get("ok"):
        raise SystemExit(f"{line!r} failed: {answer.get('error')}")
    return answer.get("result")


def _wait_indicated(ctl: subprocess.Popen[str]) -> None:
    """Until the echo's receive indication has run its course (spec §4.3): before it a `recv`
    would post a request and the echo would fill that instead (spec §4.4)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if any((h["layer"], h["call"]) == INDICATED for h in _ask(ctl, "trace c")):
            return
        time.sleep(POLL_S)
    raise SystemExit(f"the echo was not indicated within {WAIT_S:g} s")


def draw(out: Path) -> None:
    """Write FILES into `out` from a run against a daemon and a peer of its own."""
    out.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        daemon, rpc = _start(
            str(BIN / "chimneyd"), "--listen", f"{HOST}:0", ready="chimneyd listening on "
        )
        procs.append(daemon)
        peer, peer_addr = _start(
            str(BIN / "chimney-peer"), "echo", "--listen", f"{HOST}:0", ready="chimney-peer echo "
        )
        procs.append(peer)
        port = peer_addr.rsplit(":", 1)[1]
        ctl = subprocess.Popen(
            [str(BIN / "chimneyctl"), "--json", "--rpc", rpc, "shell"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(ctl)
        _ask(ctl, f"connect {HOST} {port} as c")
        _ask(ctl, f'send c "{TEXT.decode()}"')
        _wait_indicated(ctl)
        got = _ask(ctl, f"recv c {len(TEXT)}")
        if base64.b64decode(got["base64"]) != TEXT:
            raise SystemExit(f"the echo came back as {got!r}")
        _ask(ctl, f"trace c --nbl first --svg {out / 'send.svg'}")
        _ask(ctl, f"trace c --nbl first --mermaid {out / 'send.mmd'}")
        _ask(ctl, f"trace c --svg {out / 'conn.svg'}")
        _ask(ctl, f"trace c --mermaid {out / 'conn.mmd'}")
        _ask(ctl, "close c")
        assert ctl.stdin is not None
        ctl.stdin.close()
        ctl.wait(10)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _shape(name: str, text: str) -> tuple[list[str], ...]:
    """What figure `name` (its Mermaid text) shows: its lines with times and numbers made
    `T` and `N`; for "conn", the hops after the offload in any order, the backlog event aside."""
    lines = [NUMBER.sub("N", TIME.sub("T", x.strip())) for x in text.splitlines() if x.strip()]
    if name != "conn":
        return (lines,)
    hops = [x for x in lines if "->>" in x]  # `->>` a call down, `-->>` one back up
    # the colour boxes (`rect`, `end`) group the hops of one NBL as they interleave
    head = [x for x in lines if "->>" not in x and not x.startswith(("rect ", "end"))]
    rest = sorted(x for x in hops[OFFLOAD_HOPS:] if BACKLOG not in x)
    return head, hops[:OFFLOAD_HOPS], rest


def same(name: str, old: str, new: str) -> bool:
    """Whether the Mermaid texts `old` and `new` of figure `name` show the same drawing."""
    return _shape(name, old) == _shape(name, new)


def update(dest: Path, rewrite: bool = False) -> dict[str, str]:
    """Draw every figure, and write into `dest` those that show something other than what
    `dest` holds (all of them with `rewrite`): figure → "written" or "kept"."""
    dest.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        drawn = Path(tmp)
        draw(drawn)
        for name in FIGURES:
            files = (f"{name}.svg", f"{name}.mmd")
            held = all((dest / f).is_file() for f in files)
            mmd = f"{name}.mmd"
            if (
                not rewrite
                and held
                and same(name, (dest / mmd).read_text(), (drawn / mmd).read_text())
            ):
                done[name] = "kept"
                continue
            for f in files:  # both files of a figure come from one run
                shutil.copyfile(drawn / f, dest / f)
            done[name] = "written"
    return done


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    rewrite = "--rewrite" in args
    rest = [a for a in args if a != "--rewrite"]
    if len(rest) != 1 or rest[0].startswith("-"):
        print("usage: python -m tests.docs.seed_figure DIR [--rewrite]", file=sys.stderr)
        return 2
    for name, how in update(Path(rest[0]), rewrite).items():
        why = "" if how == "written" else " (the same drawing; --rewrite writes it anyway)"
        print(f"{name}: {how}{why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
