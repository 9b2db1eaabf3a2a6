"""The chaos workload: a controller, a site agent with a batch job on the local scheduler,
pilots, and many short command tasks that record each execution in a ledger.

Every process is real and separate (tests/integration/procs.py). A :class:`World`
is what a scenario drives: it starts processes (optionally inside a network
namespace), submits tasks, waits until the store shows a given number of them
finished (the point at which a fault is injected), and reads back what the
invariant checker and the report need.
"""

from __future__ import annotations

import json
import random
import shlex
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

import tidewater
from tidewater import Client, Task, TaskSpec

from ..integration.procs import HEARTBEAT, PY, Cluster, Proc, cluster, until, write_site
from .invariants import EVENT_COLUMNS, TASK_COLUMNS, Verdict, check, read_ledger
from .report import Row

SITE = "hpc"
FINAL_SQL = "('JOB_FINISHED', 'FAILED', 'KILLED')"
RECORD = "echo $TIDEWATER_TASK_ID $TIDEWATER_ATTEMPT >> {ledger}"
"""First thing every chaos task does: note this execution in the ledger."""


def rng_for(seed: int, scenario: str) -> random.Random:
    """The scenario's own random stream: the same seed replays the same choices."""
    return random.Random(f"{seed}:{scenario}")


@dataclass
class Event:
    task_id: int
    to_state: str
    time: float
    data: dict[str, Any]


