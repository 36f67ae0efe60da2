"""ClientCodec: a chunk with bad bytes takes no call out of the pending map."""

from __future__ import annotations

import msgpack
import pytest

from chimney_client.errors import ProtocolError
from chimney_client.protocol import ClientCodec


@pytest.mark.parametrize(
    "bad",
    [b"\xc1\xc1", msgpack.packb("not an array"), msgpack.packb([9, 9])],
    ids=["not-msgpack", "not-an-array", "bad-shape"],
)
def test_answers_before_bad_bytes_stay_pending(bad: bytes) -> None:
    """The shell fails what is pending when the codec raises: an answer decoded from the
    same chunk must still be there for it, or its caller waits forever."""
    codec: ClientCodec[str] = ClientCodec()
    first, _ = codec.request("ping", [], "first")
    second, _ = codec.request("ping", [], "second")
    chunk = msgpack.packb([1, first, None, "pong"]) + msgpack.packb([2, "tcp.event", []]) + bad
    with pytest.raises(ProtocolError):
        codec.receive(chunk)
    assert codec.is_pending(first) and codec.is_pending(second)
    assert sorted(codec.fail_all()) == ["first", "second"]
