"""Every timeout and limit, named once (the values cancel scopes use)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

RECONNECT_CAP = 5.0
"""Longest delay, before jitter, between a peer's reconnect attempts (``transport.backoff``)."""
RECONNECT_JITTER = 0.5
"""Each reconnect delay is spread by this fraction either way."""
LONGEST_RECONNECT_DELAY = RECONNECT_CAP * (1 + RECONNECT_JITTER)
"""The longest a peer can wait between two reconnect attempts."""


class Timeouts(msgspec.Struct, frozen=True, kw_only=True):
    connect: float = 10.0
    """Opening a websocket and completing the Hello/Welcome handshake."""
    heartbeat_interval: float = 5.0
    """How often a pilot says it is alive (and lists what it runs)."""
    lease_timeout: float = 30.0
    """A pilot silent this long is declared lost; its running tasks are retried."""
    disconnect_grace: float | None = None
    """A pilot whose connection *closed* and that is not back this long is declared lost
    (None: three heartbeat intervals; never longer than ``lease_timeout``)."""
    kill_grace: float = 5.0
    """SIGTERM -> SIGKILL delay when a task is cancelled or times out."""
    close: float = 5.0
    """Graceful shutdown of a connection or a store."""
    drain: float = 20.0
    """A pilot told to stop (SIGTERM) lets its running tasks finish this long, then kills
    and hands back what still runs (``tidewater pilot --drain-timeout``). Under Slurm's
    default KillWait (30 s from SIGTERM to SIGKILL), so a cancelled or timed-out batch
    job's pilot hands its tasks back before it is killed."""
    request: float = 60.0
    """Default wait for a reply to one client request."""
    leader_check: float = 1.0
    """How often a leading controller checks the connection that holds its leader lock
    (and a standby on SQLite tries the lock again)."""
    progress: float = 30.0
    """How often a client waiting on tasks says what they are waiting for."""

    def grace(self) -> float:
        """The effective disconnect grace (see ``disconnect_grace``)."""
        g = 3 * self.heartbeat_interval if self.disconnect_grace is None else self.disconnect_grace
        return max(0.0, min(g, self.lease_timeout))


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_frame_bytes: int = 8 * 1024 * 1024
    max_tasks_per_submit: int = 10_000
    max_params_bytes: int = 64 * 1024
    max_query_limit: int = 100_000
    outgoing_queue: int = 100_000
    """Frames queued to one slow peer before it is disconnected."""
    write_queue: int = 1_000
    """Write operations waiting for the store before readers stop reading."""
    tail_bytes: int = 4096
    """How much of a task's stdout/stderr tail comes back in its result."""
    max_inline_bytes: int = 1024 * 1024
    """Largest arguments, or return value, of one function task (they travel in messages)."""
    requests_per_second: float = 5_000.0
    """Requests one client connection may send per second, on average (burst: 2 s worth)."""
    max_watches: int = 1_000
    """Watches open at once on one client connection."""
    listen_backlog: int = 4096
    """Connections the controller's socket queues before it accepts them. After a restart
    every pilot comes back within seconds; a short queue drops their SYNs, and each dropped
    one costs its pilot a 1 s, then 3 s retransmission. The kernel caps it at
    ``net.core.somaxconn``."""


class ControllerConfig(msgspec.Struct, frozen=True, kw_only=True):
    db: str = ""
    host: str = "127.0.0.1"
    port: int = 8765
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    tls_cert: str = ""
    """PEM certificate (chain) served to peers; with ``tls_key`` the listener is ``wss://``."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    allow_plaintext: bool = False
    """Serve plaintext ``ws://`` on a non-loopback host (behind a TLS proxy or tunnel)."""
    dashboard_port: int | None = None
    """Serve the web dashboard on this port too, in the same process (None: no dashboard;
    0: any free port). With TLS on, it serves the same certificate."""
    dashboard_host: str = "127.0.0.1"
    """The dashboard's listening address."""


def home() -> Path:
    """Tidewater's per-user directory (``$TIDEWATER_HOME`` or ``~/.tidewater``)."""
    return Path(os.environ.get("TIDEWATER_HOME") or Path.home() / ".tidewater")


def default_db() -> str:
    return str(home() / "tidewater.db")
