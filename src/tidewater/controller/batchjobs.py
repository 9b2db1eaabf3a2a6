"""Batch jobs and site agents, as the controller keeps them.

A batch job is asked for by its site's owner (``queue submit``) or by the
site's autoscaler (``RequestJob``). The controller commits it as
``pending_submission`` with a fresh pilot token, and pushes it to the site's
agent, which submits it to the scheduler and reports back in sequenced
``JobUpdates`` (acknowledged after commit, like pilot reports). A job that
reaches a final state revokes its pilot token and its pilots are let go at
once, so their tasks are requeued without waiting for a lease.

Every batch job lives in memory (there are few); the store has each row.
The controller's store, sites and pilots are reached through the owning
:class:`~tidewater.controller.core.Controller`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec

from .. import proto as P
from .. import states
from ..errors import InvalidRequest, NotFound
from .model import JobRec
from .store import schema
from .store.base import Recovered, Write

if TYPE_CHECKING:
    from .core import Controller, Peer, Principal

log = logging.getLogger("tidewater.controller")

def check_spec(spec: P.JobSpec, limits: P.SiteLimits | None) -> None:
    """Refuse a batch job the site's scheduler would reject; say why."""
    if spec.nodes < 1 or spec.nodes > 100_000:
        raise InvalidRequest(f"nodes must be between 1 and 100000, not {spec.nodes}")
    if spec.wall_time_min < 1 or spec.wall_time_min > 100_000:
        raise InvalidRequest(f"wall time must be at least 1 minute, not {spec.wall_time_min}")
    for what, value in (("queue", spec.queue), ("project", spec.project)):
        if len(value) > 128 or any(c in value for c in "\n\r\x00"):
            raise InvalidRequest(f"invalid {what} {value!r}")
    if limits is None:
        return
    if limits.queues and spec.queue and spec.queue not in limits.queues:
        raise InvalidRequest(
            f"queue {spec.queue!r} is not allowed on site {spec.site!r} "
            f"(allowed: {', '.join(limits.queues)})"
        )
    if limits.projects and spec.project and spec.project not in limits.projects:
        raise InvalidRequest(
            f"project {spec.project!r} is not allowed on site {spec.site!r} "
            f"(allowed: {', '.join(limits.projects)})"
        )
    if limits.max_nodes_per_job is not None and spec.nodes > limits.max_nodes_per_job:
        raise InvalidRequest(
            f"{spec.nodes} nodes asked; site {spec.site!r} allows at most "
            f"{limits.max_nodes_per_job} per batch job"
        )
    if limits.max_wall_time_min is not None and spec.wall_time_min > limits.max_wall_time_min:
        raise InvalidRequest(
            f"wall time {spec.wall_time_min} min asked; site {spec.site!r} allows at most "
            f"{limits.max_wall_time_min} min"
        )


def check_task_fits(site: str, res: P.Resources, limits: P.SiteLimits | None,
                    wall_time: float | None = None) -> None:
    """Refuse at submit a task that no node or batch job of the site can ever hold."""
    if limits is None:
        return
    if (
        wall_time is not None and limits.max_wall_time_min is not None
        and wall_time > limits.max_wall_time_min * 60
    ):
        raise InvalidRequest(
            f"wall_time {wall_time:g} s is longer than the {limits.max_wall_time_min} min "
            f"batch jobs of site {site!r} may last"
        )
    cores = max(res.cores, res.ranks_per_node * res.threads_per_rank)
    gpus = max(res.gpus, res.ranks_per_node * res.gpus_per_rank)
    if limits.cores_per_node is not None and cores > limits.cores_per_node:
        raise InvalidRequest(
            f"needs {cores} cores per node; nodes of site {site!r} have "
            f"{limits.cores_per_node} (lower ranks_per_node/threads_per_rank or use more nodes)"
        )
    if limits.gpus_per_node is not None and gpus > limits.gpus_per_node:
        raise InvalidRequest(
            f"needs {gpus} GPUs per node; nodes of site {site!r} have {limits.gpus_per_node}"
        )
    if limits.max_nodes_per_job is not None and res.num_nodes > limits.max_nodes_per_job:
        raise InvalidRequest(
            f"needs {res.num_nodes} nodes; site {site!r} allows at most "
            f"{limits.max_nodes_per_job} per batch job"
        )


