"""A daemon of two shards (`chimneyd --shards 2`) as its supervisor watches them: how a shard's
end is logged, and a shard that hangs (SIGSTOP: silent on its control channel) is killed and
started again. Read from the daemon's JSON log lines.

Each test states what the docs promise (README "Shards", docs/configuration.md `[daemon]`)
and checks it on a real daemon."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_shards import sharded


def test_a_clean_stop_logs_how_every_shard_ended(tmp_path: Path) -> None:
    """`shard_died` names how a shard ended ("signal SIGKILL"); `shard_exited` and
    `supervisor_stopped` name it the same way, not as raw return codes."""
    with sharded(tmp_path) as d:
        assert d.stop() == 0, d.log_tail()
        exited = sorted((e["shard"], e["how"]) for e in d.events_named("shard_exited"))
        assert exited == [(0, "exit status 0"), (1, "exit status 0")], d.log_tail()
        (stopped,) = d.events_named("supervisor_stopped")
        assert stopped["how"] == {"0": "exit status 0", "1": "exit status 0"}, stopped
        assert stopped["killed"] == [], stopped
