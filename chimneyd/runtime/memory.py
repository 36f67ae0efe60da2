"""How the daemon's process uses memory: GC thresholds, glibc's allocator, giving memory back.

After a soak of thousands of connections, RSS should come back to its idle level (issue: soak
at scale). What stands in the way, each handled here: CPython never shrinks a dict or set as
entries go; glibc keeps freed heap pages until asked (`malloc_trim`); at the defaults, big
blocks land in the heap among long-lived objects; and free lists and caches (the event loop's,
glibc's tcache, CPython's method cache) keep objects freed late in the soak, each pinning a
page of the heap the soak grew. The collector's thresholds are set here too: at 10,000
connections the defaults spend most of the daemon's time in full collections.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any

# Young-generation collections every GC_GEN0 net allocations instead of CPython's 700. With
# thousands of connections the older generations are large, and the default thresholds ran a
# full collection of 65-90 ms several times per second of load: a quarter of the daemon's time
# and most of its p99 (measured with gc.callbacks during the 1,000-connection echo bench).
# The daemon's garbage is freed by reference counting: its requests, round trips and closed
# connections make no cycles (tests/integration/test_no_cycles.py), so these collections find
# next to nothing, and what they cost is the scan of the young objects alive at the time.
# Bursts of allocation (a soak's thousands of round trips in flight, a failover's re-offloads)
# still set them off: at 50,000, `chimney-soak -n 10000 --think-ms 0` ran ~90 of 16-30 ms each
# in 45 s, 2.7 s in all for nothing found; at 200,000 it runs one or two (55-180 ms), 0.1-0.25 s
# in all, and its ops/s rose from 4,845-5,030 to 5,504-5,727 (two runs each).
GC_GEN0 = 200_000

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 64 * 1024


@functools.cache
def _libc() -> Any:
    """glibc, or None elsewhere (nothing to tune or trim there). Loaded once: each `CDLL` makes
    its own function-pointer class, a cycle of ~19 objects left for the collector per trim."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def allocator_name() -> str:
    """The allocator this interpreter started with: its `PYTHONMALLOC` ("malloc" for the daemon
    unless told otherwise, `chimneyd/__main__.py`), or CPython's default, "pymalloc". It moves
    the daemon's CPU per round by 7-16% (README, Memory), so `stack.info` and the daemon's
    ready line say which it is."""
    return os.environ.get("PYTHONMALLOC") or "pymalloc"


def tune_gc() -> None:
    gc.collect()
    gc.freeze()  # what start-up made lives as long as the daemon: never scan it again
    gc.set_threshold(GC_GEN0, 10, 10)


