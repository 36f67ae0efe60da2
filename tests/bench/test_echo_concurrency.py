"""The echo section's "same N" holds at once on both sides: the direct side runs a round on all
N connections together, and the emulated (and floor) side spreads them over enough RPC clients
that none holds a round back. No sockets: the assignment of connections to clients."""

from __future__ import annotations

import pytest

from bench import echo_bench
from bench.context import SCALES


@pytest.mark.parametrize("n", [10, 20, 100, 480, 960, 961, 1000, 5000])
def test_the_echo_section_runs_every_connection_at_once_on_both_sides(n: int) -> None:
    """The direct side runs a round on all N connections at once; the emulated (and floor)
    side at most ROUNDS_PER_CLIENT per RPC client: every client carries no more connections
    than that, so all N rounds run at once there too (8 clients held 40 of 1,000 back)."""
    k = echo_bench.rpc_clients(n)
    per_client = [0] * k
    for i in range(n):
        per_client[echo_bench.client_of(i, k)] += 1
    assert max(per_client) <= echo_bench.ROUNDS_PER_CLIENT, (n, k, max(per_client))
    assert k >= echo_bench.MIN_RPC_CLIENTS


def test_every_scale_s_echo_counts_run_at_once() -> None:
    for scale in SCALES.values():
        for n in scale.echo_counts:
            assert echo_bench.rpc_clients(n) * echo_bench.ROUNDS_PER_CLIENT >= n
