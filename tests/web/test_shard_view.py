"""The web view of a daemon of two shards, in a real browser: the pages show the whole daemon
(docs/metrics.md, Shards), at load and as it changes, though shard 0 serves them and its
WebSocket pushes shard 0's own figures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chimney_client import Client
from tests.e2e.support import HOST
from tests.web.support import web_daemon

MAX_DIALS = 64  # clients opened at most to find one on shard 1


@contextlib.contextmanager
def client_on_shard(address: str, shard: int) -> Iterator[Client]:
    """A client the kernel's SO_REUSEPORT hash put on `shard` (bounded dials)."""
    others: list[Client] = []
    try:
        for _ in range(MAX_DIALS):
            c = Client.connect(address, call_timeout=15.0)
            if c.stack_info()["shard"] == shard:
                try:
                    yield c
                finally:
                    c.close()
                return
            others.append(c)
        raise AssertionError(f"{MAX_DIALS} clients, none on shard {shard}")
    finally:
        for c in others:
            c.close()


def gauge(page: Any, layer: str, key: str) -> str | None:
    selector = f'g.node[data-layer="{layer}"] text[data-gauge="{key}"]'
    raw: str | None = page.get_attribute(selector, "data-raw")
    return raw


def test_pages_show_the_whole_daemon_of_two_shards(tmp_path: Path, page: Any) -> None:
    """Connections all in shard 1: the connections page, the bar's count and the topology's
    gauges show them at a fresh load, and show the next one opened there too."""
    with (
        web_daemon(tmp_path, args=("--shards", "2")) as w,
        client_on_shard(w.daemon.address, 1) as c,
    ):
        conns = [c.tcp_connect(HOST, w.peer_port) for _ in range(2)]
        daemon = c.stack_stats()
        assert daemon["connections"] == 2
        offloads = daemon["layers"]["nic0"]["offloads_active"]
        assert offloads > 0
        try:
            page.goto(w.url + "/connections")  # a fresh load
            page.wait_for_selector("body[data-ready='1']")
            page.wait_for_function(
                "() => document.getElementById('summary').textContent.length > 0"
            )
            assert page.text_content("#conn-count") == "2 open"
            assert page.text_content("#summary").split(" · ")[0] == "2 connections"
            assert page.locator("#rows tr").count() == 2

            page.goto(w.url + "/")
            page.wait_for_selector('g.node[data-layer="nic0"] text[data-gauge="calls"][data-raw]')
            assert gauge(page, "nic0", "offloads_active") == str(offloads)

            # later figures are the whole daemon's too, not the serving shard's
            conns.append(c.tcp_connect(HOST, w.peer_port))
            page.wait_for_function(
                "() => document.getElementById('summary').textContent.startsWith('3 connections')"
            )
            page.goto(w.url + "/connections")
            page.wait_for_selector("#rows tr:nth-child(3)")
            assert page.text_content("#conn-count") == "3 open"
        finally:
            for conn in conns:
                c.tcp_close(conn)
