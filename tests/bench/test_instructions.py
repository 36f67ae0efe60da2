"""`python -m bench --profile instructions`: the daemon under callgrind, instructions per verified
echo round. A real run (a short one) where valgrind is installed; where it is not, the run must
say what it needs and exit 2, not fail somewhere inside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.instructions import PARTS, breakdown, repeats, totals
from tests.bench.support import output, run_bench


def test_totals_reads_a_callgrind_dump(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text("version: 1\nevents: Ir\nfn=main\n1 5\nsummary: 40\ntotals: 42\n")
    assert totals(str(dump)) == 42
    dump.write_text("version: 1\nevents: Ir\nsummary: 40\n")
    assert totals(str(dump)) == 40
    dump.write_text("version: 1\nevents: Ir\n")
    assert totals(str(dump)) is None


def test_self_costs_by_part(tmp_path: Path) -> None:
    """Each function's own cost only: a call's inclusive cost (the line after `calls=`) is the
    caller's line, not its own; names given once by id, in `fn=`/`cfn=` or `ob=`/`cob=`, are
    found again by id; the parts add up to the dump's total."""
    dump = tmp_path / "callgrind.out.2"
    dump.write_text(
        "version: 1\npositions: line\nevents: Ir\n"
        "ob=(1) /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "fl=(1) string.S\nfn=(1) __memcpy_avx_unaligned_erms\n10 100\n+2 20\n"
        "cob=(3) /x/uvloop/loop.cpython-311-x86_64-linux-gnu.so\n"
        "cfn=(5) __pyx_f_6uvloop_4loop_cb\ncalls=1 0\n12 777\n"
        "fl=(4) malloc.c\nfn=(6) _int_malloc\n3 40\n"
        "ob=(2) /usr/lib/libpython3.11.so.1.0\n"
        "fl=(2) ceval.c\nfn=(2) _PyEval_EvalFrameDefault\n5 7\n"
        "cob=(1)\ncfn=(3) __memset_avx2_unaligned_erms\ncalls=1 0\n6 5000\n"
        "cfn=(1)\ncalls=2 0\n7 9000\n"
        "ob=(1)\nfn=(3)\n1 30\n"
        "ob=(2)\nfn=(4) memory_ass_sub\n1 11\n"
        "ob=(3)\nfn=(5)\n4 777\n"
        "ob=(1)\nfn=(1)\n* 4\n"
        "totals: 989\n"
    )
    parts = breakdown(str(dump))
    assert parts == {
        "interpreter": 7 + 11,
        "copy/fill": 100 + 20 + 30 + 4,
        "allocator": 40,
        "uvloop": 777,
        "msgpack": 0,
        "other": 0,
    }
    assert sum(parts.values()) == totals(str(dump)) == 989


def test_a_short_run_counts_every_window(tmp_path: Path) -> None:
    doc = tmp_path / "instr.json"
    proc = run_bench(
        "--profile",
        "instructions",
        "--profile-conns",
        "4",
        "--profile-windows",
        "2",
        "--profile-window-s",
        "2",
        "--json",
        str(doc),
        timeout=300,
    )
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        assert proc.returncode == 2, output(proc)
        assert "apt install valgrind" in proc.stdout, output(proc)
        return
    assert proc.returncode == 0, output(proc)
    prof = json.loads(doc.read_text())["profile"]
    assert prof["problems"] == []
    windows = prof["windows"]
    assert len(windows) == 2
    for w in windows:
        # a verified round of the emulated echo runs hundreds of thousands of instructions;
        # a count of a few, or none, would be callgrind counting nothing of it
        assert w["rounds"] > 0 and w["instructions"] > 100_000 * w["rounds"], w
        # the copies of a verified 16 KiB round are there, and are not the whole of it
        assert 0 < w["copy_fill"] < w["instructions"] / 2, w
        outside = (w["instructions"] - w["copy_fill"]) / w["rounds"]
        # every instruction counted falls in one part, most of them the interpreter's
        assert sum(w["parts"].values()) == w["instructions"], w
        assert max(PARTS, key=lambda p: w["parts"][p]) == "interpreter", w
        assert w["outside_copy_fill_per_round"] == pytest.approx(outside), w
    # the point of the instrument: it repeats, as a few dozen rounds a window can (`repeats`)
    assert repeats(windows, 4), [(w["rounds"], w["instructions"]) for w in windows]
    assert "instructions per verified round" in proc.stdout
    assert "outside memcpy/memset" in proc.stdout
    assert "by part, per round: interpreter" in proc.stdout


def _windows(*counts: tuple[int, int]) -> list[dict[str, int]]:
    return [{"rounds": r, "instructions": ir} for r, ir in counts]


def test_repeating_allows_for_the_clock_and_the_rounds_in_flight() -> None:
    """A run at 4 connections and 2 s windows on a loaded machine: 27 and 32 rounds, 615,501
    and 584,716 per round (5.3% apart). The window that verified fewer rounds shared the
    clock-driven work among fewer, and each window counted part of the rounds in flight at its
    edges: the same instrument. A count that is not one window's fits no cost per round."""
    flaky = _windows((27, 16_618_525), (32, 18_710_916))
    assert repeats(flaky, 4)
    # many rounds a window, as at 100 connections and 10 s: a fraction of a percent apart
    steady = _windows((2_100, 2_100 * 601_659), (1_900, 1_900 * 603_457), (2_000, 2_000 * 602_000))
    assert repeats(steady, 100)
    # a window counted twice, or with half of another's, or not at all, does not repeat
    assert not repeats(_windows((27, 2 * 16_618_525), (32, 18_710_916)), 4)
    assert not repeats(_windows((2_000, 2_000 * 601_659), (2_000, 3_000 * 601_659)), 100)
    assert not repeats(_windows((27, 16_618_525), (32, 0)), 4)
    # equal rounds explain no difference: 5% apart is not the clock
    assert not repeats(_windows((2_000, 2_000 * 584_716), (2_000, 2_000 * 615_500)), 10)


def test_counts_that_are_not_positive_are_refused() -> None:
    """Refused before anything starts, valgrind or not: a run of no window would measure
    nothing."""
    for args in (("--profile-windows", "0"), ("--profile-conns", "0"), ("--profile-window-s", "0")):
        proc = run_bench("--profile", "instructions", *args, timeout=60)
        assert proc.returncode == 2, output(proc)
        assert "must be positive" in proc.stdout, output(proc)
