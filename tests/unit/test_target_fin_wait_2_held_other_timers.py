"""A layer that held an initiate takes the hold off every timer the delegated state carries
down as a delta, not the FIN_WAIT_2 one only (spec §8, the timer table: retransmit, persist
in the same fields, and keepalive are carried in `Retransmit.TimeoutDelta` and
`KeepAlive.TimeoutDelta`, each counted by the target from its own initiate, with the same -1
/ 0 convention as FIN_WAIT_2's). [INF] as for FIN_WAIT_2 (`fin_wait_2.spend_held`): a hold is
no segment, and NDIS sends no clock down, so the layer that held it says what is left.

Pure blocks and `spend_held`, no stack: the rule, at the layer that held."""

from __future__ import annotations

import pytest

from chimneyd.drivers.fin_wait_2 import NS, spend_held
from chimneyd.ndis.blocks import OffloadBlock, TcpOffloadStateDelegated
from chimneyd.ndis.status import OffloadStateType, TcpOffloadConnectionState

TPS = 1000  # ticks a second (spec §8's default)
HELD_S = 40
STATES = [
    TcpOffloadConnectionState.TcpConnectionEstablished,
    TcpOffloadConnectionState.TcpConnectionFinWait2,
]


def _tcp_block(state: TcpOffloadConnectionState, rt: int, ka: int) -> OffloadBlock:
    d = TcpOffloadStateDelegated(State=state, RetransmitTimeoutDelta=rt, KeepAliveTimeoutDelta=ka)
    return OffloadBlock(OffloadStateType.TcpOffloadState, None, None, None, d)


@pytest.mark.parametrize("state", STATES)
def test_a_hold_comes_off_the_retransmit_and_keepalive_deltas(
    state: TcpOffloadConnectionState,
) -> None:
    block = _tcp_block(state, rt=90_000, ka=7_200_000)
    spend_held(block, HELD_S * NS, TPS)
    d = block.delegated
    assert (d.RetransmitTimeoutDelta, d.KeepAliveTimeoutDelta) == (50_000, 7_160_000)
    assert block.held_ns == HELD_S * NS


@pytest.mark.parametrize("state", STATES)
def test_a_timer_not_running_stays_so_and_a_spent_one_is_due_at_once(
    state: TcpOffloadConnectionState,
) -> None:
    block = _tcp_block(state, rt=-1, ka=30_000)
    spend_held(block, HELD_S * NS, TPS)
    d = block.delegated
    assert (d.RetransmitTimeoutDelta, d.KeepAliveTimeoutDelta) == (-1, 0)
    block = _tcp_block(state, rt=10_000, ka=-1)
    spend_held(block, HELD_S * NS, TPS)
    d = block.delegated
    assert (d.RetransmitTimeoutDelta, d.KeepAliveTimeoutDelta) == (0, -1)
