"""What a person sees in the web view, checked in a real browser against a real daemon."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.support import HOST, echo
from tests.web.support import WebDaemon, record, screenshot

LAYERS = [["tcpip", "host"], ["im0", "passthrough"], ["nic0", "target"]]
LANES = ["tcpip", "NDIS", "im0", "NDIS", "nic0"]
#: One send's hops (rpc-contract "Example: the hops of one send"), one NBL all the way.
SEND_HOPS = [
    ["tcpip", "NdisOffloadTcpSend"],
    ["im0", "MiniportTcpOffloadSend"],
    ["im0", "NdisOffloadTcpSend"],
    ["nic0", "MiniportTcpOffloadSend"],
    ["nic0", "NdisTcpOffloadSendComplete"],
    ["im0", "ProtocolTcpOffloadSendComplete"],
    ["im0", "NdisTcpOffloadSendComplete"],
    ["tcpip", "ProtocolTcpOffloadSendComplete"],
]


def gauge(page: Any, layer: str, key: str) -> int:
    raw = page.get_attribute(f'g.node[data-layer="{layer}"] text[data-gauge="{key}"]', "data-raw")
    return int(raw)


def wait_gauge_above(page: Any, layer: str, key: str, value: int) -> None:
    page.wait_for_function(
        """([layer, key, value]) => {
            const t = document.querySelector(`g.node[data-layer="${layer}"] text[data-gauge="${key}"]`);
            return t && Number(t.dataset.raw) > value;
        }""",
        arg=[layer, key, value],
    )


def test_topology_shows_the_layers_and_counters_that_move(wd: WebDaemon, page: Any) -> None:
    page.goto(wd.url + "/")
    page.wait_for_selector('g.node[data-layer="nic0"] text[data-gauge="calls"][data-raw]')
    layers = page.eval_on_selector_all(
        "g.node", "ns => ns.map(n => [n.dataset.layer, n.dataset.kind])"
    )
    assert layers == LAYERS
    edges = page.eval_on_selector_all(
        "g.edge", "es => es.map(e => [e.dataset.upper, e.dataset.lower])"
    )
    assert edges == [["tcpip", "im0"], ["im0", "nic0"]]  # the NDIS bindings
    for layer, _ in LAYERS:
        shown = page.eval_on_selector_all(
            f'g.node[data-layer="{layer}"] text[data-gauge]', "ts => ts.map(t => t.dataset.gauge)"
        )
        assert shown == [
            "offloads_active",
            "handles",
            "outstanding_nbls",
            "bytes",
            "calls",
            "failures",
            "inbox",
        ]
    before = {k: gauge(page, "nic0", k) for k in ("calls", "bytes", "offloads_active")}
    with wd.client() as c:
        conn = c.tcp_connect(HOST, wd.peer_port)
        echo(c, conn, b"x" * 4096)
        for key, value in before.items():
            wait_gauge_above(page, "nic0", key, value)
        wait_gauge_above(page, "tcpip", "calls", 0)
        assert page.text_content("#status") == "live"
        screenshot(page, "topology")
        c.tcp_close(conn)
    page.wait_for_function(
        """v => Number(document.querySelector('g.node[data-layer="nic0"] text[data-gauge="offloads_active"]').dataset.raw) <= v""",
        arg=before["offloads_active"],
    )


def hops_of(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#seq g.hop",
        """gs => gs.map(g => ({seq: Number(g.dataset.seq), layer: g.dataset.layer,
            call: g.dataset.call, nbl: g.dataset.nbl ? Number(g.dataset.nbl) : null,
            event: g.dataset.event || null,
            colour: (g.querySelector('line, path') || {}).getAttribute('stroke')}))""",
    )


def test_a_diagram_gains_arrows_when_data_is_sent(wd: WebDaemon, page: Any) -> None:
    with wd.client() as c:
        conn = c.tcp_connect(HOST, wd.peer_port)
        page.goto(f"{wd.url}/conn/{conn}")
        page.wait_for_selector("#live.badge.live")
        page.wait_for_selector("#seq g.hop")
        lanes = page.eval_on_selector_all("#seq g.lane", "ls => ls.map(l => l.dataset.name)")
        assert lanes == LANES
        assert page.text_content("#conn-state") == "offloaded"
        n0 = len(hops_of(page))
        echo(c, conn, b"seed figure " * 100)
        page.wait_for_function("n => document.querySelectorAll('#seq g.hop').length > n", arg=n0)
        page.wait_for_selector(
            '#seq g.hop[data-layer="tcpip"][data-call="ProtocolTcpOffloadSendComplete"]'
        )
        hops = hops_of(page)
        assert len(hops) > n0
        assert [h["seq"] for h in hops] == sorted({h["seq"] for h in hops})  # none twice
        first = next(h for h in hops if h["call"] == "NdisOffloadTcpSend")
        same = [h for h in hops if h["nbl"] == first["nbl"]]
        assert [[h["layer"], h["call"]] for h in same][: len(SEND_HOPS)] == SEND_HOPS
        assert len({h["colour"] for h in same}) == 1  # the same NBL: one colour all the way
        legend = page.eval_on_selector_all("#nbl-legend span", "s => s.map(x => x.dataset.nbl)")
        assert str(first["nbl"]) in legend
        # a later send grows the picture again, live
        n1 = len(hops)
        echo(c, conn, b"again")
        page.wait_for_function("n => document.querySelectorAll('#seq g.hop').length > n", arg=n1)
        screenshot(page, "sequence-diagram")
        c.tcp_close(conn)
    page.wait_for_selector('#conn-events li[data-event="closed"]')
    assert page.text_content("#conn-state") == "closed"


def test_a_peer_reset_shows_up_as_an_abort(wd: WebDaemon, browser: Any) -> None:
    events = browser.new_page()
    diagram = browser.new_page()
    try:
        with wd.client() as c:
            conn = c.tcp_connect(HOST, wd.peer_port)
            echo(c, conn, b"before the reset")
            events.goto(wd.url + "/events")
            events.wait_for_selector("#status.on")
            diagram.goto(f"{wd.url}/conn/{conn}")
            diagram.wait_for_selector("#live.badge.live")
            diagram.wait_for_selector("#seq g.hop")
            c.fault_inject("peer_reset", conn=conn)
            events.wait_for_selector(
                f'#events tr[data-event="TcpIndicateAbort"][data-conn="{conn}"]'
            )
            events.wait_for_selector('#events tr[data-event="fault_injected"]')
            events.wait_for_selector(f'#events tr[data-event="uploaded"][data-conn="{conn}"]')
            diagram.wait_for_selector('#conn-events li[data-event="TcpIndicateAbort"]')
            diagram.wait_for_selector('#seq g.hop[data-event="TcpIndicateAbort"]')
            screenshot(events, "events-after-peer-reset")
            screenshot(diagram, "sequence-diagram-abort")
            with_abort = [h for h in hops_of(diagram) if h["event"] == "TcpIndicateAbort"]
            # the NIC indicates it, the IM passes it up, the host hears it (spec §5.1)
            assert {h["layer"] for h in with_abort} == {"nic0", "im0", "tcpip"}
            c.fault_clear("*")
            c.tcp_close(conn)
    finally:
        events.close()
        diagram.close()


def test_the_event_stream_names_offloads_and_closes(wd: WebDaemon, page: Any) -> None:
    page.goto(wd.url + "/events")
    page.wait_for_selector("#status.on")
    with wd.client() as c:
        conn = c.tcp_connect(HOST, wd.peer_port)
        page.wait_for_selector(f'#events tr[data-event="offloaded"][data-conn="{conn}"]')
        page.wait_for_selector(f'#events tr[data-event="connected"][data-conn="{conn}"]')
        c.tcp_close(conn)
        page.wait_for_selector(f'#events tr[data-event="closed"][data-conn="{conn}"]')
    page.select_option("#kind", "fault")
    assert page.locator(f'#events tr[data-conn="{conn}"]:visible').count() == 0


@pytest.mark.timeout(600)
def test_connections_view_first_paint_with_a_thousand_connections(wd: WebDaemon, page: Any) -> None:
    """Measured, not asserted: time to first paint of the connections view."""
    n = 1000
    with wd.client() as c:
        t0 = time.monotonic()
        conns = [c.tcp_connect(HOST, wd.peer_port) for _ in range(n)]
        opened_s = time.monotonic() - t0
        t0 = time.monotonic()
        page.goto(wd.url + "/connections")
        page.wait_for_selector('body[data-ready="1"]')
        wall_ms = (time.monotonic() - t0) * 1000
        timing = page.evaluate(
            """() => {
                const nav = performance.getEntriesByType('navigation')[0];
                const fcp = performance.getEntriesByName('first-contentful-paint')[0];
                const rows = performance.getEntriesByName('conns-rendered')[0];
                return {
                    dom_content_loaded_ms: nav ? nav.domContentLoadedEventEnd : null,
                    first_contentful_paint_ms: fcp ? fcp.startTime : null,
                    first_rows_painted_ms: rows ? rows.startTime : null,
                };
            }"""
        )
        assert page.locator("#rows tr").count() == 100  # one page, cut by the daemon
        assert page.text_content("#conn-count") == f"{n:,} open"
        first = page.get_attribute("#rows tr:first-child", "data-conn")
        assert first == str(conns[0])
        screenshot(page, "connections-1000", full_page=False)
        page.click("#next")
        page.wait_for_selector(f'#rows tr:first-child[data-conn="{conns[100]}"]')
        assert page.text_content("#page-label").startswith("page 2 of 10")
        # the rows stay live: a send shows up in the bytes of its row on the next push
        echo(c, conns[100], b"z" * 321)
        page.wait_for_selector(f'#rows tr[data-conn="{conns[100]}"] td.num >> text="321"')
        record(
            "connections_view_first_paint",
            {
                "connections": n,
                "open_connections_s": round(opened_s, 2),
                "goto_until_rows_ms": round(wall_ms, 1),
                **{k: (round(v, 1) if v is not None else None) for k, v in timing.items()},
            },
        )
