"""The ACKs the offload target would answer forwarded segments with and cannot send (docs/spec.md
§5.2 [EMU]) are counted under their own name, not as NDIS calls (docs/metrics.md).

`layers.<layer>.calls` counts NDIS calls: `chimneyctl stats` sums it as `calls`, the web view
shows the sum, and `chimney_calls_total` splits each key into call and status or event labels
(`"ChallengeAck/RST"` would read as a call named ChallengeAck with event RST). The target counts
these ACKs in `layers.<layer>.unsent_acks` (`challenge_rst`, `challenge_syn`, `ack_syn`,
`ack_urg`), exported as `chimney_unsent_acks_total{layer, kind}`, and carried across a shard's
restart as the other counters are."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chimney_client.ctl_render import call_totals
from chimneyd.drivers.segment import TH_ACK, TH_RST, TH_SYN, TH_URG
from chimneyd.drivers.target.receive import UNSENT_ACK_KINDS
from chimneyd.observe import aggregate
from chimneyd.observe.aggregate import counters, merge_stats
from chimneyd.observe.metrics import layer_summary, prometheus_text
from tests.unit.test_target_challenge_acks import _forward
from tests.unit.test_target_ndis_rules import Conn

KINDS = ("challenge_rst", "challenge_syn", "ack_syn", "ack_urg")


def _answered_once_each() -> tuple[Conn, str, dict[str, Any]]:
    """A connection whose target answered one segment of each kind; its layer's name and its
    `stack.stats` (the layers part)."""
    c = Conn().offload()
    _forward(c, 100, TH_RST | TH_ACK)  # in the window, off RcvNxt: a challenge ACK
    _forward(c, 100, TH_SYN)  # in the window, out of order: a challenge ACK
    _forward(c, 1 << 30, TH_SYN)  # outside the window: an ACK
    _forward(c, 1 << 30, TH_URG | TH_ACK, b"!")  # unacceptable urgent segment: an ACK
    (nic,) = c.st.under_test
    return c, nic.name, {"layers": c.st.ndis.stats()}


def test_the_target_counts_them_under_unsent_acks_not_as_calls() -> None:
    _, name, stats = _answered_once_each()
    layer = stats["layers"][name]
    assert layer.get("unsent_acks") == dict.fromkeys(KINDS, 1)
    odd = [k for k in layer["calls"] if not k.startswith("Ndis")]
    assert odd == [], f"not NDIS calls, in `calls`: {odd}"


def test_a_target_that_answered_nothing_reports_every_kind_at_zero() -> None:
    """Every kind is there from the start, so a scrape has the series before the first ACK."""
    c = Conn().offload()
    (nic,) = c.st.under_test
    assert c.st.ndis.stats()[nic.name].get("unsent_acks") == dict.fromkeys(KINDS, 0)


def test_chimneyctl_and_the_web_view_sum_only_ndis_calls() -> None:
    _, name, stats = _answered_once_each()
    layer = stats["layers"][name]
    ndis_calls = sum(n for k, n in layer["calls"].items() if k.startswith("Ndis"))
    assert call_totals(layer)[0] == ndis_calls
    assert layer_summary(stats)[name]["calls"] == ndis_calls


def test_prometheus_has_them_in_their_own_family() -> None:
    _, name, stats = _answered_once_each()
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(stats))}
    unsent = families["chimney_unsent_acks"]
    assert unsent.type == "counter"
    assert {(s.labels["layer"], s.labels["kind"]): s.value for s in unsent.samples} == {
        (name, kind): 1.0 for kind in KINDS
    }
    calls = {s.labels["call"] for s in families["chimney_calls"].samples}
    assert calls and all(call.startswith("Ndis") for call in calls), sorted(calls)


def test_they_are_counters_summed_over_shards_and_carried_across_restarts() -> None:
    """`counters` picks what the supervisor carries across a shard's restart; `merge_stats`
    sums the shards."""
    _, name, stats = _answered_once_each()
    assert counters(stats)["layers"][name]["unsent_acks"] == dict.fromkeys(KINDS, 1)
    merged = merge_stats({0: stats, 1: stats})
    assert merged["layers"][name]["unsent_acks"] == dict.fromkeys(KINDS, 2)


def test_the_supervisor_knows_every_kind_the_target_counts() -> None:
    """`aggregate` names the kinds itself (the supervisor imports no driver): the same ones."""
    assert aggregate.UNSENT_ACK_KINDS == UNSENT_ACK_KINDS == KINDS
