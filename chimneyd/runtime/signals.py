"""The signals the daemon's loop answers, and what they do outside the loop's life.

SIGTERM and SIGINT stop the daemon, SIGHUP reopens its log. Their default action ends the
process, which is right before the daemon has started (a SIGTERM then simply ends it) but wrong
at its two edges: a SIGHUP (a service manager's reload, logrotate's postrotate) that comes while
it starts, and a second SIGTERM or a SIGHUP that comes while a daemon that has stopped cleanly
exits. `__main__` ignores SIGHUP from the entry point on; a shard starts with all three blocked
(`Supervisor.spawn`) until serve() answers them; `to_exit` ignores them from the end of the stop
to the process's exit."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def to_exit(run: Awaitable[int]) -> int:
    """`run`'s exit status, with the handled signals ignored from its end to the process's."""
    code = await run
    ignore_signals_to_exit(asyncio.get_running_loop())
    return code


def ignore_signals_to_exit(loop: asyncio.AbstractEventLoop) -> None:
    """The stop is over and the process is about to exit: from here a SIGTERM or SIGINT changes
    nothing, as during the drain (`daemon_already_stopping`), nor does a SIGHUP (the log is
    done). Left to the loop, closing it would give them back their default action, and a
    second SIGTERM (or logrotate's SIGHUP) landing while the interpreter winds down would kill
    a daemon that had stopped cleanly (exit status -15 or -1, not its own). Blocked in this
    thread across the swap, so none meets the default action on the way; a pending one is
    discarded by SIG_IGN. (The parent-watch thread, the daemon's own, blocks them for good.)"""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        for sig in HANDLED_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
