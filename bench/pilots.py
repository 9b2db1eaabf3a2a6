"""2,000 pilots on one controller: dispatch latency under load, idle CPU, reconnect after restart.

    .venv/bin/python bench/pilots.py [--pilots 2000] [--procs 2] [--repeats 3] [--quick]

A controller process (SQLite store, ``bench/common.py``'s ``cluster``), a
site agent and ``--pilots`` simulated pilots in ``--procs`` load-generator
processes. The agent is a real :class:`~tidewater.transport.Session` with
the site token (so the controller sends the site's Demand every round, as
for any site with an agent); the user asks for ``--jobs`` batch jobs and
the agent hands out their pilot tokens, so every pilot connects with the
pilot token of its batch job, as inside a real allocation.

A simulated pilot is a real pilot without processes: its link is the
project's :class:`~tidewater.transport.Session` (Hello with its held tasks
and credit, heartbeat at the controller's interval, websocket keepalive
pings, outbox resent after a reconnect, :func:`~tidewater.transport.backoff`
between attempts) and its bookkeeping the pilot's own
:class:`~tidewater.pilot.book.PilotBook` (credit given back as tasks end,
``started`` and ``done`` reports in sequenced Reports frames, kept until
the controller's Ack). A task "runs" for ``--task-time`` seconds (0: done
at once) and succeeds. At start-up the pilots connect at most
``--connect-concurrency`` at a time per process (a batch job's pilots do
not all start in the same millisecond); after a restart they come back on
their own backoff, nothing spreads them but its jitter.

Measured, each ``--repeats`` times:

* idle: controller CPU (from ``/proc``) over ``--idle`` seconds with every
  pilot connected and heartbeating, nothing to run;
* load: ``--rate`` submissions per second for ``--duration`` seconds (each
  ``client.submit`` then ``task.result()``, open loop): **dispatch** =
  submit called -> the pilot received the RunTasks (its wall clock; same
  machine), **round trip** = submit called -> result on the client;
* restart: SIGTERM the controller, start it again on the same store and
  port, and time until every pilot is welcomed again (from the new
  controller listening); the spread of those reconnections in 100 ms
  buckets (the busiest bucket, the buckets used) shows whether they came
  back spread by the backoff's jitter or in a stampede. Then one task is
  run, to see dispatch resume (the site is held until every pilot that was
  connected is back: ``controller/pilots.py``, "the restart hold").

Each generator process writes what its pilots saw (welcomes and RunTasks
receipts, wall clock) to an events file the benchmark reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PY,
    SITE,
    Cluster,
    Spread,
    cluster,
    cpu_times,
    machine_line,
    median,
    ms,
    pct,
    table,
)

from tidewater import proto as P  # noqa: E402
from tidewater.config import Limits, Timeouts  # noqa: E402
from tidewater.pilot.book import Command, PilotBook, Start, Stop  # noqa: E402
from tidewater.pilot.nodes import Node  # noqa: E402
from tidewater.transport import Link, LinkOptions, Session  # noqa: E402

log = logging.getLogger("bench.pilots")


def raise_fd_limit(need: int) -> tuple[int, int]:
    """Raise this process's soft limit on open files to ``need`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# =========================================================================== generator


