"""Shared pieces of the benchmarks: a real controller, real pilots, statistics.

:func:`cluster` starts, as separate processes on this machine,

* a controller: ``python -m tidewater server --db DB --port PORT`` on a free
  loopback port, waited for by connecting with retries under a deadline. DB
  is a new SQLite file in the temporary directory, or, given a PostgreSQL
  server's URL (``db=``), a new database on that server made for this
  cluster and dropped afterwards (:func:`fresh_pg_database`);
* a user (``tidewater.controller.users.add_user`` on the same store while
  the server runs: WAL on SQLite), a site and the apps asked for, through
  the client;
* ``pilots`` pilot processes (``python -m tidewater pilot --cores C
  --workdir DIR`` with TIDEWATER_URL and the site token), and waits until
  ``client.sites()`` shows them all connected.

Everything it started is terminated (then killed) on the way out, error or
not. Logs stay in the temporary directory and their tails are printed when
the set-up fails.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncpg

from tidewater.client import Client, Task
from tidewater.controller.users import add_user
from tidewater.proto import TaskInfo

PY = sys.executable
SITE = "bench"

# --------------------------------------------------------------------------- statistics


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def p99(values: Sequence[float]) -> float:
    return pct(values, 0.99)


@dataclass
class Spread:
    """Median and spread of one figure over repeated runs."""

    median: float
    lo: float
    hi: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        v = [x for x in values if not math.isnan(x)]
        if not v:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
        if len(v) >= 2:
            q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
        else:
            q1 = q3 = v[0]
        return cls(statistics.median(v), min(v), max(v), q1, q3, len(v))

    def fmt(self, digits: int = 2, unit: str = "") -> str:
        if self.n == 0:
            return "-"
        f = f"{{:.{digits}f}}"
        m = f.format(self.median) + unit
        if self.n == 1:
            return m
        return f"{m} [{f.format(self.lo)}-{f.format(self.hi)}]"


def ms(seconds: Iterable[float]) -> list[float]:
    return [1000.0 * s for s in seconds]


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)
        ).rstrip()

    out = [title, line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def machine_line() -> str:
    import platform

    return (f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {os.cpu_count()} cores  "
            f"Python {platform.python_version()}  {platform.platform(terse=True)}")


# --------------------------------------------------------------------------- processes


def cpu_times(pid: int) -> tuple[float, float, float, float] | None:
    """(user, system, reaped children's user, system) CPU seconds of ``pid``, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) / tick, int(fields[12]) / tick, int(fields[13]) / tick,
            int(fields[14]) / tick)


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago (the server may still race us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(lines[-n:])


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    """SIGTERM them all, wait up to ``grace`` seconds, then SIGKILL each one's session."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        # A session of its own so a stuck process can be killed with its children.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


async def wait_listening(proc: subprocess.Popen[bytes], port: int, deadline: float,
                         log: Path) -> None:
    """Connect to ``port`` until it answers; fail if the process exits or time runs out."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"controller exited with code {proc.returncode} before "
                               f"listening on port {port}:\n{log_tail(log)}")
        try:
            stream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"controller not listening on port {port} in time:\n"
                                   f"{log_tail(log)}") from None
            await anyio.sleep(0.02)
            continue
        await stream.aclose()
        return


