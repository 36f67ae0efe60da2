"""deploy/ read against the daemon it starts: the systemd units' stop handling for a daemon of
several shards, and the Prometheus scrape targets against what the deploy configurations serve.

The checks are static: each reads the unit or configuration file and the daemon's own
constants, so a change to either side shows here (tests/e2e/test_signals.py runs the reload
and stop signals against real daemons)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from chimneyd.shards.supervisor import STOP_GRACE_S
from tests.docs.mdcheck import ROOT

DEPLOY = ROOT / "deploy"
#: every unit that starts chimneyd, with the configuration file it is installed with
DAEMON_UNITS = {
    "deploy/chimneyd.service": DEPLOY / "chimneyd.toml",
    "deploy/fleet/chimneyd.service": DEPLOY / "fleet" / "chimneyd.toml",
}


def directives(unit: Path) -> dict[str, str]:
    """The unit's `Key=value` lines (the last one wins, as systemd reads single-valued keys)."""
    out: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def seconds(value: str) -> float:
    """A systemd time span as used here: a number of seconds, or `Ns` / `Nmin`."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert m, value
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


@pytest.mark.parametrize("unit", sorted(DAEMON_UNITS))
def test_a_sharded_daemon_unit_signals_only_its_supervisor(unit: str) -> None:
    """With `--shards`, SIGTERM is the supervisor's to pass on (shards/supervisor.py). systemd's
    default KillMode=control-group sends it to every process of the unit at once: each shard
    then gets it twice, and one whose stop already finished (its handler gone) dies of the
    second one, so the supervisor reports exit status 1 and `systemctl stop` leaves the unit
    failed. deploy/chimneyd.service says KillMode=mixed for this reason."""
    d = directives(ROOT / unit)
    assert "--shards" in d["ExecStart"]
    assert d.get("KillMode") == "mixed", f"{unit}: KillMode={d.get('KillMode', 'control-group')}"


@pytest.mark.parametrize("unit", sorted(DAEMON_UNITS))
def test_a_sharded_daemon_unit_waits_out_the_supervisors_own_stop(unit: str) -> None:
    """The supervisor gives its shards rpc.shutdown_deadline_s + STOP_GRACE_S before it kills
    them and reports which it killed; TimeoutStopSec at or below that lets systemd's SIGKILL
    come first, so the supervisor's report (and its kill of a stuck shard) never happens."""
    d = directives(ROOT / unit)
    config = tomllib.loads(DAEMON_UNITS[unit].read_text())
    deadline = float(config.get("rpc", {}).get("shutdown_deadline_s", 10.0))
    assert seconds(d["TimeoutStopSec"]) > deadline + STOP_GRACE_S, (
        f"{unit}: TimeoutStopSec={d['TimeoutStopSec']}, the supervisor may take "
        f"{deadline:g} + {STOP_GRACE_S:g} s"
    )


def _scraped_ports() -> set[int]:
    text = (DEPLOY / "prometheus.yml").read_text()
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return {int(p) for p in re.findall(r'"[^"\s]+:(\d+)"', body)}


def _served_ports(unit: str) -> set[int]:
    """Ports the unit's daemon serves /metrics on: `--metrics`/`--web` on its command line, or
    metrics.listen / web.listen in its configuration file."""
    d = directives(ROOT / unit)
    config = tomllib.loads(DAEMON_UNITS[unit].read_text())
    listens = re.findall(r"--(?:metrics|web)[ =](\S+)", d["ExecStart"])
    listens += [config.get(t, {}).get("listen", "") for t in ("metrics", "web")]
    return {int(a.rsplit(":", 1)[1]) for a in listens if a and ":" in a}


@pytest.mark.parametrize("unit", sorted(DAEMON_UNITS))
def test_the_deployed_daemon_serves_what_prometheus_yml_scrapes(unit: str) -> None:
    """deploy/prometheus.yml scrapes :9411 on loopback (the unit's daemon) and on the fleet's
    hosts; a daemon installed as the unit and its configuration say serves no /metrics at all
    (metrics.listen defaults to "" and nothing sets it), so every target is down."""
    scraped = _scraped_ports()
    assert scraped == {9411}
    assert scraped & _served_ports(unit), f"{unit} serves /metrics on {_served_ports(unit)}"


@pytest.mark.parametrize("unit", sorted(DAEMON_UNITS))
def test_a_unit_does_not_restart_a_daemon_that_refused_its_configuration(unit: str) -> None:
    """Exit status 2 is chimneyd's "bad configuration, command line or address" (docs): with
    Restart=on-failure alone systemd starts it again and again, to the same refusal, until its
    start limit; RestartPreventExitStatus=2 leaves the unit failed on the first, with the why in
    its log."""
    d = directives(ROOT / unit)
    assert d.get("Restart") == "on-failure"
    assert "2" in d.get("RestartPreventExitStatus", "").split(), unit
