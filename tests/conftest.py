"""Every async test runs on uvloop, as the daemon does. Hypothesis does not judge how fast its
inputs are drawn: that is a timing, which a busy machine (CI's two cores running the suite on
both) makes slow, and a test must fail on what the code does, not on the machine's load."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import uvloop
from hypothesis import HealthCheck, settings

settings.register_profile("chimneyd", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("chimneyd")


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Any]:
    return {"uvloop": uvloop.new_event_loop}
