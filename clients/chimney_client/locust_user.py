"""Locust users for chimneyd: every RPC in Locust's statistics, every echoed byte verified.

A `ChimneyUser` is one greenlet with one blocking `Client` (plain sockets and `time`, which
gevent's monkey-patching makes cooperative) to one daemon, and one offloaded connection to an
echo peer. Each task is an echo round: bytes of the connection's seeded stream go out with
`tcp.send`, come back with `tcp.recv` and are checked in order, byte by byte. At configurable
rates a user uploads its connection while echoed bytes are in flight and offloads it again, and
injects a peer reset on its own connection.

Importing this module imports locust, which monkey-patches the whole process for gevent: import
it from a locustfile (deploy/locustfile.py), never next to asyncio code.

What lands in Locust's statistics (request type / name):

    rpc / <method>           every RPC (tcp.connect, tcp.send, tcp.recv, tcp.upload,
                             tcp.offload, fault.inject, tcp.close; auth and events.subscribe
                             once a session; tcp.info only for a connection not heard of as
                             offloaded): round trip, payload bytes (sent and acknowledged, or
                             received); an error answer is a failure
    rpc / rpc.connect        failure only: the daemon's RPC port could not be reached
    echo / <daemon address>  one echoed chunk (not a round: a round is payload_bytes in chunks of
                             chunk_bytes), sent and read back verified: round trip from tcp.send
                             to the last byte back less any tcp.upload crossed, bytes verified
                             (one row per daemon: the load each one carried)
    verify / integrity       failure: an echoed byte differed from what was sent
    event / peer_reset       the abort (NDIS_STATUS_REQUEST_ABORTED, TcpIndicateAbort) that the
                             user's own injected peer reset explains: time from the injection
                             to the abort surfacing; expected, not a failure
    event / recv_timeout     a `tcp.recv` TIMEOUT while an echo was on its way (read again)
    event / offload_refused  the daemon refused to offload the connection with an NDIS status
                             (it goes on in the host stack); expected, not a failure
    event / stuck            failure: the echo did not come back within the op timeout, an RPC
                             got no answer within the call limit (op timeout + the client's
                             server-wait margin), or, when the run stopped, the echo had been
                             acknowledged (or a call sent) over `stop_grace_s` before
    event / unexpected_eof   failure: end of stream with no fault aimed at the connection
    event / peer_reset_unobserved   failure: an injected reset never surfaced within the op
                             timeout, or was still unseen `stop_grace_s` after it when the run
                             stopped
    event / not_closed       failure: `tcp.close` answered before (without) the connection's
                             `closed` event: the daemon left the connection open
    event / not_offloaded    failure: a connection meant to be offloaded is not, and the daemon
                             gave no NDIS status refusing it

`stuck` and `unexpected_eof` carry as length the bytes of the chunk received before it stopped.

The RPC that surfaces an explained abort (or a read timeout) is counted under its event only,
so a run with resets and nothing wrong has no failures at all.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from locust import User, task
from locust.env import Environment

from .blocking import Client
from .errors import (
    CallTimeout,
    ChimneyError,
    ConnectionLost,
    InvalidState,
    NdisStatusError,
    RpcError,
    RpcTimeout,
)
from .protocol import DEFAULT_ADDRESS, SERVER_WAIT_MARGIN, parse_address
from .stream import PatternStream, Verifier

log = logging.getLogger(__name__)

RPC = "rpc"
ECHO = "echo"
VERIFY = "verify"
EVENT = "event"

INTEGRITY = "integrity"
PEER_RESET = "peer_reset"
RECV_TIMEOUT = "recv_timeout"
STUCK = "stuck"
UNEXPECTED_EOF = "unexpected_eof"
PEER_RESET_UNOBSERVED = "peer_reset_unobserved"
NOT_CLOSED = "not_closed"
NOT_OFFLOADED = "not_offloaded"
OFFLOAD_REFUSED = "offload_refused"
RPC_CONNECT = "rpc.connect"

DEFAULT_ECHO = "127.0.0.1:9000"
#: Seconds a user waits before trying an unreachable daemon again.
RECONNECT_BACKOFF_S = 1.0
#: Longest a loopback echo (or a reset's abort, or one RPC) may still be outstanding when the run
#: stops before it counts as lost (capped by the op timeout): Locust kills users mid-call at the
#: stop, and an echo acknowledged this long before has had time to come back many times over.
STOP_GRACE_S = 5.0
_ABORTED = "NDIS_STATUS_REQUEST_ABORTED"


class IntegrityError(ChimneyError):
    """Echoed bytes differ from the bytes sent: lost, duplicated, reordered or corrupted."""


class EchoFailure(ChimneyError):
    """The echo went wrong in a way that is not a byte mismatch (stuck, early end of stream)."""


#: `tcp.recv`'s largest `max_bytes` and longest `timeout_ms` (docs/rpc.md): a chunk or a wait past
#: them would fail every round with INVALID_PARAMS
MAX_RECV_BYTES = 8 * 1024 * 1024
MAX_TIMEOUT_MS = 3_600_000
#: The longest client-side bound (op timeout, a call's, the stop's close): a day. Far more
#: does not fit a socket timeout (`settimeout(1e10)` raises OverflowError on Linux x86-64),
#: which no `except ChimneyError` of the user catches.
MAX_WAIT_S = 86400.0

#: Each numeric setting's range, both ends allowed (None: no upper end). Negative sizes and
#: rates, nan and infinity mean nothing: the options refuse them at start (usage error), and
#: `ChimneySettings` refuses them however it is made (a worker gets the master's values).
RANGES: dict[str, tuple[float, float | None]] = {
    "payload_bytes": (1, None),
    "chunk_bytes": (1, MAX_RECV_BYTES),
    "upload_rate": (0.0, None),  # 0: never
    "reset_rate": (0.0, None),  # 0: never
    "think_ms": (0, None),
    "recv_timeout_ms": (0, MAX_TIMEOUT_MS),
    "op_timeout_s": (0.001, MAX_WAIT_S),
    "call_timeout_s": (0.001, MAX_WAIT_S),
    "stop_close_s": (0.001, MAX_WAIT_S),
}


#: settings that are not `--chimney-*` options (a test or a subclass sets them)
NOT_OPTIONS = frozenset({"call_timeout_s"})
#: settings whose None means "derived from the others"
OPTIONAL = frozenset({"call_timeout_s", "stop_close_s"})


def setting_problem(name: str, value: Any, kind: type) -> str | None:
    """Why `value` cannot be setting `name` (of type `kind`: int or float), or None."""
    low, high = RANGES[name]
    what = "an integer" if kind is int else "a finite number"
    span = f"at least {_num(low)}" if high is None else f"from {_num(low)} to {_num(high)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be {what} {span} (got {value!r})"
    if kind is int and not isinstance(value, int):
        return f"must be {what} {span} (got {value!r})"
    # nan compares false with everything; infinity passes no upper end but is refused as well
    if not (low <= value and (high is None or value <= high)) or not math.isfinite(value):
        return f"must be {what} {span} (got {value!r})"
    return None


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _option_type(name: str, kind: type[int] | type[float]) -> Callable[[str], Any]:
    """An argparse `type` for setting `name`: the text as `kind`, refused outside its range."""

    def convert(text: str) -> Any:
        value: Any = text
        with contextlib.suppress(ValueError):
            value = kind(text)
        problem = setting_problem(name, value, kind)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = kind.__name__
    return convert


@dataclass(frozen=True, slots=True)
class ChimneySettings:
    """What a user does; each field is a `--chimney-*` option of the locustfile."""

    echo: str = DEFAULT_ECHO  # the echo peer, as the daemon reaches it (its own loopback)
    token: str = ""  # `auth` token when the daemon has one
    payload_bytes: int = 16 * 1024  # bytes echoed per round
    chunk_bytes: int = 64 * 1024  # at most this much in flight: sent, then read back
    upload_rate: float = 0.0  # uploads (and re-offloads) per user per second
    reset_rate: float = 0.0  # injected peer resets per user per second
    think_ms: int = 0  # pause between rounds
    recv_timeout_ms: int = 5000  # server-side wait of one `tcp.recv`
    op_timeout_s: float = 30.0  # an echo or a reset that takes longer is a failure
    #: client-side limit on any RPC; None: `op_timeout_s` plus the client's server-wait margin
    call_timeout_s: float | None = None
    #: client-side limit on the `tcp.close` of a stopping user; None: `stop_grace_s`
    stop_close_s: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in OPTIONAL and getattr(self, f.name) is None:
                continue
            if f.name in RANGES:
                kind = int if isinstance(f.default, int) else float
                problem = setting_problem(f.name, getattr(self, f.name), kind)
                if problem:
                    option = "--chimney-" + f.name.replace("_", "-")
                    raise ValueError(f"{f.name if f.name in NOT_OPTIONS else option}: {problem}")

    @property
    def call_limit_s(self) -> float:
        """Client-side limit on one RPC: a call unanswered this long is `stuck`. The margin
        keeps it above the server-side wait the client sends (protocol.server_wait)."""
        if self.call_timeout_s is not None:
            return self.call_timeout_s
        return self.op_timeout_s + SERVER_WAIT_MARGIN

    @property
    def stop_grace_s(self) -> float:
        """How long an echo, a reset or a call may be outstanding when the run stops."""
        return min(self.op_timeout_s, STOP_GRACE_S)

    @property
    def stop_close_limit_s(self) -> float:
        """Client-side limit on the `tcp.close` a stopping user sends: Locust waits for every
        user's `on_stop` (without `--stop-timeout`, for as long as it takes), so a daemon that
        does not answer must not hold the stop. By default the stop's grace: a close slower
        than an echo may be outstanding at the stop is itself stuck (reported by its rpc row);
        the daemon then closes the connection with the session."""
        return self.stop_grace_s if self.stop_close_s is None else self.stop_close_s

    @classmethod
    def from_options(cls, options: Any) -> ChimneySettings:
        """Settings from Locust's parsed options (`chimney_<field>`); defaults for the rest."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = getattr(options, f"chimney_{f.name}", None)
            if value is not None:
                values[f.name] = value
        return cls(**values)


