"""Batch jobs and site agents, as the controller keeps them. Pure.

A batch job is asked for by its site's owner (``queue submit``) or by the
site's autoscaler (``RequestJob``). The controller commits it as
``pending_submission`` with a fresh pilot token, and after the commit pushes
it to the site's agent (:class:`~.effects.JobStart`), which submits it to
the scheduler and reports back in sequenced ``JobUpdates``, acknowledged
after commit. Every state change goes through :func:`tidewater.states.job_step`:
the agent's reports, a cancel (``pending_deletion``), and the first pilot
to connect from inside a job, which proves it runs. A job that reaches a
final state has its pilot token revoked in the same commit, and is
announced as :class:`~.effects.JobEnded`, on which the facade closes the
token's connections and lets the job's pilots go, so their tasks are
requeued without waiting for a lease.

Every batch job lives in memory (there are few); the store has each row.
:class:`JobBook` knows no other book: a site comes in as a
:class:`~.model.SiteRec`, the dispatcher's and the pilots' numbers as
arguments, agents as connection ids. No await, no clock (``now`` is an
argument), no store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from .. import proto as P
from .. import states
from ..errors import InvalidRequest, NotFound
from .access import audit, mint
from .effects import AgentOwes, Close, CloseSessions, Effects, JobEnded, JobStart, Out, Send
from .model import JobRec, Principal, SiteRec
from .store import schema
from .store.base import Write
from .validate import check_job_spec

log = logging.getLogger("tidewater.controller")

MAX_LISTED = 10_000
"""Most batch jobs one listing returns."""


def why_ended(j: JobRec) -> str:
    """What a job's pilots and connections are told when it ends."""
    return f"batch job {j.id} ended" + (f" ({j.reason})" if j.reason else "")


