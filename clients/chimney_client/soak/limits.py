"""Every limit and default of chimney-soak, named once, with why."""

from __future__ import annotations

#: Connections carried by one RPC client; a few clients spread the daemon's per-client work.
DEFAULT_CONNS_PER_RPC = 500
#: Operations (echo round trips, opens, closes) in flight per RPC client. Each op has at most two
#: calls in flight (send and recv), which keeps us under the daemon's default 256 per client.
DEFAULT_OPS_PER_RPC = 100
#: The daemon's default in-flight limit per RPC client (rpc.max_in_flight).
DAEMON_MAX_IN_FLIGHT = 256
#: Connections per spawned echo peer process: far below one process's ≈19.9k sockets and the
#: ≈14k-per-listening-port point where Linux's port search slows (perf-notes).
CONNS_PER_PEER = 4000
#: Sockets kept aside in the daemon for its RPC port, clients, log files.
FD_RESERVE = 200
#: Server-side wait of one `tcp.recv`; a timeout loses no data, so we simply ask again.
RECV_TIMEOUT_MS = 5000
#: After a send a bug answered (its stream may have a hole), the read-back ends once nothing
#: more came for this long: what did come is verified, the rest of that send is excused.
BUG_QUIET_MS = 1000
#: INTERNAL answers on one connection before its slot gives up on it (a bug that keeps raising).
MAX_BUG_ANSWERS = 4
#: INTERNAL answers on one connection this close in time are one bug's (it answers every request
#: waiting on the connection at once; a client reads the answers within a few ms).
BUG_EPISODE_S = 0.5
#: Faults spread over the hold are injected at least this far apart, where the hold leaves room
#: (a time given with @ is kept as given).
STAGGER_S = 0.5
#: Largest read asked for at once.
RECV_CHUNK = 256 * 1024
#: An echo round trip that takes longer than this is reported as stuck (connection, offset).
OP_TIMEOUT_S = 60.0
#: Client-side bound on any one call.
CALL_TIMEOUT_S = 120.0
#: Before anything starts, a daemon given with --rpc must accept us and answer stack.info
#: within this (a daemon that is there answers at once; this is for one that is stuck).
PREFLIGHT_TIMEOUT_S = 10.0
#: Consecutive failed sends on one connection before it is declared broken.
MAX_SEND_FAILURES = 5
#: Re-offload attempts (after a NIC failure, a retrieve or a refusal) are spaced by at least this.
REOFFLOAD_RETRY_S = 0.5
#: More than the daemon keeps traces of closed connections for (engine.CLOSED_TRACES_KEPT).
WARM_UP_CONNECTIONS = 300
#: The daemon gives freed memory back 0.5 s and 3 s after its last close: sample after that.
IDLE_TRIM_WAIT_S = 4.0
#: Latency samples kept per worker (reservoir), enough for a stable p99.
LATENCY_SAMPLES = 50_000
#: Integrity and error details kept per worker (all are counted).
DETAILS_KEPT = 100
#: How often workers report progress and the coordinator refreshes its line (seconds).
PROGRESS_EVERY_S = 0.5
#: How often a worker reads the coordinator's commands: a stop or a fault's order waits no
#: longer than this (reading them with the progress, every 0.5 s, held every stop that long).
COMMAND_POLL_S = 0.05
#: A round trip begun during a stall must come back no earlier than the stall's end, reckoned
#: from just before fault.inject; the daemon's loop clock reads up to a millisecond or two behind
#: ours (libuv caches it per iteration, in whole milliseconds), so this much earlier still counts.
STALL_CLOCK_SLACK_S = 0.02
#: Default stall of a `stall_peer` fault and default outage of a `target_failure` fault.
DEFAULT_STALL_MS = 2000
DEFAULT_NIC_OUTAGE_S = 3.0
#: Time for spawned processes to say they are listening.
SPAWN_READY_S = 30.0
#: After the hold, a connection whose fault has not played out yet (re-offload after an upload,
#: data after a stall or a failed send, a reopened slot after a reset) goes on this long so the
#: outcome can be seen; what is still missing then fails its fault. Round trips on a busy
#: machine reach tens of seconds at the p99 (40,000 connections on two cores: 29 s).
SETTLE_S = 30.0
#: A connection-fault that needs an offloaded connection waits this long for one (e.g. while a
#: target failure has every connection in host mode, and after it, while they are offloaded again
#: and owe verified data — with 40,000 connections on two busy cores that took 15-30 s) before it
#: counts as not injected.
FAULT_AIM_WAIT_S = 20.0
#: Offload refusals this soon after a target failure is cleared are still that failure's (the
#: host hears OFFLOAD_RESUME through the layers a moment after fault.clear returns).
RESUME_GRACE_S = 1.0
#: After a NIC outage is cleared, spread layer faults wait until the re-offloads have filled
#: the NICs again: the connections they carry (polled every SETTLE_POLL_S) are back to at least
#: SETTLE_BACK_SHARE of what they carried before the outage and have not risen for
#: SETTLE_QUIET_S, or SETTLE_MAX_S passed. At 10,000 connections the RESUME's re-offload began
#: 4.3 s after the clear, all in 60 ms; a wait for quiet alone ended before it.
SETTLE_POLL_S = 0.25
SETTLE_QUIET_S = 1.0
SETTLE_MAX_S = 20.0
SETTLE_BACK_SHARE = 0.5
#: After a rebalance, the MUX's NICs in service carry at least this share of the connections
#: they did before (some may close meanwhile) once what it moved is offloaded again.
MOVED_BACK_SHARE = 0.95
#: A rebalance leaves the MUX's NICs in service within one connection of each other, or
#: within this share of their connections where some opened and closed meanwhile.
REBALANCE_SLACK_SHARE = 0.05
#: In the hold's last LAST_CALL_S, layer faults no longer wait for a NIC to settle: injected
#: after the hold, they would find no traffic to go off in.
LAST_CALL_S = 1.0
#: How far apart a failed send and the upload its NIC then asks for may be seen (the send's
#: answer and the `uploaded` event come by different roads).
SEND_FAILURE_UPLOAD_S = 5.0
#: The echo peer waits at most this long for its echo to be acknowledged before it resets a
#: connection, so the reset cuts the stream at a point both sides can account for.
RESET_QUIESCE_S = 1.0
#: A reset's slot waits this long at most for the daemon to read its last echo before it orders
#: the reset (so the bytes are held at the daemon, unread), and as long for the abort to be heard
#: before it reads them.
RESET_HOLD_WAIT_S = 5.0
#: On Ctrl-C, round trips in flight get this long to finish before their connections are closed.
INTERRUPT_GRACE_S = 3.0
#: After the stop, a worker's slots get this long (settling, a stuck round trip, closes) before
#: what is still busy is reported and cancelled.
WIND_DOWN_S = SETTLE_S + OP_TIMEOUT_S + 30
#: Then the connections left open are closed within this bound (a broken daemon may not answer).
CLOSE_ALL_S = 15.0
#: The coordinator waits this long for a worker's final report after the stop: its wind-down,
#: the closes, the stuck report, and room for the queue.
FINAL_REPORT_S = WIND_DOWN_S + CLOSE_ALL_S + 30
#: The daemon's stack.stats is read this often during the run; a layer error or an invariant
#: violation there stops the run early (what follows a broken layer only hides the first fault).
HEALTH_EVERY_S = 1.0
#: Daemon RSS after the drain may be at most this much above the idle plateau.
RSS_GROWTH_ALLOWED = 1.10

CLOSE_MODES = ("graceful", "abortive", "mixed")
LAYER_GAUGES = ("offloads_active", "handles", "outstanding_nbls")
