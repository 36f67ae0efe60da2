"""Every object's state through the public `fire` of its Lifecycle (spec §3.9): the phase
tables per role, the TCP part, and `reach` (catching up with a state a lower layer reports)."""

from __future__ import annotations

import pytest

from chimneyd.ndis.errors import IllegalTransition
from chimneyd.ndis.lifecycle import (
    DELEGATED_STATE,
    Event,
    Lifecycle,
    Phase,
    Role,
    TcpState,
    tcp_state_of,
)
from chimneyd.ndis.status import TcpOffloadConnectionState as TcpConn

E = Event


def at(role: Role, *events: Event, tcp: TcpState | None = None) -> Lifecycle:
    obj = Lifecycle("TCB 1", role, tcp)
    for event in events:
        obj.fire(event)
    return obj


OFFLOADED = (E.INITIATE, E.INITIATE_OFFLOADED)


def test_offload_then_upload_ends_in_host_mode_at_the_host_and_dead_below() -> None:
    host = at(Role.HOST_CONNECTION, *OFFLOADED, E.TERMINATE, E.TERMINATE_COMPLETE)
    lower = at(Role.OFFLOADED_OBJECT, *OFFLOADED, E.TERMINATE, E.TERMINATE_COMPLETE)
    assert host.phase is Phase.IDLE  # the host carries the connection again
    assert lower.phase is Phase.TERMINATED  # its handle is dead (spec §9 item 8)
    host.fire(E.INITIATE)  # and may be offloaded again
    with pytest.raises(IllegalTransition):
        lower.fire(E.INITIATE)


def test_a_failed_initiate_goes_back_to_idle_and_can_be_tried_again() -> None:
    obj = at(Role.HOST_CONNECTION, E.INITIATE, E.INITIATE_FAILED)
    assert obj.phase is Phase.IDLE
    obj.fire(E.INITIATE)
    assert obj.phase is Phase.OFFLOADING


def test_no_io_while_offloading_and_the_error_names_state_and_event() -> None:
    obj = at(Role.OFFLOADED_OBJECT, E.INITIATE)
    with pytest.raises(IllegalTransition) as caught:
        obj.fire(E.IO)
    assert (caught.value.state, caught.value.call) == ("OFFLOADING", E.IO.value)
    assert "TCB 1" in str(caught.value)
    assert obj.phase is Phase.OFFLOADING  # an illegal event changes nothing


def test_no_update_of_an_invalidated_object_but_queries_go_on() -> None:
    obj = at(Role.OFFLOADED_OBJECT, *OFFLOADED, E.INVALIDATE)
    with pytest.raises(IllegalTransition):
        obj.fire(E.UPDATE)
    obj.fire(E.QUERY)
    assert obj.phase is Phase.INVALIDATED


@pytest.mark.parametrize("asked", [E.RETRIEVE, E.UPLOAD_ALL])
def test_the_host_keeps_a_connection_invalidated_when_it_is_asked_up(asked: Event) -> None:
    """`invalid` is a flag beside the upload request (spec §3.9): the host's record stays
    INVALIDATED, so it takes no update and no second invalidate. Below, an object the request
    reached moves on to UPLOAD_REQUESTED as the spec's table says; one it did not reach (an
    IM: UPLOAD_ALL is the NIC's to the host) stays INVALIDATED and refuses both."""
    host = at(Role.HOST_CONNECTION, *OFFLOADED, E.INVALIDATE, asked)
    assert host.phase is Phase.INVALIDATED
    for refused in (E.UPDATE, E.INVALIDATE):
        with pytest.raises(IllegalTransition):
            host.fire(refused)
    host.fire(E.TERMINATE)  # what it is for
    lower = at(Role.OFFLOADED_OBJECT, *OFFLOADED, E.INVALIDATE, asked)
    assert lower.phase is Phase.UPLOAD_REQUESTED
    upload_requested_first = at(Role.HOST_CONNECTION, *OFFLOADED, asked, E.INVALIDATE)
    assert upload_requested_first.phase is Phase.INVALIDATED


def test_optional_and_mandatory_retrieves() -> None:
    obj = at(Role.OFFLOADED_OBJECT, *OFFLOADED, E.RETRIEVE_OPTIONAL)
    assert obj.phase is Phase.UPLOAD_SUGGESTED
    obj.fire(E.IO)  # the target carries on after an optional reason (spec §5.2)
    obj.fire(E.RETRIEVE)
    assert obj.phase is Phase.UPLOAD_REQUESTED
    obj.fire(E.RETRIEVE_OPTIONAL)  # a weaker request changes nothing
    assert obj.phase is Phase.UPLOAD_REQUESTED


def test_a_failed_terminate_leaves_the_object_for_another() -> None:
    obj = at(Role.OFFLOADED_OBJECT, *OFFLOADED, E.TERMINATE, E.TERMINATE_FAILED)
    assert obj.phase is Phase.FAILED  # spec §3.7
    obj.fire(E.INDICATE)  # the retrieve and abort that follow
    obj.fire(E.TERMINATE)
    assert obj.phase is Phase.TERMINATING