def add_arguments(parser: Any) -> None:
    """The `--chimney-*` options on Locust's parser (register from `init_command_line_parser`).

    The master forwards them to its workers with every spawn.
    """
    d = ChimneySettings()
    parser.add_argument(
        "--chimney-echo",
        env_var="CHIMNEY_ECHO",
        default=d.echo,
        help="echo peer HOST:PORT as each daemon reaches it (default %(default)s)",
    )
    parser.add_argument(
        "--chimney-token",
        env_var="CHIMNEY_TOKEN",
        default=d.token,
        is_secret=True,
        help="auth token of the daemons (default: none)",
    )
    parser.add_argument(
        "--chimney-payload-bytes",
        type=_option_type("payload_bytes", int),
        default=d.payload_bytes,
        help="bytes echoed per round (default %(default)s)",
    )
    parser.add_argument(
        "--chimney-chunk-bytes",
        type=_option_type("chunk_bytes", int),
        default=d.chunk_bytes,
        help="largest chunk in flight: sent, then read back (default %(default)s)",
    )
    parser.add_argument(
        "--chimney-upload-rate",
        type=_option_type("upload_rate", float),
        default=d.upload_rate,
        help="uploads + re-offloads per user per second (default %(default)s)",
    )
    parser.add_argument(
        "--chimney-reset-rate",
        type=_option_type("reset_rate", float),
        default=d.reset_rate,
        help="injected peer resets per user per second (default %(default)s)",
    )
    parser.add_argument(
        "--chimney-think-ms",
        type=_option_type("think_ms", int),
        default=d.think_ms,
        help="pause between rounds, ms (default %(default)s)",
    )
    parser.add_argument(
        "--chimney-recv-timeout-ms",
        type=_option_type("recv_timeout_ms", int),
        default=d.recv_timeout_ms,
        include_in_web_ui=False,
        help="server-side wait of one tcp.recv, ms (default %(default)s)",
    )
    parser.add_argument(
        "--chimney-op-timeout-s",
        type=_option_type("op_timeout_s", float),
        default=d.op_timeout_s,
        include_in_web_ui=False,
        help="an echo or reset slower than this is a failure, and an RPC unanswered 5 s past "
        "it, s (default %(default)s)",
    )
    parser.add_argument(
        "--chimney-stop-close-s",
        type=_option_type("stop_close_s", float),
        default=None,
        include_in_web_ui=False,
        help="a stopping user waits this long for its tcp.close, s (default: the op timeout, at "
        f"most {_num(STOP_GRACE_S)})",
    )


