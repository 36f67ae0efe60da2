"""The observe section's checks on the daemon with the web view and /metrics on, on made-up
text: the addresses it printed, and a scrape whose histograms did not count the run's pings or
sends (or that shows the wrong number of connections) is a failure."""

from __future__ import annotations

import pytest

from bench.daemon import Daemon
from bench.observe_bench import http_addresses, sample, scrape_problems

SCRAPE = """\
# HELP chimney_connections Open connections.
# TYPE chimney_connections gauge
chimney_connections 10.0
# TYPE chimney_send_completion_seconds histogram
chimney_send_completion_seconds_bucket{le="+Inf"} 12.0
chimney_send_completion_seconds_count 12.0
chimney_rpc_request_seconds_count{method="ping"} 5000.0
chimney_rpc_request_seconds_count{method="tcp.send"} 12.0
"""


def test_sample_reads_one_series_by_its_labels() -> None:
    assert sample(SCRAPE, "chimney_connections") == 10.0
    assert sample(SCRAPE, "chimney_rpc_request_seconds_count", 'method="ping"') == 5000.0
    assert sample(SCRAPE, "chimney_rpc_request_seconds_count") is None  # labels are part of it
    assert sample(SCRAPE, "chimney_hop_latency_seconds_count", 'layer="nic0"') is None


def test_a_scrape_that_counted_the_run_passes() -> None:
    assert scrape_problems(SCRAPE, pings=5000, conns=10) == []


@pytest.mark.parametrize(
    ("text", "pings", "conns", "says"),
    [
        (SCRAPE, 5001, 10, "5000.0 ping requests, 5001 were made"),
        (SCRAPE, 5000, 13, "12.0 send completions"),
        (SCRAPE.replace("chimney_connections 10.0", "chimney_connections 9.0"), 5000, 10, "9.0"),
        # the daemon without histograms: /metrics has the gauges only
        ("chimney_connections 10.0\n", 1, 10, "None ping requests"),
    ],
)
def test_a_scrape_that_missed_part_of_the_run_fails(
    text: str, pings: int, conns: int, says: str
) -> None:
    problems = scrape_problems(text, pings, conns)
    assert problems and says in " ".join(problems), problems


def _daemon(banner: list[str]) -> Daemon:
    return Daemon(proc=None, port=1, banner=banner)  # type: ignore[arg-type]


def test_the_addresses_come_from_what_the_daemon_printed() -> None:
    daemon = _daemon(
        [
            '{"event": "rpc_listening"}',
            "chimneyd web view on http://127.0.0.1:40261/",
            "chimneyd metrics on http://127.0.0.1:33531/metrics",
            "chimneyd listening on 127.0.0.1:38711",
        ]
    )
    assert http_addresses(daemon) == ("127.0.0.1:40261", "127.0.0.1:33531")
    with pytest.raises(RuntimeError, match="no metrics address"):
        http_addresses(_daemon(daemon.banner[:2]))
    with pytest.raises(RuntimeError, match="no web view address"):
        http_addresses(_daemon([daemon.banner[2]]))
