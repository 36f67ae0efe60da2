"""What the daemon answers a fault.inject it cannot take: the kind, the key and what it wants."""

from __future__ import annotations

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.faults import KINDS, kind_of


def refusal(spec: dict[str, object]) -> str:
    with pytest.raises(EngineError) as err:
        kind_of(spec).check(spec)
    assert err.value.code == ErrorCode.INVALID_PARAMS
    return err.value.detail


def test_a_missing_key_is_named_with_what_it_takes() -> None:
    detail = refusal({"kind": "delay", "call": "MiniportTcpOffloadSend", "ms": 5})
    assert detail == "fault kind 'delay' needs key 'layer' (a layer name)"
    assert (
        refusal({"kind": "peer_reset"})
        == "fault kind 'peer_reset' needs key 'conn' (a connection id)"
    )


def test_an_unknown_key_or_kind_lists_what_there_is() -> None:
    detail = refusal({"kind": "peer_reset", "conn": 1, "layer": "nic0"})
    assert detail == "fault kind 'peer_reset' has no key 'layer' (keys: conn)"
    detail = refusal({"kind": "peer_rest", "conn": 1})
    assert detail.startswith("unknown fault kind 'peer_rest' (kinds: ")
    assert all(name in detail for name in KINDS)


def test_a_wrong_value_names_its_key() -> None:
    assert refusal({"kind": "delay", "layer": 3, "call": "X", "ms": 5}) == (
        "fault key 'layer' must be a non-empty string of at most 128 characters"
    )
    assert refusal({"kind": "delay", "layer": "im0", "call": "X", "ms": 0}).startswith(
        "fault key 'ms' must be 1.."
    )
