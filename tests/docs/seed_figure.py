"""Draw the README's figures from a real run: `make figure` (python -m tests.docs.seed_figure DIR).

A fresh daemon on a free loopback port and a `chimney-peer echo`, then one `chimneyctl run`:
connect, send "hello, chimney", read the echo, and draw with `chimneyctl trace`:

- `send.svg` / `send.mmd`: the hops of the connection's first NBL, the send, down every layer
  and its completion back up: the seed's figure;
- `conn.svg` / `conn.mmd`: every hop of the connection before its close: the offload, the send,
  the echo coming up as a receive indication and its return.

Both processes are stopped afterwards. tests/docs/test_figures.py runs this again and checks that
the committed figures have the shape a run gives.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
FILES = ("send.svg", "send.mmd", "conn.svg", "conn.mmd")


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
        subprocess.run(
            [
                str(BIN / "chimneyctl"),
                "--rpc",
                rpc,
                "run",
                f"connect {HOST} {port} as c",
                'send c "hello, chimney"',
                "recv c 100",
                f"trace c --nbl first --svg {out / 'send.svg'}",
                f"trace c --nbl first --mermaid {out / 'send.mmd'}",
                f"trace c --svg {out / 'conn.svg'}",
                f"trace c --mermaid {out / 'conn.mmd'}",
                "close c",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.docs.seed_figure DIR", file=sys.stderr)
        return 2
    draw(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