def options_help(prog: str = "locust -f deploy/locustfile.py") -> str:
    """The `--chimney-*` options and their help, as `locust --help` cannot show them: Locust
    prints its help before it imports the locustfile that adds them."""
    from locust.argument_parser import LocustArgumentParser

    parser = LocustArgumentParser(
        prog=prog,
        add_help=False,
        add_env_var_help=True,
        add_config_file_help=False,
        description="The options chimneyd's locustfile adds to Locust's own (locust --help).",
    )
    add_arguments(parser)
    return str(parser.format_help())


def daemon_addresses(host: str | None) -> list[str]:
    """Locust's `--host`: one daemon `host:port` or a comma-separated list of them."""
    addresses = [a.strip() for a in (host or "").split(",") if a.strip()]
    return addresses or [DEFAULT_ADDRESS]


def pick_daemon(addresses: list[str], index: int) -> str:
    """Round-robin by user index."""
    return addresses[index % len(addresses)]


def is_abort(exc: RpcError) -> bool:
    """How an aborted connection answers: REQUEST_ABORTED on I/O, INVALID_STATE (closed) else."""
    if isinstance(exc, NdisStatusError):
        return exc.status == _ABORTED
    return isinstance(exc, InvalidState)


def payload_length(method: str, result: Any) -> int:
    """Payload bytes an answer stands for: received bytes, or bytes the peer acknowledged."""
    if isinstance(result, bytes | bytearray):
        return len(result)
    if method == "tcp.send" and isinstance(result, int):
        return result
    return 0


