"""The pilot: holds a websocket to the controller and runs the tasks it is pushed.

Credit: at each (re)connection the pilot grants its free cores and GPUs
plus ``prefetch`` cores' worth of queued work, and after that returns the
resources of every task that ends. The controller never sends more.

Durability: reports go out in sequenced ``Reports`` frames and stay in an
outbox until the controller acknowledges them (after its commit). If the
link breaks, running tasks keep running; the pilot reconnects with backoff,
tells the controller what it holds, and resends the outbox.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from .. import codec
from .. import proto as P
from ..config import Limits, Timeouts
from ..errors import AuthError, ConfigError, TidewaterError
from ..hooks import HOOK_TIMEOUT
from ..transport import Link, backoff, is_retryable, open_link
from . import launchers
from .nodes import Node, admits
from .runner import STDERR, STDOUT, Outcome, TaskProcess, WorkdirError, tail_file, task_dir
from .taskfiles import TaskFileError, collect_outputs, write_inputs
from .workers import WorkerPool

log = logging.getLogger("tidewater.pilot")


def _process_start() -> float | None:
    """This process's start on the wall clock (~10 ms), from /proc; None without /proc."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # Seconds since boot are exact to the tick, unlike the boot time itself.
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


PROCESS_STARTED_AT = _process_start()


@dataclass
class PilotConfig:
    url: str
    token: str
    site: str = ""
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    gpus: int = 0
    prefetch: int = 2
    workdir: str = ""
    pilot_id: str = ""
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    # Inside a batch job ------------------------------------------------------
    batch_job: int = 0
    token_file: str = ""
    """Re-read at every (re)connection, so a rotated token is picked up."""
    ca_file: str = ""
    """CA certificate a ``wss://`` controller is verified against ("": system trust store)."""
    end_time: float | None = None
    """When the allocation ends (epoch seconds)."""
    wall_margin: float = 30.0
    """Take no task that cannot finish, and end what runs, this long before ``end_time``."""
    idle_timeout: float | None = None
    """Exit after this long with nothing to run (the autoscaler's pilots)."""
    launcher: str | None = None
    """MPI launcher for multi-rank and multi-node tasks (``launchers.LAUNCHERS``)."""
    head_nodes: list[Node] = field(default_factory=list)
    """Head mode: every node of the allocation; every task goes through the launcher."""
    gpu_vendor: launchers.GpuVendor = "nvidia"


@dataclass
class Running:
    a: P.Assignment
    proc: TaskProcess | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    kill_reason: str = ""
    silent: bool = False  # killed on the controller's request: no report needed
    nodes: list[tuple[int, int]] = field(default_factory=list)  # (node index, cores taken)
    gpu_ids: list[int] = field(default_factory=list)


