"""The checks of `tcp.update`'s neighbor and path variables (`engine.check_object_cached`),
done before anything reaches a layer: a bad value is INVALID_PARAMS, never a guess."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.engine import cached_ranges, check_cached, check_object_cached


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


@pytest.mark.parametrize(
    ("changes", "hint"),
    [
        ({"NextHop": "02:00:00:00:00:2b"}, '"object": "path"'),
        ({"PathMtu": 1400}, '"object": "path"'),
        ({"DlDestinationAddress": "02:00:00:00:00:2a"}, '"object": "neighbor"'),
        ({"HostReachabilityDelta": 0}, '"object": "neighbor"'),
    ],
)
def test_a_path_or_neighbor_variable_sent_as_a_tcp_one_names_its_object(
    changes: dict[str, Any], hint: str
) -> None:
    """`chimneyctl update c NextHop=...` without `object=path` reaches the TCP variables'
    check: its error says which object the variable is of, not only the TCP variables."""
    with pytest.raises(EngineError) as err:
        check_cached(changes, cached_ranges(65535))
    assert err.value.code == ErrorCode.INVALID_PARAMS
    assert hint in err.value.message and "object=" in err.value.message, err.value.message


def test_a_variable_of_the_other_object_names_that_object() -> None:
    with pytest.raises(EngineError) as err:
        check_object_cached("path", {"DlDestinationAddress": "02:00:00:00:00:2a"})
    assert err.value.code == ErrorCode.INVALID_PARAMS
    assert '"object": "neighbor"' in err.value.message, err.value.message


@pytest.mark.parametrize(("what", "key"), [("path", "KaTimeout"), ("neighbor", "TtlOrHopLimit")])
def test_a_tcp_variable_sent_with_an_object_says_to_drop_the_object(what: str, key: str) -> None:
    """`chimneyctl update c object=path KaTimeout=...`: a TCP variable sent with an `object`
    says it is a TCP one and that the update needs no `object`, not only the object's
    variables."""
    with pytest.raises(EngineError) as err:
        check_object_cached(what, {key: 1})
    assert err.value.code == ErrorCode.INVALID_PARAMS
    message = err.value.message
    assert f"{key!r} is a TCP variable" in message and 'drop "object"' in message, message
