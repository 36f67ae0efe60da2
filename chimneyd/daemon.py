"""The daemon's life: configure, start the engine and the RPC port, serve, shut down cleanly.

Shutdown (SIGTERM/SIGINT) follows the hypercorn shape: stop accepting, let in-flight requests
finish within the deadline, cancel the rest, upload and close every connection, report what was
left over, exit 0. SIGHUP reopens the log file. A daemon started by a tool (`--parent-pid`)
stops the same way once that tool is gone, however it ended.

With `daemon.shards` above 1 this process is the supervisor (`chimneyd.shards.supervisor`) and
each shard runs `serve` in its own process (`run_shard`), behind the one RPC address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from chimneyd import __version__
from chimneyd.compiled import build_name
from chimneyd.config import LOG_LEVELS, Config, ConfigError, check_paths, load_config
from chimneyd.observe.logging import reopen, setup_logging, write_errors
from chimneyd.observe.metrics import install as install_metrics
from chimneyd.runtime.signals import HANDLED_SIGNALS, to_exit

if TYPE_CHECKING:
    from chimneyd.shards.cluster import Cluster
    from chimneyd.shards.shard import ShardSetup

log = structlog.get_logger("chimneyd.daemon")
#: How often a daemon started with --parent-pid checks that its parent still lives, where the
#: kernel cannot tell it (no pidfd).
PARENT_CHECK_S = 0.5


class _HelpFormatter(argparse.HelpFormatter):
    """`chimneyd --help | less` wrapped to the terminal it is read in, as unpiped: $COLUMNS,
    else the first of stdout, stderr and stdin that is a terminal, else 80 (argparse alone
    asks stdout only). The clients' commands have the same rule (chimney_client.ctl_help)."""

    def __init__(self, prog: str) -> None:
        try:  # as shutil reads it (" 120" is 120; "²" is nothing, not a ValueError)
            width = max(0, int(os.environ.get("COLUMNS", "")))
        except ValueError:
            width = 0
        for fd in (1, 2, 0):
            if width:
                break
            with contextlib.suppress(OSError, ValueError):
                width = os.get_terminal_size(fd).columns
        super().__init__(prog, width=(width or 80) - 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="chimneyd",
        description="An emulator of NDIS TCP Chimney Offload, served over msgpack-RPC.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML configuration (default: embedded topology)"
    )
    p.add_argument(
        "--listen",
        metavar="ADDR",
        action="append",
        # as docs/configuration.md's table says: the IPv6 form too, and it replaces rpc.listen
        help="host:port, [::1]:port (IPv6) or unix:/path; replaces rpc.listen (repeat it for "
        "several addresses)",
    )
    p.add_argument(
        "--check-config", action="store_true", help="validate, print the effective config, exit"
    )
    p.add_argument("--log-format", choices=("auto", "json", "console"), help="overrides log.format")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="overrides log.level")
    p.add_argument(
        "--invariants", action="store_true", help="turn on the spec §9 invariant checker"
    )
    p.add_argument(
        "--web",
        metavar="ADDR",
        help="serve the live web view (and /metrics) on host:port; overrides web.listen",
    )
    p.add_argument(
        "--metrics",
        metavar="ADDR",
        help="serve Prometheus /metrics alone on host:port; overrides metrics.listen",
    )
    p.add_argument(
        "--shards",
        metavar="N",
        help="engine processes behind the one RPC address (a number, or auto: one per CPU);"
        " overrides daemon.shards",
    )
    p.add_argument(
        "--parent-pid",
        metavar="PID",
        type=int,
        help="stop (as on SIGTERM) once process PID, which must be our parent, is gone: a"
        " tool that spawns the daemon leaves none behind if it is killed",
    )
    p.add_argument("--version", action="version", version=f"chimneyd {__version__}")
    return p.parse_args(argv)