@dataclass
class Cluster:
    url: str
    token: str
    site_token: str
    client: Client
    base: Path
    db: str
    server: subprocess.Popen[bytes]
    pilots: list[subprocess.Popen[bytes]] = field(default_factory=list)
    site: str = SITE
    port: int = 0
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    """Every controller process started (stopped on the way out)."""
    server_env: dict[str, str] | None = None
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    """Stopped before the controller on the way out: the pilots, and what :meth:`spawn` starts."""

    @property
    def server_log(self) -> Path:
        return self.base / "server.log"

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start a process that is stopped (before the controller) on the way out."""
        p = _spawn(argv, log, env)
        self.others.append(p)
        return p

    async def restart_server(self, startup_timeout: float = 30.0) -> tuple[float, float]:
        """SIGTERM the controller, wait for it to exit, start it again on the same store
        and port; (time.time() when it exited, when the new one listens)."""
        self.server.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(self.server.wait)
        exited = time.time()
        log = self.base / f"server{len(self.servers)}.log"
        self.server = _spawn(_server_argv(self.db, self.port), log, self.server_env)
        self.servers.append(self.server)
        await wait_listening(self.server, self.port, time.monotonic() + startup_timeout, log)
        return exited, time.time()


def _server_argv(db: str, port: int) -> list[str]:
    return [PY, "-m", "tidewater", "server", "--db", db, "--port", str(port)]


async def wait_pilots(client: Client, site: str, n: int, timeout: float,
                      procs: Sequence[subprocess.Popen[bytes]] = (),
                      logs: Sequence[Path] = ()) -> None:
    """Poll ``client.sites()`` until ``site`` has ``n`` connected pilots."""
    deadline = time.monotonic() + timeout
    seen = -1
    while True:
        for p, log in zip(procs, logs, strict=False):
            if p.poll() is not None:
                raise RuntimeError(f"pilot exited with code {p.returncode}:\n{log_tail(log)}")
        info = {s.name: s for s in await client.sites()}.get(site)
        seen = info.pilots if info else 0
        if seen == n:
            return
        if time.monotonic() > deadline:
            tails = "\n".join(log_tail(lg, 10) for lg in logs)
            raise TimeoutError(f"{seen} of {n} pilots connected after {timeout:g}s\n{tails}")
        await anyio.sleep(0.05)


# --------------------------------------------------------------------------- PostgreSQL

# The private cluster of `scripts/services.sh start` (as tests/integration/pg.py).
LOCAL_PG_URL = f"postgresql://postgres@127.0.0.1:{os.environ.get('TIDEWATER_PG_PORT', '55432')}/postgres"
PG_ENV = "TIDEWATER_BENCH_PG"


def is_pg_url(db: str | None) -> bool:
    return db is not None and db.startswith(("postgresql://", "postgres://"))


async def pg_ping(url: str, timeout: float = 3.0) -> str | None:
    """None if the PostgreSQL server at ``url`` accepts a connection, else why not."""
    try:
        with anyio.fail_after(timeout):
            conn = await asyncpg.connect(url, timeout=timeout)
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


@contextlib.asynccontextmanager
async def fresh_pg_database(server_url: str) -> AsyncIterator[str]:
    """The URL of a new, empty database on the server ``server_url`` points at.

    ``server_url`` names any database its user may connect to and create
    databases from. The new one is dropped on the way out (its connections
    closed by force), also when cancelled.
    """
    import uuid

    name = f"tw_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    try:
        yield _with_database(server_url, name)
    finally:
        with anyio.move_on_after(20, shield=True):
            conn = await asyncpg.connect(server_url, timeout=10)
            try:
                await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            finally:
                await conn.close()


# --------------------------------------------------------------------------- cluster


@contextlib.asynccontextmanager
async def cluster(
    *, pilots: int = 1, cores: int = 1, apps: dict[str, str] | None = None,
    startup_timeout: float = 30.0, keep: bool = False, pilot_args: Sequence[str] = (),
    pilot_root: str | None = None, db: str | None = None,
    server_env: dict[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    """A controller process, a user, site ``bench`` with ``apps``, and connected pilots.

    ``apps`` maps app name to command template (default ``{"true": "/bin/true"}``).
    The store, logs and pilot work directories go to a new temporary
    directory; ``pilot_root`` puts the pilots' work directories (one
    directory and two files per task) under another one (e.g. ``/dev/shm``).
    ``db``: None for a SQLite store in the temporary directory, or a
    ``postgresql://`` URL of a server on which a new database is made for
    this cluster (and dropped afterwards).
    ``server_env``: the controller's environment (default: this one's).
    """
    if is_pg_url(db):
        assert db is not None
        async with fresh_pg_database(db) as url, _cluster(
                pilots=pilots, cores=cores, apps=apps, startup_timeout=startup_timeout,
                keep=keep, pilot_args=pilot_args, pilot_root=pilot_root, store=url,
                server_env=server_env) as c:
            yield c
    else:
        async with _cluster(pilots=pilots, cores=cores, apps=apps,
                            startup_timeout=startup_timeout, keep=keep, pilot_args=pilot_args,
                            pilot_root=pilot_root, store=None,
                            server_env=server_env) as c:
            yield c


@contextlib.asynccontextmanager
async def _cluster(
    *, pilots: int, cores: int, apps: dict[str, str] | None, startup_timeout: float,
    keep: bool, pilot_args: Sequence[str], pilot_root: str | None, store: str | None,
    server_env: dict[str, str] | None,
) -> AsyncIterator[Cluster]:
    apps = apps if apps is not None else {"true": "/bin/true"}
    base = Path(tempfile.mkdtemp(prefix="tidewater-bench-"))
    work = Path(tempfile.mkdtemp(prefix="tidewater-pilots-", dir=pilot_root)) \
        if pilot_root else base
    db = store if store is not None else str(base / "bench.db")
    servers: list[subprocess.Popen[bytes]] = []
    started: list[subprocess.Popen[bytes]] = []  # pilots, and what the benchmark starts
    ok = False
    try:
        server = None
        for _attempt in range(3):  # the port we picked may be taken before the server binds
            port = free_port()
            slog = base / "server.log"
            server = _spawn(_server_argv(db, port), slog, server_env)
            servers.append(server)
            try:
                await wait_listening(server, port, time.monotonic() + startup_timeout, slog)
                break
            except RuntimeError:
                if "address already in use" not in log_tail(slog).lower():
                    raise
        else:
            raise RuntimeError(f"controller could not bind a free port:\n{log_tail(slog)}")
        assert server is not None
        url = f"ws://127.0.0.1:{port}"
        token = await add_user(db, f"bench{os.getpid()}")
        async with Client(url, token, name="bench") as client:
            _site, site_token = await client.add_site(SITE)
            for name, command in apps.items():
                await client.add_app(SITE, name, command)
            env = {**os.environ, "TIDEWATER_URL": url, "TIDEWATER_TOKEN": site_token}
            logs = []
            pilot_procs = []
            for k in range(pilots):
                log = base / f"pilot{k}.log"
                logs.append(log)
                p = _spawn([PY, "-m", "tidewater", "pilot", "--cores", str(cores),
                            "--workdir", str(work / f"pilot{k}"), *pilot_args], log, env)
                started.append(p)
                pilot_procs.append(p)
            await wait_pilots(client, SITE, pilots, startup_timeout, pilot_procs, logs)
            yield Cluster(url=url, token=token, site_token=site_token, client=client,
                          base=base, db=db, server=server, pilots=pilot_procs, port=port,
                          servers=servers, server_env=server_env, others=started)
        ok = True
    finally:
        _cleanup(started, servers, base, work, ok=ok, keep=keep)


def _cleanup(pilots: list[subprocess.Popen[bytes]], servers: list[subprocess.Popen[bytes]],
             base: Path, work: Path, *, ok: bool, keep: bool) -> None:
    """Blocking on purpose: it must finish even while the benchmark is being cancelled."""
    # Pilots first (they say Bye to a live controller), then the controller.
    stop_processes(pilots)
    stop_processes(servers)
    if not ok:
        for log in sorted(base.glob("*.log")):
            print(f"--- {log.name} (tail)\n{log_tail(log, 15)}", file=sys.stderr)
    if keep or not ok:
        print(f"(bench files kept in {base}" + (f" and {work}" if work != base else "") + ")",
              file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- results


@dataclass
class Collected:
    infos: dict[int, TaskInfo]
    last: float  # perf_counter() when the last result arrived through the first Wait
    lost: list[int]  # ids whose result the first Wait never delivered


async def collect(client: Client, tasks: Sequence[Task], *, stall: float = 5.0,
                  on_result: Callable[[TaskInfo], None] | None = None) -> Collected:
    """Await every task's final result with ``client.as_completed``.

    If no result arrives for ``stall`` seconds while some are missing, the
    missing ones are fetched with a second ``client.wait`` and reported in
    ``lost`` (a controller that answers a Wait with a task's stale,
    non-final row never sends that task's result: see bench/README.md).
    ``last`` is then the arrival of the last result before the stall, so a
    run's time does not include the stall.
    """
    infos: dict[int, TaskInfo] = {}
    last = time.perf_counter()
    results: AsyncGenerator[TaskInfo, None] = client.as_completed(tasks)  # type: ignore[assignment]
    try:
        while len(infos) < len(tasks):
            with anyio.move_on_after(stall):
                info = await results.__anext__()
                infos[info.id] = info
                last = time.perf_counter()
                if on_result is not None:
                    on_result(info)
                continue
            break  # stalled
    except StopAsyncIteration:
        pass
    finally:
        await results.aclose()
    lost = [t.id for t in tasks if t.id not in infos]
    if lost:
        with anyio.fail_after(60):
            for info in await client.wait(lost):
                infos[info.id] = info
    return Collected(infos, last, lost)


def warn_incomplete(failed: int, lost: int) -> None:
    """Say when a run had tasks that did not finish, or results the first Wait missed."""
    if failed:
        print(f"WARNING: {failed} tasks did not finish (JOB_FINISHED)")
    if lost:
        print(f"WARNING: the first Wait never delivered {lost} result(s); they were fetched "
              "by a second Wait after a 5 s stall, which is left out of the timing "
              "(see bench/README.md, 'Problems these benchmarks found')")