class BatchJobs:
    """The controller's batch jobs and agent connections."""

    def __init__(self, c: Controller) -> None:
        self.c = c
        self.jobs: dict[int, JobRec] = {}
        self.agents: dict[int, Peer] = {}  # site id -> the connected agent
        self.limits: dict[int, P.SiteLimits] = {}
        self._next_id = 1
        self._demand_sent: dict[int, P.Demand] = {}

    def recover(self, rec: Recovered) -> None:
        """Load the sites' limits and every batch job (with its live pilot token)."""
        for site in rec.sites:
            if site.limits_json:
                self.limits[site.id] = msgspec.json.decode(site.limits_json, type=P.SiteLimits)
        for job in rec.jobs:
            self.jobs[job.id] = job
            self._next_id = max(self._next_id, job.id + 1)

    # ------------------------------------------------------------------ views

    def info(self, j: JobRec, now: float | None = None) -> P.BatchJobInfo:
        now = time.time() if now is None else now
        return P.BatchJobInfo(
            id=j.id, site=self.c.sites[j.site_id].name, state=j.state, nodes=j.nodes,
            wall_time_min=j.wall_time_min, queue=j.queue, project=j.project,
            scheduler_id=j.scheduler_id, autoscaled=j.autoscaled, created_at=j.created_at,
            submitted_at=j.submitted_at, started_at=j.started_at, ended_at=j.ended_at,
            reason=j.reason, error=j.error, pilots=len(j.pilots), flagged=j.flag(now),
            first_pilot_at=j.first_pilot_at, first_pilot_process_at=j.first_pilot_process_at,
        )

    def _owned(self, who: Principal, job_id: int) -> JobRec:
        j = self.jobs.get(job_id)
        if j is None or j.owner_id != who.user_id or (
            who.site_id is not None and j.site_id != who.site_id
        ):
            raise NotFound(f"no batch job {job_id}")
        return j

    # ------------------------------------------------------------------ creating

    def _new(self, site_id: int, owner_id: int, spec: P.JobSpec, *, autoscaled: bool,
             key: str | None) -> tuple[JobRec, str, list[Write]]:
        j = JobRec(
            id=self._next_id, site_id=site_id, owner_id=owner_id, state="pending_submission",
            nodes=spec.nodes, wall_time_min=spec.wall_time_min, queue=spec.queue,
            project=spec.project, created_at=time.time(), autoscaled=autoscaled,
            request_key=key,
        )
        self._next_id += 1
        self.jobs[j.id] = j
        minted, token_row = self.c.tokens.row("pilot", owner_id, site_id=site_id, batch_job=j.id)
        j.token_id = minted.id
        return j, minted.token, [schema.upsert_job(j), token_row]

    async def add_job(self, who: Principal, peer: Peer, msg: P.AddJob) -> None:
        site = self.c._site_of(who, msg.job.site)
        check_spec(msg.job, self.limits.get(site.id))
        j, token, stmts = self._new(site.id, who.user_id, msg.job, autoscaled=False, key=None)
        info = self.info(j)

        def committed() -> None:
            peer.send(P.JobAdded(req_id=msg.req_id, job=info))
            self._push_start(j, token)

        stmts.append(self.c.tokens.audit(who, "job.add", f"{site.name}/{j.id}", nodes=j.nodes,
                                         wall_time_min=j.wall_time_min, queue=j.queue))
        await self.c._write(stmts, committed)
        log.info("batch job %d on %s asked for: %d nodes, %d min", j.id, site.name, j.nodes,
                 j.wall_time_min)

    def _push_start(self, j: JobRec, token: str) -> None:
        agent = self.agents.get(j.site_id)
        if agent is not None and j.state == "pending_submission":
            agent.send(P.StartJob(job=P.AgentJob(job=self.info(j), pilot_token=token)))

    def list_jobs(self, who: Principal, peer: Peer, msg: P.ListJobs) -> None:
        now = time.time()
        out = []
        for j in self.jobs.values():
            if j.owner_id != who.user_id:
                continue
            if msg.site is not None and self.c.sites[j.site_id].name != msg.site:
                continue
            if not msg.include_finished and j.state in states.JOB_FINAL:
                continue
            out.append(j)
        out.sort(key=lambda j: j.id)
        limit = max(1, min(msg.limit, 10_000))
        peer.send(P.JobList(req_id=msg.req_id, jobs=[self.info(j, now) for j in out[-limit:]]))

    async def cancel_job(self, who: Principal, peer: Peer, msg: P.CancelJob) -> None:
        j = self._owned(who, msg.id)
        if j.state in states.JOB_FINAL:
            raise InvalidRequest(f"batch job {j.id} has already ended ({j.state})", "final")
        if j.state != "pending_deletion":
            j.state = "pending_deletion"
            j.reason = "cancel requested"
        job_id, sched_id = j.id, j.scheduler_id

        def committed() -> None:
            peer.send(P.Done(req_id=msg.req_id))
            agent = self.agents.get(j.site_id)
            if agent is not None:
                agent.send(P.StopJob(job_id=job_id, scheduler_id=sched_id))

        await self.c._write([schema.upsert_job(j),
                             self.c.tokens.audit(who, "job.cancel", str(j.id))], committed)

    # ------------------------------------------------------------------ agents

    async def agent_hello(self, who: Principal, peer: Peer, hello: P.Hello,
                          welcome: P.Welcome) -> int:
        """An agent connected: remember its limits, send Welcome and every live job."""
        if who.site_id is None or who.batch_job:
            raise InvalidRequest("an agent must connect with its site's token", "auth")
        site = self.c.sites[who.site_id]
        if hello.site and hello.site != site.name:
            raise NotFound(f"this site token is not for site {hello.site!r}")
        old = self.agents.get(site.id)
        if old is not None and old is not peer:
            old.close(4000, "replaced by a new connection of the site's agent")
        self.agents[site.id] = peer
        self._demand_sent.pop(site.id, None)
        stmts: list[Write] = []
        if hello.limits is not None:
            self.limits[site.id] = hello.limits
            stmts.append(schema.update_site_limits(site.id, hello.limits))
        peer.send(welcome)
        out: list[P.AgentJob] = []
        for j in sorted(self.jobs.values(), key=lambda j: j.id):
            if j.site_id != site.id or j.state in states.JOB_FINAL:
                continue
            token = ""
            if j.state == "pending_submission":
                # The secret is only kept hashed: a job still to be submitted gets a new one.
                minted, token_row = self.c.tokens.row("pilot", j.owner_id, site_id=j.site_id,
                                                      batch_job=j.id)
                stmts += [schema.revoke_job_tokens(j.id, time.time()), token_row]
                self.c.tokens.close_sessions([j.token_id], "replaced by a new pilot token")
                j.token_id, token = minted.id, minted.token
            out.append(P.AgentJob(job=self.info(j), pilot_token=token))
        def committed() -> None:
            peer.send(P.Jobs(jobs=out))
            self.c.staging.agent_connected(site.id, peer)

        await self.c._write(stmts, committed)
        self.c._demand_dirty.add(site.id)
        self.c._wake.set()
        log.info("agent of site %s connected (%d live batch jobs)", site.name, len(out))
        return site.id

    def agent_gone(self, site_id: int, peer: Peer) -> None:
        if self.agents.get(site_id) is peer:
            del self.agents[site_id]

    async def request_job(self, site_id: int, peer: Peer, msg: P.RequestJob) -> None:
        site = self.c.sites[site_id]
        if msg.job.site and msg.job.site != site.name:
            raise NotFound(f"this site token is not for site {msg.job.site!r}")
        if not msg.key or len(msg.key) > 128:
            raise InvalidRequest("RequestJob needs a key of 1-128 characters")
        for j in self.jobs.values():
            if j.site_id == site_id and j.request_key == msg.key:
                return  # a resend: the job exists and was pushed (or listed in Jobs)
        check_spec(msg.job, self.limits.get(site_id))
        j, token, stmts = self._new(site_id, site.owner_id, msg.job, autoscaled=True, key=msg.key)
        await self.c._write(stmts, lambda: self._push_start(j, token))
        log.info("autoscaler of %s asked for batch job %d: %d nodes", site.name, j.id, j.nodes)

    async def job_updates(self, site_id: int, peer: Peer, msg: P.JobUpdates) -> None:
        stmts: list[Write] = []
        ended: list[JobRec] = []
        for u in msg.updates:
            j = self.jobs.get(u.job_id)
            if j is None or j.site_id != site_id:
                log.warning("agent of site %d reported unknown batch job %d", site_id, u.job_id)
                continue
            try:
                nxt = states.job_step(j.state, u.state)
            except ValueError as exc:
                log.warning("agent of site %d: %s", site_id, exc)
                continue
            changed = False
            if u.scheduler_id and u.scheduler_id != j.scheduler_id:
                j.scheduler_id, changed = u.scheduler_id, True
            if u.reason and u.reason != j.reason:
                j.reason, changed = u.reason, True
            if u.error != j.error and (u.error or nxt is not None):
                j.error, changed = u.error, True
            if nxt is not None:
                changed = True
                j.state = nxt
                when = u.time or time.time()
                if nxt == "queued" or (j.submitted_at is None and nxt != "submit_failed"):
                    j.submitted_at = j.submitted_at or when
                if nxt == "running":
                    j.started_at = u.start_time or when
                if nxt in states.JOB_FINAL:
                    j.ended_at = u.end_time or when
                    if u.start_time and j.started_at is None:
                        j.started_at = u.start_time
                    # The pilot token dies with its job.
                    stmts.append(schema.revoke_job_tokens(j.id, time.time()))
                    ended.append(j)
            if changed:
                stmts.append(schema.upsert_job(j))
        seq = msg.seq

        def committed() -> None:
            peer.send(P.Ack(seq=seq))
            for j in ended:
                self._ended(j)

        await self.c._write(stmts, committed)

    def _ended(self, j: JobRec) -> None:
        why = f"batch job {j.id} ended" + (f" ({j.reason})" if j.reason else "")
        self.c.tokens.close_sessions([j.token_id], why)
        log.info("%s on site %s", why, self.c.sites[j.site_id].name)
        for pilot_id in list(j.pilots):
            rec = self.c.pilots.get(pilot_id)
            if rec is not None:
                self.c._pilot_lost(rec, why)
        j.pilots.clear()
        self.c._demand_dirty.add(j.site_id)
        self.c._wake.set()

    # ------------------------------------------------------------------ demand

    def demand_for(self, site_id: int) -> P.Demand:
        c = self.c
        tasks, cores, gpus, whole = c.dispatcher.demand(site_id)
        idle = busy = 0
        for p in c.pilots.values():
            if p.site_id != site_id or p.peer is None:
                continue
            n = max(1, p.node_count)
            if p.assigned or p.draining:
                busy += n
            else:
                idle += n
        return P.Demand(tasks=tasks, node_demand=float(whole), cores=cores, gpus=gpus,
                        idle_nodes=idle, busy_nodes=busy,
                        max_wall_time=c.dispatcher.longest_wall_time(site_id))

    def send_demand(self, sites: set[int]) -> None:
        for sid in sites:
            agent = self.agents.get(sid)
            if agent is None:
                continue
            d = self.demand_for(sid)
            if self._demand_sent.get(sid) != d:
                self._demand_sent[sid] = d
                agent.send(d)
