"""Clients for the chimneyd msgpack-RPC contract (v1)."""