def test_nothing_after_terminated() -> None:
    obj = at(Role.OFFLOADED_OBJECT, *OFFLOADED, E.TERMINATE, E.TERMINATE_COMPLETE)
    for event in (E.IO, E.INDICATE, E.QUERY, E.UPDATE, E.TERMINATE, E.RETRIEVE):
        with pytest.raises(IllegalTransition):
            obj.fire(event)  # spec §9 item 8


def test_close_only_from_host_mode() -> None:
    obj = at(Role.HOST_CONNECTION, *OFFLOADED)
    with pytest.raises(IllegalTransition):
        obj.fire(E.CLOSE)  # an offloaded connection is uploaded first
    obj = at(Role.HOST_CONNECTION, E.CLOSE)
    assert obj.phase is Phase.CLOSED
    with pytest.raises(IllegalTransition):
        obj.fire(E.INITIATE)
    with pytest.raises(IllegalTransition):
        at(Role.OFFLOADED_OBJECT, E.CLOSE)


def test_tcp_states_follow_rfc_793() -> None:
    active = at(
        Role.HOST_CONNECTION, E.FIN_SENT, E.FIN_ACKED, E.FIN_RECEIVED, tcp=TcpState.ESTABLISHED
    )
    assert active.tcp is TcpState.TIME_WAIT
    passive = at(
        Role.HOST_CONNECTION, E.FIN_RECEIVED, E.FIN_SENT, E.FIN_ACKED, tcp=TcpState.ESTABLISHED
    )
    assert passive.tcp is TcpState.CLOSED
    simultaneous = at(Role.HOST_CONNECTION, E.FIN_SENT, E.FIN_RECEIVED, tcp=TcpState.ESTABLISHED)
    assert simultaneous.tcp is TcpState.CLOSING
    with pytest.raises(IllegalTransition):
        simultaneous.fire(E.FIN_SENT)  # one FIN per direction
    for state in TcpState:
        obj = Lifecycle("c", Role.HOST_CONNECTION, state)
        obj.fire(E.RESET)  # an RST may come in any state, twice too
        obj.fire(E.RESET)
        assert obj.tcp is TcpState.RESET


def test_tcp_events_need_a_connection() -> None:
    with pytest.raises(IllegalTransition):
        at(Role.HOST_OBJECT, E.FIN_SENT)  # a neighbor or path has no TCP state


def test_reach_catches_up_and_never_goes_back() -> None:
    host = at(Role.HOST_CONNECTION, tcp=TcpState.ESTABLISHED)
    host.reach(TcpState.CLOSE_WAIT)  # a FIN the target received but had not indicated
    assert host.tcp is TcpState.CLOSE_WAIT
    ahead = at(Role.HOST_CONNECTION, E.FIN_SENT, tcp=TcpState.ESTABLISHED)
    ahead.reach(TcpState.ESTABLISHED)  # our FIN the target refused to send: the host is ahead
    assert ahead.tcp is TcpState.FIN_WAIT_1
    ahead.fire(E.FIN_RECEIVED)
    ahead.reach(TcpState.CLOSE_WAIT)  # and the peer's FIN came meanwhile: still ahead
    assert ahead.tcp is TcpState.CLOSING
    done = at(Role.HOST_CONNECTION, E.FIN_SENT, E.FIN_ACKED, tcp=TcpState.ESTABLISHED)
    with pytest.raises(IllegalTransition):
        done.reach(TcpState.CLOSE_WAIT)  # FIN_WAIT_2 and CLOSE_WAIT lead to neither


@pytest.mark.parametrize("below", [TcpState.LAST_ACK, TcpState.CLOSE_WAIT])
def test_reach_takes_a_peer_fin_the_layer_below_had_not_indicated(below: TcpState) -> None:
    """Our FIN sent, the peer's FIN received below but not yet indicated (it waits behind
    held bytes): the host takes the FIN and is CLOSING, whether our FIN left below (LAST_ACK)
    or not yet (CLOSE_WAIT)."""
    host = at(Role.HOST_CONNECTION, E.FIN_SENT, tcp=TcpState.ESTABLISHED)
    host.reach(below)
    assert host.tcp is TcpState.CLOSING
    done = at(Role.HOST_CONNECTION, E.FIN_SENT, E.FIN_ACKED, tcp=TcpState.ESTABLISHED)
    with pytest.raises(IllegalTransition):
        done.reach(TcpState.LAST_ACK)  # ours acknowledged here but not below: a contradiction


def test_delegated_closed_is_graceful_after_last_ack_or_our_fin_without_a_kill() -> None:
    closed = TcpConn.TcpConnectionClosed
    assert tcp_state_of(closed, TcpState.LAST_ACK) is TcpState.CLOSED
    assert tcp_state_of(closed, TcpState.ESTABLISHED) is TcpState.RESET
    # our FIN sent and no kill heard of: the peer's FIN went first below, ours is acknowledged
    for sent in (TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2, TcpState.CLOSING):
        assert tcp_state_of(closed, sent, told_of_no_kill=True) is TcpState.TIME_WAIT
        assert tcp_state_of(closed, sent) is TcpState.RESET  # told of a kill (or not asked)
    assert tcp_state_of(closed, TcpState.ESTABLISHED, told_of_no_kill=True) is TcpState.RESET
    for state, delegated in DELEGATED_STATE.items():
        if state not in (TcpState.CLOSED, TcpState.RESET):
            assert tcp_state_of(delegated) is state
