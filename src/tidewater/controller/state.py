"""The controller's pure core: every request and timer as ``handle -> Effects``.

:class:`ControllerState` owns the books (tasks, pilots, jobs, sites and
apps, watchers and waiters, staging, tokens, the dispatcher) and is the only
place where one book's change becomes another's: a batch job ends -> its
pilots are let go -> their running attempts fail -> their tasks' children
fail, all in one :class:`~.effects.Effects`. It never awaits, never reads
the clock (``now`` is an argument) and never touches a connection or the
store; :mod:`.service` drives it.

Requests that need stored data are two-phase: the driver reads what the
request names (see :class:`Stored`) and then calls the handler, with no
await between. A handler raises :class:`NeedsRead` when memory moved during
that read (a task left memory because it finished): the driver reads again.

What follows a commit comes back through :meth:`ControllerState.committed`,
which the driver calls from the store's commit callback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgspec

from .. import proto as P
from .. import states
from ..config import ControllerConfig
from ..errors import InvalidRequest, NotFound
from ..states import TaskState as S
from .access import TokenBook
from .dispatch import Dispatcher
from .effects import (
    After,
    AgentOwes,
    Close,
    CloseSessions,
    Effects,
    JobEnded,
    JobStart,
    KillOnPilot,
    PilotStored,
    Send,
    Touched,
)
from .health import DOWN, Health, SiteSigns, site_health
from .jobs import JobBook, why_ended
from .model import JobRec, LiveTask, Principal, SiteRec
from .notify import Notify
from .pilots import Decision, PilotBook, PilotRec, build_assignment, check_hello, reconcile
from .registry import Registry
from .routing import ROUND_ROBIN, Measures, Need, SiteState, choose, queue_wait
from .staging import Staging
from .store import schema
from .store.base import Recovered
from .tasks import Change, TaskTable, add_route, bounded_exception, routes_of, task_info
from .timings import TaskTimes

log = logging.getLogger("tidewater.controller")


class NeedsRead(Exception):  # noqa: N818 -- a signal to the driver, not an error
    """Memory moved during the driver's read: read ``ids`` (again) and call once more."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(ids)
        self.ids = ids


@dataclass
class Stored:
    """What the driver read for one request: tasks by id, and which ids it looked up."""

    tasks: dict[int, LiveTask] = field(default_factory=dict)
    read: set[int] = field(default_factory=set)
    states: dict[int, S] = field(default_factory=dict)
    outputs: dict[tuple[int, str], bytes | None] = field(default_factory=dict)
    prior: tuple[int, int] | None = None