Explained = Callable[[str, RpcError], bool]
T = TypeVar("T")


class LocustClient(Client):
    """The blocking client with every call reported to Locust's `request` event.

    An error answer is a failure unless `explained(method, error)` says a fault or the contract
    accounts for it; the caller then reports it as what it is.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._environment: Environment | None = None
        self._explained: Explained = lambda method, exc: False
        self._context: dict[str, Any] = {}
        #: a call was cut short (the greenlet was killed in it): the stream may hold half a frame
        self.mid_call = False
        #: the call under way (or cut short): its method and perf_counter at its start
        self.call_method = ""
        self.call_started = 0.0

    def report_to(
        self, environment: Environment, explained: Explained, context: dict[str, Any]
    ) -> None:
        self._environment = environment
        self._explained = explained
        self._context = context

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        self.mid_call = True
        t0 = time.perf_counter()
        self.call_method, self.call_started = method, t0
        try:
            result = super().call(method, *params, timeout=timeout)
        except RpcError as exc:
            self.mid_call = False
            if not self._explained(method, exc):
                self._report(method, t0, 0, exc)
            raise
        except ChimneyError as exc:  # the connection is lost or the call timed out
            self.mid_call = False
            self._report(method, t0, 0, exc)
            raise
        self.mid_call = False
        # the user reads notifications through its handlers only: keep none
        self.notifications.clear()
        self._report(method, t0, payload_length(method, result), None)
        return result

    def _report(self, method: str, t0: float, length: int, exc: Exception | None) -> None:
        if self._environment is None:
            return
        self._environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type=RPC,
            name=method,
            response_time=(time.perf_counter() - t0) * 1000.0,
            response_length=length,
            exception=exc,
            context=self._context,
        )


@dataclass(slots=True)
class EchoConn:
    """One offloaded connection and its seeded streams: what was sent, what must come back."""

    cid: int
    seed: int
    stream: PatternStream
    verifier: Verifier
    offloaded: bool = True
    #: perf_counter when our injected peer reset was accepted; from then an abort is expected
    reset_at: float | None = None
    #: perf_counter when the chunk being read back was acknowledged (None: no echo awaited),
    #: its size and how much of it came back so far
    acked_at: float | None = None
    awaited: int = 0
    back: int = 0


class _ConnGone(Exception):
    """The connection can carry no more verified echo: the user closes it and opens another."""


#: Users spawned in this process: each one's spawn number.
_spawned = itertools.count()


class ChimneyUser(User):
    """One RPC client and one offloaded echo connection through one daemon (see module doc).

    Subclass it with `abstract = False` (deploy/locustfile.py does); `--host` names the daemons.
    Settings come from the `--chimney-*` options unless `load_settings()` is overridden.
    """

    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        #: this process's worker index (0 when not distributed) and this user's spawn number in it
        self.worker = max(0, int(getattr(environment.runner, "worker_index", 0) or 0))
        self.number = next(_spawned)
        # Each worker goes round-robin over the daemons starting at its own index, so workers
        # with equal user counts spread them evenly and one user per worker still covers them.
        self.daemon = pick_daemon(daemon_addresses(self.host), self.worker + self.number)
        self.settings = self.load_settings()
        self.rng = random.Random(os.urandom(16))
        self.client: LocustClient | None = None
        self.conn: EchoConn | None = None
        #: connections whose `closed` event came (taken by the check after `tcp.close`)
        self._gone: dict[int, bool] = {}
        #: the connections of this session: events of others (an admin's `"*"` hears every
        #: connection) are not kept
        self._mine: set[int] = set()
        #: connections of this session heard of as `offloaded` (`_check_offloaded`)
        self._offloaded: set[int] = set()
        #: a `tcp.connect` is under way: its connection's `offloaded` may come before its id
        self._connecting = False
        now = time.monotonic()
        self._next_upload = now + self._interval(self.settings.upload_rate)
        self._next_reset = now + self._interval(self.settings.reset_rate)

    def load_settings(self) -> ChimneySettings:
        options = self.environment.parsed_options
        return ChimneySettings() if options is None else ChimneySettings.from_options(options)

    def wait_time(self) -> float:
        return self.settings.think_ms / 1000.0

    def context(self) -> dict[str, Any]:
        return {"daemon": self.daemon, "worker": self.worker, "user": self.number}

    def connect_client(self) -> LocustClient:
        """A reporting client to `self.daemon` (tests substitute an in-memory one)."""
        return LocustClient.connect(self.daemon, call_timeout=self.settings.call_limit_s)

    # ============================================================================================
    # Locust hooks
    # ============================================================================================
    def on_start(self) -> None:
        self._ensure_connection()

    def on_stop(self) -> None:
        client, conn = self.client, self.conn
        self.client, self.conn = None, None
        if client is None:
            return
        self._report_outstanding(client, conn)
        # Killed in the middle of a call, the RPC stream may hold half a frame: only closing it
        # is safe, and the daemon then closes every connection the client owned.
        if conn is not None and not client.mid_call and not client.closed:
            try:
                client.call("tcp.close", conn.cid, timeout=self.settings.stop_close_limit_s)
                self._check_closed(conn)
            except ChimneyError:
                pass  # reported by the client
        client.close()

    def _report_outstanding(self, client: LocustClient, conn: EchoConn | None) -> None:
        """At the stop, what was cut off and had waited too long: a lost echo, a hung call, a
        reset that never surfaced. Locust kills a user mid-call, so nothing else reports them;
        below `stop_grace_s` the stop merely came first."""
        now = time.perf_counter()
        grace = self.settings.stop_grace_s
        if conn is not None and conn.reset_at is not None and now - conn.reset_at > grace:
            waited = now - conn.reset_at
            self._fire(
                EVENT,
                PEER_RESET_UNOBSERVED,
                waited * 1000.0,
                0,
                EchoFailure(f"conn {conn.cid}: no abort {waited:.1f} s after the reset (at stop)"),
            )
        if conn is not None and conn.acked_at is not None and now - conn.acked_at > grace:
            waited = now - conn.acked_at
            self._fire(
                EVENT,
                STUCK,
                waited * 1000.0,
                conn.back,
                EchoFailure(
                    f"conn {conn.cid}: {conn.back} of {conn.awaited} bytes back {waited:.1f} s "
                    "after the peer acknowledged them (at stop)"
                ),
            )
        elif client.mid_call and now - client.call_started > grace:
            waited = now - client.call_started
            self._fire(
                EVENT,
                STUCK,
                waited * 1000.0,
                0,
                EchoFailure(f"{client.call_method}: no answer after {waited:.1f} s (at stop)"),
            )

    @task
    def echo_round(self) -> None:
        """One round: maybe a reset, then `payload_bytes` echoed and verified, maybe uploaded."""
        conn = self._ensure_connection()
        if conn is None:
            return
        s = self.settings
        now = time.monotonic()
        if s.reset_rate > 0 and now >= self._next_reset and conn.reset_at is None:
            self._next_reset = now + self._interval(s.reset_rate)
            self._inject_reset(conn)
        upload = s.upload_rate > 0 and now >= self._next_upload and conn.reset_at is None
        if upload:
            self._next_upload = now + self._interval(s.upload_rate)
        try:
            self._echo(conn, s.payload_bytes, upload)
            if conn.reset_at is not None:
                waited = time.perf_counter() - conn.reset_at
                if waited > s.op_timeout_s:
                    self._fire(
                        EVENT,
                        PEER_RESET_UNOBSERVED,
                        waited * 1000.0,
                        0,
                        EchoFailure(f"conn {conn.cid}: no abort {waited:.1f} s after the reset"),
                    )
                    raise _ConnGone
        except _ConnGone:
            self._drop_connection()
        except ChimneyError:
            # reported by the client; the RPC session or the connection is in doubt: start over
            self._drop_connection()

    # ============================================================================================
    # the echo
    # ============================================================================================
    def _echo(self, conn: EchoConn, size: int, upload: bool) -> None:
        """Send `size` bytes in chunks; read each chunk back and verify it before the next.

        Each chunk is one `echo` row request, timed from its `tcp.send` to its last byte back,
        less the `tcp.upload` a chunk crosses (that call has its own `rpc` row).
        """
        client = self._client()
        left = size
        while left > 0:
            n = min(left, self.settings.chunk_bytes)
            data = conn.stream.read(n)
            t0 = time.perf_counter()
            self._io(conn, client.tcp_send, conn.cid, data)
            # the peer has the chunk: from now on its echo is on its way (on_stop judges it)
            conn.acked_at, conn.awaited, conn.back = time.perf_counter(), n, 0
            elapsed = conn.acked_at - t0
            if upload:
                upload = False  # the echo of this chunk crosses the upload
                self._io(conn, client.tcp_upload, conn.cid)
                conn.offloaded = False
            t1 = time.perf_counter()
            self._read_back(conn, n)
            conn.acked_at = None
            elapsed += time.perf_counter() - t1
            self._fire(ECHO, self.daemon, elapsed * 1000.0, n, None)
            left -= n
        if not conn.offloaded:
            self._offload(conn)

    def _offload(self, conn: EchoConn) -> None:
        """Offload `conn` and check it is: an NDIS status refusing it is an event (the
        connection goes on in the host stack, rpc.md tcp.offload); any other state a failure."""
        try:
            state = self._io(conn, self._client().tcp_offload, conn.cid).get("state")
        except _ConnGone as gone:
            cause = gone.__cause__
            if isinstance(cause, NdisStatusError) and not is_abort(cause):
                self._fire(EVENT, OFFLOAD_REFUSED, 0.0, 0, None)
                conn.offloaded = False
                return
            raise
        if state != "offloaded":
            self._fire(
                EVENT,
                NOT_OFFLOADED,
                0.0,
                0,
                EchoFailure(f"conn {conn.cid}: tcp.offload answered state {state!r}"),
            )
            raise _ConnGone
        conn.offloaded = True

    def _read_back(self, conn: EchoConn, n: int) -> None:
        client = self._client()
        s = self.settings
        got = 0
        t0 = time.perf_counter()
        while got < n:
            t_call = time.perf_counter()
            try:
                chunk = self._io(
                    conn, client.tcp_recv, conn.cid, min(n - got, s.chunk_bytes), s.recv_timeout_ms
                )
            except RpcTimeout:
                self._fire(EVENT, RECV_TIMEOUT, (time.perf_counter() - t_call) * 1000.0, 0, None)
                waited = time.perf_counter() - t0
                conn.back = got
                if waited > s.op_timeout_s:
                    self._fire(
                        EVENT,
                        STUCK,
                        waited * 1000.0,
                        got,
                        EchoFailure(f"{got} of {n} bytes back after {waited:.1f} s"),
                    )
                    raise _ConnGone from None
                continue
            if not chunk:
                if conn.reset_at is not None:
                    self._observed_reset(conn)
                self._fire(
                    EVENT,
                    UNEXPECTED_EOF,
                    (time.perf_counter() - t0) * 1000.0,
                    got,
                    EchoFailure(f"end of stream after {got} of {n} echoed bytes"),
                )
                raise _ConnGone
            self._verify(conn, chunk)
            got += len(chunk)
            conn.back = got

    def _verify(self, conn: EchoConn, chunk: bytes) -> None:
        at = conn.verifier.offset
        t0 = time.perf_counter()
        bad = conn.verifier.check(chunk)
        if bad is None:
            return
        detail = (
            f"daemon {self.daemon} conn {conn.cid} seed {conn.seed}: wrong byte at stream "
            f"offset {bad} (chunk of {len(chunk)} at {at}, "
            f"{'offloaded' if conn.offloaded else 'host mode'})"
        )
        log.error("chimney_integrity_error: %s", detail)
        self._fire(
            VERIFY,
            INTEGRITY,
            (time.perf_counter() - t0) * 1000.0,
            len(chunk),
            IntegrityError(detail),
        )
        raise _ConnGone  # the stream is out of step now: go on with a fresh connection

    def _io(self, conn: EchoConn, op: Callable[..., T], *args: Any) -> T:
        """Run one RPC on `conn`; an abort our reset explains becomes the peer_reset event."""
        try:
            return op(*args)
        except RpcTimeout:
            raise  # a read that found nothing yet: the caller waits on
        except CallTimeout as exc:
            # no answer within the call limit (op timeout + margin): reported as its rpc row's
            # failure by the client, and as what it means for the echo
            client = self._client()
            self._fire(
                EVENT,
                STUCK,
                (time.perf_counter() - client.call_started) * 1000.0,
                conn.back if conn.acked_at is not None else 0,
                EchoFailure(f"conn {conn.cid}: {exc}"),
            )
            raise _ConnGone from exc
        except RpcError as exc:
            if conn.reset_at is not None and is_abort(exc):
                self._observed_reset(conn)
            raise _ConnGone from exc

    # ============================================================================================
    # faults
    # ============================================================================================
    def _inject_reset(self, conn: EchoConn) -> None:
        try:
            self._client().fault_inject(PEER_RESET, conn=conn.cid)
        except RpcError:
            return  # reported by the client
        conn.reset_at = time.perf_counter()

    def _observed_reset(self, conn: EchoConn) -> None:
        assert conn.reset_at is not None
        self._fire(EVENT, PEER_RESET, (time.perf_counter() - conn.reset_at) * 1000.0, 0, None)
        raise _ConnGone

    def _explained(self, method: str, exc: RpcError) -> bool:
        """Errors the user reports itself: read timeouts, an offload refused with an NDIS
        status, and aborts its own reset explains."""
        if method == "tcp.recv" and isinstance(exc, RpcTimeout):
            return True
        if method == "tcp.offload" and isinstance(exc, NdisStatusError) and not is_abort(exc):
            return True
        conn = self.conn
        return conn is not None and conn.reset_at is not None and is_abort(exc)

    # ============================================================================================
    # session and connection
    # ============================================================================================
    def _client(self) -> LocustClient:
        assert self.client is not None
        return self.client

    def _ensure_connection(self) -> EchoConn | None:
        """The RPC session and an offloaded echo connection, opened as needed.

        None when that failed (reported); the user then backs off before the next round.
        """
        if self.client is not None and self.client.closed:
            self.client, self.conn = None, None
        try:
            if self.client is None:
                self.client = self._open_client()
            if self.conn is None:
                host, port = self._echo_address()
                self._offloaded.clear()
                self._connecting = True
                try:
                    cid = self.client.tcp_connect(host, port)
                finally:
                    self._connecting = False
                self._mine.add(cid)
                seed = self.rng.getrandbits(48)
                self.conn = EchoConn(cid, seed, PatternStream(seed), Verifier(seed))
                self._check_offloaded(self.conn)
        except _ConnGone:
            self._drop_connection()
            return None
        except ChimneyError:
            time.sleep(RECONNECT_BACKOFF_S)
            return None
        return self.conn

    def _check_offloaded(self, conn: EchoConn) -> None:
        """`tcp.connect` offloads at once, and a refusal leaves the connection in the host stack
        without a word (rpc.md tcp.connect). Its `offloaded` event, which the session's `"*"`
        subscription hears before the connect's answer (the connection is the caller's before
        its offload: rpc.md events.subscribe), says it was; only a connection not heard of so
        costs a `tcp.info`, and if it is not offloaded the user offloads it, so that a refusal
        is seen as its NDIS status and a daemon that offloads nothing fails."""
        if conn.cid in self._offloaded:
            return
        state = self._io(conn, self._client().tcp_info, conn.cid).get("state")
        if state != "offloaded":
            self._offload(conn)

    def _open_client(self) -> LocustClient:
        t0 = time.perf_counter()
        try:
            client = self.connect_client()
        except ConnectionLost as exc:
            self._fire(RPC, RPC_CONNECT, (time.perf_counter() - t0) * 1000.0, 0, exc)
            raise
        client.report_to(self.environment, self._explained, self.context())
        # a new session: the old one's connections are gone with it
        self._gone.clear()
        self._mine.clear()
        self._offloaded.clear()
        client.on_notification("tcp.event", self._on_event)
        try:
            if self.settings.token:
                client.auth(self.settings.token)
            # the events of every connection of the session, once: a `closed` is how a close is
            # checked (`_check_closed`), an `offloaded` how a connect's offload is
            # (`_check_offloaded`); not a call a connection
            client.call("events.subscribe", "*")
        except BaseException:
            client.close()
            raise
        return client

    def _echo_address(self) -> tuple[str, int]:
        target = parse_address(self.settings.echo)
        if isinstance(target, str):
            raise ValueError(f"--chimney-echo must be HOST:PORT, not {self.settings.echo!r}")
        return target

    def _drop_connection(self) -> None:
        conn, client = self.conn, self.client
        self.conn = None
        if conn is None or client is None or client.closed:
            return
        try:
            client.tcp_close(conn.cid)
            self._check_closed(conn)
        except ChimneyError:
            pass  # reported by the client; a lost session is reopened next round

    def _check_closed(self, conn: EchoConn) -> None:
        """After `tcp.close` answered, the connection is gone: its `closed` event came first
        (rpc.md events.subscribe: the daemon sends it while it closes, before the answer).
        `tcp.info` cannot tell: a daemon that merely forgot whose connection it was answers
        NOT_FOUND too, and the connection stays open for good."""
        if self._gone.pop(conn.cid, False):
            return
        self._fire(
            EVENT,
            NOT_CLOSED,
            0.0,
            0,
            EchoFailure(f"conn {conn.cid}: no `closed` event before tcp.close answered"),
        )

    def _on_event(self, params: Any) -> None:
        """`tcp.event` notifications: the user keeps the `closed` of its own connections, and
        whether the one its `tcp.connect` is making (whose id it learns after) is offloaded:
        an `uploaded` after its `offloaded` (the host took it back in the same turn, before
        the answer: a target that failed, a `host_event`) undoes it, so the connection is
        asked about (`_check_offloaded`) as it was before the event said it."""
        if not (isinstance(params, list | tuple) and len(params) >= 2):
            return
        cid, event = params[0], params[1]
        if event == "closed" and cid in self._mine:
            self._mine.discard(cid)
            self._gone[cid] = True
        elif event == "offloaded" and (self._connecting or cid in self._mine):
            self._offloaded.add(cid)
        elif event in ("uploaded", "closed"):
            self._offloaded.discard(cid)

    # ============================================================================================
    # helpers
    # ============================================================================================
    def _interval(self, rate: float) -> float:
        return self.rng.expovariate(rate) if rate > 0 else float("inf")

    def _fire(
        self,
        request_type: str,
        name: str,
        response_time: float,
        length: int,
        exc: Exception | None,
    ) -> None:
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exc,
            context=self.context(),
        )
