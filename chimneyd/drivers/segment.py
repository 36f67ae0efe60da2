"""TCP segments as `NdisOffloadTcpForward` carries them: data starts at the TCP header (spec §4.6)."""

from __future__ import annotations

import struct

TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20

_HEADER = struct.Struct("!HHIIBBHHH")
HEADER_LEN = _HEADER.size  # 20: no options
MAX_SEGMENT_PAYLOAD = 65535 - 40


def build_segment(
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes | memoryview = b"",
    window: int = 65535,
) -> bytes:
    header = _HEADER.pack(src_port, dst_port, seq, ack, (HEADER_LEN // 4) << 4, flags, window, 0, 0)
    return header + bytes(payload)


def parse_segment(data: bytes | memoryview) -> tuple[int, int, memoryview]:
    """(sequence, flags, payload view) of a forwarded segment."""
    view = memoryview(data)
    if len(view) < HEADER_LEN:
        raise ValueError("segment shorter than a TCP header")
    _, _, sequence, _, offset_byte, flags, _, _, _ = _HEADER.unpack_from(view)
    data_offset = (offset_byte >> 4) * 4
    if data_offset < HEADER_LEN or data_offset > len(view):
        raise ValueError("bad TCP data offset")
    return sequence, flags, view[data_offset:]
