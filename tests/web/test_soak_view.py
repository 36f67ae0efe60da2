"""The web view attached to a soak: the soak still passes, and the connections view's first paint
and a page turn are measured while thousands of connections echo (measured, never asserted).

`CHIMNEY_WEB_SOAK_CONNECTIONS` sets the count (default 2,000 here: the suite shares two cores);
the full soak's figure is 10,000: `CHIMNEY_WEB_SOAK_CONNECTIONS=10000 make screenshots`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import child_env
from tests.web.support import record, screenshot, web_daemon

pytestmark = pytest.mark.soak  # run by `make test` after the default selection
CONNECTIONS = int(os.environ.get("CHIMNEY_WEB_SOAK_CONNECTIONS", "2000"))
#: The pages are opened once 90% of the connections are up (near the end of the ramp) and are
#: measured and closed within a few seconds of the hold's start (1-3 s on two shared cores):
#: the hold need only outlast them and leave the two peer resets room after them (at 4 s and
#: 8 s). A browser still open at the end only lengthens the soak's drain wait for its tasks.
HOLD_S = 12


def paint_timing(page: Any) -> dict[str, Any]:
    timing = page.evaluate(
        """() => {
            const fcp = performance.getEntriesByName('first-contentful-paint')[0];
            const rows = performance.getEntriesByName('conns-rendered')[0];
            return {first_contentful_paint_ms: fcp ? fcp.startTime : null,
                    first_rows_painted_ms: rows ? rows.startTime : null};
        }"""
    )
    return {k: (round(v, 1) if v is not None else None) for k, v in timing.items()}


@pytest.mark.timeout(900)
def test_the_view_during_a_soak(tmp_path: Path, browser: Any) -> None:
    out = tmp_path / "soak.json"
    log = (tmp_path / "soak.err").open("wb")  # a file: a full pipe nobody reads would stall it
    with web_daemon(tmp_path) as w:
        soak = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chimney_client.soak",
                "--rpc",
                w.daemon.address,
                "--daemon-pid",
                str(w.daemon.pid),
                "--connections",
                str(CONNECTIONS),
                "--duration",
                str(HOLD_S),
                "--faults",
                "peer_reset:2",
                "--quiet",
                "--json",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=child_env(),
        )
        topology = browser.new_page()
        page = browser.new_page()
        try:
            with w.client() as c:
                deadline = time.monotonic() + 120
                while c.stack_stats()["connections"] < CONNECTIONS * 0.9:
                    assert soak.poll() is None, "the soak ended before its connections were up"
                    assert time.monotonic() < deadline, "connections did not come up"
                    time.sleep(0.5)
                open_now = c.stack_stats()["connections"]
            # opened once the soak has counted the daemon's idle tasks: the browser's sockets
            # are tasks too, and they must be gone again before the soak's drain check
            topology.goto(w.url + "/")  # a second page, watching the gauges
            t0 = time.monotonic()
            page.goto(w.url + "/connections")
            page.wait_for_selector('body[data-ready="1"]', timeout=60_000)
            goto_ms = (time.monotonic() - t0) * 1000
            painted = paint_timing(page)
            first = page.get_attribute("#rows tr:first-child", "data-conn")
            t0 = time.monotonic()
            page.click("#next")
            page.wait_for_function(
                "first => document.querySelector('#rows tr:first-child')?.dataset.conn !== first",
                arg=first,
                timeout=60_000,
            )
            page_turn_ms = (time.monotonic() - t0) * 1000
            # a diagram of a busy connection, live
            conn = page.get_attribute("#rows tr:first-child", "data-conn")
            diagram = browser.new_page()
            t0 = time.monotonic()
            diagram.goto(f"{w.url}/conn/{conn}")
            diagram.wait_for_selector("#seq g.hop", timeout=60_000)
            diagram_ms = (time.monotonic() - t0) * 1000
            screenshot(page, "soak-connections", full_page=False)
            screenshot(topology, "soak-topology")
            screenshot(diagram, "soak-sequence-diagram", full_page=False)
            diagram.close()
        finally:
            page.close()
            topology.close()
        try:
            rc = soak.wait(timeout=HOLD_S + 300)
        finally:
            if soak.poll() is None:
                soak.kill()
                soak.wait(10)
        log.close()
        assert out.exists(), (tmp_path / "soak.err").read_text()[-2000:]
        report = json.loads(out.read_text())
        assert rc == 0, {k: report.get(k) for k in ("failures", "error_details", "left_over")}
        assert report["integrity_errors"] == 0
        record(
            "soak_with_browser",
            {
                "connections": CONNECTIONS,
                "open_when_measured": open_now,
                "goto_until_rows_ms": round(goto_ms, 1),
                **painted,
                "page_turn_ms": round(page_turn_ms, 1),
                "diagram_first_hops_ms": round(diagram_ms, 1),
                "soak_ops_per_s": report.get("ops_per_s"),
                "soak_latency_ms": report.get("latency_ms"),
            },
        )
