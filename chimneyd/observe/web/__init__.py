"""The live web view and `/metrics` over HTTP (aiohttp, in the daemon's own event loop)."""

from __future__ import annotations

from .server import HttpServers

__all__ = ["HttpServers"]
