"""Verified echo load through one or many chimneyd daemons, for Locust (see deploy/FLEET.md).

Each user is one RPC client to one daemon (`--host a:7411,b:7411`: round-robin by user index)
holding one offloaded connection to an echo peer (`--chimney-echo`, as the daemon reaches it).
It streams seeded bytes and verifies every echoed byte, uploads and re-offloads its connection
at `--chimney-upload-rate`, and resets its own peer at `--chimney-reset-rate` (per user per
second). `python deploy/locustfile.py` lists the `--chimney-*` options (`locust --help` cannot:
Locust prints its help before it imports this file); a size, rate or time out of its range
(negative, nan, inf) is refused at start, naming the option (exit 2).

One machine, headless, 10 users for a minute:

    chimneyd --listen 127.0.0.1:7411 &
    chimney-peer echo --listen 127.0.0.1:9000 &
    locust -f deploy/locustfile.py --headless -u 10 -r 5 -t 60s --stop-timeout 10 \\
        --host 127.0.0.1:7411 --chimney-echo 127.0.0.1:9000 \\
        --chimney-upload-rate 0.2 --chimney-reset-rate 0.05

Distributed: the same file on a master (`--master`) and on workers (`--worker --master-host M`);
the master's `--host` and `--chimney-*` options reach every worker.
"""

from __future__ import annotations

from typing import Any

from locust import events

from chimney_client.locust_user import ChimneyUser, add_arguments, options_help


@events.init_command_line_parser.add_listener
def chimney_options(parser: Any) -> None:
    add_arguments(parser)


class EchoUser(ChimneyUser):
    """Offloaded verified echo with uploads and peer resets at the configured rates."""

    abstract = False


if __name__ == "__main__":
    # run as a script, not by locust: print the options this file adds to Locust's
    print(options_help(), end="")
