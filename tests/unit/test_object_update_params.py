"""The checks of `tcp.update`'s neighbor and path variables (`engine.check_object_cached`),
done before anything reaches a layer: a bad value is INVALID_PARAMS, never a guess."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.engine import check_object_cached


@pytest.mark.parametrize(
    "text",
    [
        "02::00",  # an empty group: not two bytes 02 00
        "02:00:00:00:00:2a:",  # a trailing separator
        ":02:00:00:00:00:2a",
        "0200:0000:002a",  # groups of two bytes
        "2:0:0:0:0:2a",  # groups of one digit
        "02 00 00 00 00 2a",  # spaces are not a separator the docs name
        "02:00-00:00:00:2a",  # two separators mixed
        "02:00:00:00:00:2a\n",
    ],
)
def test_a_link_layer_address_of_the_wrong_shape_is_refused(text: str) -> None:
    with pytest.raises(EngineError) as err:
        check_object_cached("neighbor", {"DlDestinationAddress": text})
    assert err.value.code == ErrorCode.INVALID_PARAMS


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("02:00:00:00:00:2a", bytes.fromhex("02000000002a")),
        ("02-00-00-00-00-2A", bytes.fromhex("02000000002a")),
        ("02000000002a", bytes.fromhex("02000000002a")),
        ("ff", b"\xff"),
    ],
)
def test_a_link_layer_address_as_text(text: str, value: bytes) -> None:
    assert check_object_cached("neighbor", {"DlDestinationAddress": text}) == {
        "DlDestinationAddress": value
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"DlDestinationAddress": None},
        {"DlDestinationAddress": b""},
        {"DlDestinationAddress": b"\x01" * 33},
        {"DlDestinationAddress": "ff" * 33},
        {"HostReachabilityDelta": 2**64},
        {"HostReachabilityDelta": True},
        {"HostReachabilityDelta": 1.5},
        {1: 2},
        {(1, 2): 2},
    ],
)
def test_bad_neighbor_values(changes: dict[Any, Any]) -> None:
    with pytest.raises(EngineError) as err:
        check_object_cached("neighbor", changes)
    assert err.value.code == ErrorCode.INVALID_PARAMS
