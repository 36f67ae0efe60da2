"""`bench.common.placed`: a bulk figure is measured with its processes where its name says, and
every process gets its CPUs back afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.common import cpus, placed


def test_this_thread_runs_on_the_cpu_given_and_gets_its_mask_back() -> None:
    mask = os.sched_getaffinity(0)
    last = cpus()[-1]
    with placed({0: last}) as took:
        assert took is True
        assert os.sched_getaffinity(0) == {last}
    assert os.sched_getaffinity(0) == mask


def test_another_process_is_placed_and_given_back() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        mask = os.sched_getaffinity(child.pid)
        first = cpus()[0]
        with placed({child.pid: first}):
            assert os.sched_getaffinity(child.pid) == {first}
        assert os.sched_getaffinity(child.pid) == mask
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def test_a_placement_that_cannot_take_changes_nothing() -> None:
    mask = os.sched_getaffinity(0)
    # a CPU beyond any this process may use: the kernel refuses the mask
    with placed({0: cpus()[0], os.getpid(): 1 << 20}) as took:
        assert took is False
        assert os.sched_getaffinity(0) == mask
    assert os.sched_getaffinity(0) == mask