class ControllerState:
    """The books, and the rules that tie them together."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.tasks = TaskTable(config.limits.max_inline_bytes)
        self.pilots = PilotBook(config.timeouts.lease_timeout, config.timeouts.grace())
        self.jobs = JobBook()
        self.registry = Registry()
        self.notify = Notify(config.limits.max_watches, config.limits.max_frame_bytes)
        self.staging = Staging()
        self.tokens = TokenBook()
        self.dispatcher = Dispatcher()
        self.demand_dirty: set[int] = set()
        self.measures = Measures()
        self.times = TaskTimes()
        """Submit -> start and dispatch latencies per site, for ``/metrics``."""
        self.route_cursor: dict[int, int] = {}
        """Per owner, the round-robin cursor of the routing policy."""
        self.routed: dict[int, set[int]] = {}
        """Per site, live tasks routed there that may be routed again (pruned lazily)."""
        self._sites_up: frozenset[int] | None = None
        """The sites not down at the last :meth:`reroute` (None: not looked yet)."""

    # ================================================================== start

    def load(self, rec: Recovered, now: float) -> Effects:
        """Take what the store holds; the writes that move orphaned children on."""
        self.registry.load(rec.sites, rec.apps)
        limits = {s.id: msgspec.json.decode(s.limits_json, type=P.SiteLimits)
                  for s in rec.sites if s.limits_json}
        self.jobs.load(rec.jobs, limits)
        writes, touched = self.tasks.load(rec.next_task, rec.next_event, rec.live, rec.parents,
                                          now)
        self.notify.committed_event = rec.next_event - 1
        self.pilots.load(rec.pilots, rec.live, now)
        for t in rec.live:
            if '"routes"' in t.extra_j:
                self.routed.setdefault(t.site_id, set()).add(t.id)
            if t.state in states.RUNNABLE:
                t.pilot = ""
                self._enqueue(t, now)
        if rec.live:
            log.info("recovered %d live tasks; %d pilots expected back", len(rec.live),
                     len(self.pilots.pilots))
        return Effects(writes=writes, after=list(touched), wake=True)

    # ================================================================== helpers

    def _enqueue(self, t: LiveTask, now: float) -> None:
        self.dispatcher.push(t)
        self.times.runnable(t.id, now)
        self.demand_dirty.add(t.site_id)

    def attempt_over(self, t: LiveTask) -> None:
        """The task's attempt no longer occupies its pilot (and the nodes it reserved)."""
        rec = self.pilots.pilots.get(t.pilot)
        if rec is not None and self.pilots.unassign(rec, t.id):
            if self.dispatcher.pilot(rec.pilot_id) is not None:
                self.dispatcher.task_left(rec.pilot_id)
            elif rec.slot is not None and rec.slot.busy > 0:
                rec.slot.busy -= 1
            self.demand_dirty.add(rec.site_id)
        self.dispatcher.release(t.id)

    def _unassign(self, t: LiveTask) -> None:
        self.attempt_over(t)
        t.pilot = ""

    def _fail(self, t: LiveTask, kind: S, now: float, why: str, *,
              exit_code: int | None = None, give_up: bool = False) -> Change:
        self.attempt_over(t)
        return self.tasks.fail_attempt(t, kind, now, why, exit_code=exit_code, give_up=give_up)

    def owned(self, who: Principal, ids: list[int], stored: Stored
              ) -> tuple[dict[int, LiveTask], dict[int, LiveTask], list[int]]:
        """``who``'s tasks among ``ids``: (live, final from the store, left memory meanwhile).

        The third are ids that were live when the driver looked and have
        finished since (so they are ``who``'s, and final in the store): the
        caller skips them or has them read. Raises NotFound naming the first
        id ``who`` has no task for; nothing is changed then.
        """
        ids = list(dict.fromkeys(ids))
        live = {i: t for i in ids if (t := self.tasks.owned(who, i)) is not None}
        final = {i: stored.tasks[i] for i in ids if i not in live and i in stored.tasks}
        left = [i for i in ids if i not in live and i not in final and i not in stored.read]
        missing = [i for i in ids if i not in live and i not in final and i in stored.read]
        if missing:
            raise NotFound(f"no task with id {missing[0]}")
        return live, final, left

    def unread(self, who: Principal, ids: list[int]) -> list[int]:
        """Those of ``ids`` not live for ``who``: what the driver reads first."""
        return [i for i in dict.fromkeys(ids) if self.tasks.owned(who, i) is None]

    def info(self, t: LiveTask) -> P.TaskInfo:
        return task_info(t, self.registry.site_name(t.site_id))

    def agent_of(self, site_id: int) -> int | None:
        return self.jobs.agents.get(site_id)

    # ================================================================== health

    def site_health(self, site_id: int, now: float) -> Health:
        """Up, degraded or down, and why (see :mod:`.health`).

        Asked at every Submit: the pilots are counted, not looked through, unless
        none is connected (only then does the reason name when one was last heard).
        """
        live, held = self.pilots.count(site_id)
        seen = 0.0 if live else max((p.last_seen for p in self.pilots.of_site(site_id)),
                                    default=0.0)
        return site_health(SiteSigns(
            agent_connected=site_id in self.jobs.agents,
            agent_seen=self.jobs.agent_seen.get(site_id, 0.0),
            had_agent=self.jobs.had_agent(site_id),
            pilots=live, pilots_away=held - live, pilot_seen=seen), now)

    def site_info(self, rec: SiteRec, now: float) -> P.SiteInfo:
        """A site as ``site ls`` shows it: capacity, health, and every pilot held for it."""
        pilots = sorted(self.pilots.of_site(rec.id), key=lambda p: p.pilot_id)
        connected = [p for p in pilots if p.peer is not None]
        health = self.site_health(rec.id, now)
        return P.SiteInfo(
            name=rec.name, created_at=rec.created_at, pilots=len(connected),
            cores=sum(p.cores for p in connected), gpus=sum(p.gpus for p in connected),
            agent=rec.id in self.jobs.agents,
            batch_jobs=sum(1 for j in self.jobs.jobs.values()
                           if j.site_id == rec.id and j.state not in states.JOB_FINAL),
            health=health.state, health_reason=health.reason,
            agent_seen=self.jobs.agent_seen.get(rec.id, 0.0),
            pilot_seen=max((p.last_seen for p in pilots), default=0.0),
            pilot_list=[P.PilotInfo(
                pilot_id=p.pilot_id, hostname=p.hostname, cores=p.cores, gpus=p.gpus,
                connected=p.peer is not None, last_seen=p.last_seen, running=len(p.assigned),
                batch_job=p.batch_job, draining=p.draining) for p in pilots],
        )

    # ================================================================== routing

    def site_state(self, site_id: int, app: str, now: float) -> SiteState:
        """A site as routing sees it now (see :mod:`.routing`).

        Looks at the site's pilots and batch jobs once: asked once per candidate
        per routed Submit, not per task.
        """
        cores = free = running = 0
        for p in self.pilots.of_site(site_id):
            if p.peer is None:
                continue
            cores += p.cores
            running += len(p.assigned)
            slot = self.dispatcher.pilot(p.pilot_id)
            if slot is not None and not p.draining:
                free += max(0, min(slot.credit_cores, p.cores))
        queued, queued_cores, _gpus, _nodes = self.dispatcher.demand(site_id)
        waits = sorted((j.started_at, j.started_at - j.submitted_at)
                       for j in self.jobs.jobs.values()
                       if j.site_id == site_id and j.started_at is not None
                       and j.submitted_at is not None)
        return SiteState(
            name=self.registry.site_name(site_id),
            health=self.site_health(site_id, now).state,
            cores=cores, free_cores=free, queued_tasks=queued,
            queued_cores=queued_cores,  # of single-node tasks; multi-node ones count as tasks
            running_tasks=running,
            run_time=self.measures.run.get((site_id, app)),
            queue_wait=queue_wait([w for _, w in waits[-10:]]),
            can_grow=site_id in self.jobs.agents,
            transfer_rate=self.measures.rate.get(site_id))

    def reroute(self, now: float) -> Effects:
        """Route again the routed tasks not yet started whose site is down.

        Only tasks that wait in memory with nothing on their site are moved:
        runnable or awaiting parents, not sent to a pilot, no input that the
        site's agent fetches or that is a parent's output left on a site
        (those are tied to the site they were resolved for). Each is routed
        by its first route's policy among its first route's candidates, and
        the new route is recorded after the others.

        Work is done only when the set of sites that are not down changed
        since the last call (a site went down, or one came up that a waiting
        task may go to): otherwise one look at each site's health, and sites
        are few. A task left where it is (every candidate down) is looked at
        again at the next such change.
        """
        fx = Effects()
        up = frozenset(sid for sid in self.registry.sites
                       if self.site_health(sid, now).state != DOWN)
        if up == self._sites_up:
            return fx
        self._sites_up = up
        down = [sid for sid in self.routed if sid not in up]
        states_: dict[tuple[int, str], SiteState] = {}
        for sid in down:
            ids = self.routed[sid]
            for tid in list(ids):
                t = self.tasks.live.get(tid)
                if t is None or t.site_id != sid or t.pilot or t.state in states.FINAL \
                        or t.state == S.RUNNING:
                    ids.discard(tid)
                    continue
                if not (t.state in states.RUNNABLE or t.state == S.AWAITING_PARENTS) or any(
                        f.direction == "in" and f.state != "inline" for f in t.files or ()):
                    ids.discard(tid)  # tied to this site: left to wait there
                    continue
                first = routes_of(t)[0]
                cands = [c for e in first.candidates
                         if (c := self.registry.site_names.get((t.owner_id, e.site))) is not None]
                sites = []
                for c in cands:
                    if (c, t.app) not in states_:
                        states_[(c, t.app)] = self.site_state(c, t.app, now)
                    sites.append(states_[(c, t.app)])
                cursor = self.route_cursor.get(t.owner_id, 0)
                need = Need(cores=t.cores, wall_time=t.wall_time,
                            input_bytes=sum(len(v) for v in (t.in_data or {}).values()))
                route, after = choose(first.policy, sites, need, now, cursor)
                new = self.registry.site_names.get((t.owner_id, route.chosen))
                if new is None or new == sid:
                    continue  # every candidate is down: it waits where it is
                if first.policy == ROUND_ROBIN:
                    self.route_cursor[t.owner_id] = after
                ids.discard(tid)
                was_queued = self.dispatcher.discard(t.id)
                self.demand_dirty.update((sid, new))
                self.tasks.move(t, new)
                add_route(t, msgspec.structs.replace(
                    route, reason=f"site {self.registry.site_name(sid)} went down"))
                self.routed.setdefault(new, set()).add(tid)
                fx.writes.append(schema.reroute_task(t))
                if was_queued:
                    fx.after.append(Touched(t, [], t.state))  # queued again after the commit
                log.info("task %d routed again from site %s to %s: the site is down", tid,
                         self.registry.site_name(sid), route.chosen)
            if not ids:
                del self.routed[sid]
        return fx

    # ================================================================== after commit

    def committed(self, after: list[After], now: float) -> Effects:
        """What follows a commit, in order: notifications, queueing, frames, cascades."""
        fx = Effects()
        for item in after:
            match item:  # the common case first
                case Touched(task=t, events=events, written=written):
                    if events and t.owner_id in self.notify.watchers:
                        self.notify.emit(t, events, self.registry.site_name(t.site_id))
                    if written in states.FINAL:
                        self._finished(t)
                    elif (
                        written in states.RUNNABLE and t.state in states.RUNNABLE and not t.pilot
                        and t.id in self.tasks.live
                    ):
                        self._enqueue(t, now)
                        fx.wake = True
                    elif written == t.state and written in (S.READY, S.RUN_DONE):
                        pushed = self.staging.push(t, "in" if written == S.READY else "out",
                                                   self.agent_of(t.site_id))
                        if pushed and written == S.READY:
                            self.measures.stage_in_sent(t.id, now)
                        fx.out += pushed
                case Send() | Close():
                    fx.out.append(item)
                case KillOnPilot(pilot_id=pilot_id, tasks=pairs, reason=reason):
                    rec = self.pilots.pilots.get(pilot_id)
                    if rec is not None and rec.peer is not None:
                        fx.send(rec.peer, P.Kill(tasks=pairs, reason=reason))
                case JobEnded(job=job):
                    fx.extend(self._job_ended(job, now))
                case JobStart(job=job, pilot_token=token):
                    fx.out += self.jobs.push_start(job, token,
                                                   self.registry.site_name(job.site_id), now)
                case AgentOwes(site_id=site_id, peer=peer):
                    fx.out += self.staging.owed(self.tasks.live.values(), site_id, peer)
                case CloseSessions(token_ids=ids, reason=reason):
                    fx.out += self.tokens.close_sessions(ids, reason)
                case PilotStored(pilot_id=pilot_id, peer=peer):
                    for slot in self.pilots.slot_ready(pilot_id, peer):
                        self.dispatcher.add_pilot(slot)
                        fx.wake = True
        return fx

    def _finished(self, t: LiveTask) -> None:
        """A final state is committed: forget the task, answer its waiters."""
        if t.state == S.JOB_FINISHED and t.started_at is not None and t.finished_at is not None:
            self.measures.ran(t.site_id, t.app, t.finished_at - t.started_at)
        self.measures.staging_since.pop(t.id, None)
        self.times.forget(t.id)
        if (ids := self.routed.get(t.site_id)) is not None:
            ids.discard(t.id)
            if not ids:
                del self.routed[t.site_id]
        if self.tasks.finished(t) and self.notify.waiting_for(t.id):
            self.notify.answer(t.id, self.info(t))

    def flush(self) -> list[Send | Close]:
        """After each committed batch: the aggregated events and results."""
        return self.notify.flush()

    # ================================================================== pilots

    def pilot_hello(self, who: Principal, peer: int, hello: P.Hello, welcome: P.Welcome,
                    now: float) -> tuple[PilotRec, Effects]:
        """A pilot connected (or reconnected): Welcome first, then reconcile what it holds.

        Raises InvalidRequest (nothing sent, nothing changed) if the Hello is refused.
        """
        job = self.jobs.jobs.get(who.batch_job) if who.batch_job else None
        if who.batch_job and (job is None or (hello.batch_job and hello.batch_job != job.id)):
            raise NotFound(f"this pilot token is not for batch job {hello.batch_job}")
        if len(hello.nodes) > 100_000 or any(n.cores < 0 or n.gpus < 0 for n in hello.nodes):
            raise InvalidRequest("invalid node list")
        if who.site_id is not None:
            site = self.registry.sites[who.site_id]
            if hello.site and hello.site != site.name:
                raise NotFound(f"this site token is not for site {hello.site!r}")
        elif not hello.site:
            raise InvalidRequest(
                "a pilot connecting with a user token must name its site (tidewater pilot --site)")
        else:
            site = self.registry.site_of(who, hello.site)
        check_hello(hello)
        rec, replaced = self.pilots.hello(hello, site_id=site.id, owner_id=who.user_id,
                                          batch_job=job.id if job else 0, peer=peer, now=now)
        fx = Effects()
        if replaced is not None:
            fx.out.append(Close(replaced, 4000, "replaced by a new connection of the same pilot"))
        fx.out.append(Send(peer, msgspec.structs.replace(welcome, site=site.name)))
        if job is not None:
            fx.extend(self.jobs.pilot_joined(job.id, rec.pilot_id, hello.process_started_at,
                                             now))
        held = dict(hello.held)
        kills: list[tuple[int, int]] = []
        for decision, task_id, attempt in reconcile(rec.pilot_id, site.id, set(rec.assigned),
                                                    held, self.tasks.live.get):
            t = self.tasks.live.get(task_id)
            match decision:
                case Decision.KEEP:
                    pass
                case Decision.LOSE:
                    assert t is not None
                    w, tt = self._fail(t, S.RUN_TIMEOUT, now, "the pilot lost the task")
                    fx.writes += w
                    fx.after += tt
                case Decision.REQUEUE:
                    assert t is not None
                    self._unassign(t)
                    self._enqueue(t, now)
                case Decision.ADOPT:
                    assert t is not None
                    # Assigned before a controller restart (it may even have run): adopt.
                    self.dispatcher.discard(t.id)
                    t.attempt, t.pilot = attempt, rec.pilot_id
                    self.pilots.assign(rec, t.id)
                case Decision.KILL:
                    kills.append((task_id, attempt))
        if kills:
            fx.send(peer, P.Kill(tasks=kills, reason="no longer assigned to this pilot"))
        self.pilots.make_slot(rec, hello)
        fx.writes.append(schema.upsert_pilot(rec.row(), now))
        fx.after.append(PilotStored(rec.pilot_id, peer))
        self.demand_dirty.add(site.id)
        fx.wake = True
        log.info("pilot %s on %s (%s) connected: %d cores, %d gpus, holds %d tasks",
                 rec.pilot_id, site.name, hello.hostname, hello.cores, hello.gpus, len(held))
        return rec, fx

    def reports(self, rec: PilotRec, msg: P.Reports, now: float) -> Effects:
        self.pilots.leases.touch(rec.pilot_id, now)
        rec.last_seen = now
        fx = Effects()
        for r in msg.reports:
            t = self.tasks.is_current(rec.pilot_id, r)
            if t is None:
                continue
            change = self._report(rec, t, r)
            if change is not None:
                fx.writes += change[0]
                fx.after += change[1]
        if rec.peer is not None:
            fx.after.append(Send(rec.peer, P.Ack(seq=msg.seq)))
        return fx

    def _report(self, rec: PilotRec, t: LiveTask, r: P.Report) -> Change | None:
        at = r.time
        if r.kind == "started":
            if t.attempt == 1 and t.started_at is None and t.state in states.RUNNABLE:
                self.times.started(t.site_id, t.created_at, at)  # its first attempt's start
            return self.tasks.started(t, rec.pilot_id, at)
        if r.kind in ("done", "error", "timeout") and t.state != S.RUNNING:
            return None
        if r.kind == "done":
            if why := self.tasks.result_too_large(r):
                t.exit_code, t.finished_at = r.exit_code, at
                t.stdout_tail, t.stderr_tail = r.stdout_tail, r.stderr_tail
                return self._fail(t, S.RUN_ERROR, at, why)
            (writes, touched), missing = self.tasks.succeeded(t, r, at)
            if missing:
                w, tt = self._fail(t, S.RUN_ERROR, at, missing, exit_code=0)
                return writes + w, tt
            self.attempt_over(t)
            return writes, touched
        if r.kind in ("error", "timeout"):
            t.stdout_tail, t.stderr_tail = r.stdout_tail, r.stderr_tail
            t.exception = bounded_exception(r.exception) if r.kind == "error" else None
            kind = S.RUN_ERROR if r.kind == "error" else S.RUN_TIMEOUT
            why = r.message or (f"exit code {r.exit_code}" if r.kind == "error" else "timed out")
            if r.hook:
                why = f"{why} (the app's handler chose {r.hook})"
            return self._fail(t, kind, at, why, exit_code=r.exit_code, give_up=r.hook == "fail")
        # killed or lost on the pilot without our asking
        if t.state == S.RUNNING:
            return self._fail(t, S.RUN_TIMEOUT, at, r.message or f"task {r.kind} on the pilot")
        self._unassign(t)
        return [], [Touched(t, [], t.state)]

    def credit(self, rec: PilotRec, msg: P.Credit) -> Effects:
        if self.dispatcher.pilot(rec.pilot_id) is not None:
            self.dispatcher.grant(rec.pilot_id, msg.cores, msg.gpus)
        elif rec.slot is not None:
            rec.slot.credit_cores = min(rec.slot.credit_cores + max(msg.cores, 0), 1 << 30)
            rec.slot.credit_gpus = min(rec.slot.credit_gpus + max(msg.gpus, 0), 1 << 30)
        return Effects(wake=True)

    def heartbeat(self, rec: PilotRec, now: float) -> Effects:
        """Renew the pilot's lease and answer, so the pilot hears the controller too."""
        self.pilots.leases.touch(rec.pilot_id, now)
        rec.last_seen = now
        if rec.peer is None:
            return Effects()
        return Effects(out=[Send(rec.peer, P.Ping(time=now))])

    def drain(self, rec: PilotRec, reason: str) -> Effects:
        """The pilot is stopping: it gets no new work from now on."""
        self.dispatcher.remove_pilot(rec.pilot_id)
        self.pilots.drain(rec)
        self.demand_dirty.add(rec.site_id)
        log.info("pilot %s is draining: %s", rec.pilot_id, reason or "no reason given")
        return Effects(wake=True)

    def pilot_gone(self, rec: PilotRec, peer: int, *, bye: bool, now: float) -> Effects:
        """The connection ended. After Bye the pilot is done; otherwise its lease runs."""
        if not self.pilots.away(rec, peer):
            return Effects()  # an older connection of a pilot that already reconnected
        self.dispatcher.remove_pilot(rec.pilot_id)
        self.demand_dirty.add(rec.site_id)
        if bye:
            return self._pilot_lost(rec, "the pilot exited", now, said_bye=True)
        # Closed without a Bye: lost unless it is back within the grace (not the lease).
        self.pilots.leases.closed(rec.pilot_id, now)
        rec.left_at = now
        return Effects(wake=True)

    def lease_expired(self, now: float) -> Effects:
        fx = Effects()
        leases = self.pilots.leases
        for rec in self.pilots.expired(now):
            if leases.is_closed(rec.pilot_id):  # kept until the pilot is dropped
                why = (f"pilot {rec.pilot_id} lost: its connection closed and it was not back "
                       f"within {leases.grace:g}s")
            else:
                why = f"pilot {rec.pilot_id} lost: silent for {leases.timeout:g}s"
            fx.extend(self._pilot_lost(rec, why, now))
        return fx

    def _pilot_lost(self, rec: PilotRec, why: str, now: float, *,
                    said_bye: bool = False) -> Effects:
        """The pilot is gone: its attempts are over, its tasks go back to the queue.

        A running attempt ends RUN_TIMEOUT (then RESTART_READY or FAILED). So does one
        the pilot was sent but never reported started, unless the pilot said Bye (it
        reports every task it started before it does): a pilot may start a task and
        die before its report leaves, or, cut off, start the tasks it had prefetched.
        Such an attempt may have run, so it is recorded (RUNNING, marked unconfirmed)
        and counted like any lost attempt, never requeued unseen.
        """
        fx = Effects(wake=True)
        lost = 0
        for task_id in list(rec.assigned):
            t = self.tasks.live.get(task_id)
            if t is None or t.pilot != rec.pilot_id or t.state in states.FINAL:
                continue
            lost += 1
            if t.state == S.RUNNING:
                w, tt = self._fail(t, S.RUN_TIMEOUT, now, why)
                fx.writes += w
                fx.after += tt
            elif not said_bye and t.state in states.RUNNABLE:
                w, tt = self.tasks.transition(t, [S.RUNNING], now, {
                    "attempt": t.attempt, "pilot": rec.pilot_id, "unconfirmed": True})
                w2, tt2 = self._fail(t, S.RUN_TIMEOUT, now,
                                     f"{why} (the task was sent to it; it may have started)")
                fx.writes += w + w2
                fx.after += tt + tt2
            else:
                self._unassign(t)
                fx.after.append(Touched(t, [], t.state))
        self.dispatcher.remove_pilot(rec.pilot_id)
        for slot in self.pilots.remove(rec):
            self.dispatcher.add_pilot(slot)
        self.jobs.pilot_left(rec.batch_job, rec.pilot_id)
        self.demand_dirty.add(rec.site_id)
        if rec.peer is not None:
            fx.out.append(Close(rec.peer, 4001, why))
        fx.writes.append(schema.delete_pilot(rec.pilot_id))
        if lost:
            log.warning("pilot %s: %s; %d tasks requeued or failed", rec.pilot_id, why, lost)
        return fx

    # ================================================================== dispatch

    def dispatch(self, now: float) -> Effects:
        """Match queued tasks with pilot credit: the RunTasks to send, and demand changes.

        First, routed tasks whose site went down are routed again (:meth:`reroute`).
        """
        fx = self.reroute(now) if self.routed else Effects()
        out: dict[str, list[P.Assignment]] = {}
        for pilot_id, task_id in self.dispatcher.match(now):
            t = self.tasks.live.get(task_id)
            rec = self.pilots.pilots.get(pilot_id)
            if (
                t is None or rec is None or rec.peer is None or t.pilot
                or t.state not in states.RUNNABLE
            ):
                self.dispatcher.grant(pilot_id, t.cores if t else 0, t.gpus if t else 0)
                continue
            t.attempt += 1
            t.pilot = pilot_id
            t.exception = None  # an earlier attempt's; this one may end otherwise
            self.pilots.assign(rec, t.id)
            self.times.dispatched(t.id, t.site_id, now)
            self.demand_dirty.add(rec.site_id)
            others = [(p.hostname if (p := self.pilots.pilots.get(o)) else o)
                      for o in self.dispatcher.reserved(t.id)]
            out.setdefault(pilot_id, []).append(build_assignment(
                t, rec, self.dispatcher.pilot(pilot_id), others,
                self.registry.apps.get((t.site_id, t.app)), self.limits.max_inline_bytes))
        budget = self.limits.max_frame_bytes // 2
        for pilot_id, tasks in out.items():
            peer = self.pilots.pilots[pilot_id].peer
            assert peer is not None
            for run in P.chunk_by_size(tasks, P.payload, budget):
                fx.send(peer, P.RunTasks(tasks=run))
        if self.demand_dirty:
            dirty, self.demand_dirty = self.demand_dirty, set()
            fx.out += self.jobs.send_demand(dirty, self._demand)
        return fx

    def _demand(self, site_id: int) -> P.Demand:
        idle, busy = self.pilots.nodes(site_id)
        return self.jobs.demand(site_id, self.dispatcher.demand(site_id), idle, busy,
                                self.dispatcher.longest_wall_time(site_id))

    # ================================================================== agents

    def _job_ended(self, job: JobRec, now: float) -> Effects:
        why = why_ended(job)
        fx = Effects(out=list(self.tokens.close_sessions([job.token_id], why)), wake=True)
        log.info("%s on site %s", why, self.registry.site_name(job.site_id))
        for pilot_id in self.jobs.release_pilots(job.id):
            rec = self.pilots.pilots.get(pilot_id)
            if rec is not None:
                fx.extend(self._pilot_lost(rec, why, now))
        self.demand_dirty.add(job.site_id)
        return fx

    def staged(self, site_id: int, peer: int, msg: P.Staged, now: float) -> Effects:
        fx = Effects()
        for res in msg.results:
            t = self.tasks.live.get(res.task_id)
            want = S.READY if res.direction == "in" else S.RUN_DONE
            if t is None or t.site_id != site_id or t.state != want or not t.files:
                continue  # cancelled meanwhile, or a resend already applied
            if res.direction == "in":
                self.measures.staged_in(site_id, t.id, sum(
                    r.size or 0 for r in res.items if r.ok), now)
            step = self.staging.apply(t, res, now)
            if step is None:
                fx.writes.append(schema.update_task(t))  # some items still to come
                continue
            w, tt = self.tasks.transition(t, step[0], now, step[1])
            fx.writes += w
            fx.after += tt
        fx.after.append(Send(peer, P.Ack(seq=msg.seq)))
        return fx


__all__ = ["ControllerState", "NeedsRead", "Stored"]
