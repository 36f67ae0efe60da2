"""The seeded pattern stream and its verifier."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import pytest

from chimney_client import stream
from chimney_client.stream import BLOCK_SIZE, PatternStream, Verifier


def test_deterministic_and_chunking_independent() -> None:
    whole = PatternStream(7).read(3 * BLOCK_SIZE + 123)
    s = PatternStream(7)
    parts = [s.read(n) for n in (1, 1000, BLOCK_SIZE, 5, BLOCK_SIZE + 7)]
    parts.append(s.read(len(whole) - sum(map(len, parts))))
    assert b"".join(parts) == whole
    assert PatternStream(7).at(BLOCK_SIZE - 3, 10) == whole[BLOCK_SIZE - 3 : BLOCK_SIZE + 7]


def test_seeds_and_blocks_differ() -> None:
    a = PatternStream(1).read(2 * BLOCK_SIZE)
    b = PatternStream(2).read(2 * BLOCK_SIZE)
    assert a != b
    assert a[:BLOCK_SIZE] != a[BLOCK_SIZE:]  # blocks are not repeats of each other


def test_verifier_accepts_good_data_in_any_chunking() -> None:
    data = PatternStream(3).read(BLOCK_SIZE + 999)
    v = Verifier(3)
    for i in range(0, len(data), 65536):
        assert v.check(data[i : i + 65536]) is None
    assert v.offset == len(data) and v.first_error is None


def test_verifier_finds_flipped_byte_at_its_offset() -> None:
    data = bytearray(PatternStream(9).read(300_000))
    data[200_001] ^= 0x01
    v = Verifier(9)
    assert v.check(data[:100_000]) is None
    assert v.check(memoryview(data)[100_000:]) == 200_001
    assert v.first_error == 200_001
    assert v.offset == 300_000


def test_verifier_detects_lost_bytes() -> None:
    data = PatternStream(5).read(10_000)
    v = Verifier(5)
    assert v.check(data[:4000] + data[4001:]) is not None


def test_the_rotation_is_computed_once_per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 reads of 16 KiB cover one block: its rotation (splitmix64 on Python ints, ~1 µs) is
    computed once, not per read (issue 15: twice per verified echo round), and the bytes are
    those of a stream computed afresh."""
    whole = PatternStream(11).read(2 * BLOCK_SIZE)
    calls = [0]
    real = stream._rotation

    def counting(seed: int, block: int) -> int:
        calls[0] += 1
        return real(seed, block)

    monkeypatch.setattr(stream, "_rotation", counting)
    s = PatternStream(11)
    chunk = 16 * 1024
    parts = [s.read(chunk) for _ in range(2 * BLOCK_SIZE // chunk)]
    assert b"".join(parts) == whole
    assert calls[0] == 2, f"{calls[0]} rotations for 2 blocks"
    s.seed = 12  # a stream given another seed reads that seed's bytes
    assert s.at(0, 100) == PatternStream(12).at(0, 100)


def test_at_is_right_when_another_thread_reads_the_same_stream_mid_way() -> None:
    """`at` does not move the stream, so threads may share one: a read of another block run
    between any two steps of this one's rotation lookup (a thread switch, forced here at every
    line) neither changes its bytes nor leaves the kept rotation wrong for the next read."""
    s = PatternStream(21)
    fresh = PatternStream(21)
    others = iter(range(2, 1000))
    busy = [False]

    def line(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and not busy[0]:
            busy[0] = True
            try:
                s.at(next(others) * BLOCK_SIZE + 5, 16)  # the other thread's read
            finally:
                busy[0] = False
        return line

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        if event == "call" and frame.f_code is PatternStream._rotation.__code__ and not busy[0]:
            return line
        return None

    before = sys.gettrace()
    sys.settrace(calls)
    try:
        got = s.at(BLOCK_SIZE + 7, 100)
    finally:
        sys.settrace(before)
    assert got == fresh.at(BLOCK_SIZE + 7, 100), "another thread's read changed this one's bytes"
    assert s.at(BLOCK_SIZE + 300, 100) == fresh.at(BLOCK_SIZE + 300, 100), "kept rotation wrong"
