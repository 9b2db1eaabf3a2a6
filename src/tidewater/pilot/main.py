"""The pilot: holds a websocket to the controller and runs the tasks it is pushed.

Credit: at each (re)connection the pilot grants its free cores and GPUs
plus ``prefetch`` cores' worth of queued work, and after that returns the
resources of every task that ends. The controller never sends more.

Durability: reports go out in sequenced ``Reports`` frames and stay in an
outbox until the controller acknowledges them (after its commit). If the
link breaks, running tasks keep running; the pilot reconnects with backoff,
tells the controller what it holds, and resends the outbox.

The bookkeeping behind both is :mod:`.book` (pure); the link is a
:class:`~tidewater.transport.Session`; this module runs the tasks.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from .. import codec
from .. import proto as P
from ..config import Limits, Timeouts
from ..errors import AuthError, ConfigError, WorkdirUnusable, WorkerStartError
from ..hooks import HOOK_TIMEOUT
from ..transport import Link, LinkOptions, Session
from . import launchers
from .book import Command, PilotBook, Placement, Start, Stop
from .nodes import Node
from .runner import (
    STDERR,
    STDOUT,
    Outcome,
    TaskProcess,
    WorkdirError,
    storage_fault,
    tail_file,
    task_dir,
)
from .taskfiles import TaskFileError, collect_outputs, write_inputs
from .workers import WorkerPool

SCRATCH = ".tidewater-workers"
"""Under the work root: the warm workers' scratch directories (see :mod:`.workers`)."""

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
    relay: str = ""
    """``HOST:PORT`` of the site agent's relay to connect through ("": directly)."""
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
    """One running attempt as the driver sees it: its process and how to end it."""

    a: P.Assignment
    placement: Placement
    proc: TaskProcess | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    kill_reason: str = ""
    silent: bool = False  # killed on the controller's request: no report needed


