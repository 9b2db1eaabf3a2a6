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
* runs the autoscaler (:mod:`.autoscale`) whenever demand or jobs change.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
from anyio.abc import TaskStatus

from .. import proto as P
from .. import states
from ..config import Timeouts
from ..errors import ConnectionBroken, SchedulerError, TidewaterError
from ..transport import Link, backoff, is_retryable, open_link
from . import autoscale
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


def job_name(site: str, job_id: int, tag: str) -> str:
    """The scheduler-side name of a batch job: unique to this site *and* this controller.

    The controller's site tag keeps a controller started on a fresh store (ids
    from 1 again) from adopting jobs of an earlier one under the same site name,
    and does not change when the site's token is rotated.
    """
    return f"tw-{site}-{job_id}-{tag}"


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
        self.outbox: OrderedDict[int, bytes] = OrderedDict()
        self.seq = 0
        self.pending: list[P.JobUpdate] = []
        self.requests_out: list[P.Msg] = []
        self.demand = P.Demand(tasks=0)
        self.limits = P.SiteLimits(scheduler=settings.site.scheduler)
        self.link: Link | None = None
        self.instance = uuid.uuid4().hex[:12]
        self._requests = 0
        self._awaiting_job_until = 0.0
        self._wake_sender = anyio.Event()
        self._look = anyio.Event()  # reconcile with the scheduler now
        self._rescale = anyio.Event()
        self._connected = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self.decisions = 0
        self.last_decision = autoscale.Decision()
        self.engine = Engine(settings, self._staged)
        self.staged: list[P.StageResult] = []

    # ------------------------------------------------------------------ life

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Raises AuthError when the controller refuses the token."""
        self.limits = await self._site_limits()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._reconcile_loop)
            tg.start_soon(self._autoscale_loop)
            await tg.start(self.engine.run)
            await tg.start(self._connection_loop)
            task_status.started()

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

    async def _connection_loop(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        delays = backoff()
        started = False
        while True:
            # Read again at every connection: a rotated token is picked up without a restart.
            self.token = read_token(self.s)
            hello = P.Hello(role="agent", proto_version=P.PROTO_VERSION, token=self.token,
                            name="agent", site=self.s.site.name, limits=self.limits)
            try:
                link, welcome = await open_link(
                    self.s.site.controller, hello, timeout=self.t.connect,
                    ping_interval=self.t.heartbeat_interval, ping_timeout=self.t.lease_timeout,
                    ca_file=self.s.ca_file(),
                )
            except Exception as exc:
                if not is_retryable(exc):
                    log.error("agent refused: %s", exc)
                    raise
                delay = next(delays)
                log.info("cannot reach the controller (%s); retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
                continue
            delays = backoff()
            self.site_tag = welcome.site_tag or self.site_tag
            log.info("agent of %s connected to %s", welcome.site, self.s.site.controller)
            self.link = link
            try:
                for frame in list(self.outbox.values()):
                    await link.send_raw(frame)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._sender, link, tg.cancel_scope)
                    tg.start_soon(self._pings, link, tg.cancel_scope)
                    if not started:
                        started = True
                        task_status.started()
                    await self._reader(link, welcome)
                    tg.cancel_scope.cancel()
            except* TidewaterError as group:
                log.warning("lost the controller: %s", group.exceptions[0])
            finally:
                self.link = None
                self._connected = anyio.Event()
                await link.aclose()

    async def _reader(self, link: Link, welcome: P.Welcome) -> None:
        silence = max(welcome.lease_timeout, 3 * welcome.heartbeat_interval)
        while True:
            data = await link.recv_within(silence)
            try:
                msg = P.to_agent_decoder.decode(data)
            except msgspec.MsgspecError:
                log.warning("ignoring a frame the agent cannot decode")
                continue
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
                case P.Ack():
                    for seq in [q for q in self.outbox if q <= msg.seq]:
                        del self.outbox[seq]
                case P.Error():
                    log.warning("controller: %s", msg.message)
                case P.Reject():
                    raise ConnectionBroken(f"controller refused: {msg.reason}")
                case _:
                    pass

    async def _sender(self, link: Link, scope: anyio.CancelScope) -> None:
        try:
            while True:
                await self._wake_sender.wait()
                self._wake_sender = anyio.Event()
                if self.pending:
                    batch, self.pending = self.pending, []
                    await self._send_kept(link, P.JobUpdates(seq=self.seq + 1, updates=batch))
                if self.staged:
                    results, self.staged = self.staged, []
                    await self._send_kept(link, P.Staged(seq=self.seq + 1, results=results))
                while self.requests_out:
                    await link.send(self.requests_out.pop(0))
        finally:
            scope.cancel()

    async def _send_kept(self, link: Link, msg: P.JobUpdates | P.Staged) -> None:
        """Send a sequenced message, kept in the outbox until the controller acknowledges it."""
        self.seq = msg.seq
        frame = P.encode(msg)
        self.outbox[msg.seq] = frame
        await link.send_raw(frame)

    async def _pings(self, link: Link, scope: anyio.CancelScope) -> None:
        try:
            while True:
                await anyio.sleep(self.t.heartbeat_interval)
                await link.send(P.Ping(time=time.time()))
        finally:
            scope.cancel()

    def _staged(self, result: P.StageResult) -> None:
        """A task's transfers are over: report them (kept until acknowledged)."""
        self.staged.append(result)
        self._wake_sender.set()

    async def _read_file(self, msg: P.ReadFile) -> None:
        root = self.s.path(self.s.site.work_root)
        chunk = await anyio.to_thread.run_sync(read_chunk, root, msg.path, msg.offset,
                                               msg.length)
        self._send_request(msgspec.structs.replace(chunk, req_id=msg.req_id))

    def _send_request(self, msg: P.Msg) -> None:
        self.requests_out.append(msg)
        self._wake_sender.set()

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
        return any(u.job_id == job_id for u in self.pending) or bool(self.outbox)

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

    def _update(self, j: JobState, state: str, **kw: object) -> None:
        """Apply a change to a job and queue it for the controller (nothing new: nothing sent)."""
        nxt = states.job_step(j.state, state)
        sid = str(kw.get("scheduler_id") or "")
        reason = str(kw.get("reason") or "")
        error = str(kw.get("error") or "")
        if nxt is None and not error and (not sid or sid == j.scheduler_id) and (
            not reason or reason == j.reason
        ):
            return
        if nxt is not None:
            j.state = nxt
        if nxt in states.JOB_FINAL:
            j.ended_at = time.time()
        if sid:
            j.scheduler_id = sid
        if reason:
            j.reason = reason
        self.pending.append(P.JobUpdate(
            job_id=j.id, state=state, scheduler_id=j.scheduler_id, time=time.time(),
            reason=reason, error=error,
            start_time=kw.get("start_time"),  # type: ignore[arg-type]
            end_time=kw.get("end_time"),  # type: ignore[arg-type]
        ))
        self._wake_sender.set()
        self._rescale.set()

    # ------------------------------------------------------------------ scheduler

    async def _reconcile_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.s.site.poll_interval):
                await self._look.wait()
            self._look = anyio.Event()
            await self.reconcile()

    async def reconcile(self) -> None:
        """Look at the scheduler, report changes, submit and cancel what is due."""
        try:
            listed = await self.sched.status()
        except SchedulerError as exc:
            if str(exc) != self.listing_error:
                log.warning("cannot list batch jobs: %s", exc)
            self.listing_error = str(exc)
            return
        self.listing_error = ""
        self.listing = {st.scheduler_id: st for st in listed}
        by_name = {st.name: st for st in listed if st.state != "finished"}
        self.listed_at = time.time()
        for j in list(self.jobs.values()):
            if j.state in states.JOB_FINAL or j.busy:
                continue
            if not j.scheduler_id:
                found = by_name.get(job_name(self.s.site.name, j.id, self.site_tag))
                if found is not None:
                    log.info("adopting batch job %d: scheduler id %s", j.id, found.scheduler_id)
                    self._update(j, found.state, scheduler_id=found.scheduler_id,
                                 reason=found.reason, start_time=found.start_time)
                    continue
                if j.stop_wanted:
                    self._update(j, "finished", reason="cancelled before it was submitted")
                    continue
                if j.state == "pending_submission":
                    await self._submit(j)
                continue
            st = self.listing.get(j.scheduler_id)
            if st is None and not self._gone(j):
                continue
            j.missing_since = None
            if j.unneeded:
                # Decided on the controller's view; cancel only what the scheduler has
                # not started (a started job's pilot may already be running a task).
                j.unneeded = False
                if st is not None and st.state == "queued":
                    j.stop_wanted, j.reason = True, "no longer needed"
            if j.stop_wanted and j.state != "finished":
                await self._cancel(j)
            if st is None:
                self._update(j, "finished", reason=j.reason if j.state == "pending_deletion"
                             and j.reason else "no longer listed by the scheduler",
                             end_time=time.time())
            elif st.state != j.state:
                self._update(j, st.state, reason=st.reason, start_time=st.start_time,
                             end_time=st.end_time)
        # Forget what is final and acknowledged.
        for jid in [j.id for j in self.jobs.values()
                    if j.state in states.JOB_FINAL and not self._unsent(j.id)
                    and (j.ended_at or 0) < time.time() - 3600]:
            del self.jobs[jid]
        self._rescale.set()

    def _gone(self, j: JobState) -> bool:
        """Missing from two listings a poll apart: a scheduler may list a new job late."""
        now = time.time()
        if j.missing_since is None:
            j.missing_since = now
            self._look_later(max(1.0, min(self.s.site.poll_interval, 10.0)))
            return False
        return now - j.missing_since >= max(1.0, min(self.s.site.poll_interval, 10.0))

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
            if not self.s.autoscale.enabled or self.link is None or not self._connected.is_set():
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