def stop_with_parent(parent_pid: int) -> None:
    """`--parent-pid`: send ourselves SIGTERM (the graceful stop, sharded or not) once that
    process is no longer our parent. However it ended, SIGKILL included, its children are
    re-parented, so our parent pid changes. A thread, so one watch serves the single daemon
    and the supervisor alike, whatever their loops are doing. It sleeps on a pidfd of the
    parent, which the kernel makes readable when the parent exits; without pidfds (Linux
    before 5.3) it looks every PARENT_CHECK_S."""

    def watch() -> None:
        # the handled signals are the main thread's: one the kernel gave this thread would take
        # its default action once the loop has let go of them (see `ignore_signals_to_exit`)
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pidfd = os.pidfd_open(parent_pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            # checked once the fd is open: a parent gone before it would never wake us
            if os.getppid() == parent_pid:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                poller.poll()
            os.close(pidfd)
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        log.warning("daemon_parent_gone", parent_pid=parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="chimneyd-parent-watch", daemon=True).start()


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


async def serve(config: Config, shard: ShardSetup | None = None) -> int:
    """Run the daemon — or, with `shard`, one shard of it — until SIGTERM."""
    from chimneyd.engine import start_engine
    from chimneyd.rpc.server import RpcServer
    from chimneyd.runtime.memory import allocator_name, tune_gc, tune_malloc

    loop = asyncio.get_running_loop()
    fd_limit = raise_fd_limit()
    tune_malloc()
    if config.web.listen or config.metrics.listen:
        # imported before tune_gc freezes what start-up made: aiohttp's module objects then stay
        # out of every later full collection, as the rest of the daemon's do
        import chimneyd.observe.web  # noqa: F401
    engine = await start_engine(config.engine, config.layers, shard.id_base if shard else 0)
    tune_gc()
    cluster: Cluster | None = None
    if shard is not None:
        from chimneyd.rpc.sharded import restore_faults
        from chimneyd.shards.cluster import Cluster

        cluster = Cluster(shard.index, shard.count, shard.timeout)
    server = RpcServer(engine, config.rpc, cluster)
    try:
        if shard is not None and cluster is not None:
            cluster.parts = server.parts
            await cluster.connect(shard.sock, shard.leftover, engine)
            # a shard started again takes the layer faults the others hold, before any client
            # of it can see its layers without them
            await restore_faults(cluster)
        addresses = await server.start(shard.sockets(config.rpc.listen) if shard else None)
    except (OSError, ConfigError) as exc:
        log.error("rpc_listen_failed", listen=list(config.rpc.listen), error=str(exc))
        await engine.shutdown(1.0)
        print(cannot_listen(config.rpc.listen, exc), file=sys.stderr)
        return 2
    metrics, http = _observability(engine, server, config, cluster, shard)
    if http is not None:
        try:
            await http.start()
        except OSError as exc:
            http_listen = [a for a in (config.web.listen, config.metrics.listen) if a]
            log.error("http_listen_failed", listen=http_listen, error=str(exc))
            metrics.detach()
            await server.stop_accepting()
            await engine.shutdown(1.0)
            options = [
                o
                for o, a in (("--web", config.web.listen), ("--metrics", config.metrics.listen))
                if a
            ]
            print(cannot_listen(http_listen, exc, options), file=sys.stderr)
            return 2
        if http.web_address and shard is None:
            print(f"chimneyd web view on http://{http.web_address}/", flush=True)
        if http.metrics_address and shard is None:
            print(f"chimneyd metrics on http://{http.metrics_address}/metrics", flush=True)
    stop = asyncio.Event()

    def on_stop(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("daemon_already_stopping", signal=sig.name)
        log.info("daemon_signal", signal=sig.name)
        stop.set()

    # a shard leaves SIGINT (a Ctrl-C reaches the whole process group) to its supervisor
    for sig in (signal.SIGTERM,) if shard else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, reopen)
    # a shard starts with them blocked (Supervisor.spawn): one that came meanwhile is answered
    # now; a SIGHUP until now was ignored (`__main__`): a log rotated meanwhile is let go here
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    reopen()
    log.info(
        "daemon_ready",
        listen=addresses,
        layers=[layer.name for layer in config.layers],
        fd_limit=fd_limit,
        build=build_name(),
        allocator=allocator_name(),
    )
    lost: asyncio.Task[None] | None = None
    restoring: asyncio.Task[int] | None = None
    if cluster is None:
        print(f"chimneyd listening on {' '.join(addresses)}", flush=True)
    else:
        cluster.ready({"pid": os.getpid(), "listen": addresses, "fd_limit": fd_limit})
        lost = loop.create_task(_stop_when_lost(cluster, stop))
        # once more now that it is running: a fault made while it was starting was not put
        # into it (the supervisor answered `down` for it)
        restoring = loop.create_task(restore_faults(cluster))
    await stop.wait()
    for task in (lost, restoring):
        if task is not None:
            task.cancel()
    deadline = config.rpc.shutdown_deadline_s
    end = loop.time() + deadline
    if http is not None:
        # browsers first: nothing is watched while the stack drains. The stop has one deadline
        # (docs/security.md): the web side takes a bounded share of it, the drain the rest
        await http.stop(deadline)
    metrics.detach()
    code = await shutdown(server, engine, max(end - loop.time(), deadline * 3 / 4))
    install_metrics(None)
    if cluster is not None:
        cluster.close()
    return code


#: An address each listening option could take instead, for the hint of an address in use.
_OTHER_ADDRESS = {
    "--listen": "127.0.0.1:7412",
    "--web": "127.0.0.1:8412",
    "--metrics": "127.0.0.1:9412",
}


def cannot_listen(
    addresses: Sequence[str], exc: Exception, options: Sequence[str] = ("--listen",)
) -> str:
    """The line for addresses that could not all be bound: an OSError from bind need not say
    which address it was, so the addresses being bound are named. An address in use (most
    often a daemon already running there, e.g. `make run` twice) gets a second line saying how
    to choose another: `options` are the command-line options that set those addresses."""
    line = f"chimneyd: cannot listen on {', '.join(addresses)}: {exc}"
    in_use = getattr(exc, "errno", None) == errno.EADDRINUSE or "already in use" in str(exc)
    if not in_use or not options:
        return line
    choose = " or ".join(f"{o} ADDR" for o in options)
    example = f"{options[0]} {_OTHER_ADDRESS.get(options[0], 'ADDR')}"
    return (
        f"{line}\nhint: another program (another chimneyd?) listens there: stop it, or give "
        f'another address with {choose} (make run ARGS="{example}")'
    )


async def _stop_when_lost(cluster: Cluster, stop: asyncio.Event) -> None:
    """A shard whose supervisor is gone stops, as on SIGTERM (it must not outlive it)."""
    await cluster.lost.wait()
    if not stop.is_set():
        log.error("shard_supervisor_gone")
        stop.set()


def _observability(
    engine: Any,
    server: Any,
    config: Config,
    cluster: Cluster | None = None,
    shard: ShardSetup | None = None,
) -> tuple[Any, Any]:
    """The daemon's metrics registry (`stack.metrics` reads it), and the HTTP servers when
    `web.listen` or `metrics.listen` is set; the latency histograms run only then. In a
    daemon of several shards, shard 0 serves HTTP (`/metrics` answering for every shard), and
    every shard keeps histograms while it does."""
    from chimneyd.observe.metrics import Metrics, sharded_text

    def stats() -> dict[str, Any]:
        out: dict[str, Any] = engine.stats()
        rpc_stats = getattr(server, "rpc_stats", None)
        if rpc_stats is not None:
            out["rpc"] = rpc_stats()
        out["log"] = {"write_errors": write_errors()}  # as stack.stats has it
        return out

    metrics = Metrics(stats, probe_interval_s=config.metrics.probe_interval_ms / 1000.0)
    install_metrics(metrics)
    if shard is not None and shard.histograms:
        metrics.attach(engine)
    if not (config.web.listen or config.metrics.listen):
        return metrics, None
    from chimneyd.observe.web import HttpServers

    if config.metrics.histograms:
        metrics.attach(engine)
    if cluster is None:
        return metrics, HttpServers(engine, stats, metrics, config)

    from chimneyd.observe.web.server import DaemonView
    from chimneyd.rpc.sharded import web_conns_page, web_stats

    async def exposition() -> bytes:
        return sharded_text(*await cluster.gather_counted("metrics")).encode("utf-8")

    async def daemon_stats() -> dict[str, Any]:
        return await web_stats(cluster)

    async def conns_page(page: int, size: int) -> dict[str, Any]:
        return await web_conns_page(cluster, page, size)

    daemon = DaemonView(daemon_stats, conns_page)
    return metrics, HttpServers(
        engine, stats, metrics, config, exposition, reuse_port=True, daemon=daemon
    )


async def shutdown(server: Any, engine: Any, deadline: float) -> int:
    """Stop accepting, drain requests, shut the engine down, all within one `deadline`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    log.info("daemon_stopping", deadline_s=deadline)
    await server.stop_accepting()
    # what faults hold (a delay of up to a minute, a stalled peer) is released before the drain:
    # requests it held then finish, instead of each waiting the whole deadline
    engine.fault_clear(None)
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


#: the environment variable that sets `rpc.admin_token` over the config file's
ADMIN_TOKEN_ENV = "CHIMNEYD_ADMIN_TOKEN"
#: the exit status a shell gives a process SIGPIPE ended (128 + 13), as chimneyctl's
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # argparse's --help into a closed pipe ends quietly (status 0)
    overrides: dict[str, Any] = {
        "rpc.listen": args.listen,
        "log.format": args.log_format,
        "log.level": args.log_level,
        "engine.invariants": True if args.invariants else None,
        "web.listen": args.web,
        "metrics.listen": args.metrics,
        "daemon.shards": _shards_arg(args.shards),
        # a secret: from the environment rather than a flag, which `ps` shows every user
        "rpc.admin_token": os.environ.get(ADMIN_TOKEN_ENV) or None,
    }
    try:
        config = load_config(args.config, overrides)
        # a missing directory fails here, naming the key, in --check-config and at start alike
        # (bind and open would say only "No such file or directory")
        check_paths(config)
    except ConfigError as exc:
        print(f"chimneyd: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        try:
            print(json.dumps(config.as_dict(), indent=2), flush=True)
        except BrokenPipeError:
            return _stdout_gone()  # `chimneyd --check-config | head`: the reader left
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
    if args.parent_pid is not None:
        if args.parent_pid != os.getppid():
            print(
                f"chimneyd: --parent-pid {args.parent_pid} is not our parent ({os.getppid()})",
                file=sys.stderr,
            )
            return 2
        stop_with_parent(args.parent_pid)
    import uvloop

    if config.daemon.shards > 1:
        return uvloop.run(to_exit(supervise(config)))
    return uvloop.run(to_exit(serve(config)))


def _shards_arg(value: str | None) -> Any:
    """`--shards N` as the configuration takes it: a number, or "auto" (anything else is
    refused by the configuration's own check, naming daemon.shards)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        return value


async def supervise(config: Config) -> int:
    """The supervisor of a daemon of several shards: hold the addresses, run the shards."""
    from chimneyd.config import is_loopback, parse_listen
    from chimneyd.shards.listen import Reservation, reserve, reserve_http
    from chimneyd.shards.supervisor import Supervisor

    held = Reservation()
    http: dict[str, str] = {}
    try:
        held = reserve(config.rpc.listen, config.rpc.unix_socket_mode)
        if config.web.listen:
            http["web"] = reserve_http(held, "web.listen", config.web.listen)
        if config.metrics.listen:
            http["metrics"] = reserve_http(held, "metrics.listen", config.metrics.listen)
    except (OSError, ConfigError) as exc:
        held.close()
        listen = [*config.rpc.listen, *(a for a in (config.web.listen, config.metrics.listen) if a)]
        log.error("rpc_listen_failed", listen=listen, error=str(exc))
        options = ["--listen"]
        options += [
            o for o, a in (("--web", config.web.listen), ("--metrics", config.metrics.listen)) if a
        ]
        print(cannot_listen(listen, exc, options), file=sys.stderr)
        return 2
    for addr in config.rpc.listen:
        target = parse_listen(addr)
        if isinstance(target, tuple) and not is_loopback(target[0]):
            log.warning("rpc_token_over_plain_tcp", listen=addr)
    try:
        return await Supervisor(config, held, http).run()
    finally:
        held.close()


def run_shard(config: Config, shard: ShardSetup) -> int:
    """A shard's process (`chimneyd.shards.shard`): its log lines say which shard it is."""
    try:
        setup_logging(
            config.log.format, config.log.level, config.log.file, fields={"shard": shard.index}
        )
    except OSError as exc:
        print(f"chimneyd shard {shard.index}: cannot open the log: {exc}", file=sys.stderr)
        return 2
    import uvloop

    return uvloop.run(to_exit(serve(config, shard)))


def _stdout_gone() -> int:
    """The reader of stdout left: no traceback for a pipe that is done with us. Stdout now
    points at /dev/null, so the interpreter's last flush does not fail on the closed pipe
    again (the recipe of the Python docs, signal module)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return EXIT_BROKEN_PIPE  # not a real file (called in-process): nothing to flush
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return EXIT_BROKEN_PIPE