def tune_malloc() -> None:
    """Blocks of 64 KiB and more (receive buffers, big sends) get their own mappings, returned
    to the system when freed. glibc otherwise raises this threshold as such blocks are freed,
    and later ones are carved from the heap among long-lived objects, where they stay resident
    after a soak (measured: heap growth after 2,000 soaked connections 4.1 MB → 2.6 MB)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def give_back() -> None:
    """Collect, then hand freed heap pages back to the system (glibc keeps them otherwise)."""
    gc.collect()
    # CPython's method cache keeps a reference to each attribute name it caches, and a name
    # made at run time (`__subclasses__`, looked up by abc for every new subclass check) is
    # a new string each time: dozens of them outlived a 10k soak, scattered over its heap
    sys._clear_type_cache()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        _refresh_tcache(libc)
        libc.malloc_trim(0)


# glibc's per-thread cache (tcache) keeps up to 7 freed chunks in each of its 64 size
# classes (up to 1032 bytes) and `malloc_trim` leaves them alone: after a 10k soak ~430
# cached chunks held 180 pages (0.75 MB) that were otherwise free.
TCACHE_BINS = 64
TCACHE_COUNT = 7


def _refresh_tcache(libc: Any) -> None:
    """The swap of `refresh_free_lists`, for the tcache: take its chunks out of each class,
    as many again, free the new ones first (they fill the cache), then the old ones, which
    now go to the bins that `malloc_trim` returns pages from."""
    malloc, free = libc.malloc, libc.free
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    for b in range(TCACHE_BINS):
        size = 24 + 16 * b  # the largest request served from class b (chunks of 32 + 16 b)
        old = [malloc(size) for _ in range(TCACHE_COUNT)]
        new = [malloc(size) for _ in range(TCACHE_COUNT)]
        for ptr in new + old:
            free(ptr)


def release_empty_containers(holders: list[object]) -> int:
    """CPython never shrinks a dict or set as entries go: one that held 10,000 connections keeps
    a table sized for them when empty. `clear()` on the empty container gives that table back,
    in place, so every other reference to the container stays valid.

    A holder's containers are its attributes; for an extension type without them (uvloop's
    loop), what it references: uvloop keeps its transports by fd in a weak dictionary no name
    reaches, and after a 10k soak its empty table holds 290 KB."""
    released = 0
    for obj in holders:
        if obj is None:
            continue
        for value in _contents(obj):
            if isinstance(value, _WEAK):
                value = value.data  # type: ignore[union-attr]  # the table behind the weak refs
            if isinstance(value, (dict, set, list)) and not value:
                value.clear()
                released += 1
    return released


_WEAK = (weakref.WeakValueDictionary, weakref.WeakKeyDictionary, weakref.WeakSet)


def _contents(obj: object) -> list[Any]:
    names: set[str] = set(getattr(obj, "__dict__", ()))
    for cls in type(obj).__mro__:
        slots = getattr(cls, "__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    if not names:
        return gc.get_referents(obj)
    return [getattr(obj, name, None) for name in names]


# Free lists kept by the event loop's C code: uvloop keeps up to 250 `Handle`s and 250
# `TimerHandle`s, asyncio up to 255 future iterators. They hold whatever was freed last, and
# after a soak that is objects from all over the heap the soak grew; each pins a page that
# `malloc_trim` cannot return (measured after a 10k soak: ~440 pages, 1.8 MB, held this way).
FREE_LIST_DEPTH = 256


def refresh_free_lists(loop: asyncio.AbstractEventLoop, then: Callable[[], None]) -> None:
    """Swap the loop's free lists for objects allocated now, then call `then` (the trim).

    Taking `FREE_LIST_DEPTH` objects of a kind empties its free list (`old`); as many more are
    new allocations (`new`). Freeing `new` first fills the free list with them, so `old` is
    then given back to malloc. A `Handle` is let go by the loop one turn after it is cancelled,
    hence the `call_soon`."""
    fut = loop.create_future()
    old: list[Any] = []
    new: list[Any] = []
    for batch in (old, new):
        handles = [loop.call_soon(_noop) for _ in range(FREE_LIST_DEPTH)]
        handles += [loop.call_later(3600.0, _noop) for _ in range(FREE_LIST_DEPTH)]
        for handle in handles:
            handle.cancel()
        batch += handles
        batch += [fut.__await__() for _ in range(FREE_LIST_DEPTH)]
    fut.cancel()

    def finish() -> None:
        new.clear()
        old.clear()
        then()

    loop.call_soon(finish)


def _noop() -> None:
    pass


#: seconds after the last connection closed at which the engine gives freed memory back
TRIM_AFTER_S = (0.5, 3.0)


class IdleTrim:
    """Give freed memory back to the system once the engine is idle.

    glibc keeps freed heap pages otherwise, and RSS after a soak would stay at its peak. The
    trim runs `TRIM_AFTER_S[0]` after the last connection closes (or an RPC client leaves an
    idle engine), and again a few seconds later for what went after the first pass: the
    buffers of RPC clients that left once their connections were closed, objects held by
    timers that fired since.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle: Callable[[], bool],
        holders: Callable[[], list[object]],
        before: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.idle = idle
        self.holders = holders  # objects whose emptied containers are released
        self.before = before  # what the engine packs first (closed traces)
        self.extra: list[object] = [loop]
        self._handle: asyncio.TimerHandle | None = None

    def keep_lean(self, holder: object) -> None:
        """Also release the emptied containers of `holder` (e.g. the RPC server's maps)."""
        self.extra.append(holder)

    def soon(self) -> None:
        """Start the trim if the engine is idle and none is under way."""
        if self.idle() and self._handle is None:
            self._handle = self.loop.call_later(TRIM_AFTER_S[0], self._run, 0)

    def _run(self, attempt: int) -> None:
        self._handle = None
        if not self.idle():
            return
        if attempt + 1 < len(TRIM_AFTER_S):
            delay = TRIM_AFTER_S[attempt + 1] - TRIM_AFTER_S[attempt]
            self._handle = self.loop.call_later(delay, self._run, attempt + 1)
        self.before()
        release_empty_containers([*self.holders(), *self.extra])
        refresh_free_lists(self.loop, then=give_back)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
