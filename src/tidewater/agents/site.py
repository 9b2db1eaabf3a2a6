"""The site agent: batch jobs on the site's scheduler, kept in step with the controller.

One agent per (user, site), on a login node where ``sbatch``/``qsub``/``bsub``
work. It never runs tasks. It:

* holds a websocket to the controller (site token, reconnects with backoff);
* submits the batch jobs the controller pushes (``StartJob``), cancels the
  ones it stops (``StopJob``), and reports every change in sequenced
  ``JobUpdates`` kept in an outbox until acknowledged after commit;
* looks at the scheduler's listing every ``poll_interval`` seconds (and at
  once after each submit or cancel): a job that left the listing is
  finished, a job the scheduler ended keeps the scheduler's reason
  (TIMEOUT, CANCELLED, exit code);
* after its own restart, adopts what it had submitted: the controller's
  list of live jobs carries their scheduler ids, and a job submitted just
  before the crash is found in the listing by its unique name
  (``tw-<site>-<id>``) instead of being submitted twice;
* runs the autoscaler (:mod:`.autoscale`) whenever demand or jobs change;
* told to stop (:meth:`Agent.stop`, SIGTERM), leaves its batch jobs running:
  it finishes the scheduler command in flight, sends what it owes, and goes.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
from anyio.abc import TaskStatus

from .. import proto as P
from .. import states
from ..config import Timeouts
from ..errors import ConnectionBroken, SchedulerError, TidewaterError
from ..transport import Link, LinkOptions, Session, parse_address
from . import autoscale
from .reconcile import Cancel, Command, Note, Submit, Update, diff, job_name, listed_change
from .relay import Relay
from .schedulers import get_scheduler
from .schedulers.base import JobRequest, JobStatus, SchedulerClient
from .settings import SiteSettings, pilot_argv, read_token, render_body
from .transfers.engine import Engine, read_chunk

log = logging.getLogger("tidewater.agent")


@dataclass
class JobState:
    """One batch job as the agent tracks it."""

    id: int
    state: str
    nodes: int
    wall_time_min: int
    queue: str = ""
    project: str = ""
    scheduler_id: str = ""
    autoscaled: bool = False
    pilot_token: str = ""
    ended_at: float | None = None
    reason: str = ""
    busy: bool = False  # a submit or cancel command is running for it
    stop_wanted: bool = False
    unneeded: bool = False  # the autoscaler would cancel it if it is still queued
    missing_since: float | None = None  # first listing that did not show it

    @classmethod
    def of(cls, aj: P.AgentJob) -> JobState:
        j = aj.job
        return cls(id=j.id, state=j.state, nodes=j.nodes, wall_time_min=j.wall_time_min,
                   queue=j.queue, project=j.project, scheduler_id=j.scheduler_id,
                   autoscaled=j.autoscaled, pilot_token=aj.pilot_token, ended_at=j.ended_at,
                   reason=j.reason, stop_wanted=j.state == "pending_deletion")


class Agent:
    """``await tg.start(agent.run)`` returns once connected to the controller."""

    def __init__(
        self, settings: SiteSettings, *, scheduler: SchedulerClient | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.s = settings
        self.t = timeouts or Timeouts(heartbeat_interval=settings.site.heartbeat_interval)
        self.token = read_token(settings)
        self.site_tag = hashlib.sha256(self.token.encode()).hexdigest()[:6]  # until Welcome
        adapter = get_scheduler(settings.site.scheduler, **settings.scheduler)
        self.sched = scheduler or SchedulerClient(
            adapter, timeout=settings.site.scheduler_timeout, user=getpass.getuser()
        )
        self.jobs: dict[int, JobState] = {}
        self.listing: dict[str, JobStatus] = {}
        self.listed_at = 0.0
        self.listing_error = ""
        self.pending: list[P.JobUpdate] = []
        self.requests_out: list[P.Msg] = []
        self.demand = P.Demand(tasks=0)
        self.limits = P.SiteLimits(scheduler=settings.site.scheduler)
        self.instance = uuid.uuid4().hex[:12]
        self._requests = 0
        self._awaiting_job_until = 0.0
        self._look = anyio.Event()  # reconcile with the scheduler now
        self._rescale = anyio.Event()
        self._connected = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self.stopping = False
        self._reconciling = anyio.Lock()  # held while a reconcile runs scheduler commands
        self._acked = anyio.Event()  # set at every Ack from the controller
        self.decisions = 0
        self.last_decision = autoscale.Decision()
        self.engine = Engine(settings, self._staged)
        self.staged: list[P.StageResult] = []
        self.relay: Relay | None = None
        """The relay for pilots that cannot reach the controller (``[relay]``), if on."""
        if settings.relay.listen:
            host, port = parse_address(settings.relay.listen, "relay.listen")
            self.relay = Relay(host, port, settings.site.controller,
                               max_connections=settings.relay.max_connections,
                               connect_timeout=settings.relay.connect_timeout)
        self.session = Session(
            settings.site.controller, role="agent", hello=self._hello,
            decoder=P.to_agent_decoder, on_message=self._received, on_welcome=self._welcomed,
            outgoing=self._outgoing, heartbeat=lambda: P.Ping(time=time.time()),
            heartbeat_interval=self.t.heartbeat_interval, timeouts=self.t, log=log,
            options=LinkOptions(ping_interval=self.t.heartbeat_interval,
                                ping_timeout=self.t.lease_timeout, ca_file=settings.ca_file()),
        )

    # ------------------------------------------------------------------ life

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Raises AuthError when the controller refuses the token,
        ConfigError when the relay cannot listen on its address."""
        self.limits = await self._site_limits()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self.relay is not None:
                # First: pilots of jobs adopted after a restart are waiting to reconnect.
                await tg.start(self.relay.run)
            tg.start_soon(self._reconcile_loop)
            tg.start_soon(self._autoscale_loop)
            await tg.start(self.engine.run)
            await tg.start(self.session.run)
            task_status.started()

    async def stop(self, reason: str = "stopping") -> None:
        """Stop without touching the batch jobs: they, and the pilots in them, keep
        running, and an agent started again adopts them.

        Nothing new is submitted or cancelled from now on; a scheduler command
        already running (``sbatch``, ``scancel``) is let finish, bounded by the
        site's ``scheduler_timeout``, so its outcome is not lost. The job updates,
        transfer results and requests owed to the controller are then sent and
        acknowledged (bounded by ``Timeouts.close``), and the connection is
        closed. The caller then cancels :meth:`run`. Cancel-safe: what is not
        reported is found again by the next agent's reconcile.
        """
        self.stopping = True
        log.info("stopping (%s): batch jobs are left running", reason)
        with anyio.move_on_after(self.s.site.scheduler_timeout):
            await self._reconciling.acquire()  # and never released: no reconcile after this
        with anyio.move_on_after(self.t.close):
            while self.pending or self.staged or self.requests_out or len(self.session.outbox):
                self._acked = anyio.Event()
                self.session.wake()
                await self._acked.wait()
        owed = len(self.pending) + len(self.staged) + len(self.session.outbox)
        if owed:
            log.warning("stopping with %d reports unacknowledged: the next agent finds "
                        "their jobs again in the scheduler's listing", owed)
        await self.session.aclose()

    async def _site_limits(self) -> P.SiteLimits:
        s = self.s
        cores = s.site.cores_per_node or None
        gpus = s.site.gpus_per_node or None
        max_nodes = s.limits.max_nodes_per_job or None
        max_wall = s.limits.max_wall_time_min or None
        try:
            parts = await self.sched.partitions()
        except SchedulerError as exc:
            log.warning("cannot read the scheduler's queue limits: %s", exc)
            parts = []
        wanted = s.job.queue
        for p in parts:
            if p.name == wanted or (not wanted and p is parts[0]):
                cores = cores or p.cores_per_node
                gpus = gpus if gpus is not None else p.gpus_per_node
                if p.max_nodes is not None:
                    max_nodes = min(max_nodes or p.max_nodes, p.max_nodes)
                if p.total_nodes is not None:
                    max_nodes = min(max_nodes or p.total_nodes, p.total_nodes)
                if p.max_wall_min is not None:
                    max_wall = min(max_wall or p.max_wall_min, p.max_wall_min)
                break
        if cores is None and s.site.scheduler == "local":
            cores = os.cpu_count() or 1
        return P.SiteLimits(
            cores_per_node=cores, gpus_per_node=gpus if gpus is not None else
            (0 if s.site.scheduler == "local" else None),
            max_nodes_per_job=max_nodes, max_wall_time_min=max_wall,
            queues=list(s.limits.queues), projects=list(s.limits.projects),
            scheduler=s.site.scheduler,
        )

    def _hello(self) -> P.Hello:
        # Read again at every connection: a rotated token is picked up without a restart.
        self.token = read_token(self.s)
        return P.Hello(role="agent", proto_version=P.PROTO_VERSION, batches=True, token=self.token,
                       name="agent", site=self.s.site.name, limits=self.limits)

    async def _welcomed(self, link: Link, welcome: P.Welcome) -> None:
        self.site_tag = welcome.site_tag or self.site_tag
        self._connected = anyio.Event()  # set again by this connection's Jobs
        log.info("agent of %s connected to %s", welcome.site, self.session.url)

    def _received(self, msg: P.ControllerToAgent) -> None:
        match msg:
            case P.Jobs():
                self._on_jobs(msg.jobs)
                self._connected.set()
            case P.StartJob():
                self._on_start(msg.job)
            case P.StopJob():
                self._on_stop(msg.job_id)
            case P.Demand():
                self.demand = msg
                self._rescale.set()
            case P.StageWork():
                for stage in msg.stages:
                    self.engine.submit(stage)
            case P.Unstage():
                self.engine.cancel(msg.task_id)
            case P.ReadFile():
                assert self._tg is not None
                self._tg.start_soon(self._read_file, msg)
            case P.Error():
                log.warning("controller: %s", msg.message)
            case P.Reject():
                raise ConnectionBroken(f"controller refused: {msg.reason}")
            case P.Ack():
                self._acked.set()  # the session's outbox has applied it
            case _:
                pass

    def _outgoing(self) -> list[bytes]:
        """What the sender sends now: updates and transfer results (kept), then requests."""
        frames = []
        if self.pending:
            updates, self.pending = self.pending, []
            frames.append(self.session.outbox.keep(
                lambda seq: P.JobUpdates(seq=seq, updates=updates)))
        if self.staged:
            results, self.staged = self.staged, []
            frames.append(self.session.outbox.keep(
                lambda seq: P.Staged(seq=seq, results=results)))
        frames += [P.encode(m) for m in self.requests_out]
        self.requests_out = []
        return frames

    def _staged(self, result: P.StageResult) -> None:
        """A task's transfers are over: report them (kept until acknowledged)."""
        self.staged.append(result)
        self.session.wake()

    async def _read_file(self, msg: P.ReadFile) -> None:
        root = self.s.path(self.s.site.work_root)
        chunk = await anyio.to_thread.run_sync(read_chunk, root, msg.path, msg.offset,
                                               msg.length)
        self._send_request(msgspec.structs.replace(chunk, req_id=msg.req_id))

    def _send_request(self, msg: P.Msg) -> None:
        self.requests_out.append(msg)
        self.session.wake()

    # ------------------------------------------------------------------ controller's word

    def _on_jobs(self, jobs: list[P.AgentJob]) -> None:
        seen = set()
        for aj in jobs:
            seen.add(aj.job.id)
            old = self.jobs.get(aj.job.id)
            new = JobState.of(aj)
            if old is not None:
                new.busy = old.busy
                new.stop_wanted = new.stop_wanted or old.stop_wanted
                if old.scheduler_id and not new.scheduler_id:
                    new.scheduler_id = old.scheduler_id  # our update is still in the outbox
                    new.state = old.state
            self.jobs[aj.job.id] = new
        for jid in [j for j in self.jobs if j not in seen]:
            if self.jobs[jid].state not in states.JOB_FINAL and not self._unsent(jid):
                del self.jobs[jid]
        self._look.set()

    def _unsent(self, job_id: int) -> bool:
        return any(u.job_id == job_id for u in self.pending) or bool(self.session.outbox)

    def _on_start(self, aj: P.AgentJob) -> None:
        if aj.job.id in self.jobs and self.jobs[aj.job.id].state != "pending_submission":
            return
        self.jobs[aj.job.id] = JobState.of(aj)
        if aj.job.autoscaled:
            self._awaiting_job_until = 0.0
        self._look.set()

    def _on_stop(self, job_id: int) -> None:
        j = self.jobs.get(job_id)
        if j is None:
            return
        j.stop_wanted = True
        self._look.set()

    # ------------------------------------------------------------------ updates

    def _update(
        self, j: JobState, state: str, *, scheduler_id: str = "", reason: str = "",
        error: str = "", start_time: float | None = None, end_time: float | None = None,
    ) -> None:
        """Apply a change to a job and queue it for the controller (nothing new: nothing sent)."""
        nxt = states.job_step(j.state, state)
        if nxt is None and not error and (not scheduler_id or scheduler_id == j.scheduler_id) \
                and (not reason or reason == j.reason):
            return
        if nxt is not None:
            j.state = nxt
        if nxt in states.JOB_FINAL:
            j.ended_at = time.time()
        if scheduler_id:
            j.scheduler_id = scheduler_id
        if reason:
            j.reason = reason
        self.pending.append(P.JobUpdate(
            job_id=j.id, state=state, scheduler_id=j.scheduler_id, time=time.time(),
            reason=reason, error=error, start_time=start_time, end_time=end_time,
        ))
        self.session.wake()
        self._rescale.set()

    # ------------------------------------------------------------------ scheduler

    async def _reconcile_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.s.site.poll_interval):
                await self._look.wait()
            self._look = anyio.Event()
            async with self._reconciling:
                if self.stopping:
                    return
                await self.reconcile()

    async def reconcile(self) -> None:
        """Look at the scheduler, report changes, submit and cancel what is due.

        The decision is :func:`.reconcile.diff`'s; this runs the listing and
        executes its commands in order. A listing that fails is logged once
        and changes nothing. Not cancel-safe mid-submit: a cancelled ``sbatch``
        may have queued a job, which the next reconcile adopts by its name.
        """
        try:
            listed = await self.sched.status()
        except SchedulerError as exc:
            if str(exc) != self.listing_error:
                log.warning("cannot list batch jobs: %s", exc)
            self.listing_error = str(exc)
            return
        self.listing_error = ""
        self.listing = {status.scheduler_id: status for status in listed}
        self.listed_at = time.time()
        grace = max(1.0, min(self.s.site.poll_interval, 10.0))
        commands = diff(list(self.jobs.values()), listed, self.listed_at,
                        name_of=self._job_name, grace=grace)
        for command in commands:
            await self._execute(command)
        # Forget what is final and acknowledged.
        for jid in [j.id for j in self.jobs.values()
                    if j.state in states.JOB_FINAL and not self._unsent(j.id)
                    and (j.ended_at or 0) < time.time() - 3600]:
            del self.jobs[jid]
        self._rescale.set()

    def _job_name(self, job_id: int) -> str:
        return job_name(self.s.site.name, job_id, self.site_tag)

    async def _execute(self, command: Command) -> None:
        j = self.jobs.get(command.job_id)
        if j is None or j.busy:
            return  # forgotten, or taken up by a command of its own, while we awaited
        match command:
            case Note():
                j.missing_since, j.unneeded = command.missing_since, command.unneeded
                if command.look_again is not None:
                    self._look_later(command.look_again)
            case Update():
                if command.scheduler_id and not j.scheduler_id:
                    log.info("adopting batch job %d: scheduler id %s", j.id,
                             command.scheduler_id)
                self._apply(j, command)
            case Submit():
                await self._submit(j)
            case Cancel():
                j.stop_wanted, j.reason = True, command.reason
                await self._cancel(j)
                after = listed_change(j.id, j.state, j.reason, command.listed,
                                                time.time())
                if after is not None:
                    self._apply(j, after)

    def _apply(self, j: JobState, u: Update) -> None:
        self._update(j, u.state, scheduler_id=u.scheduler_id, reason=u.reason,
                     start_time=u.start_time, end_time=u.end_time)

    def _look_later(self, delay: float) -> None:
        async def look() -> None:
            await anyio.sleep(delay)
            self._look.set()

        if self._tg is not None:
            self._tg.start_soon(look)

    def _job_dir(self, j: JobState) -> Path:
        return self.s.path("jobs") / str(j.id)

    async def _submit(self, j: JobState) -> None:
        s = self.s
        d = self._job_dir(j)
        j.busy = True
        try:
            await anyio.Path(d).mkdir(parents=True, exist_ok=True)
            tok = d / "pilot-token"
            fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(j.pilot_token + "\n")
            head = s.site.mode == "head"
            argv = pilot_argv(s, job_id=j.id, token_file=str(tok), head=head)
            if not head:
                argv = self.sched.adapter.node_launch_argv(j.nodes) + argv
            template = await anyio.Path(s.path("job-template.sh")).read_text()
            body = render_body(template, job_id=j.id, site=s.site.name, nodes=j.nodes,
                               wall_time_min=j.wall_time_min, pilot_launch=argv,
                               minute_seconds=float(getattr(self.sched.adapter,
                                                            "minute_seconds", 60.0)))
            req = JobRequest(
                job_name=job_name(s.site.name, j.id, self.site_tag), nodes=j.nodes,
                wall_time_min=j.wall_time_min, workdir=str(d), script_body=body,
                queue=j.queue, project=j.project, extra_directives=tuple(s.job.directives),
            )
            sid = await self.sched.submit(req)
        except (TidewaterError, OSError) as exc:
            log.warning("batch job %d: submission failed: %s", j.id, exc)
            self._update(j, "submit_failed", error=str(exc))
            return
        finally:
            j.busy = False
        log.info("batch job %d submitted: scheduler id %s", j.id, sid)
        self._update(j, "queued", scheduler_id=sid)
        self._look.set()

    async def _cancel(self, j: JobState) -> None:
        j.busy = True
        try:
            await self.sched.cancel(j.scheduler_id)
        except SchedulerError as exc:
            log.warning("batch job %d: cancel failed: %s", j.id, exc)
            self._update(j, "pending_deletion", error=str(exc))
            return
        finally:
            j.busy = False
        j.stop_wanted = False
        self._update(j, "pending_deletion", reason=j.reason or "cancelled")
        self._look.set()

    # ------------------------------------------------------------------ autoscaler

    def settings_for_autoscale(self) -> autoscale.AutoscaleSettings:
        a, s, lim = self.s.autoscale, self.s, self.limits
        max_nodes = a.max_nodes_per_job
        if lim.max_nodes_per_job is not None:
            max_nodes = min(max_nodes, lim.max_nodes_per_job)
        wall = a.wall_time_min or s.job.wall_time_min
        if lim.max_wall_time_min is not None:
            wall = min(wall, lim.max_wall_time_min)
        return autoscale.AutoscaleSettings(
            enabled=a.enabled, queue=s.job.queue, project=s.job.project, wall_time_min=wall,
            min_nodes_per_job=min(a.min_nodes_per_job, max_nodes), max_nodes_per_job=max_nodes,
            max_queued_jobs=a.max_queued_jobs, max_total_nodes=a.max_total_nodes,
            cores_per_node=lim.cores_per_node or 1, gpus_per_node=lim.gpus_per_node or 0,
            retry_after=a.retry_after, max_wall_time_min=lim.max_wall_time_min,
            wall_margin=s.site.wall_time_margin,
        )

    async def _autoscale_loop(self) -> None:
        retry_at: float | None = None
        while True:
            wait = 3600.0 if retry_at is None else max(0.05, retry_at - time.time())
            with anyio.move_on_after(wait):
                await self._rescale.wait()
            self._rescale = anyio.Event()
            if (not self.s.autoscale.enabled or self.session.link is None
                    or not self._connected.is_set() or self.stopping):
                continue
            retry_at = self.autoscale_once()

    def autoscale_once(self) -> float | None:
        now = time.time()
        if now < self._awaiting_job_until:
            return self._awaiting_job_until  # the last request has not come back yet
        views = [autoscale.JobView(id=j.id, state=j.state, nodes=j.nodes,
                                   autoscaled=j.autoscaled, ended_at=j.ended_at,
                                   scheduler_id=j.scheduler_id)
                 for j in self.jobs.values()]
        d = self.demand
        dec = autoscale.decide(
            self.settings_for_autoscale(),
            autoscale.Demand(tasks=d.tasks, cores=d.cores, gpus=d.gpus,
                             node_demand=d.node_demand, idle_nodes=d.idle_nodes,
                             busy_nodes=d.busy_nodes, max_wall_time=d.max_wall_time),
            views, now,
        )
        self.decisions += 1
        self.last_decision = dec
        if dec.submit is not None:
            self._requests += 1
            key = f"{self.instance}-{self._requests}"
            log.info("autoscaler: asking for %d nodes (%s)", dec.submit.nodes, dec.why)
            self._send_request(P.RequestJob(key=key, job=P.JobSpec(
                site=self.s.site.name, nodes=dec.submit.nodes,
                wall_time_min=dec.submit.wall_time_min, queue=dec.submit.queue,
                project=dec.submit.project,
            )))
            self._awaiting_job_until = now + 10.0
        for jid in dec.cancel:
            j = self.jobs.get(jid)
            if j is not None and not j.stop_wanted:
                log.info("autoscaler: batch job %d is no longer needed (%s)", jid, dec.why)
                j.unneeded = True
                self._look.set()
        return dec.retry_at
