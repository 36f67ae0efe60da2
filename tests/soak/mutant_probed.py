"""chimneyd with one of the fault kinds the soak checks with probes of its own (`delay`,
`invalidate`, `host_event`, `nic_up`) accepted, answered with its id and ignored, for
tests/soak/test_probed_faults.py: a soak that schedules it must fail. The break is made here,
as in mutant_daemon.py (whose launcher this reuses); nothing in chimneyd/ is changed.

    python tests/soak/mutant_probed.py MUTATION --listen 127.0.0.1:0 --invariants
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mutant_daemon  # a script beside this one, found through sys.path

PROBED_KINDS = ("delay", "invalidate", "host_event", "nic_up")


for _kind in PROBED_KINDS:
    mutant_daemon.MUTATIONS[f"{_kind}_noop"] = partial(mutant_daemon._noop_fault, _kind)


def _invalidate_tcp_only() -> None:
    """An `invalidate` of a path or neighbor that invalidates the connection's TCP object only:
    the host calls NdisInvalidateOffload and that connection is uploaded, but the others
    sharing the path or neighbor stay offloaded on the stale object (spec §3.5: the target
    asks for each affected connection to be terminated, InvalidState)."""
    import dataclasses

    from chimneyd import faults

    def apply(engine: Any, fault: Any) -> None:
        conn = engine.conn(fault.spec["conn"])
        engine.post_host(engine.host.app_invalidate, conn, "tcp", faults._ignore)
        fault.active = lambda: False

    faults.KINDS["invalidate"] = dataclasses.replace(faults.KINDS["invalidate"], apply=apply)


mutant_daemon.MUTATIONS["invalidate_tcp_only"] = _invalidate_tcp_only

if __name__ == "__main__":
    sys.exit(mutant_daemon.main())