class Events:
    """What the pilots of one generator saw, appended to a file every 100 ms."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "a")  # flushed every 100 ms; closed with the process
        self._lines: list[str] = []

    def add(self, kind: str, key: int) -> None:
        self._lines.append(f"{kind} {key} {time.time():.6f}\n")

    async def run(self) -> None:
        while True:
            await anyio.sleep(0.1)
            self.flush()

    def flush(self) -> None:
        if self._lines:
            self._f.write("".join(self._lines))
            self._f.flush()
            self._lines.clear()


@dataclass
class SimConfig:
    url: str
    cores: int
    prefetch: int
    task_time: float
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)


class SimPilot:
    """A pilot that runs no process: the real link and book, tasks that take ``task_time``."""

    def __init__(self, index: int, token: str, batch_job: int, cfg: SimConfig, events: Events,
                 tg: Any) -> None:
        self.index = index
        self.pilot_id = f"sim-{index:05d}"
        self.token = token
        self.batch_job = batch_job
        self.cfg = cfg
        self.events = events
        self._tg = tg
        self.book = PilotBook([Node(self.pilot_id, cfg.cores, 0)], prefetch=cfg.prefetch)
        self._scopes: dict[tuple[int, int], anyio.CancelScope] = {}
        t = cfg.timeouts
        # As tidewater.pilot.main.Pilot builds its session.
        self.session = Session(
            cfg.url, role="pilot", hello=self._hello, decoder=P.to_pilot_decoder,
            on_message=self._received, on_welcome=self._welcomed,
            outgoing=lambda: self.book.outgoing(cfg.limits.max_frame_bytes // 2),
            heartbeat=lambda: P.Heartbeat(time=time.time(), running=list(self.book.running)),
            outbox=self.book.outbox, timeouts=t, log=log,
            options=LinkOptions(max_size=cfg.limits.max_frame_bytes,
                                ping_interval=t.heartbeat_interval,
                                ping_timeout=t.lease_timeout),
        )

    def _hello(self) -> P.Hello:
        self.events.add("A", self.index)  # the Session builds a Hello for every attempt
        credit_cores, credit_gpus = self.book.hello_credit()
        return P.Hello(
            role="pilot", proto_version=P.PROTO_VERSION, token=self.token, name="pilot",
            site=SITE, pilot_id=self.pilot_id, hostname=self.pilot_id,
            cores=self.book.total_cores, gpus=0, credit_cores=credit_cores,
            credit_gpus=credit_gpus, held=self.book.held(), batch_job=self.batch_job,
            process_started_at=time.time(),
        )

    async def _welcomed(self, link: Link, welcome: P.Welcome) -> None:
        self.events.add("W", self.index)

    def _received(self, msg: P.ControllerToPilot) -> None:
        match msg:
            case P.RunTasks():
                for a in msg.tasks:
                    self.events.add("R", a.task_id)
                self._execute(self.book.run_tasks(msg.tasks, time.time()))
            case P.Kill():
                self._execute(self.book.kill(msg.tasks, msg.reason))
            case P.Ack():
                self.book.ack(msg.seq)
            case _:
                pass

    def _execute(self, commands: list[Command]) -> None:
        while commands:
            more: list[Command] = []
            for c in commands:
                match c:
                    case Start():
                        key = (c.assignment.task_id, c.assignment.attempt)
                        self.book.started(key, time.time())
                        if self.cfg.task_time <= 0:
                            more += self._finish(key, "done")
                        else:
                            scope = self._scopes[key] = anyio.CancelScope()
                            self._tg.start_soon(self._run, key, scope)
                    case Stop():
                        if (running := self._scopes.get(c.key)) is not None:
                            running.cancel()
            commands = more
        self.session.wake()

    def _finish(self, key: tuple[int, int], kind: str) -> list[Command]:
        report = None if kind == "silent" else P.Report(
            task_id=key[0], attempt=key[1], kind=kind,  # type: ignore[arg-type]
            time=time.time(), exit_code=0 if kind == "done" else None)
        return self.book.ended(key, report, time.time())

    async def _run(self, key: tuple[int, int], scope: anyio.CancelScope) -> None:
        kind = "killed"
        with scope:
            await anyio.sleep(self.cfg.task_time)
            kind = "done"
        self._scopes.pop(key, None)
        self._execute(self._finish(key, kind))


async def generate(a: argparse.Namespace, spec: dict[str, Any]) -> None:
    """One load-generator process: its share of the pilots, until it is terminated."""
    raise_fd_limit(a.count + 256)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = SimConfig(url=spec["url"], cores=a.cores, prefetch=a.prefetch, task_time=a.task_time)
    events = Events(Path(a.events))
    async with anyio.create_task_group() as tg:
        tg.start_soon(events.run)
        sims = [SimPilot(i, token, job, cfg, events, tg)
                for i, (job, token) in enumerate(spec["pilots"])
                if a.first <= i < a.first + a.count]
        gate = anyio.Semaphore(a.connect_concurrency)

        async def launch(sim: SimPilot) -> None:
            async with gate:
                await tg.start(sim.session.run)

        for sim in sims:
            tg.start_soon(launch, sim)


# =========================================================================== benchmark


class Agent:
    """The site's agent, reduced to what this benchmark needs: pilot tokens, and an agent
    connected (so the controller computes and sends the site's Demand every round)."""

    def __init__(self, url: str, site_token: str) -> None:
        self.tokens: dict[int, str] = {}
        self.demands = 0
        self.changed = anyio.Event()
        t = Timeouts()
        self.session = Session(
            url, role="agent", hello=lambda: P.Hello(
                role="agent", proto_version=P.PROTO_VERSION, token=site_token,
                name="bench-agent", site=SITE),
            decoder=P.to_agent_decoder, on_message=self._received,
            heartbeat=lambda: P.Ping(time=time.time()), heartbeat_interval=t.heartbeat_interval,
            timeouts=t, log=log,
            options=LinkOptions(ping_interval=t.heartbeat_interval, ping_timeout=t.lease_timeout),
        )

    def _received(self, msg: P.ControllerToAgent) -> None:
        match msg:
            case P.StartJob(job=aj):
                self._token(aj)
            case P.Jobs(jobs=jobs):
                for aj in jobs:
                    self._token(aj)
            case P.Demand():
                self.demands += 1
            case _:
                pass

    def _token(self, aj: P.AgentJob) -> None:
        if aj.pilot_token:
            self.tokens[aj.job.id] = aj.pilot_token
            self.changed.set()


class Tail:
    """New lines of the generators' events files, parsed."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._offsets = [0] * len(paths)
        self.welcomes: list[tuple[int, float]] = []
        self.attempts: list[tuple[int, float]] = []
        self.received: dict[int, float] = {}

    def poll(self) -> None:
        for k, path in enumerate(self.paths):
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets[k])
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            self._offsets[k] += end
            for line in data[:end].decode().splitlines():
                kind, key, at = line.split()
                if kind == "W":
                    self.welcomes.append((int(key), float(at)))
                elif kind == "A":
                    self.attempts.append((int(key), float(at)))
                elif kind == "R":
                    self.received.setdefault(int(key), float(at))

    def attempts_since(self, since: float) -> dict[int, list[float]]:
        """Pilot -> its connection attempts at or after ``since``."""
        out: dict[int, list[float]] = {}
        for pilot, at in self.attempts:
            if at >= since:
                out.setdefault(pilot, []).append(at)
        return out

    def welcomed_since(self, since: float) -> dict[int, float]:
        """Pilot -> its first welcome at or after ``since``."""
        out: dict[int, float] = {}
        for pilot, at in self.welcomes:
            if at >= since and pilot not in out:
                out[pilot] = at
        return out


async def connected_pilots(c: Cluster) -> int:
    info = {s.name: s for s in await c.client.sites()}.get(SITE)
    return info.pilots if info else 0


async def wait_welcomed(tail: Tail, n: int, since: float, timeout: float,
                        c: Cluster) -> dict[int, float]:
    """Until every pilot was welcomed since ``since`` and the controller counts ``n``."""
    deadline = time.monotonic() + timeout
    while True:
        tail.poll()
        got = tail.welcomed_since(since)
        for p in c.others:
            if p.poll() is not None:
                raise RuntimeError(f"a load generator exited with code {p.returncode}; "
                                   f"see {c.base}")
        if len(got) >= n and await connected_pilots(c) >= n:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(got)} of {n} pilots welcomed after {timeout:g}s "
                               f"(controller: {await connected_pilots(c)})")
        await anyio.sleep(0.1)


def machine_busy() -> float:
    """CPU seconds every process of the machine has used (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def listen_overflows() -> int:
    """Connections this machine's listening sockets dropped because their queue was full
    (TcpExt ListenOverflows in /proc/net/netstat; -1 where unreadable)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", -1))
    return -1


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        t = cpu_times(pid)
        if t is not None:
            total += t[0] + t[1]
    return total


@dataclass
class Idle:
    controller: float  # CPU seconds per second
    generators: float
    machine: float  # every process of the machine (other users' too)


@dataclass
class Load:
    dispatch: list[float]
    rtt: list[float]
    acked: list[float]  # submit called -> submit returned (stored and acknowledged)
    queued: list[float]  # the controller took the Submit -> the pilot received the task
    submitted: int
    missing: int  # RunTasks receipt never seen
    failed: int
    controller: float  # CPU seconds per second during the stream
    machine: float
    demands: int  # Demand frames the agent got during the stream


@dataclass
class Restart:
    down: float  # SIGTERM -> exited
    all_back: float  # listening -> last pilot welcomed
    p50: float
    p99: float
    busiest: int  # most welcomes in one 100 ms bucket
    buckets: int  # 100 ms buckets with at least one welcome
    span: float  # first -> last welcome
    first_task: float  # listening -> a task's result on the client
    hist: list[int]  # welcomes per 100 ms since listening
    arrive_busiest: int  # most successful attempts begun in one 100 ms bucket
    arrive_buckets: int
    arrive_span: float  # first -> last successful attempt begun
    arrive_hist: list[int]  # successful attempts begun per 100 ms since listening
    handshake_p50: float  # successful attempt begun -> welcomed
    handshake_p99: float
    attempts: float  # attempts per pilot (median) since SIGTERM
    generators: float  # the load generators' CPU, cores, SIGTERM -> all back
    overflows: int  # connections dropped by a full listen queue (machine-wide)
    controller_ms: float  # the new controller's CPU per pilot, listening -> all back


async def idle_run(c: Cluster, gens: list[int], seconds: float) -> Idle:
    t0, c0, g0, m0 = time.monotonic(), cpu_of([c.server.pid]), cpu_of(gens), machine_busy()
    await anyio.sleep(seconds)
    wall = time.monotonic() - t0
    return Idle((cpu_of([c.server.pid]) - c0) / wall, (cpu_of(gens) - g0) / wall,
                (machine_busy() - m0) / wall)


async def load_run(c: Cluster, tail: Tail, agent: Agent, rate: float, duration: float) -> Load:
    sent: dict[int, float] = {}
    rtt: dict[int, float] = {}
    acked: list[float] = []
    created: dict[int, float] = {}
    failed = 0
    n = max(1, int(rate * duration))

    async def one() -> None:
        nonlocal failed
        t0 = time.time()
        task = await c.client.submit("true", site=SITE)
        acked.append(time.time() - t0)
        sent[task.id] = t0
        info = await task.result(timeout=120)
        rtt[task.id] = time.time() - t0
        created[task.id] = info.created_at
        if info.state != "JOB_FINISHED":
            failed += 1

    d0, c0, w0, m0 = agent.demands, cpu_of([c.server.pid]), time.monotonic(), machine_busy()
    async with anyio.create_task_group() as tg:
        start = anyio.current_time()
        for k in range(n):
            await anyio.sleep_until(start + k / rate)
            tg.start_soon(one)
    wall = time.monotonic() - w0
    cpu = (cpu_of([c.server.pid]) - c0) / wall
    machine = (machine_busy() - m0) / wall
    await anyio.sleep(0.3)  # the generators' events are flushed every 100 ms
    tail.poll()
    dispatch = [tail.received[i] - t for i, t in sent.items() if i in tail.received]
    queued = [tail.received[i] - t for i, t in created.items() if i in tail.received]
    return Load(dispatch=dispatch, rtt=list(rtt.values()), acked=acked, queued=queued,
                submitted=n,
                missing=sum(1 for i in sent if i not in tail.received), failed=failed,
                controller=cpu, machine=machine, demands=agent.demands - d0)


async def restart_run(c: Cluster, tail: Tail, gens: list[int], n: int, timeout: float
                      ) -> Restart:
    t_term, g0, w0, o0 = time.time(), cpu_of(gens), time.monotonic(), listen_overflows()
    exited, listening = await c.restart_server()
    c0 = cpu_of([c.server.pid])
    back = await wait_welcomed(tail, n, t_term, timeout, c)
    controller_ms = 1000 * (cpu_of([c.server.pid]) - c0) / n
    generators = (cpu_of(gens) - g0) / (time.monotonic() - w0)
    overflows = listen_overflows() - o0
    times = sorted(back.values())
    rel = [t - listening for t in times]
    tried = tail.attempts_since(t_term)
    # The attempt that succeeded: each pilot's last one begun before its welcome.
    won = sorted(max(a for a in tried[p] if a <= w) for p, w in back.items())
    shakes = [w - max(a for a in tried[p] if a <= w) for p, w in back.items()]

    def per_100ms(ts: list[float]) -> tuple[Counter[int], list[int]]:
        buckets = Counter(math.floor(t / 0.1) for t in ts)
        since = Counter(max(0, math.floor((t - listening) / 0.1)) for t in ts)
        return buckets, [since.get(b, 0) for b in range(max(since) + 1)]

    buckets, hist = per_100ms(times)
    arrive, arrive_hist = per_100ms(won)
    task = await c.client.submit("true", site=SITE)
    await task.result(timeout=120)
    first_task = time.time() - listening
    return Restart(
        down=exited - t_term, all_back=max(rel), p50=pct(rel, 0.5), p99=pct(rel, 0.99),
        busiest=max(buckets.values()), buckets=len(buckets), span=times[-1] - times[0],
        first_task=first_task, hist=hist, arrive_busiest=max(arrive.values()),
        arrive_buckets=len(arrive), arrive_span=won[-1] - won[0], arrive_hist=arrive_hist,
        handshake_p50=pct(shakes, 0.5), handshake_p99=pct(shakes, 0.99),
        attempts=median([float(len(v)) for v in tried.values()]), generators=generators,
        overflows=overflows, controller_ms=controller_ms)


async def measure(a: argparse.Namespace) -> None:
    n = a.pilots
    env = dict(os.environ)
    if a.controller_pythonpath:
        env["PYTHONPATH"] = a.controller_pythonpath
    async with cluster(pilots=0, server_env=env, startup_timeout=60, keep=a.keep) as c:
        print(f"controller pid {c.server.pid}, {c.url}, store {c.db}", file=sys.stderr)
        agent = Agent(c.url, c.site_token)
        async with anyio.create_task_group() as tg:
            await tg.start(agent.session.run)
            per_job = -(-n // a.jobs)
            jobs = [await c.client.queue_submit(SITE, nodes=per_job) for _ in range(a.jobs)]
            with anyio.fail_after(30):
                while any(j.id not in agent.tokens for j in jobs):
                    await agent.changed.wait()
                    agent.changed = anyio.Event()
            spec = {"url": c.url, "pilots": [
                (jobs[i // per_job].id, agent.tokens[jobs[i // per_job].id]) for i in range(n)]}
            pilot_file = c.base / "pilots.json"
            pilot_file.write_text(json.dumps(spec))
            share = -(-n // a.procs)
            paths, gens = [], []
            t_start = time.time()
            for k in range(a.procs):
                first, count = k * share, min(share, n - k * share)
                if count <= 0:
                    break
                events = c.base / f"gen{k}.events"
                paths.append(events)
                p = c.spawn([PY, __file__, "--generate", "--pilot-file", str(pilot_file),
                             "--first", str(first), "--count", str(count),
                             "--events", str(events), "--cores", str(a.cores),
                             "--prefetch", str(a.prefetch), "--task-time", str(a.task_time),
                             "--connect-concurrency", str(a.connect_concurrency)],
                            c.base / f"gen{k}.log")
                gens.append(p.pid)
            tail = Tail(paths)
            await wait_welcomed(tail, n, t_start, a.connect_timeout, c)
            connect_all = max(tail.welcomed_since(t_start).values()) - t_start
            print(f"{n} pilots connected in {connect_all:.1f} s "
                  f"(at most {a.connect_concurrency} connecting at once per process)",
                  file=sys.stderr)
            await anyio.sleep(a.settle)

            idles: list[Idle] = []
            loads: list[Load] = []
            restarts: list[Restart] = []
            for r in range(a.repeats):
                idles.append(await idle_run(c, gens, a.idle))
                print(f"[{r + 1}] idle: controller {idles[-1].controller:.3f} cores",
                      file=sys.stderr)
                loads.append(await load_run(c, tail, agent, a.rate, a.duration))
                lo = loads[-1]
                print(f"[{r + 1}] load: dispatch p50 {1000 * median(lo.dispatch):.2f} ms "
                      f"p99 {1000 * pct(lo.dispatch, 0.99):.2f} ms", file=sys.stderr)
                if not a.no_restart:
                    restarts.append(await restart_run(c, tail, gens, n, a.connect_timeout))
                    print(f"[{r + 1}] restart: all back {restarts[-1].all_back:.2f} s",
                          file=sys.stderr)
                    await anyio.sleep(a.settle)
            tg.cancel_scope.cancel()
    report(a, connect_all, idles, loads, restarts)


def report(a: argparse.Namespace, connect_all: float, idles: list[Idle], loads: list[Load],
           restarts: list[Restart]) -> None:
    def f(values: list[float], digits: int = 2, unit: str = "") -> str:
        return Spread.of(values).fmt(digits, unit)

    print(machine_line())
    print(f"{a.pilots} simulated pilots ({a.cores} core, prefetch {a.prefetch}) in {a.procs} "
          f"processes, {a.jobs} batch jobs, heartbeat {Timeouts().heartbeat_interval:g} s; "
          f"tasks run {a.task_time:g} s; SQLite store; RLIMIT_NOFILE soft "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    print(f"start-up: all {a.pilots} connected {connect_all:.1f} s after the generators "
          f"started (at most {a.connect_concurrency} connecting at once per process)")
    print()
    rows = [
        ["idle: controller CPU, cores", f([i.controller for i in idles], 3)],
        ["idle: load generators' CPU, cores", f([i.generators for i in idles], 3)],
        ["idle: the whole machine's CPU, cores", f([i.machine for i in idles], 2)],
        ["load: dispatch p50, ms", f([1000 * median(x.dispatch) for x in loads])],
        ["load: dispatch p99, ms", f([1000 * pct(x.dispatch, 0.99) for x in loads])],
        ["load: submit acknowledged p50, ms", f([1000 * median(x.acked) for x in loads])],
        ["load: submit acknowledged p99, ms", f([1000 * pct(x.acked, 0.99) for x in loads])],
        ["load: Submit taken -> RunTasks p50, ms", f([1000 * median(x.queued) for x in loads])],
        ["load: Submit taken -> RunTasks p99, ms", f([1000 * pct(x.queued, 0.99) for x in loads])],
        ["load: round trip p50, ms", f([1000 * median(x.rtt) for x in loads])],
        ["load: round trip p99, ms", f([1000 * pct(x.rtt, 0.99) for x in loads])],
        ["load: controller CPU, cores", f([x.controller for x in loads], 3)],
        ["load: the whole machine's CPU, cores", f([x.machine for x in loads], 2)],
        ["load: Demand frames to the agent", f([float(x.demands) for x in loads], 0)],
    ]
    if restarts:
        rows += [
            ["restart: SIGTERM -> exited, s", f([r.down for r in restarts])],
            ["restart: listening -> all pilots back, s", f([r.all_back for r in restarts])],
            ["restart: listening -> pilot back p50, s", f([r.p50 for r in restarts])],
            ["restart: listening -> pilot back p99, s", f([r.p99 for r in restarts])],
            ["restart: first -> last pilot back, s", f([r.span for r in restarts])],
            ["restart: most pilots back in one 100 ms", f([float(r.busiest) for r in restarts],
                                                          0)],
            ["restart: 100 ms buckets with a pilot back", f([float(r.buckets) for r in restarts],
                                                            0)],
            ["restart: listening -> a task's result, s", f([r.first_task for r in restarts])],
            ["restart: attempts per pilot (median)", f([r.attempts for r in restarts], 0)],
            ["restart: first -> last successful attempt begun, s",
             f([r.arrive_span for r in restarts])],
            ["restart: most successful attempts begun in one 100 ms",
             f([float(r.arrive_busiest) for r in restarts], 0)],
            ["restart: 100 ms buckets with a successful attempt begun",
             f([float(r.arrive_buckets) for r in restarts], 0)],
            ["restart: successful attempt begun -> welcomed p50, s",
             f([r.handshake_p50 for r in restarts])],
            ["restart: successful attempt begun -> welcomed p99, s",
             f([r.handshake_p99 for r in restarts])],
            ["restart: controller CPU per pilot back, ms",
             f([r.controller_ms for r in restarts], 2)],
            ["restart: load generators' CPU, cores", f([r.generators for r in restarts], 2)],
            ["restart: connections dropped, listen queue full (machine)",
             f([float(r.overflows) for r in restarts], 0)],
        ]
    print(table(f"{len(idles)} repeats: median [min-max]; idle {a.idle:g} s; load "
                f"{a.rate:g} tasks/s for {a.duration:g} s", ["figure", "value"], rows))
    for k, r in enumerate(restarts, 1):
        print(f"restart {k}, per 100 ms since the new controller listened:")
        print("  successful attempts begun: " + " ".join(str(x) for x in r.arrive_hist))
        print("  pilots welcomed:           " + " ".join(str(x) for x in r.hist))
    total = sum(x.submitted for x in loads)
    missing = sum(x.missing for x in loads)
    failed = sum(x.failed for x in loads)
    pooled = [d for x in loads for d in x.dispatch]
    print(f"dispatch pooled over {len(pooled)} tasks: p50 {median(ms(pooled)):.2f} ms, "
          f"p99 {pct(ms(pooled), 0.99):.2f} ms, max {max(ms(pooled), default=math.nan):.2f} ms")
    if missing or failed:
        print(f"WARNING: of {total} tasks, {missing} never seen arriving at a pilot, "
              f"{failed} did not finish")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pilots", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--jobs", type=int, default=20, help="batch jobs the pilots belong to")
    ap.add_argument("--cores", type=int, default=1, help="cores per simulated pilot")
    ap.add_argument("--prefetch", type=int, default=2, help="as tidewater pilot --prefetch")
    ap.add_argument("--task-time", type=float, default=0.0, help="seconds a task 'runs'")
    ap.add_argument("--repeats", "-r", type=int, default=3)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured")
    ap.add_argument("--rate", type=float, default=50.0, help="submissions per second")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of submissions")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds waited after the pilots connect, before measuring")
    ap.add_argument("--connect-concurrency", type=int, default=100,
                    help="pilots connecting at once per generator at start-up")
    ap.add_argument("--connect-timeout", type=float, default=180.0)
    ap.add_argument("--no-restart", action="store_true", help="skip the restarts")
    ap.add_argument("--keep", action="store_true",
                    help="keep the store, logs and the generators' events files")
    ap.add_argument("--quick", action="store_true",
                    help="200 pilots, 2 repeats of 10 s idle and 10 s of load")
    ap.add_argument("--controller-pythonpath", default="",
                    help="PYTHONPATH of the controller process only (to measure another "
                         "version of it, e.g. an unpacked `git archive` of main's src/)")
    # The load generator (started by the benchmark itself).
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pilot-file", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--events", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate:
        anyio.run(generate, a, json.loads(Path(a.pilot_file).read_text()))
        return
    if a.quick:
        a.pilots, a.repeats, a.idle, a.duration = 200, 2, 10.0, 10.0
    soft, hard = raise_fd_limit(a.pilots + 1024)
    if soft < a.pilots + 64:
        sys.exit(f"the open-files limit ({soft}, hard {hard}) is too low for {a.pilots} pilots")
    t = time.monotonic()
    anyio.run(measure, a)
    print(f"(took {time.monotonic() - t:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
