"""The daemon's life: configure, start the engine and the RPC port, serve, shut down cleanly.

Shutdown (SIGTERM/SIGINT) follows the hypercorn shape: stop accepting, let in-flight requests
finish within the deadline, cancel the rest, upload and close every connection, report what was
left over, exit 0. SIGHUP reopens the log file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
from typing import Any

import structlog

from chimneyd import __version__
from chimneyd.config import LOG_LEVELS, Config, ConfigError, load_config
from chimneyd.observe.logging import reopen, setup_logging

log = structlog.get_logger("chimneyd.daemon")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="chimneyd",
        description="An emulator of NDIS TCP Chimney Offload, served over msgpack-RPC.",
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML configuration (default: embedded topology)"
    )
    p.add_argument(
        "--listen", metavar="ADDR", action="append", help="host:port or unix:/path (repeatable)"
    )
    p.add_argument(
        "--check-config", action="store_true", help="validate, print the effective config, exit"
    )
    p.add_argument("--log-format", choices=("auto", "json", "console"), help="overrides log.format")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="overrides log.level")
    p.add_argument(
        "--invariants", action="store_true", help="turn on the spec §9 invariant checker"
    )
    p.add_argument("--version", action="version", version=f"chimneyd {__version__}")
    return p.parse_args(argv)


def raise_fd_limit() -> int:
    """Raise the open-file limit to the hard limit: each offloaded connection is a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


async def serve(config: Config) -> int:
    from chimneyd.engine import start_engine
    from chimneyd.rpc.server import RpcServer
    from chimneyd.runtime.memory import tune_gc, tune_malloc

    loop = asyncio.get_running_loop()
    fd_limit = raise_fd_limit()
    tune_malloc()
    engine = await start_engine(config.engine, config.layers)
    tune_gc()
    server = RpcServer(engine, config.rpc)
    try:
        addresses = await server.start()
    except (OSError, ConfigError) as exc:
        log.error("rpc_listen_failed", error=str(exc))
        await engine.shutdown(1.0)
        print(f"chimneyd: cannot listen: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()

    def on_stop(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("daemon_already_stopping", signal=sig.name)
        log.info("daemon_signal", signal=sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, reopen)
    log.info(
        "daemon_ready",
        listen=addresses,
        layers=[layer.name for layer in config.layers],
        fd_limit=fd_limit,
    )
    print(f"chimneyd listening on {' '.join(addresses)}", flush=True)
    await stop.wait()
    return await shutdown(server, engine, config.rpc.shutdown_deadline_s)


async def shutdown(server: Any, engine: Any, deadline: float) -> int:
    """Stop accepting, drain requests, shut the engine down, all within one `deadline`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    log.info("daemon_stopping", deadline_s=deadline)
    await server.stop_accepting()
    cancelled = await server.drain(deadline)
    # the engine gets what is left of the deadline, but never less than a moment to say what
    # it could not close
    remaining = max(end - loop.time(), min(1.0, deadline))
    try:
        report = await engine.shutdown(remaining)
    except Exception as exc:
        log.error("engine_shutdown_failed", error=repr(exc), exc_info=exc)
        report = {"left_over": {"engine": repr(exc)}}
    log.info("daemon_stopped", cancelled_requests=cancelled, **report)
    if report.get("left_over"):
        log.error("daemon_state_left_over", left_over=report["left_over"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, Any] = {
        "rpc.listen": args.listen,
        "log.format": args.log_format,
        "log.level": args.log_level,
        "engine.invariants": True if args.invariants else None,
    }
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"chimneyd: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(json.dumps(config.as_dict(), indent=2))
        return 0
    try:
        setup_logging(config.log.format, config.log.level, config.log.file)
    except OSError as exc:
        print(
            f"chimneyd: bad configuration: log.file: cannot open {config.log.file!r}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    import uvloop

    return uvloop.run(serve(config))
