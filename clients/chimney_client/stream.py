"""Seeded pseudo-random byte streams and their verifier, for byte-exact integrity checks.

The stream is a sequence of 1 MiB blocks; block `k` of seed `s` is the window of a shared random
base starting at a rotation derived from `(s, k)`. Generating is slicing (memcpy speed, no
per-byte Python work), one 2 MiB base serves every seed (thousands of connections cost nothing
extra), and a lost, duplicated, reordered or cross-connection chunk still lands on the wrong bytes:
positions within a block differ because the base is random, blocks differ by their rotation.
"""

from __future__ import annotations

import random
from functools import cache

BLOCK_SIZE = 1 << 20
_BASE_SEED = 0x43484D4E  # fixed: streams must match across processes and runs
_MASK64 = (1 << 64) - 1


@cache
def _base() -> bytes:
    # Twice the block so any rotation is one contiguous slice.
    block = random.Random(_BASE_SEED).randbytes(BLOCK_SIZE)
    return block + block


def _rotation(seed: int, block: int) -> int:
    """splitmix64 of (seed, block): cheap, well mixed, and the same on every platform."""
    z = (seed * 0x9E3779B97F4A7C15 + block * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) % BLOCK_SIZE


class PatternStream:
    """Deterministic byte stream of `seed`; `read(n)` returns the next `n` bytes."""

    # the rotation of the block read last, kept: a 16 KiB read is one of 64 in its block, and
    # splitmix64 on Python ints was ~1 µs of each (issue 15: twice per verified echo round).
    # One tuple (seed, block, rotation), replaced whole and read once: `at` moves nothing, so
    # threads may share a stream, and a thread switch must not pair a block with another's
    # rotation.
    __slots__ = ("_kept", "offset", "seed")

    def __init__(self, seed: int, offset: int = 0) -> None:
        self.seed = seed
        self.offset = offset
        self._kept = (seed, -1, 0)

    def read(self, n: int) -> bytes:
        data = self.at(self.offset, n)
        self.offset += n
        return data

    def _rotation(self, block: int) -> int:
        seed = self.seed
        kept_seed, kept_block, rot = self._kept
        if block != kept_block or seed != kept_seed:
            rot = _rotation(seed, block)
            self._kept = (seed, block, rot)
        return rot

    def at(self, offset: int, n: int) -> bytes:
        """The `n` bytes at absolute `offset`, without moving the stream."""
        if n <= 0:
            return b""
        block, pos = divmod(offset, BLOCK_SIZE)
        if pos + n <= BLOCK_SIZE:  # the common case: one slice (one copy)
            r = self._rotation(block)
            return _base()[r + pos : r + pos + n]
        base = memoryview(_base())
        r = self._rotation(block)
        parts = [base[r + pos : r + BLOCK_SIZE]]
        left = n - (BLOCK_SIZE - pos)
        while left > 0:
            block += 1
            take = min(BLOCK_SIZE, left)
            r = self._rotation(block)
            parts.append(base[r : r + take])
            left -= take
        return b"".join(parts)


class Verifier:
    """Checks received data against the stream of `seed`, tracking the offset across calls."""

    __slots__ = ("_stream", "first_error", "offset")

    def __init__(self, seed: int, offset: int = 0) -> None:
        self._stream = PatternStream(seed, offset)
        self.offset = offset
        #: absolute offset of the first bad byte seen so far, or None
        self.first_error: int | None = None

    def check(self, data: bytes | bytearray | memoryview) -> int | None:
        """Return the absolute offset of the first wrong byte in `data`, or None if all match.

        The offset advances by `len(data)` either way, so a caller may go on checking.
        """
        n = len(data)
        expected = self._stream.read(n)
        start = self.offset
        self.offset += n
        if data == expected:
            return None
        bad = start + _first_difference(memoryview(data).cast("B"), expected)
        if self.first_error is None:
            self.first_error = bad
        return bad


def _first_difference(data: memoryview, expected: bytes) -> int:
    # Narrow by chunk comparisons (C speed), then scan the one bad chunk.
    chunk = 4096
    for i in range(0, len(expected), chunk):
        if data[i : i + chunk] != expected[i : i + chunk]:
            for j in range(i, min(i + chunk, len(expected))):
                if data[j] != expected[j]:
                    return j
    return len(expected)  # pragma: no cover - only reached if the inputs were equal
