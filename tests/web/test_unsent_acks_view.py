"""A target's unsent ACKs in the web view (docs/metrics.md `layers.<layer>.unsent_acks`,
spec §5.2): `/api/stats` carries them per layer as the target reports them, and the
topology's box of a target shows them in a row of its own (their sum, each kind that is not 0
under it, every kind in the tooltip), apart from its NDIS `calls`. Checked in a real browser
against a real daemon; since no fault makes a real peer's segments reach the target as
forwarded RSTs, SYNs or URG segments, the counts that are not 0 are put into the daemon's own
`/api/stats` answer on its way to the page."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.web.support import WebDaemon, screenshot

KINDS = ["challenge_rst", "challenge_syn", "ack_syn", "ack_urg"]
TARGET = 'g.node[data-layer="nic0"]'


def _api_stats(wd: WebDaemon) -> dict[str, Any]:
    with urllib.request.urlopen(wd.url + "/api/stats", timeout=10) as r:
        stats: dict[str, Any] = json.load(r)
    return stats


def test_api_stats_carries_a_target_s_unsent_acks(wd: WebDaemon) -> None:
    """Every kind from the start (0), the target's only: the host and the IM count none."""
    layers = _api_stats(wd)["layers"]
    assert layers["nic0"]["unsent_acks"] == dict.fromkeys(KINDS, 0)
    assert "unsent_acks" not in layers["tcpip"] and "unsent_acks" not in layers["im0"]


def _row(page: Any) -> dict[str, Any]:
    return page.eval_on_selector(  # type: ignore[no-any-return]
        f"{TARGET} g.unsent",
        """g => ({total: g.querySelector('[data-unsent-total]').textContent,
            raw: g.querySelector('[data-unsent-total]').dataset.raw,
            kinds: g.querySelector('[data-unsent-kinds]').textContent,
            tip: g.querySelector('title').textContent})""",
    )


def test_the_target_s_box_shows_them_apart_from_its_calls(wd: WebDaemon, page: Any) -> None:
    counts = {"challenge_rst": 2, "challenge_syn": 0, "ack_syn": 0, "ack_urg": 1}
    served: list[int] = []

    def with_counts(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        body["layers"]["nic0"]["unsent_acks"] = counts
        served.append(body["layers"]["nic0"]["calls"])
        route.fulfill(response=answer, body=json.dumps(body))

    page.goto(wd.url + "/")
    page.wait_for_selector(f"{TARGET} g.unsent [data-unsent-total][data-raw]")
    row = _row(page)
    assert (row["total"], row["kinds"]) == ("0", "")  # the daemon's own: none yet
    assert page.query_selector('g.node[data-layer="tcpip"] g.unsent') is None
    assert page.query_selector('g.node[data-layer="im0"] g.unsent') is None

    page.route("**/api/stats", with_counts)
    page.reload()
    page.wait_for_selector(f'{TARGET} [data-unsent-total][data-raw="3"]')
    row = _row(page)
    assert row["total"] == "3"
    assert row["kinds"] == "challenge_rst 2 · ack_urg 1"
    assert row["tip"] == (
        "unsent ACKs (not NDIS calls): challenge_rst 2, challenge_syn 0, ack_syn 0, ack_urg 1"
    )
    calls = page.get_attribute(f'{TARGET} text[data-gauge="calls"]', "data-raw")
    assert calls is not None and int(calls) in served  # the calls as served, no ACK added
    screenshot(page, "topology_unsent_acks")
    page.unroute("**/api/stats")