class Pilot:
    """Runs what the controller pushes; ``await tg.start(pilot.run)`` returns once connected.

    The decisions (credit, placement, the queue, what is held and owed) are
    :class:`~.book.PilotBook`'s; this class executes them: it runs the
    processes, hooks and function calls, and keeps the link up through a
    :class:`~tidewater.transport.Session`.
    """

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
        self.book = PilotBook(nodes, prefetch=config.prefetch, accept_until=self.accept_until())
        self.last_busy = time.monotonic()
        self.pool: WorkerPool | None = None
        # Keyed by (task, attempt): a new attempt may start while an old one is being killed.
        self.running: dict[tuple[int, int], Running] = {}
        self._changed = anyio.Event()  # set when running tasks end or reports are acked
        self.fault: WorkdirUnusable | None = None
        """Set when the work filesystem failed: the pilot stops, and exits non-zero."""
        self._drain_scope: anyio.CancelScope | None = None
        self._skip_drain = False
        self._stop_started = False
        self._tg: TaskGroup | None = None
        self._base_env = dict(os.environ)
        self._base_env.pop("TIDEWATER_TOKEN", None)
        self.session = Session(
            config.url, role="pilot", hello=self._hello, decoder=P.to_pilot_decoder,
            on_message=self._received, on_welcome=self._welcomed,
            outgoing=lambda: self.book.outgoing(config.limits.max_frame_bytes // 2),
            heartbeat=lambda: P.Heartbeat(time=time.time(), running=list(self.book.running)),
            outbox=self.book.outbox, timeouts=self.t, log=log,
            options=LinkOptions(max_size=config.limits.max_frame_bytes,
                                ping_interval=self.t.heartbeat_interval,
                                ping_timeout=self.t.lease_timeout,
                                ca_file=config.ca_file or None,
                                relay=config.relay or None),
        )

    # ------------------------------------------------------------------ life

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` (or a refused token). Reports started once first connected.

        Raises :class:`AuthError`, :class:`TLSError` or :class:`ConfigError`
        when the controller cannot be used at all; a controller that is away
        is waited for.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        # Warm Python workers for function tasks: started on the first one, kept between them.
        async with WorkerPool(size=max(1, self.book.total_cores), env=self._base_env,
                              scratch=str(self.root / SCRATCH)) as pool, \
                anyio.create_task_group() as tg:
            self.pool = pool
            self._tg = tg
            await tg.start(self.session.run)
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
        while not self.book.stopping:
            if self.book.busy:
                self.last_busy = time.monotonic()
            left = self.last_busy + idle - time.monotonic()
            if left <= 0:
                log.info("idle for %g s: exiting", idle)
                await self.stop(f"idle for {idle:g} s")
                return
            await anyio.sleep(left)

    async def stop(self, reason: str = "stopping", *, drain: float = 0.0) -> None:
        """Stop: take no more work, finish or hand back what is held, say Bye, end :meth:`run`.

        At once: a Drain tells the controller to send nothing more, and every
        queued task that has not started is handed back (reported ``killed``;
        the controller gives it to another pilot without counting a retry).
        Running tasks may finish for up to ``drain`` seconds (:meth:`skip_drain`
        cuts that short); whatever still runs then is killed and reported with
        ``reason``, so the controller retries it at once rather than after a
        lease. The reports are flushed (bounded by ``close + kill_grace``),
        then Bye. Cancel-safe only in the sense that a cancelled stop leaves
        the controller to notice the pilot is gone when its lease runs out.
        """
        if self._stop_started:
            self.skip_drain()  # stopping already: a second reason to stop ends the wait
            return
        self._stop_started = True
        self.book.drain(reason, time.time())  # nothing new starts while the Drain is on its way
        await self.session.send_quietly(P.Drain(reason=reason))
        self.session.wake()
        if self.running and drain > 0 and not self._skip_drain:
            log.info("stopping: letting %d running tasks finish (up to %g s); a second "
                     "SIGTERM or SIGINT stops them now", len(self.running), drain)
            with anyio.move_on_after(drain) as scope:
                self._drain_scope = scope
                while self.running:
                    await self._changed.wait()
                    self._changed = anyio.Event()
            self._drain_scope = None
            if self.running:
                log.info("stopping: %d tasks still running, handing them back",
                         len(self.running))
        # No reconnecting once the last reports are out.
        self.session.stop()
        # Kill only after the Drain: the controller must not retry them here.
        self._execute(self.book.stop(reason, time.time()))
        with anyio.move_on_after(self.t.close + self.t.kill_grace):
            while self.running or self.book.reports or (
                    len(self.book.outbox) and self.session.link is not None):
                self.session.wake()
                await self._changed.wait()
                self._changed = anyio.Event()
        await self.session.send_quietly(P.Bye(reason=reason))
        await self.session.aclose()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def skip_drain(self) -> None:
        """Stop waiting for running tasks to finish: a second signal while stopping."""
        self._skip_drain = True
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    def held(self) -> list[tuple[int, int]]:
        """(task, attempt) of every task this pilot has (:meth:`.book.PilotBook.held`)."""
        return self.book.held()

    def _token(self) -> str:
        if not self.cfg.token_file:
            return self.cfg.token
        try:
            token = Path(self.cfg.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {self.cfg.token_file}: {exc}") from exc
        return token or self.cfg.token

    # ------------------------------------------------------------------ connection

    def _hello(self) -> P.Hello:
        credit_cores, credit_gpus = self.book.hello_credit()
        return P.Hello(
            role="pilot", proto_version=P.PROTO_VERSION, batches=True, token=self._token(),
            name="pilot", site=self.cfg.site, pilot_id=self.pilot_id,
            hostname=socket.gethostname(), cores=self.book.total_cores,
            gpus=self.book.total_gpus, credit_cores=credit_cores, credit_gpus=credit_gpus,
            held=self.book.held(), batch_job=self.cfg.batch_job,
            nodes=[P.NodeInfo(host=n.host, cores=n.cores, gpus=n.gpus)
                   for n in self.nodes] if self.cfg.head_nodes else [],
            end_time=self.accept_until(), process_started_at=PROCESS_STARTED_AT,
        )

    async def _welcomed(self, link: Link, welcome: P.Welcome) -> None:
        if self.book.stopping:
            # Reconnected while draining: the controller must still send nothing.
            await link.send(P.Drain(reason="the pilot is stopping"))
        log.info("pilot %s connected to %s (site %s, %d cores, %d gpus)", self.pilot_id,
                 self.session.url, welcome.site, self.cfg.cores, self.cfg.gpus)

    def _received(self, msg: P.ControllerToPilot) -> None:
        match msg:
            case P.RunTasks():
                self._execute(self.book.run_tasks(msg.tasks, time.time()))
            case P.Kill():
                self._execute(self.book.kill(msg.tasks, msg.reason))
            case P.Ack():
                self.book.ack(msg.seq)
                self._changed.set()
            case P.Reject():
                raise AuthError(msg.reason)
            case P.Error():
                log.warning("the controller refused a frame of this pilot: %s", msg.message)
            case _:
                pass

    # ------------------------------------------------------------------ tasks

    def _execute(self, commands: list[Command]) -> None:
        """Do what the book decided; then the sender has reports or credit to send."""
        for command in commands:
            match command:
                case Start():
                    assert self._tg is not None
                    a = command.assignment
                    new = Running(a, command.placement)
                    self.running[(a.task_id, a.attempt)] = new
                    self._tg.start_soon(self._run_task, new)
                case Stop():
                    if (r := self.running.get(command.key)) is not None:
                        r.kill_reason = command.reason
                        r.silent = r.silent or command.silent
                        r.scope.cancel()
        self.session.wake()

    def _started(self, r: Running) -> None:
        """Tell the controller the task runs (at most once per attempt)."""
        self.book.started((r.a.task_id, r.a.attempt), time.time())
        self.session.wake()

    def _launch_form(self, r: Running) -> P.Assignment:
        """The assignment as the pilot runs it: through the MPI launcher where needed."""
        a = r.a
        head = bool(self.cfg.head_nodes)
        placed = r.placement.nodes
        hosts = list(a.hosts) or [self.nodes[i].host for i, _ in placed]
        env = dict(a.env)
        gpu_ids = list(r.placement.gpu_ids) if len(placed) == 1 else []
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
        key = (a.task_id, a.attempt)
        report: P.Report | None = None
        try:
            outcome = await self._supervise(r)
            # A task that failed before it could start still went through RUNNING.
            self._started(r)
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
                report = P.Report(
                    task_id=a.task_id, attempt=a.attempt, kind=outcome.kind,  # type: ignore[arg-type]
                    time=time.time(), exit_code=outcome.exit_code, message=outcome.message,
                    stdout_tail=out, stderr_tail=err, result=outcome.result, outputs=outputs,
                    hook=decision,
                    exception=outcome.exception if outcome.kind == "error" else None,
                )
        finally:
            if r.proc is not None:
                r.proc.close()
            self.running.pop(key, None)
            self.last_busy = time.monotonic()
            self._changed.set()
            self._execute(self.book.ended(key, report, time.time()))

    async def _call_function(self, r: Running) -> Outcome:
        """A function task: one call in a warm worker; its prints go to the task's files."""
        a = r.a
        limit = self.cfg.limits.tail_bytes
        # A work directory that exists (staged inputs, a shared workdir) is used as it
        # is; otherwise the call runs in its worker's scratch directory and the work
        # directory is made only if the function leaves a file or prints.
        try:
            wd = task_dir(self.root, a.workdir)
        except (WorkdirError, OSError) as exc:
            if storage_fault(exc):
                return self._storage_fault(exc)
            return Outcome("error", None, str(exc))
        out, err = wd / STDOUT, wd / STDERR
        self._started(r)
        with r.scope:
            if a.timeout is not None:
                r.scope.deadline = anyio.current_time() + a.timeout
            assert self.pool is not None
            try:
                res = await self.pool.call(a.function, a.args, timeout=None, cwd=str(wd),
                                           stdout=str(out), stderr=str(err), lazy=True,
                                           tail=limit)
            except WorkerStartError as exc:
                # No worker to run it in: this task fails (and is retried), the pilot goes on.
                return Outcome("error", None, str(exc),
                               tails=(tail_file(out, limit), tail_file(err, limit)))
            if res.files_errno:
                fault = OSError(res.files_errno, res.error)
                if storage_fault(fault):
                    return self._storage_fault(fault)
            tails = res.tails if res.tails is not None else (tail_file(out, limit),
                                                             tail_file(err, limit))
            if res.ok:
                return Outcome("done", 0, "", result=res.result, tails=tails)
            stderr = (tails[1] + res.traceback)[-limit:] if res.traceback else tails[1]
            raised = (P.RemoteError(type=res.exc_type, builtins=list(res.exc_builtins),
                                    message=res.message, traceback=res.traceback)
                      if res.exc_type else None)
            return Outcome("error", 1, res.error, tails=(tails[0], stderr), exception=raised)
        tails = (tail_file(out, limit), tail_file(err, limit))
        if not r.kill_reason:
            return Outcome("timeout", None, f"timed out after {a.timeout:g}s", tails=tails)
        return Outcome("killed", None, r.kill_reason, tails=tails)

    # ------------------------------------------------------------------ files and hooks

    async def _prepare(self, r: Running) -> str | BaseException:
        """Inline inputs and the preprocess hook, before the run; an error message or "",
        or the error if the work filesystem failed (:func:`.runner.storage_fault`)."""
        a = r.a
        if not (a.inputs or (a.hooks and a.hooks.preprocess)):
            return ""
        try:
            wd = task_dir(self.root, a.workdir)
            wd.mkdir(parents=True, exist_ok=True)
            if a.inputs:
                await anyio.to_thread.run_sync(write_inputs, wd, a.inputs)
        except (WorkdirError, TaskFileError, OSError) as exc:
            cause = exc.__context__ if isinstance(exc, TaskFileError) else exc
            if cause is not None and storage_fault(cause):
                return cause
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

    def _storage_fault(self, exc: BaseException) -> Outcome:
        """The work filesystem failed (:func:`storage_fault`): hand the task back and stop.

        The task is reported killed with the reason, so the controller records
        the attempt and retries it on another pilot; the pilot drains (it takes
        no more work, lets running tasks finish within ``Timeouts.drain``) and
        exits non-zero, rather than failing every task it would be sent.
        """
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
        fault = WorkdirUnusable(self.pilot_id, self.root, reason)
        if self.fault is None:
            self.fault = fault
            log.error("%s", fault)
            if self._tg is not None:
                self._tg.start_soon(partial(self.stop, str(fault), drain=self.t.drain))
        return Outcome("killed", None, str(fault))

    async def _supervise(self, r: Running) -> Outcome:
        """Prepare, start and wait for the task; how it ended. A task that could not
        start is not reported started here: :meth:`_run_task` does that for every way out."""
        a = r.a
        why = await self._prepare(r)
        if isinstance(why, BaseException):
            return self._storage_fault(why)
        if why:
            return Outcome("error", None, why)
        if a.function:
            return await self._call_function(r)
        try:
            r.proc = TaskProcess.start(self._launch_form(r), self.root, self._base_env)
        except (WorkdirError, ConfigError) as exc:
            return Outcome("error", None, str(exc))
        except OSError as exc:
            if storage_fault(exc):
                return self._storage_fault(exc)
            what = a.argv[0] if a.argv else "/bin/sh"
            return Outcome("error", 127, f"cannot start {what!r}: {exc.strerror or exc}")
        self._started(r)
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
    """Run a pilot until it stops itself (idle, or its batch job ending) or is told to.

    SIGTERM or SIGINT: :meth:`Pilot.stop` with ``config.timeouts.drain``
    (take no more work, hand back the queue, let running tasks finish that
    long, hand back the rest, Bye); a second signal skips the wait.
    """
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

        async def stop() -> None:
            await pilot.stop("the pilot was stopped", drain=config.timeouts.drain)
            tg.cancel_scope.cancel()

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                stopping = False
                async for signum in signals:
                    if not stopping:
                        stopping = True
                        log.info("%s: stopping", signal.Signals(signum).name)
                        tg.start_soon(stop)
                    else:
                        log.info("%s again: not waiting for running tasks",
                                 signal.Signals(signum).name)
                        pilot.skip_drain()

        tg.start_soon(on_signal)
    if pilot.fault is not None:
        raise pilot.fault
