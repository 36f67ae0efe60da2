"""`python -m chimneyd` and the `chimneyd` console script.

The daemon runs on the C allocator (`PYTHONMALLOC=malloc`) unless told otherwise: CPython's own
allocator carves objects out of 1 MiB arenas and gives an arena back only when every object in
it is gone, so after a soak a few thousand survivors (loop free lists, kept traces, grown dicts)
hold RSS near its peak. With malloc, the engine's idle `malloc_trim` returns the freed pages,
and RSS comes back to its idle level. The price is speed: every small object is a glibc
malloc. Measured here, `chimney-soak --spawn -n 2000 --duration 20 --think-ms 0` with the
variable set for the whole command (the soak's client on the same allocator), two runs each:
pymalloc 8,264-8,855 ops/s and RSS after the drain x1.28 of the idle plateau (the soak fails
it, the bound is x1.1); malloc 7,437-7,601 ops/s and x1.05. Set `PYTHONMALLOC` yourself (e.g.
`PYTHONMALLOC=pymalloc`) to choose otherwise; the variable must be set before the interpreter
starts, hence the one re-exec (same pid) below.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    # SIGHUP means "reopen the log" and nothing else: until the daemon's loop answers it, it
    # is ignored (the setting survives the exec below), not its default action, which ends the
    # process; a service manager counts a daemon started once it runs, and may send a reload
    # (or logrotate a postrotate) at once. The loop reopens the log when it takes SIGHUP over.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if "PYTHONMALLOC" not in os.environ:
        env = {**os.environ, "PYTHONMALLOC": "malloc"}
        os.execve(sys.executable, [sys.executable, "-m", "chimneyd", *sys.argv[1:]], env)
    from chimneyd.daemon import main as daemon_main

    return daemon_main()


if __name__ == "__main__":
    sys.exit(main())