class JobBook:
    """The controller's batch jobs, the agent connected for each site, and demand sent."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobRec] = {}
        self.agents: dict[int, int] = {}
        """Site id -> connection id of its agent."""
        self.agent_seen: dict[int, float] = {}
        """Site id -> when its agent last said anything (since this controller started)."""
        self.limits: dict[int, P.SiteLimits] = {}
        """Site id -> what its agent last said the scheduler allows."""
        self._next_id = 1
        self._demand_sent: dict[int, P.Demand] = {}

    def load(self, jobs: list[JobRec], limits: dict[int, P.SiteLimits]) -> None:
        """Take the jobs and site limits a store recovered (``token_id`` set on live jobs)."""
        self.limits.update(limits)
        for j in jobs:
            self.jobs[j.id] = j
            self._next_id = max(self._next_id, j.id + 1)

    # ------------------------------------------------------------------ views

    @staticmethod
    def info(j: JobRec, site_name: str, now: float) -> P.BatchJobInfo:
        """A job as its owner and its site's agent see it."""
        return P.BatchJobInfo(
            id=j.id, site=site_name, state=j.state, nodes=j.nodes,
            wall_time_min=j.wall_time_min, queue=j.queue, project=j.project,
            scheduler_id=j.scheduler_id, autoscaled=j.autoscaled, created_at=j.created_at,
            submitted_at=j.submitted_at, started_at=j.started_at, ended_at=j.ended_at,
            reason=j.reason, error=j.error, pilots=len(j.pilots), flagged=j.flag(now),
            first_pilot_at=j.first_pilot_at, first_pilot_process_at=j.first_pilot_process_at,
        )

    def owned(self, who: Principal, job_id: int) -> JobRec:
        """Job ``job_id`` if ``who`` may see it (its owner, through its site if a site token).

        Raises NotFound otherwise, the same as for a job that does not exist.
        """
        j = self.jobs.get(job_id)
        if j is None or j.owner_id != who.user_id or (
            who.site_id is not None and j.site_id != who.site_id
        ):
            raise NotFound(f"no batch job {job_id}")
        return j

    # ------------------------------------------------------------------ creating

    def _new(self, site_id: int, owner_id: int, spec: P.JobSpec, *, autoscaled: bool,
             key: str | None, now: float) -> tuple[JobRec, str, list[Write]]:
        j = JobRec(
            id=self._next_id, site_id=site_id, owner_id=owner_id, state="pending_submission",
            nodes=spec.nodes, wall_time_min=spec.wall_time_min, queue=spec.queue,
            project=spec.project, created_at=now, autoscaled=autoscaled, request_key=key,
        )
        self._next_id += 1
        self.jobs[j.id] = j
        minted, token_write = mint("pilot", owner_id, site_id=site_id, batch_job=j.id, now=now)
        j.token_id = minted.id
        return j, minted.token, [schema.upsert_job(j), token_write]

    def add_job(self, who: Principal, peer: int, msg: P.AddJob, site: SiteRec,
                now: float) -> Effects:
        """A user asks for a batch job on ``site`` (theirs, resolved from ``msg.job.site``).

        After commit: JobAdded to ``peer``, then :class:`JobStart`. Raises
        InvalidRequest if the site's scheduler would refuse it.
        """
        check_job_spec(msg.job, self.limits.get(site.id))
        j, token, writes = self._new(site.id, who.user_id, msg.job, autoscaled=False, key=None,
                                     now=now)
        writes.append(audit(who, "job.add", f"{site.name}/{j.id}", now, nodes=j.nodes,
                            wall_time_min=j.wall_time_min, queue=j.queue))
        fx = Effects(writes=writes)
        fx.reply(peer, P.JobAdded(req_id=msg.req_id, job=self.info(j, site.name, now)))
        fx.after.append(JobStart(j, token))
        log.info("batch job %d on %s asked for: %d nodes, %d min", j.id, site.name, j.nodes,
                 j.wall_time_min)
        return fx

    def push_start(self, j: JobRec, pilot_token: str, site_name: str, now: float) -> list[Out]:
        """What a committed :class:`JobStart` sends: the job to its site's agent, if connected.

        Nothing if the job is no longer waiting to be submitted (an agent that
        connected meanwhile has it in its Jobs list, with a newer token).
        """
        agent = self.agents.get(j.site_id)
        if agent is None or j.state != "pending_submission":
            return []
        return [Send(agent, P.StartJob(job=P.AgentJob(job=self.info(j, site_name, now),
                                                      pilot_token=pilot_token)))]

    def request_job(self, site: SiteRec, msg: P.RequestJob, now: float) -> Effects:
        """The site's autoscaler asks for a batch job; a resent key creates nothing.

        After commit: :class:`JobStart`. Raises NotFound if ``msg`` names
        another site, InvalidRequest for a key that is not 1-128 characters
        or a job the site's scheduler would refuse.
        """
        if msg.job.site and msg.job.site != site.name:
            raise NotFound(f"this site token is not for site {msg.job.site!r}")
        if not msg.key or len(msg.key) > 128:
            raise InvalidRequest("RequestJob needs a key of 1-128 characters")
        for j in self.jobs.values():
            if j.site_id == site.id and j.request_key == msg.key:
                return Effects()  # a resend: the job exists and was pushed (or listed in Jobs)
        check_job_spec(msg.job, self.limits.get(site.id))
        j, token, writes = self._new(site.id, site.owner_id, msg.job, autoscaled=True,
                                     key=msg.key, now=now)
        fx = Effects(writes=writes)
        fx.after.append(JobStart(j, token))
        log.info("autoscaler of %s asked for batch job %d: %d nodes", site.name, j.id, j.nodes)
        return fx

    # ------------------------------------------------------------------ requests

    def list_jobs(self, who: Principal, peer: int, msg: P.ListJobs,
                  site_name_of: Callable[[int], str], now: float) -> Effects:
        """``who``'s batch jobs (of one site, finished ones too if asked), the newest ``limit``."""
        mine: list[JobRec] = []
        for j in self.jobs.values():
            if j.owner_id != who.user_id:
                continue
            if msg.site is not None and site_name_of(j.site_id) != msg.site:
                continue
            if not msg.include_finished and j.state in states.JOB_FINAL:
                continue
            mine.append(j)
        mine.sort(key=lambda j: j.id)
        limit = max(1, min(msg.limit, MAX_LISTED))
        fx = Effects()
        fx.send(peer, P.JobList(req_id=msg.req_id, jobs=[
            self.info(j, site_name_of(j.site_id), now) for j in mine[-limit:]]))
        return fx

    def cancel_job(self, who: Principal, peer: int, msg: P.CancelJob, now: float) -> Effects:
        """Ask the site's agent to delete a batch job (``pending_deletion`` until it is gone).

        After commit: Done to ``peer``, then StopJob to the site's agent if
        one is connected. Raises NotFound for a job ``who`` does not own,
        InvalidRequest (code "final") for one that has ended.
        """
        j = self.owned(who, msg.id)
        if j.state in states.JOB_FINAL:
            raise InvalidRequest(f"batch job {j.id} has already ended ({j.state})", "final")
        if states.job_step(j.state, "pending_deletion") is not None:
            j.state = "pending_deletion"
            j.reason = "cancel requested"
        fx = Effects(writes=[schema.upsert_job(j), audit(who, "job.cancel", str(j.id), now)])
        fx.reply(peer, P.Done(req_id=msg.req_id))
        agent = self.agents.get(j.site_id)
        if agent is not None:
            # An agent that connects before the commit lands has the job, pending_deletion,
            # in its Jobs list instead.
            fx.reply(agent, P.StopJob(job_id=j.id, scheduler_id=j.scheduler_id))
        return fx

    # ------------------------------------------------------------------ agents

    def agent_hello(self, who: Principal, peer: int, hello: P.Hello, welcome: P.Welcome,
                    site: SiteRec | None, now: float) -> Effects:
        """An agent connected on ``peer``: welcome it, remember its limits, give it its jobs.

        ``site`` is the site of ``who``'s site token. ``out`` is the Welcome
        (first), then the close of the agent connection it replaces. A job
        still to be submitted gets a new pilot token (only the hash of the
        old one is kept): its old token is revoked in the same commit. After
        commit: the old tokens' connections close, then Jobs (every job of
        the site not final) to ``peer``, then :class:`AgentOwes`.

        Raises InvalidRequest (code "auth") for a token that is not a site
        token, NotFound if the Hello names another site.
        """
        if who.site_id is None or who.batch_job or site is None or site.id != who.site_id:
            raise InvalidRequest("an agent must connect with its site's token", "auth")
        if hello.site and hello.site != site.name:
            raise NotFound(f"this site token is not for site {hello.site!r}")
        fx = Effects(wake=True)
        fx.send(peer, welcome)
        old = self.agents.get(site.id)
        if old is not None and old != peer:
            fx.out.append(Close(old, 4000, "replaced by a new connection of the site's agent"))
        self.agents[site.id] = peer
        self.agent_seen[site.id] = now
        self._demand_sent.pop(site.id, None)
        if hello.limits is not None:
            self.limits[site.id] = hello.limits
            fx.writes.append(schema.update_site_limits(site.id, hello.limits))
        jobs: list[P.AgentJob] = []
        replaced: list[str] = []
        for j in sorted(self.jobs.values(), key=lambda j: j.id):
            if j.site_id != site.id or j.state in states.JOB_FINAL:
                continue
            token = ""
            if j.state == "pending_submission":
                # The secret is only kept hashed: a job still to be submitted gets a new one.
                minted, token_write = mint("pilot", j.owner_id, site_id=j.site_id,
                                           batch_job=j.id, now=now)
                fx.writes += [schema.revoke_job_tokens(j.id, now), token_write]
                if j.token_id:
                    replaced.append(j.token_id)
                j.token_id, token = minted.id, minted.token
            jobs.append(P.AgentJob(job=self.info(j, site.name, now), pilot_token=token))
        if replaced:
            fx.after.append(CloseSessions(replaced, "replaced by a new pilot token"))
        fx.reply(peer, P.Jobs(jobs=jobs))
        fx.after.append(AgentOwes(site.id, peer))
        log.info("agent of site %s connected (%d live batch jobs)", site.name, len(jobs))
        return fx

    def agent_heard(self, site_id: int, now: float) -> None:
        """The site's agent said something at ``now`` (its last heartbeat, for health)."""
        self.agent_seen[site_id] = now

    def had_agent(self, site_id: int) -> bool:
        """The site has had an agent: seen since the start, its limits known, or jobs made."""
        return (site_id in self.agent_seen or site_id in self.limits
                or any(j.site_id == site_id for j in self.jobs.values()))

    def agent_gone(self, site_id: int, peer: int) -> None:
        """Connection ``peer`` of the site's agent closed (a newer one stays)."""
        if self.agents.get(site_id) == peer:
            del self.agents[site_id]

    def job_updates(self, site_id: int, peer: int, msg: P.JobUpdates, now: float) -> Effects:
        """What the site's agent learned of its jobs, applied through ``job_step``.

        A report for another site's or an unknown job, of an unknown state,
        or going backwards changes nothing (its other fields still count
        when the state stays). After commit: Ack(seq) to ``peer``, then
        :class:`JobEnded` for each job that reached a final state (its pilot
        token is revoked in the commit).
        """
        fx = Effects()
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
                when = u.time or now
                if nxt == "queued" or (j.submitted_at is None and nxt != "submit_failed"):
                    j.submitted_at = j.submitted_at or when
                if nxt == "running":
                    j.started_at = u.start_time or when
                if nxt in states.JOB_FINAL:
                    j.ended_at = u.end_time or when
                    if u.start_time and j.started_at is None:
                        j.started_at = u.start_time
                    # The pilot token dies with its job.
                    fx.writes.append(schema.revoke_job_tokens(j.id, now))
                    ended.append(j)
            if changed:
                fx.writes.append(schema.upsert_job(j))
        fx.reply(peer, P.Ack(seq=msg.seq))
        fx.after.extend(JobEnded(j) for j in ended)
        return fx

    # ------------------------------------------------------------------ pilots of a job

    def pilot_joined(self, job_id: int, pilot_id: str, process_started_at: float | None,
                     now: float) -> Effects:
        """A pilot of the job connected: it proves the job runs, before the agent's next look.

        Records the pilot and when the first one came; a job waiting to be
        submitted or queued becomes running (through ``job_step``: a job
        that has ended stays so). Nothing for an unknown job.
        """
        j = self.jobs.get(job_id)
        if j is None:
            return Effects()
        j.pilots.add(pilot_id)
        j.seen_pilot = True
        if j.first_pilot_at is None:
            j.first_pilot_at = now
            j.first_pilot_process_at = process_started_at
        if states.job_step(j.state, "running") is None:
            return Effects()
        j.state, j.started_at = "running", j.started_at or now
        return Effects(writes=[schema.upsert_job(j)])

    def pilot_left(self, job_id: int, pilot_id: str) -> None:
        """A pilot of the job is gone (lost, exited, or let go)."""
        j = self.jobs.get(job_id)
        if j is not None:
            j.pilots.discard(pilot_id)

    def release_pilots(self, job_id: int) -> list[str]:
        """The pilots of a job that ended, forgotten here: the facade declares each lost."""
        j = self.jobs.get(job_id)
        if j is None:
            return []
        pilots = sorted(j.pilots)
        j.pilots.clear()
        return pilots

    # ------------------------------------------------------------------ demand

    @staticmethod
    def demand(site_id: int, dispatcher_demand: tuple[int, int, int, int], idle_nodes: int,
               busy_nodes: int, longest_wall_time: float | None) -> P.Demand:
        """The Demand frame of site ``site_id`` for its autoscaler.

        ``dispatcher_demand`` is the dispatcher's (tasks, cores, GPUs, whole
        nodes) queued for the site; ``idle_nodes``/``busy_nodes`` count the
        nodes of its connected pilots with nothing to do / with work or
        draining; ``longest_wall_time`` the longest estimate queued.
        """
        tasks, cores, gpus, whole = dispatcher_demand
        return P.Demand(tasks=tasks, node_demand=float(whole), cores=cores, gpus=gpus,
                        idle_nodes=idle_nodes, busy_nodes=busy_nodes,
                        max_wall_time=longest_wall_time)

    def send_demand(self, site_ids: Iterable[int],
                    demand_of: Callable[[int], P.Demand]) -> list[Out]:
        """Demand to the agent of each of ``site_ids`` whose demand changed since last sent.

        A site without an agent is skipped (its demand is not asked for); a
        reconnected agent gets its demand again.
        """
        out: list[Out] = []
        for sid in site_ids:
            agent = self.agents.get(sid)
            if agent is None:
                continue
            d = demand_of(sid)
            if self._demand_sent.get(sid) != d:
                self._demand_sent[sid] = d
                out.append(Send(agent, d))
        return out
