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
            kinds: [...g.querySelectorAll('[data-unsent-kind]')]
                .map((l) => `${l.dataset.unsentKind} ${l.querySelector('.count').textContent}`)
                .join(' · '),
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


def test_every_kind_at_once_stays_inside_the_target_s_box(wd: WebDaemon, page: Any) -> None:
    """Every kind counted, with large counts (a long-lived daemon's): the kinds written under
    the sum stay inside the box, each whole, in the order the target reports them, a line
    each, no line over the label, another line, or its own count."""
    counts = {"challenge_rst": 123456, "challenge_syn": 7890, "ack_syn": 2345678, "ack_urg": 901}

    def with_counts(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        body["layers"]["nic0"]["unsent_acks"] = counts
        route.fulfill(response=answer, body=json.dumps(body))

    page.route("**/api/stats", with_counts)
    page.goto(wd.url + "/")
    page.wait_for_selector(f'{TARGET} [data-unsent-total][data-raw="{sum(counts.values())}"]')
    fit = page.eval_on_selector(
        TARGET,
        """g => {
            const bb = (t) => { const b = t.getBBox(); return [b.x, b.y, b.width, b.height]; };
            const row = g.querySelector('g.unsent');
            return {
                box: bb(g.querySelector('rect.box')),
                label: bb(row.querySelector('text:not(.value)')),
                total: bb(row.querySelector('[data-unsent-total]')),
                lines: [...row.querySelectorAll('[data-unsent-kinds] > *')].map((l) => ({
                    kind: l.dataset.unsentKind,
                    texts: [...l.querySelectorAll('text')].map((t) => [...bb(t), t.textContent]),
                })),
            };
        }""",
    )
    bx, by, bw, bh = fit["box"]
    written = []
    above = max(fit["label"][1] + fit["label"][3], fit["total"][1] + fit["total"][3])
    for line in fit["lines"]:
        (nx, ny, nw, nh, name), (cx, cy, cw, ch, count) = line["texts"]
        written.append((name, count))
        for x, y, w, h in ((nx, ny, nw, nh), (cx, cy, cw, ch)):
            assert bx <= x and x + w <= bx + bw, f"{line} runs out of the box: {fit}"
            assert by <= y and y + h <= by + bh, f"{line} runs out of the box: {fit}"
            assert y >= above - 1, f"{line} is over the line above it: {fit}"
        assert nx + nw < cx, f"{line}: the kind runs into its count"
        above = max(ny + nh, cy + ch)
    assert written == [
        ("challenge_rst", "123,456"),
        ("challenge_syn", "7,890"),
        ("ack_syn", "2,345,678"),
        ("ack_urg", "901"),
    ], fit
    screenshot(page, "topology_unsent_acks_every_kind")
    page.unroute("**/api/stats")
