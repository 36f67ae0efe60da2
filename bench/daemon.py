"""Start the daemon as users run it, in a subprocess on a loopback port, for one section.

By default that is the `chimneyd` console script of this interpreter's environment (which puts
the daemon on the C allocator and re-executes itself, keeping its pid); `--daemon ARGS` gives
interpreter arguments instead (`-m chimneyd`, another build, a profiler wrapping it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Child, child_env

READY = "chimneyd listening on"
_ADDR = re.compile(r"127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 20.0


@dataclass
class Daemon:
    proc: Child
    port: int
    banner: list[str] = field(default_factory=list)  # what it printed up to its ready line

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def default_argv() -> list[str]:
    """The `chimneyd` script beside this interpreter (a venv's bin/), else `python -m chimneyd`."""
    script = Path(sys.executable).parent / "chimneyd"
    if script.exists() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("chimneyd")
    if found and Path(found).resolve().parent == Path(sys.executable).resolve().parent:
        return [found]
    return [sys.executable, "-m", "chimneyd"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(
    stack: ExitStack,
    interpreter_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    wrapper: Sequence[str] = (),
    timeout_s: float = START_TIMEOUT_S,
) -> Daemon:
    """Start the daemon with `--listen 127.0.0.1:0` (port 0 if its ready line names the real
    port, else a free port picked here), then `extra_args`, all after `wrapper` (a tool that
    runs it, e.g. valgrind), given `timeout_s` to come up; it is stopped (SIGTERM, then SIGKILL)
    when `stack` closes. Raises RuntimeError with the daemon's last output when it does not come
    up."""
    if interpreter_args is None:
        # a bench killed outright leaves no daemon behind (`--daemon` may run another build,
        # which need not know the option)
        argv = [*default_argv(), "--parent-pid", str(os.getpid())]
    else:
        argv = [sys.executable, *interpreter_args]
    argv = [*wrapper, *argv]  # e.g. valgrind (bench/instructions.py)
    last = ""
    for port in (0, _free_port()):
        proc = Child(
            [*argv, "--listen", f"127.0.0.1:{port}", *extra_args],
            env=env or child_env(),
            merge_stderr=True,
        )
        stack.callback(proc.close)
        seen: list[str] = []
        try:
            end = time.monotonic() + timeout_s
            while True:
                text = proc.line(max(0.01, end - time.monotonic()))
                seen.append(text)
                if READY in text:
                    break
        except (TimeoutError, RuntimeError) as exc:
            proc.close()
            last = f"{exc}; output: {' | '.join(seen[-5:])[-600:]}"
            continue
        m = _ADDR.search(text.split(READY, 1)[1])
        real = int(m.group(1)) if m else port
        if real == 0:
            proc.close()
            last = f"ready line names no port: {text!r}"
            continue
        proc.drain_in_background()
        return Daemon(proc, real, seen)
    raise RuntimeError(f"the daemon did not start ({' '.join(argv)}): {last}")