class Pilot:
    def __init__(self, config: PilotConfig) -> None:
        if config.cores < 1 and config.gpus < 1:
            raise ConfigError("a pilot needs at least one core")
        self.cfg = config
        self.t = config.timeouts
        self.pilot_id = config.pilot_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
        self.root = Path(config.workdir or Path.home() / ".tidewater" / "work").resolve()
        if config.head_nodes:
            if not config.launcher:
                raise ConfigError("a head-mode pilot needs an MPI launcher (--launcher)")
            nodes = list(config.head_nodes)
        else:
            nodes = [Node(socket.gethostname(), config.cores, config.gpus)]
        self.nodes = nodes
        # Per node: free cores and the ids of its free GPUs.
        self.node_free: dict[int, list[int]] = {i: [n.cores] for i, n in enumerate(nodes)}
        self.node_gpus: dict[int, list[int]] = {i: list(range(n.gpus)) for i, n in enumerate(nodes)}
        self.free_cores = sum(n.cores for n in nodes)
        self.free_gpus = sum(n.gpus for n in nodes)
        self.total_cores = self.free_cores
        self.total_gpus = self.free_gpus
        self.last_busy = time.monotonic()
        self.pool: WorkerPool | None = None
        self.queue: deque[P.Assignment] = deque()
        # Keyed by (task, attempt): a new attempt may start while an old one is being killed.
        self.running: dict[tuple[int, int], Running] = {}
        self.unacked: dict[int, tuple[int, int]] = {}  # task -> (attempt, seq of final report)
        self.outbox: OrderedDict[int, bytes] = OrderedDict()
        self.seq = 0
        self.pending: list[P.Report] = []
        self.pending_credit = [0, 0]
        self.link: Link | None = None
        self.heartbeat_interval = self.t.heartbeat_interval
        self.lease_timeout = self.t.lease_timeout
        self._wake = anyio.Event()
        self._stopping = False
        self._changed = anyio.Event()  # set when running tasks end or reports are acked
        self._tg: TaskGroup | None = None
        self._base_env = dict(os.environ)
        self._base_env.pop("TIDEWATER_TOKEN", None)

    # ------------------------------------------------------------------ life

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` (or a refused token). Reports started once first connected."""
        self.root.mkdir(parents=True, exist_ok=True)
        # Warm Python workers for function tasks: started on the first one, kept between them.
        async with WorkerPool(size=max(1, self.total_cores), env=self._base_env) as pool, \
                anyio.create_task_group() as tg:
            self.pool = pool
            self._tg = tg
            await tg.start(self._connection_loop)
            if self.cfg.end_time is not None:
                tg.start_soon(self._allocation_end)
            if self.cfg.idle_timeout is not None:
                tg.start_soon(self._idle_exit, self.cfg.idle_timeout)
            task_status.started()

    def accept_until(self) -> float | None:
        """Tasks must be finished by then (None: no end known)."""
        if self.cfg.end_time is None:
            return None
        return self.cfg.end_time - self.cfg.wall_margin

    async def _allocation_end(self) -> None:
        until = self.accept_until()
        assert until is not None
        await anyio.sleep(max(0.0, until - time.time()))
        left = (self.cfg.end_time or until) - time.time()
        log.info("the batch job ends in %.0f s: stopping", left)
        await self.stop(f"the batch job's wall time ends in {max(left, 0):.0f} s")

    async def _idle_exit(self, idle: float) -> None:
        while not self._stopping:
            if self.running or self.queue:
                self.last_busy = time.monotonic()
            left = self.last_busy + idle - time.monotonic()
            if left <= 0:
                log.info("idle for %g s: exiting", idle)
                await self.stop(f"idle for {idle:g} s")
                return
            await anyio.sleep(left)

    async def stop(self, reason: str = "stopping") -> None:
        """Kill running tasks, flush their reports, say Bye, and end :meth:`run`."""
        self._stopping = True
        await self._send_quietly(P.Drain(reason=reason))
        for r in list(self.running.values()):
            r.kill_reason = reason
            r.scope.cancel()
        self.queue.clear()
        with anyio.move_on_after(self.t.close + self.t.kill_grace):
            while self.running or self.pending or (self.outbox and self.link is not None):
                self._wake.set()
                await self._changed.wait()
                self._changed = anyio.Event()
        await self._send_quietly(P.Bye(reason=reason))
        if self.link is not None:
            await self.link.aclose()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _send_quietly(self, msg: P.Msg) -> None:
        """Best effort while stopping: a broken link only means the lease will expire."""
        if self.link is not None:
            with anyio.move_on_after(1, shield=True):
                try:
                    await self.link.send(msg)
                except TidewaterError:
                    pass

    def held(self) -> list[tuple[int, int]]:
        """(task, attempt) of everything this pilot has: newest attempt per task."""
        newest: dict[int, int] = {}
        pairs = [(tid, att) for tid, (att, _seq) in self.unacked.items()]
        pairs += list(self.running)
        pairs += [(a.task_id, a.attempt) for a in self.queue]
        for tid, att in pairs:
            newest[tid] = max(att, newest.get(tid, 0))
        return list(newest.items())

    def _token(self) -> str:
        if not self.cfg.token_file:
            return self.cfg.token
        try:
            token = Path(self.cfg.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {self.cfg.token_file}: {exc}") from exc
        return token or self.cfg.token

    # ------------------------------------------------------------------ connection

    async def _connection_loop(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        delays = backoff()
        started = False
        while not self._stopping:
            try:
                queued_cores = sum(a.cores for a in self.queue)
                queued_gpus = sum(a.gpus for a in self.queue)
                hello = P.Hello(
                    role="pilot", proto_version=P.PROTO_VERSION, token=self._token(),
                    name="pilot", site=self.cfg.site, pilot_id=self.pilot_id,
                    hostname=socket.gethostname(), cores=self.total_cores, gpus=self.total_gpus,
                    credit_cores=max(0, self.free_cores + self.cfg.prefetch - queued_cores),
                    credit_gpus=max(0, self.free_gpus - queued_gpus),
                    held=self.held(), batch_job=self.cfg.batch_job,
                    nodes=[P.NodeInfo(host=n.host, cores=n.cores, gpus=n.gpus)
                           for n in self.nodes] if self.cfg.head_nodes else [],
                    end_time=self.accept_until(), process_started_at=PROCESS_STARTED_AT,
                )
                self.pending_credit = [0, 0]
                link, welcome = await open_link(
                    self.cfg.url, hello, timeout=self.t.connect,
                    max_size=self.cfg.limits.max_frame_bytes,
                    ping_interval=self.t.heartbeat_interval, ping_timeout=self.t.lease_timeout,
                    ca_file=self.cfg.ca_file or None,
                )
            except Exception as exc:
                if not is_retryable(exc):
                    log.error("pilot refused: %s", exc)
                    raise
                delay = next(delays)
                log.info("cannot reach the controller (%s); retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
                continue
            delays = backoff()
            self.heartbeat_interval = welcome.heartbeat_interval
            self.lease_timeout = welcome.lease_timeout
            log.info("pilot %s connected to %s (site %s, %d cores, %d gpus)", self.pilot_id,
                     self.cfg.url, welcome.site, self.cfg.cores, self.cfg.gpus)
            self.link = link
            if not started:
                started = True
                task_status.started()
            try:
                for frame in list(self.outbox.values()):
                    await link.send_raw(frame)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._sender, link, tg.cancel_scope)
                    tg.start_soon(self._heartbeats, link, tg.cancel_scope)
                    await self._reader(link)
                    tg.cancel_scope.cancel()
            except* TidewaterError as group:
                if not self._stopping:
                    log.warning("lost the controller: %s", group.exceptions[0])
            finally:
                self.link = None
                await link.aclose()

    async def _reader(self, link: Link) -> None:
        silence = max(self.lease_timeout, 3 * self.heartbeat_interval)
        while True:
            data = await link.recv_within(silence)
            try:
                msg = P.to_pilot_decoder.decode(data)
            except msgspec.MsgspecError:
                log.warning("ignoring a frame the pilot cannot decode")
                continue
            match msg:
                case P.RunTasks():
                    have = set(self.held())
                    for a in msg.tasks:
                        if (a.task_id, a.attempt) in have:
                            self._give_back(a)  # a duplicate push: already ours
                        else:
                            self.queue.append(a)
                    self._schedule()
                case P.Kill():
                    self._kill(msg.tasks, msg.reason)
                case P.Ack():
                    for seq in [s for s in self.outbox if s <= msg.seq]:
                        del self.outbox[seq]
                    for tid in [t for t, (_a, s) in self.unacked.items() if s <= msg.seq]:
                        del self.unacked[tid]
                    self._changed.set()
                case P.Reject():
                    raise AuthError(msg.reason)
                case P.Error():
                    log.warning("the controller refused a frame of this pilot: %s", msg.message)
                case _:
                    pass

    async def _sender(self, link: Link, scope: anyio.CancelScope) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if self.pending:
                    batch, self.pending = self.pending, []
                    budget = self.cfg.limits.max_frame_bytes // 2
                    for run in P.chunk_by_size(batch, P.payload, budget):
                        self.seq += 1
                        for r in run:
                            if r.kind != "started":
                                self.unacked[r.task_id] = (r.attempt, self.seq)
                        frame = P.encode(P.Reports(seq=self.seq, reports=run))
                        self.outbox[self.seq] = frame
                        await link.send_raw(frame)
                cores, gpus = self.pending_credit
                if cores or gpus:
                    self.pending_credit = [0, 0]
                    await link.send(P.Credit(cores=cores, gpus=gpus))
        finally:
            scope.cancel()

    async def _heartbeats(self, link: Link, scope: anyio.CancelScope) -> None:
        try:
            while True:
                await anyio.sleep(self.heartbeat_interval)
                running = list(self.running)
                await link.send(P.Heartbeat(time=time.time(), running=running))
        finally:
            scope.cancel()

    # ------------------------------------------------------------------ tasks

    def _report(self, r: P.Report) -> None:
        self.pending.append(r)
        self._wake.set()

    def _give_back(self, a: P.Assignment) -> None:
        self.pending_credit[0] += a.cores
        self.pending_credit[1] += a.gpus
        self._wake.set()

    def _kill(self, pairs: list[tuple[int, int]], reason: str) -> None:
        wanted = set(pairs)
        keep: deque[P.Assignment] = deque()
        for a in self.queue:
            if (a.task_id, a.attempt) in wanted:
                self._give_back(a)
            else:
                keep.append(a)
        self.queue = keep
        for tid, attempt in pairs:
            r = self.running.get((tid, attempt))
            if r is not None:
                r.kill_reason = reason or "killed by the controller"
                r.silent = True
                r.scope.cancel()
            elif self.unacked.get(tid, (None,))[0] == attempt:
                # Its report is moot: the controller has moved on.
                del self.unacked[tid]

    def _place(self, a: P.Assignment) -> list[int] | None:
        """Nodes (indexes) for ``a`` that have room now, or None."""
        if a.hosts or a.num_nodes <= 1:
            # One node's worth here (a node-mode pilot's reserved MPI task included).
            for i, free in self.node_free.items():
                if free[0] >= min(a.cores, self.nodes[i].cores) and len(self.node_gpus[i]) >= a.gpus:
                    return [i]
            return None
        whole = [i for i, free in self.node_free.items()
                 if free[0] == self.nodes[i].cores and len(self.node_gpus[i]) == self.nodes[i].gpus]
        return whole[: a.num_nodes] if len(whole) >= a.num_nodes else None

    def _schedule(self) -> None:
        assert self._tg is not None
        until = self.accept_until()
        while self.queue and not self._stopping:
            a = self.queue[0]
            if not admits(time.time(), until, a.wall_time, 0.0):
                # The controller does not send what cannot finish in time; this is the
                # clock-skew backstop: hand it back unstarted.
                self.queue.popleft()
                self._give_back(a)
                self._report(P.Report(task_id=a.task_id, attempt=a.attempt, kind="killed",
                                      time=time.time(),
                                      message="the batch job ends before the task could finish"))
                continue
            if a.cores > self.free_cores or a.gpus > self.free_gpus:
                break
            placed = self._place(a)
            if placed is None:
                break
            self.queue.popleft()
            self.free_cores -= a.cores
            self.free_gpus -= a.gpus
            r = Running(a)
            r.nodes, r.gpu_ids = self._take(a, placed)
            self.running[(a.task_id, a.attempt)] = r
            self._tg.start_soon(self._run_task, r)

    def _take(self, a: P.Assignment, placed: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
        if len(placed) == 1:
            i = placed[0]
            cores = min(a.cores, self.nodes[i].cores)
            gpus = self.node_gpus[i][: a.gpus]
            del self.node_gpus[i][: a.gpus]
            self.node_free[i][0] -= cores
            return [(i, cores)], gpus
        taken = []
        for i in placed:
            taken.append((i, self.node_free[i][0]))
            self.node_free[i][0] = 0
            self.node_gpus[i] = []
        return taken, []

    def _release(self, r: Running) -> None:
        for i, cores in r.nodes:
            self.node_free[i][0] += cores
        if r.nodes and r.gpu_ids:
            if len(r.nodes) == 1:
                self.node_gpus[r.nodes[0][0]].extend(r.gpu_ids)
            else:
                for i, _ in r.nodes:
                    self.node_gpus[i] = list(range(self.nodes[i].gpus))
        r.nodes = []

    def _launch_form(self, r: Running) -> P.Assignment:
        """The assignment as the pilot runs it: through the MPI launcher where needed."""
        a = r.a
        head = bool(self.cfg.head_nodes)
        hosts = list(a.hosts) or [self.nodes[i].host for i, _ in r.nodes]
        env = dict(a.env)
        gpu_ids = r.gpu_ids if len(r.nodes) == 1 else []
        if gpu_ids:
            env.update(launchers.gpu_env(self.cfg.gpu_vendor, gpu_ids))
        if a.threads_per_rank > 1:
            env.setdefault("OMP_NUM_THREADS", str(a.threads_per_rank))
        if not head and len(hosts) <= 1 and a.ranks_per_node <= 1:
            return msgspec.structs.replace(a, env=env) if env != a.env else a
        if not self.cfg.launcher:
            raise ConfigError(
                "this task needs an MPI launcher (several ranks or nodes) and the pilot "
                "has none: start it with --launcher"
            )
        spec = launchers.LaunchSpec(
            hosts=tuple(hosts), ranks_per_node=a.ranks_per_node,
            threads_per_rank=a.threads_per_rank, gpus_per_rank=a.gpus_per_rank,
            cpu_bind=None,
        )
        cmd = a.argv or ["/bin/sh", "-c", a.shell]
        argv = launchers.build(self.cfg.launcher, spec, cmd)
        return msgspec.structs.replace(a, argv=argv, shell="", env=env)

    async def _run_task(self, r: Running) -> None:
        a = r.a
        try:
            outcome = await self._supervise(r)
            if not r.silent:
                if outcome.tails is not None:
                    out, err = outcome.tails
                else:
                    out, err = r.proc.tails(self.cfg.limits.tail_bytes) if r.proc else ("", "")
                outputs: list[P.OutputFile] = []
                decision = ""
                if outcome.kind == "done":
                    outcome, outputs = await self._after_success(r, outcome, out, err)
                if outcome.kind in ("error", "timeout"):
                    decision = await self._on_failure(r, outcome, out, err)
                self._report(P.Report(
                    task_id=a.task_id, attempt=a.attempt, kind=outcome.kind,  # type: ignore[arg-type]
                    time=time.time(), exit_code=outcome.exit_code, message=outcome.message,
                    stdout_tail=out, stderr_tail=err, result=outcome.result, outputs=outputs,
                    hook=decision,
                ))
        finally:
            if r.proc is not None:
                r.proc.close()
            self.running.pop((a.task_id, a.attempt), None)
            self._release(r)
            self.free_cores += a.cores
            self.free_gpus += a.gpus
            self.last_busy = time.monotonic()
            self._give_back(a)
            self._changed.set()
            self._schedule()

    async def _call_function(self, r: Running) -> Outcome:
        """A function task: one call in a warm worker; its prints go to the task's files."""
        a = r.a
        limit = self.cfg.limits.tail_bytes
        try:
            wd = task_dir(self.root, a.workdir)
            wd.mkdir(parents=True, exist_ok=True)
        except (WorkdirError, OSError) as exc:
            self._report(P.Report(task_id=a.task_id, attempt=a.attempt, kind="started",
                                  time=time.time()))
            return Outcome("error", None, str(exc))
        out, err = wd / STDOUT, wd / STDERR
        self._report(P.Report(task_id=a.task_id, attempt=a.attempt, kind="started",
                              time=time.time()))
        with r.scope:
            if a.timeout is not None:
                r.scope.deadline = anyio.current_time() + a.timeout
            assert self.pool is not None
            res = await self.pool.call(a.function, a.args, timeout=None, cwd=str(wd),
                                       stdout=str(out), stderr=str(err))
            tails = (tail_file(out, limit), tail_file(err, limit))
            if res.ok:
                return Outcome("done", 0, "", result=res.result, tails=tails)
            stderr = (tails[1] + res.traceback)[-limit:] if res.traceback else tails[1]
            return Outcome("error", 1, res.error, tails=(tails[0], stderr))
        tails = (tail_file(out, limit), tail_file(err, limit))
        if not r.kill_reason:
            return Outcome("timeout", None, f"timed out after {a.timeout:g}s", tails=tails)
        return Outcome("killed", None, r.kill_reason, tails=tails)

    # ------------------------------------------------------------------ files and hooks

    async def _prepare(self, r: Running) -> str:
        """Inline inputs and the preprocess hook, before the run; an error message or ""."""
        a = r.a
        if not (a.inputs or (a.hooks and a.hooks.preprocess)):
            return ""
        try:
            wd = task_dir(self.root, a.workdir)
            wd.mkdir(parents=True, exist_ok=True)
            if a.inputs:
                await anyio.to_thread.run_sync(write_inputs, wd, a.inputs)
        except (WorkdirError, TaskFileError, OSError) as exc:
            return str(exc)
        if a.hooks and a.hooks.preprocess:
            return await self._hook(r, "preprocess", a.hooks.preprocess, Outcome("", None))
        return ""

    async def _after_success(
        self, r: Running, outcome: Outcome, out: str, err: str
    ) -> tuple[Outcome, list[P.OutputFile]]:
        a = r.a
        if a.hooks and a.hooks.postprocess:
            why = await self._hook(r, "postprocess", a.hooks.postprocess, outcome, out, err)
            if why:
                return Outcome("error", outcome.exit_code, why, result=outcome.result), []
        if not a.outputs:
            return outcome, []
        try:
            wd = task_dir(self.root, a.workdir)
            found = await anyio.to_thread.run_sync(collect_outputs, wd, a.outputs,
                                                   a.inline_limit)
        except (WorkdirError, OSError) as exc:
            return Outcome("error", outcome.exit_code, f"cannot read outputs: {exc}"), []
        return outcome, found

    async def _on_failure(self, r: Running, outcome: Outcome, out: str, err: str) -> str:
        """The app's error or timeout handler's choice: "retry", "fail" or "" (none)."""
        h = r.a.hooks
        path = (h.on_error if outcome.kind == "error" else h.on_timeout) if h else ""
        if not path:
            return ""
        stage = "on_error" if outcome.kind == "error" else "on_timeout"
        choice: list[str] = []
        why = await self._hook(r, stage, path, outcome, out, err, choice)
        if why:
            outcome.message = f"{outcome.message}; {why}" if outcome.message else why
            return "fail"
        return choice[0] if choice else "fail"

    async def _hook(
        self, r: Running, stage: str, path: str, outcome: Outcome, out: str = "",
        err: str = "", choice: list[str] | None = None,
    ) -> str:
        """Call one hook in a warm worker; "" when it succeeded, else what went wrong."""
        a = r.a
        if self.pool is None:
            return f"{stage} hook {path}: this pilot runs no Python workers"
        try:
            wd = task_dir(self.root, a.workdir)
            wd.mkdir(parents=True, exist_ok=True)
        except (WorkdirError, OSError) as exc:
            return f"{stage} hook: {exc}"
        ctx = {"task_id": a.task_id, "attempt": a.attempt, "workdir": str(wd), "stage": stage,
               "exit_code": outcome.exit_code, "error": outcome.message,
               "stdout_tail": out, "stderr_tail": err}
        try:
            res = await self.pool.call(path, codec.encode_call((ctx,), {}),
                                       timeout=HOOK_TIMEOUT, cwd=str(wd),
                                       stdout=str(wd / STDOUT), stderr=str(wd / STDERR))
        except TimeoutError:
            return f"{stage} hook {path} timed out after {HOOK_TIMEOUT:g}s"
        except (ValueError, RuntimeError, OSError) as exc:
            return f"{stage} hook {path}: {exc}"
        if not res.ok:
            return f"{stage} hook {path} failed: {res.error}"
        if choice is not None:
            value = codec.decode(res.result) if res.result else None
            if value not in ("retry", "fail"):
                return f"{stage} hook {path} returned {value!r}, not 'retry' or 'fail'"
            choice.append(str(value))
        return ""

    async def _supervise(self, r: Running) -> Outcome:
        a = r.a
        why = await self._prepare(r)
        if why:
            self._report(P.Report(task_id=a.task_id, attempt=a.attempt, kind="started",
                                  time=time.time()))
            return Outcome("error", None, why)
        if a.function:
            return await self._call_function(r)
        try:
            r.proc = TaskProcess.start(self._launch_form(r), self.root, self._base_env)
        except (WorkdirError, ConfigError) as exc:
            self._report(P.Report(task_id=a.task_id, attempt=a.attempt, kind="started",
                                  time=time.time()))
            return Outcome("error", None, str(exc))
        except OSError as exc:
            self._report(P.Report(task_id=a.task_id, attempt=a.attempt, kind="started",
                                  time=time.time()))
            what = a.argv[0] if a.argv else "/bin/sh"
            return Outcome("error", 127, f"cannot start {what!r}: {exc.strerror or exc}")
        self._report(P.Report(task_id=a.task_id, attempt=a.attempt, kind="started",
                              time=time.time()))
        timed_out = False
        with r.scope:
            if a.timeout is not None:
                r.scope.deadline = anyio.current_time() + a.timeout
            rc = await r.proc.wait()
            return Outcome("done" if rc == 0 else "error", rc,
                           "" if rc == 0 else f"exit code {rc}")
        # The scope was cancelled: a timeout, a Kill, or the pilot stopping.
        timed_out = not r.kill_reason
        rc = await r.proc.stop(self.t.kill_grace)
        if timed_out:
            return Outcome("timeout", rc, f"timed out after {a.timeout:g}s")
        return Outcome("killed", rc, r.kill_reason)


async def run_pilot(config: PilotConfig) -> None:
    """Run a pilot until SIGINT/SIGTERM (then stop it cleanly) or until it stops itself
    (idle, or its batch job ending)."""
    import signal

    pilot = Pilot(config)
    async with anyio.create_task_group() as tg:

        async def main(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            # No cancel in a `finally`: a refusal before the first connection (token,
            # certificate) must reach `tg.start` as itself, not as a cancellation that
            # would end the process with status 0. A failure later cancels the group anyway.
            await pilot.run(task_status=task_status)
            tg.cancel_scope.cancel()

        await tg.start(main)

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    await pilot.stop("the pilot was stopped")
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(on_signal)