@dataclass
class World:
    c: Cluster
    client: Client
    tmp: Path
    site_token: str
    rng: random.Random
    row: Row
    ledger: Path
    agent: Proc | None = None
    agent_prefix: list[str] = field(default_factory=list)
    agent_url: str = ""
    job_id: int = 0
    t_start: float = field(default_factory=time.monotonic)

    # ---------------------------------------------------------------- processes

    async def start_pilot(self, pilot_id: str, *, cores: int = 2, prefix: Sequence[str] = (),
                          url: str = "", workdir: Path | None = None,
                          env: dict[str, str] | None = None) -> Proc:
        """A pilot process (under ``prefix``, e.g. ``ip netns exec NS``; ``env`` added to its
        environment, e.g. TIDEWATER_RELAY); returns once connected."""
        args = [*prefix, PY, "-m", "tidewater", "pilot", "--cores", str(cores), "--prefetch", "2",
                "--workdir", str(workdir or self.tmp / "work" / pilot_id), "--pilot-id",
                pilot_id, "--heartbeat", str(HEARTBEAT)]
        env = {**self.c.env, "TIDEWATER_TOKEN": self.site_token, **(env or {})}
        if url:
            env["TIDEWATER_URL"] = url
        proc = await anyio.open_process(args, env=env, stdout=None)
        p = Proc(f"pilot {pilot_id}", proc, self.c.tg)
        self.c.pilots[pilot_id] = p
        await p.wait_for(f"pilot {pilot_id} connected")
        return p

    async def start_agent(self, *, prefix: Sequence[str] = (), url: str = "",
                          sections: dict[str, dict[str, object]] | None = None) -> Proc:
        """`tidewater site start` on the local scheduler (the first call writes the site,
        with ``sections`` added to its settings)."""
        site_dir = self.tmp / "site"
        if not site_dir.exists():
            self.agent_prefix, self.agent_url = list(prefix), url or self.c.url
            write_site(site_dir, name=SITE, scheduler="local", url=self.agent_url,
                       token=self.site_token,
                       sections={"scheduler": {"state_dir": str(self.tmp / "local-jobs")},
                                 **(sections or {})})
            self.c.site_dirs.append((site_dir, {}))
        proc = await anyio.open_process(
            [*self.agent_prefix, PY, "-m", "tidewater", "site", "start", str(site_dir)],
            env=self.c.env, stdout=None)
        name = f"agent-{len([k for k in self.c.pilots if k.startswith('agent')])}"
        self.agent = Proc(name, proc, self.c.tg)
        self.c.pilots[name] = self.agent
        await self.agent.wait_for("connected to")
        return self.agent

    async def start_job(self) -> str:
        """A one-node batch job through the agent; returns its pilot's id once it serves."""
        job = await self.client.queue_submit(SITE, nodes=1, wall_time_min=10)
        self.job_id = job.id
        await until(self._job_serves, what="the batch job's pilot")
        (pid,) = self.job_pilots()
        return pid

    async def _job_serves(self) -> bool:
        return (await self.job()).pilots == 1 and len(self.job_pilots()) == 1

    async def job(self) -> tidewater.proto.BatchJobInfo:
        (j,) = [j for j in await self.client.queue(include_finished=True) if j.id == self.job_id]
        return j

    def job_pilots(self) -> list[str]:
        return [str(r[0]) for r in self.rows("SELECT pilot_id FROM pilots WHERE batch_job = ?",
                                               (self.job_id,))]

    # ---------------------------------------------------------------- work

    async def submit(self, specs: list[TaskSpec]) -> list[Task]:
        tasks = await self.client.submit_many(specs)
        self.row.tasks += len(tasks)
        return tasks

    def work(self, n: int, sleeps: Sequence[float] = (0.01, 0.02, 0.05)) -> list[TaskSpec]:
        return [TaskSpec(app="work", site=SITE, params={"s": str(self.rng.choice(sleeps))})
                for _ in range(n)]

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        return self.c.rows(sql, params)

    def finished(self) -> int:
        return int(self.rows(f"SELECT count(*) FROM tasks WHERE state IN {FINAL_SQL}")[0][0])

    async def reach(self, n: int, timeout: float = 60) -> None:
        """Wait until the store shows ``n`` tasks finished."""
        async def done() -> bool:
            return self.finished() >= n

        await until(done, timeout=timeout, what=f"{n} tasks finished")

    async def settle(self, tasks: Sequence[Task], timeout: float = 120) -> None:
        """Wait until the client has every result and the store holds nothing non-final."""
        with anyio.fail_after(timeout):
            await self.client.wait(tasks)

        async def quiet() -> bool:
            return not self.c.rows(f"SELECT id FROM tasks WHERE state NOT IN {FINAL_SQL}")

        await until(quiet, timeout=30, what="nothing left non-final in the store")

    def running_on(self, pilots: set[str]) -> set[int]:
        return {int(r[0]) for r in self.rows("SELECT id, pilot FROM tasks WHERE state = "
                                               "'RUNNING'") if r[1] in pilots}

    # ---------------------------------------------------------------- reading back

    def events(self) -> list[Event]:
        out = []
        for tid, to, t, raw in self.rows("SELECT task_id, to_state, time, data FROM events "
                                           "ORDER BY id"):
            data = raw if isinstance(raw, dict) else json.loads(raw) if raw else {}
            out.append(Event(int(tid), str(to), float(t), data))
        return out

    def losses(self, pilots: set[str], since: float) -> list[Event]:
        """RUN_TIMEOUT events after ``since`` of attempts that were running on ``pilots``."""
        on: dict[int, str] = {}
        out = []
        for e in self.events():
            if e.to_state == "RUNNING":
                on[e.task_id] = str(e.data.get("pilot", ""))
            elif e.to_state == "RUN_TIMEOUT" and e.time >= since and on.get(e.task_id) in pilots:
                out.append(e)
        return out

    def finished_at(self, task_ids: set[int]) -> list[float]:
        return [e.time for e in self.events()
                if e.to_state == "JOB_FINISHED" and e.task_id in task_ids]

    def verdict(self, tasks: Sequence[Task], *, kept: Iterable[int] = ()) -> Verdict:
        """Check the invariants (invariants.py) now; the counts go into the report row."""
        v = check([t.id for t in tasks],
                  self.c.rows(f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY id"),
                  self.c.rows(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY id"),
                  read_ledger(self.ledger), kept=kept)
        self.row.retried, self.row.lost = v.retried, v.lost
        self.row.unrecorded_dups = v.unrecorded + v.duplicates
        return v

    def finish(self) -> None:
        self.row.runtime = time.monotonic() - self.t_start


@asynccontextmanager
async def world(tmp: Path, scenario: str, seed: int, report: list[Row], *,
                controller_args: Sequence[str] = (), tls: Path | None = None,
                ) -> AsyncIterator[World]:
    """A controller on the test's store with the chaos apps on site ``hpc``; the scenario's
    row goes into ``report`` when it ends (also on failure, with what was measured).

    ``tls``: a directory holding ``server.pem``, ``server.key`` and ``ca.pem`` (the
    certificate must name 127.0.0.1): the controller serves wss://, and the client and
    every process started with the cluster's environment verify it against ``ca.pem``."""
    t0 = time.monotonic()
    ledger = tmp / "ledger"  # outside every work directory
    rec = RECORD.format(ledger=shlex.quote(str(ledger)))
    async with cluster(tmp) as c:
        ca = None
        if tls is not None:
            ca = tls / "ca.pem"
            c.url = f"wss://127.0.0.1:{c.port}"
            c.env.update(TIDEWATER_URL=c.url, TIDEWATER_CA_FILE=str(ca))
            controller_args = (*controller_args, "--tls-cert", str(tls / "server.pem"),
                               "--tls-key", str(tls / "server.key"))
        await c.start_controller(*controller_args)
        row = Row(scenario, "postgres" if c.on_postgres else "sqlite", seed)
        token = await c.add_user("chaos")
        async with tidewater.connect(c.url, token=token, ca_file=ca) as client:
            _site, site_token = await client.add_site(SITE)
            await client.add_app(SITE, "work", f"{rec}; sleep {{s}}")
            await client.add_app(SITE, "hang", f"{rec}; exec sleep 600")
            await client.add_app(SITE, "flood", f"{rec}; head -c {{n}} /dev/zero | tr '\\0' x; "
                                 "echo; echo END-OF-FLOOD")
            w = World(c, client, tmp, site_token, rng_for(seed, scenario), row, ledger,
                      t_start=t0)
            try:
                yield w
            finally:
                w.finish()
                report.append(row)
