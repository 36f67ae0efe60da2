"""chimneyctl's `update` keeps a link-layer address as the text given (the daemon reads it):
`NextHop=000000000000` is six zero bytes, not the int 0."""

from __future__ import annotations

from chimney_client import ctl


def test_address_values_stay_text_and_others_are_parsed() -> None:
    assert ctl._key_value("NextHop=000000000000") == ("NextHop", "000000000000")
    assert ctl._key_value("DlDestinationAddress=020000000001") == (
        "DlDestinationAddress",
        "020000000001",
    )
    assert ctl._key_value("PathMtu=1400") == ("PathMtu", 1400)
