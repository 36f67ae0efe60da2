"""The seeded pattern stream and its verifier."""

from __future__ import annotations

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
