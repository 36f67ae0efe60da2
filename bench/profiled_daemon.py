"""chimneyd with cProfile switched on and off by signals, for `python -m bench --profile daemon`.

    python -m bench.profiled_daemon OUT.prof [chimneyd arguments]

SIGUSR1 starts profiling, SIGUSR2 stops it and writes OUT.prof, so the profile holds only the
window the bench drives load in: not start-up, not the idle time while connections open.
PYTHONMALLOC must be set by the caller (chimneyd re-executes itself to set it otherwise, and the
re-executed daemon would run without these handlers).
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from types import FrameType


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m bench.profiled_daemon OUT.prof [chimneyd arguments]")
    if "PYTHONMALLOC" not in os.environ:
        sys.exit("bench.profiled_daemon: set PYTHONMALLOC first (chimneyd would re-exec itself)")
    out = sys.argv[1]
    prof = cProfile.Profile()

    def start(_sig: int, _frame: FrameType | None) -> None:
        prof.enable()

    def stop(_sig: int, _frame: FrameType | None) -> None:
        prof.disable()
        prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["chimneyd", *sys.argv[2:]]
    from chimneyd.__main__ import main as chimneyd_main

    return chimneyd_main()


if __name__ == "__main__":
    sys.exit(main())
