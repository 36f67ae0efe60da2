"""chimneyctl refuses seconds it cannot use (nan, inf, huge) as a usage error (exit 2)."""

from __future__ import annotations

import pytest

from tests.clients.mini_server import MiniServer
from tests.clients.mini_server import run_ctl as run


@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_sleep_refuses_unusable_seconds(
    capsys: pytest.CaptureFixture[str], server: MiniServer, value: str
) -> None:
    # a usage error (exit 2, "error: ..."), not a traceback out of time.sleep
    status, _, err = run(capsys, server, "run", f"sleep {value}")
    assert status == 2, err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_top_interval_refuses_unusable_seconds(
    capsys: pytest.CaptureFixture[str], server: MiniServer, value: str
) -> None:
    status, _, err = run(capsys, server, "top", "--once", "--interval", value)
    assert status == 2, err
