"""Every async test runs on uvloop, as the daemon does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import uvloop


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Any]:
    return {"uvloop": uvloop.new_event_loop}
