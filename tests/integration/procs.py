"""Real controller and pilot processes for integration tests.

Readiness is read from what each process logs (a line on stderr), never
guessed with a sleep. ``kill()`` is ``kill -9``.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import Process, TaskGroup

from tidewater.controller.users import add_user
from tidewater.proto import TaskInfo

from . import pg

PY = sys.executable
# Test time scale: heartbeats and leases short enough to make failure tests quick.
HEARTBEAT = 0.3
LEASE = 2.0

STORE_URL: str | None = None
"""The store every Cluster uses, set by the ``store`` fixture (conftest.py) for the tests
that run on both backends; None: a SQLite file in the test's directory."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose stderr is collected line by line."""

    def __init__(self, name: str, proc: Process, tg: TaskGroup) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self._changed = anyio.Event()
        tg.start_soon(self._drain)

    async def _drain(self) -> None:
        assert self.proc.stderr is not None
        buf = b""
        async for chunk in self.proc.stderr:
            buf += chunk
            *done, buf = buf.split(b"\n")
            self.lines.extend(d.decode(errors="replace") for d in done)
            self._changed.set()
            self._changed = anyio.Event()
        self._changed.set()

    async def wait_for(self, text: str, *, count: int = 1, timeout: float = 20) -> None:
        """Wait until ``text`` has appeared in ``count`` stderr lines."""
        with anyio.fail_after(timeout):
            while sum(text in ln for ln in self.lines) < count:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log()}")
                ev = self._changed
                with anyio.move_on_after(0.5):  # also re-check the exit status
                    await ev.wait()

    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    def kill(self) -> None:
        """kill -9."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            with anyio.move_on_after(10, shield=True):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                with anyio.CancelScope(shield=True):
                    await self.proc.wait()


class Cluster:
    """A controller process on a store in ``tmp``, with pilots started on demand."""

    def __init__(self, tmp: Path, tg: TaskGroup, db: str | None = None) -> None:
        self.tmp = tmp
        self.tg = tg
        self.db = db or STORE_URL or str(tmp / "tw.db")
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.ports = [self.port]
        self.controller: Proc | None = None
        self.controllers: dict[int, Proc] = {}
        """Every controller process started, by port (the last one started on each)."""
        self.pilots: dict[str, Proc] = {}
        self.env = {**os.environ, "TIDEWATER_URL": self.url, "TIDEWATER_HOME": str(tmp / "home")}
        self.site_dirs: list[tuple[Path, dict[str, str]]] = []

    def add_controller_port(self) -> int:
        """Another port for a controller on the same store; ``url`` (and so every peer
        started after this) then lists every port, comma-separated."""
        port = free_port()
        self.ports.append(port)
        self.url = ",".join(f"ws://127.0.0.1:{p}" for p in self.ports)
        self.env["TIDEWATER_URL"] = self.url
        return port

    async def start_controller(self, *extra: str, port: int | None = None,
                               ready: str = "controller listening on") -> Proc:
        """A controller process on ``port`` (default: the first); returns once it logs ``ready``."""
        port = port or self.port
        proc = await anyio.open_process(
            [PY, "-m", "tidewater", "server", "--db", self.db, "--port", str(port),
             "--lease-timeout", str(LEASE), "--heartbeat", str(HEARTBEAT), *extra],
            env=self.env, stdout=None,
        )
        p = Proc(f"controller :{port}", proc, self.tg)
        self.controllers[port] = p
        if port == self.port:
            self.controller = p
        await p.wait_for(ready)
        return p

    async def add_user(self, name: str) -> str:
        return await add_user(self.db, name)

    async def start_pilot(
        self, token: str, *, pilot_id: str, cores: int = 1, site: str = "", prefetch: int = 1,
        wait: bool = True, drain_timeout: float = 0.0,
    ) -> Proc:
        """A pilot; ``drain_timeout`` 0 (the default here): SIGTERM kills its tasks at once."""
        args = [PY, "-m", "tidewater", "pilot", "--cores", str(cores), "--prefetch",
                str(prefetch), "--workdir", str(self.tmp / "work" / pilot_id), "--pilot-id",
                pilot_id, "--heartbeat", str(HEARTBEAT), "--drain-timeout", str(drain_timeout)]
        if site:
            args += ["--site", site]
        proc = await anyio.open_process(args, env={**self.env, "TIDEWATER_TOKEN": token},
                                        stdout=None)
        p = Proc(f"pilot {pilot_id}", proc, self.tg)
        self.pilots[pilot_id] = p
        if wait:
            await p.wait_for(f"pilot {pilot_id} connected")
        return p

    async def start_agent(self, site_dir: Path, name: str = "agent",
                          env: dict[str, str] | None = None) -> Proc:
        """``tidewater site start DIR``; returns once it is connected."""
        proc = await anyio.open_process([PY, "-m", "tidewater", "site", "start", str(site_dir)],
                                        env={**self.env, **(env or {})}, stdout=None)
        p = Proc(name, proc, self.tg)
        self.pilots[name] = p  # stopped with the others
        if all(d != site_dir for d, _ in self.site_dirs):
            self.site_dirs.append((site_dir, env or {}))
        await p.wait_for("connected to")
        return p

    @property
    def on_postgres(self) -> bool:
        return self.db.startswith("postgresql://")

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Read the store directly, as an operator would (``?`` placeholders on both backends)."""
        if self.on_postgres:
            return pg.rows(self.db, sql, params)
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def tables(self) -> list[str]:
        """The store's tables."""
        if self.on_postgres:
            return pg.tables(self.db)
        return [str(r[0]) for r in self.rows(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]

    def snapshot(self) -> dict[str, list[tuple[object, ...]]]:
        return {t: self.rows(f"SELECT * FROM {t} ORDER BY 1") for t in
                ("users", "sites", "apps", "tasks", "events", "task_tags", "submissions",
                 "batch_jobs")}

    async def stop(self) -> None:
        for p in list(self.pilots.values()):
            await p.stop()
        for c in self.controllers.values():
            await c.stop()
        for d, env in self.site_dirs:
            await cancel_site_jobs(d, env)


async def cancel_site_jobs(site_dir: Path, env: dict[str, str] | None = None) -> None:
    """Cancel every batch job a test's site left in its scheduler (pilots outlive agents)."""
    from tidewater.agents.schedulers import get_scheduler
    from tidewater.agents.schedulers.base import SchedulerClient
    from tidewater.agents.settings import load
    from tidewater.errors import TidewaterError

    s = load(site_dir)
    sched = SchedulerClient(get_scheduler(s.site.scheduler, **s.scheduler), timeout=30,
                            env=dict(env or {}))
    prefix = f"tw-{s.site.name}-"
    with anyio.CancelScope(shield=True):
        try:
            for job in await sched.status():
                if job.name.startswith(prefix) and job.state != "finished":
                    await sched.cancel(job.scheduler_id)
        except TidewaterError:
            pass  # best effort: the scheduler may be gone already


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_site(
    directory: Path, *, name: str, scheduler: str, url: str, token: str,
    sections: dict[str, dict[str, object]] | None = None,
) -> Path:
    """A site directory as `tidewater site init` makes it, with settings for tests."""
    from tidewater.agents.settings import DEFAULT_TEMPLATE, write_token

    directory.mkdir(parents=True, exist_ok=True)
    base: dict[str, dict[str, object]] = {
        "site": {"name": name, "controller": url, "scheduler": scheduler,
                 "work_root": str(directory / "work"), "python": PY, "poll_interval": 0.5,
                 "heartbeat_interval": HEARTBEAT, "pilot_idle_timeout": 600.0,
                 "wall_time_margin": 1.0, "pilot_drain_timeout": 2.0,
                 "launcher": "mpiexec"},
        "scheduler": {}, "job": {"wall_time_min": 10}, "limits": {}, "autoscale": {},
    }
    for sec, values in (sections or {}).items():
        base.setdefault(sec, {}).update(values)
    text = []
    for sec, values in base.items():
        text.append(f"[{sec}]")
        text += [f"{k} = {_toml(v)}" for k, v in values.items()]
    (directory / "settings.toml").write_text("\n".join(text) + "\n")
    (directory / "job-template.sh").write_text(DEFAULT_TEMPLATE)
    write_token(directory / "token", token)
    return directory


@asynccontextmanager
async def cluster(tmp: Path, db: str | None = None) -> AsyncIterator[Cluster]:
    """A :class:`Cluster` in ``tmp``; ``db`` names its store (default: the ``store``
    fixture's, else a SQLite file in ``tmp``)."""
    async with anyio.create_task_group() as tg:
        c = Cluster(tmp, tg, db)
        try:
            yield c
        finally:
            with anyio.CancelScope(shield=True):
                await c.stop()
            tg.cancel_scope.cancel()


async def until(check: Callable[[], Awaitable[bool]], *, timeout: float = 30,
                what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds saying ``what``."""
    try:
        with anyio.fail_after(timeout):
            while True:
                if await check():
                    return
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


# A task script for MPI tests: each rank writes its own file in the task's
# work directory. Hydra forwards the ranks' stdout streams concurrently, so
# their lines on the task's stdout may interleave mid-line.
RANK_REPORT = 'echo "rank $PMI_RANK of $PMI_SIZE" > rank.$PMI_RANK'


def ranks_reported(site_dir: Path, task: TaskInfo) -> list[str]:
    """What each rank of a ``RANK_REPORT`` task wrote, in rank order.

    The task's directory is under the work root `write_site` gave the site.
    """
    wd = site_dir / "work" / (task.workdir or f"tasks/{task.id}")
    return [p.read_text() for p in sorted(wd.glob("rank.*"))]
