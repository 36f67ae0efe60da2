"""Clients for the chimneyd msgpack-RPC contract (v1).

This package speaks the wire contract only (rpc-contract.md) and imports nothing from
`chimneyd`, so it stays an honest, independent user of the daemon.
"""

from __future__ import annotations

from .aio import AsyncClient
from .blocking import Client
from .errors import (
    CallTimeout,
    ChimneyError,
    ConnectFailed,
    ConnectionLost,
    Denied,
    InternalError,
    InvalidParams,
    InvalidState,
    LimitError,
    NdisStatusError,
    NoMethod,
    NotFound,
    ProtocolError,
    RpcError,
    RpcTimeout,
)
from .peer import PeerServer, PeerStats, start_peer
from .protocol import DEFAULT_ADDRESS, ClientCodec, Notification, parse_address
from .stream import PatternStream, Verifier

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncClient",
    "CallTimeout",
    "ChimneyError",
    "Client",
    "ClientCodec",
    "ConnectFailed",
    "ConnectionLost",
    "Denied",
    "InternalError",
    "InvalidParams",
    "InvalidState",
    "LimitError",
    "NdisStatusError",
    "NoMethod",
    "NotFound",
    "Notification",
    "PatternStream",
    "PeerServer",
    "PeerStats",
    "ProtocolError",
    "RpcError",
    "RpcTimeout",
    "Verifier",
    "parse_address",
    "start_peer",
]
