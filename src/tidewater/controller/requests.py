"""The client's requests on tasks: submit, wait, cancel, query, watch, download. Pure.

Each is a handler of :class:`~.state.ControllerState` (its first argument)
that returns :class:`~.effects.Effects`. What a request needs from the store
is named first (``plan_submit`` says which parents and outputs to read;
``state.unread`` which tasks) and passed in as :class:`~.state.Stored`; a
handler raises :class:`~.state.NeedsRead` when a task left memory during
the driver's read. Nothing is changed before every check has passed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import latency, states
from .. import proto as P
from ..errors import AppError, InvalidRequest, NotFound
from ..states import TaskState as S
from . import access
from .effects import After, Effects, KillOnPilot, Send, Touched
from .health import submit_warning
from .model import LiveTask, Principal, SiteRec
from .notify import WatchSub
from .routing import ROUND_ROBIN, Need, SiteState, check_policy, choose
from .staging import resolve, workdir_of
from .state import NeedsRead, Stored
from .store import schema
from .store.base import TaskQuery
from .tasks import add_route, id_ranges
from .validate import check_parent_count, check_submit, prepare_task, task_error

if TYPE_CHECKING:
    from .state import ControllerState

log = logging.getLogger("tidewater.controller")


@dataclass
class SubmitPlan:
    prepared: list[tuple[LiveTask, list[int]]]
    parents: list[list[int]]
    unread_parents: list[int]
    """Parents not in memory: their stored state is needed."""
    unread_outputs: list[tuple[int, str]]
    """(parent, output) references whose parent is not in memory."""
    cursor: int | None = None
    """The owner's round-robin cursor after this Submit's routing (None: unchanged)."""
    routed: list[int] = field(default_factory=list)
    """Indexes of the tasks routed among several sites."""

ANY = "any"
"""``TaskSpec.site`` of a task to route: among ``sites``, or every site with the app."""

# ---------------------------------------------------------------------- submit

def plan_submit(st: ControllerState, who: Principal, msg: P.Submit, now: float) -> SubmitPlan:
    """Check and prepare a Submit; what must be read before :meth:`submit`.

    Raises InvalidRequest (nothing changed) for anything refused.
    """
    check_submit(msg, st.limits)
    prepared: list[tuple[LiveTask, list[int]]] = []
    router = _Router(st, who, now)
    routed: list[int] = []
    for i, spec in enumerate(msg.tasks):
        route = None
        if spec.sites or spec.site == ANY:
            site, route = router.route(i, spec)
            routed.append(i)
        else:
            try:  # a policy with one named site has nothing to choose, but is still checked
                check_policy(spec.policy)
            except InvalidRequest as exc:
                raise task_error(i, exc) from None
            site = _site_for(st, who, i, spec.site)
        app = st.registry.app(site, spec.app)
        t, refs = prepare_task(
            spec, index=i, owner_id=who.user_id, site=site, app=app,
            app_names=st.registry.app_names(site.id) if app is None else [],
            limits=st.limits,
            site_limits=st.jobs.limits.get(site.id), now=now)
        st.tasks.share_texts(t, prepared[-1][0] if prepared else None)
        if route is not None:  # after sharing: a route is unique to its task
            add_route(t, route)
        prepared.append((t, refs))
    parents = [list(dict.fromkeys([*spec.parents, *refs])) if spec.parents or refs else []
               for spec, (_t, refs) in zip(msg.tasks, prepared, strict=True)]
    wanted: dict[int, int] = {}
    for i, pids in enumerate(parents):
        check_parent_count(i, len(pids))
        for pid in pids:
            wanted.setdefault(pid, i)
    outputs = [(f.task, f.output) for t, _ in prepared for f in t.files or []
               if f.task and f.direction == "in" and st.tasks.owned(who, f.task) is None]
    return SubmitPlan(prepared, parents, st.unread(who, list(wanted)),
                      list(dict.fromkeys(outputs)), router.cursor, routed)

class _Router:
    """Routes the tasks of one Submit: site states read once, then counted forward.

    Each task routed to a site is added to that site's queue in the states
    the next task sees, so a batch submitted to ``any`` spreads rather than
    piling onto the site that looked best for the first task.
    """

    def __init__(self, st: ControllerState, who: Principal, now: float) -> None:
        self.st, self.who, self.now = st, who, now
        self.states: dict[tuple[int, str], SiteState] = {}
        self.cursor: int | None = None

    def candidates(self, i: int, spec: P.TaskSpec) -> list[SiteRec]:
        reg = self.st.registry
        if spec.sites:
            out: dict[int, SiteRec] = {}
            for name in spec.sites:
                site = _site_for(self.st, self.who, i, name)
                if reg.app(site, spec.app) is None:
                    raise task_error(i, AppError(
                        f"site {name!r} has no app {spec.app!r} (registered: "
                        f"{', '.join(reg.app_names(site.id)) or 'none'})"))
                out[site.id] = site
            return list(out.values())
        sites = [s for s in reg.owned_sites(self.who)
                 if reg.app(s, spec.app) is not None
                 and (self.who.site_id is None or self.who.site_id == s.id)]
        if not sites:
            raise task_error(i, AppError(
                f"no site of yours has an app {spec.app!r} to route the task to"))
        return sites

    def route(self, i: int, spec: P.TaskSpec) -> tuple[SiteRec, P.Route]:
        try:
            check_policy(spec.policy)
        except InvalidRequest as exc:
            raise task_error(i, exc) from None
        sites = self.candidates(i, spec)
        states_ = [self._state(s.id, spec.app) for s in sites]
        cursor = self.cursor
        if cursor is None:
            cursor = self.st.route_cursor.get(self.who.user_id, 0)
        route, after = choose(spec.policy, states_, self._need(spec), self.now, cursor)
        if spec.policy == ROUND_ROBIN:
            self.cursor = after
        chosen = next(s for s in sites if s.name == route.chosen)
        key = (chosen.id, spec.app)
        cores = max(1, spec.resources.cores)
        old = self.states[key]
        self.states[key] = dataclasses.replace(
            old, queued_tasks=old.queued_tasks + 1, queued_cores=old.queued_cores + cores)
        return chosen, route

    def _state(self, site_id: int, app: str) -> SiteState:
        key = (site_id, app)
        if key not in self.states:
            self.states[key] = self.st.site_state(site_id, app, self.now)
        return self.states[key]

    def _need(self, spec: P.TaskSpec) -> Need:
        size = sum(len(x.data) for x in spec.inputs if x.data)
        held: dict[str, int] = {}
        for x in spec.inputs:
            if not x.task:
                continue
            parent = self.st.tasks.owned(self.who, x.task)
            if parent is None or not parent.files:
                continue
            for f in parent.files:
                if f.direction == "out" and f.path == x.output and f.size:
                    size += f.size
                    name = self.st.registry.site_name(parent.site_id)
                    held[name] = held.get(name, 0) + f.size
        return Need(cores=max(1, spec.resources.cores), wall_time=spec.wall_time,
                    input_bytes=size, held=held)


def _site_for(st: ControllerState, who: Principal, i: int, name: str) -> SiteRec:
    try:
        return st.registry.site_of(who, name)
    except InvalidRequest as exc:
        raise task_error(i, exc) from None

def submit(st: ControllerState, who: Principal, peer: int, msg: P.Submit, plan: SubmitPlan,
           stored: Stored, now: float) -> Effects:
    """Create the tasks of a planned Submit. Raises InvalidRequest, NotFound or NeedsRead."""
    if msg.key:
        span = st.tasks.prior_submission(who.user_id, msg.key) or stored.prior
        if span is not None:
            # A resend: the same ids, once everything queued so far is committed.
            ids = list(range(span[0], span[0] + span[1]))
            if msg.wait:  # the driver waits for stored tasks; here only live ones remain
                st.notify.wait(peer, msg.req_id, [i for i in ids if i in st.tasks.live])
            return Effects(after=[Send(peer, P.Submitted(req_id=msg.req_id, ids=ids))])
    parent_state: dict[int, S] = {}
    first_naming: dict[int, int] = {}
    for i, pids in enumerate(plan.parents):
        for pid in pids:
            first_naming.setdefault(pid, i)
            p = st.tasks.owned(who, pid)
            if p is not None:
                parent_state[pid] = p.state
            elif pid in stored.states:
                parent_state[pid] = stored.states[pid]
            elif pid not in stored.read:
                raise NeedsRead([pid])  # left memory while the driver read
    for pid, i in first_naming.items():
        if pid not in parent_state:
            raise NotFound(f"task {i}: parent task {pid} not found")
        if parent_state[pid] not in states.FINAL and pid not in st.tasks.live:
            raise NeedsRead([pid])
    _resolve_at_submit(st, who, plan, parent_state, stored)
    writes, touched = st.tasks.create(plan.prepared, plan.parents, parent_state, now)
    ids = [t.id for t, _ in plan.prepared]
    if plan.cursor is not None:
        st.route_cursor[who.user_id] = plan.cursor
    for i in plan.routed:
        t = plan.prepared[i][0]
        st.routed.setdefault(t.site_id, set()).add(t.id)
    if msg.key:
        st.tasks.remember_key(who.user_id, msg.key, (ids[0], len(ids)))
        writes.append(schema.insert_submission(who.user_id, msg.key, ids[0], len(ids), now))
    sites = sorted({st.registry.site_name(t.site_id) for t, _ in plan.prepared})
    apps_used = sorted({t.app for t, _ in plan.prepared})
    writes.append(access.audit(who, "task.submit", f"{ids[0]}-{ids[-1]}", now,
                                  count=len(ids), sites=sites, apps=apps_used))
    if msg.wait:
        # Registered now, answered from the commit of each task's final state,
        # which follows this submit's commit (so Submitted always comes first).
        st.notify.wait(peer, msg.req_id, ids)
    warnings = [w for sid in sorted({t.site_id for t, _ in plan.prepared})
                if (w := submit_warning(st.registry.site_name(sid),
                                        st.site_health(sid, now))) is not None]
    after: list[After] = [Send(peer, P.Submitted(req_id=msg.req_id, ids=ids,
                                                 warnings=warnings))]
    after += touched
    return Effects(writes=writes, after=after)

def _resolve_at_submit(st: ControllerState, who: Principal, plan: SubmitPlan, state: dict[int, S],
                       stored: Stored) -> None:
    """Check every reference to a parent's output; resolve those of finished parents.

    Raises InvalidRequest (nothing changed) for an output the parent does not declare.
    """
    for i, (t, refs) in enumerate(plan.prepared):
        if not refs:
            continue
        files = []
        for f in t.files or []:
            if not f.task or f.direction != "in":
                files.append(f)
                continue
            p = st.tasks.owned(who, f.task) or stored.tasks.get(f.task)
            if p is None:
                raise NotFound(f"parent task {f.task} not found")
            if p.id in st.tasks.live:
                data = p.out_data.get(f.output) if p.out_data else None
            else:
                data = stored.outputs.get((f.task, f.output))
            if not any(x.direction == "out" and x.path == f.output for x in p.files or []):
                raise InvalidRequest(f"task {i}: input {f.path!r}: task {f.task} has no "
                                     f"output {f.output!r}")
            if state[f.task] == S.JOB_FINISHED:
                try:
                    f, got = resolve(f, p.files, data, parent_site=p.site_id,
                                     site=t.site_id, parent_workdir=workdir_of(p))
                except InvalidRequest as exc:
                    raise InvalidRequest(f"task {i}: {exc.message}") from None
                if got is not None:
                    t.in_data = t.in_data or {}
                    t.in_data[f.path] = got
            files.append(f)
        t.files = files

# ---------------------------------------------------------------------- other client requests

def cancel(st: ControllerState, who: Principal, peer: int, msg: P.Cancel, stored: Stored,
           now: float) -> Effects:
    live, _final, _left = st.owned(who, msg.ids, stored)  # the left ones are final
    fx = Effects()
    kills: dict[str, list[tuple[int, int]]] = {}
    done: list[int] = []
    touched: list[Touched] = []
    for t in live.values():
        if t.state in states.FINAL:
            continue
        pilot = t.pilot
        fx.out += st.staging.cancelled(t, t.state, st.agent_of(t.site_id))
        if pilot:
            st.attempt_over(t)
            kills.setdefault(pilot, []).append((t.id, t.attempt))
        st.dispatcher.discard(t.id)
        w, tt = st.tasks.kill(t, now)
        fx.writes += w
        touched += tt
        done.append(t.id)
    if done:
        fx.writes.append(access.audit(who, "task.cancel", id_ranges(done), now,
                                         count=len(done)))
    fx.after += touched
    fx.after += [KillOnPilot(p, pairs, "cancelled by user") for p, pairs in kills.items()]
    fx.after.append(Send(peer, P.Cancelled(req_id=msg.req_id, ids=done)))
    return fx

def wait(st: ControllerState, who: Principal, peer: int, msg: P.Wait, stored: Stored
         ) -> tuple[Effects, list[int]]:
    """Register waiters for live tasks and answer final ones; the ids still to read.

    Those are tasks that finished while the driver read the store: it reads
    them (final now) and calls again with just them, so this converges.
    """
    live, final, left = st.owned(who, msg.ids, stored)
    st.notify.wait(peer, msg.req_id, list(live))
    infos = []
    for tid, t in final.items():
        if t.state not in states.FINAL:
            # A task leaves memory only after its final row is committed,
            # so this is a bug; never answer a Wait with a non-final row.
            log.error("task %d is neither live nor final (%s)", tid, t.state)
            st.notify.wait(peer, msg.req_id, [tid])
            continue
        infos.append(st.info(t))
    fx = Effects()
    for run in P.chunk_by_size(infos, P.payload, st.limits.max_frame_bytes // 2):
        fx.send(peer, P.Results(req_id=msg.req_id, tasks=run))
    return fx, left

def task_query(st: ControllerState, who: Principal, f: P.TaskFilter) -> TaskQuery:
    """The store query a filter means for ``who``. Raises InvalidRequest, NotFound."""
    site_ids: list[int] = []
    if who.site_id is not None:
        site_ids.append(who.site_id)
    if f.states:
        valid = {x.value for x in states.STORED}
        bad = [s for s in f.states if s not in valid]
        if bad:
            raise InvalidRequest(
                f"unknown state {bad[0]!r} (states: "
                f"{', '.join(x.value for x in S if x.value in valid)})")
    for name, when in (("since", f.since), ("until", f.until)):
        if when is not None and not math.isfinite(when):
            raise InvalidRequest(f"{name} must be a time in seconds since the epoch, not {when}")
    if f.site is not None:
        sid = st.registry.site_names.get((who.user_id, f.site))
        if sid is None:
            raise NotFound(f"no site named {f.site!r}")
        site_ids.append(sid)
    return TaskQuery(owner_id=who.user_id, site_ids=tuple(site_ids),
                     states=tuple(f.states), app=f.app, ids=tuple(f.ids),
                     tags=tuple(f.tags.items()), since=f.since, until=f.until)

def counts(st: ControllerState, req_id: int, rows: list[tuple[int, str, int]]) -> P.TaskCounts:
    """A :class:`~tidewater.proto.TaskCounts` of the store's (site id, state, n) rows."""
    by_state: dict[str, int] = {}
    by_site: dict[str, dict[str, int]] = {}
    for site_id, state, n in sorted(rows, key=lambda r: (st.registry.site_name(r[0]), r[1])):
        by_state[state] = by_state.get(state, 0) + n
        site = by_site.setdefault(st.registry.site_name(site_id), {})
        site[state] = site.get(state, 0) + n
    return P.TaskCounts(req_id=req_id, by_state=dict(sorted(by_state.items())), by_site=by_site)


def query_limit(st: ControllerState, msg: P.Query) -> int:
    return max(1, min(msg.limit, st.limits.max_query_limit))

def query_reply(st: ControllerState, peer: int, msg: P.Query, rows: list[LiveTask]) -> Effects:
    infos = [st.info(t) for t in rows]
    # Function results can be large: keep the frame within its limit (for newest
    # first, the newest that fit).
    runs = P.chunk_by_size(infos, P.payload, st.limits.max_frame_bytes // 2)
    infos = runs[0] if runs else []
    if msg.newest:
        infos.reverse()
    return Effects(out=[Send(peer, P.TaskList(req_id=msg.req_id, tasks=infos,
                                              truncated=len(runs) > 1))])

PHASES_PAGE = 2_000
"""At most this many tasks' phases per reply (about 300 bytes each): the client pages."""


def phases_limit(st: ControllerState, msg: P.ListPhases) -> int:
    return max(1, min(msg.limit, st.limits.max_query_limit, PHASES_PAGE))


def phases_window(msg: P.ListPhases, rows: list[LiveTask]) -> list[LiveTask]:
    """Those of ``rows`` created within the request's ``since``/``until``."""
    return [t for t in rows if (msg.since is None or t.created_at >= msg.since)
            and (msg.until is None or t.created_at < msg.until)]


def phases_reply(st: ControllerState, peer: int, msg: P.ListPhases, rows: list[LiveTask],
                 events: dict[int, list[tuple[str, str, float]]], limit: int) -> Effects:
    """The phases of those of ``rows`` (``limit`` or fewer read in id order by
    :func:`task_query`) in the request's window, from their events.

    Ids grow with creation time, so the listing ends at the first task created
    after ``until``.
    """
    more = len(rows) >= limit
    if msg.until is not None and rows and rows[-1].created_at >= msg.until:
        more = False
    out = []
    for t in phases_window(msg, rows):
        ph = latency.phases(events.get(t.id, ()))
        out.append(P.TaskPhases(
            id=t.id, site=st.registry.site_name(t.site_id), app=t.app, state=t.state.value,
            tags=t.tags, cores=t.cores, created_at=t.created_at, parents=ph.parents,
            stage_in=ph.stage_in, run_delay=ph.run_delay, run=ph.run, stage_out=ph.stage_out,
            total=ph.total, attempts=ph.attempts, ended=ph.ended, runs=list(ph.runs)))
    # Tags can be large (up to the submit's size limit): keep the frame within its
    # limit; the client asks again after the last id sent.
    runs = P.chunk_by_size(out, _phases_size, st.limits.max_frame_bytes // 2)
    sent = runs[0] if runs else []
    if len(runs) > 1:
        more, next_after = True, sent[-1].id
    else:
        next_after = rows[-1].id if rows else msg.after_id
    return Effects(out=[Send(peer, P.PhaseList(req_id=msg.req_id, tasks=sent, more=more,
                                               next_after=next_after))])


def _phases_size(p: P.TaskPhases) -> int:
    return 256 + 24 * len(p.runs) + sum(len(k) + len(v) + 4 for k, v in p.tags.items())


def watch(st: ControllerState, who: Principal, peer: int, msg: P.Watch, stored: Stored
          ) -> tuple[WatchSub, Effects]:
    """Open a watch (its replay, if any, follows with :meth:`Notify.replayed`).

    Raises InvalidRequest for a time window (``since``/``until`` are for listings)."""
    if msg.filter.since is not None or msg.filter.until is not None:
        raise InvalidRequest("a watch has no time window (since/until): it sees events as "
                             "they are committed; list tasks or events by time instead")
    if msg.filter.site is not None:
        st.registry.site_of(who, msg.filter.site)
    if msg.filter.ids:
        st.owned(who, msg.filter.ids, stored)  # tasks that finished meanwhile are fine
    # Registered before any replay, so nothing committed meanwhile is missed.
    sub = st.notify.watch(who.user_id, peer, msg.filter, replay=bool(msg.since_event))
    return sub, Effects(out=[Send(peer, P.Watching(
        req_id=msg.req_id, watch_id=sub.watch_id, start_event=st.notify.committed_event))])

def download(st: ControllerState, who: Principal, peer: int, msg: P.Download, stored: Stored) -> Effects:
    live, final, left = st.owned(who, [msg.task_id], stored)
    if left:
        raise NeedsRead(left)
    t = live.get(msg.task_id) or final[msg.task_id]
    name = msg.path.strip("/")
    return Effects(out=st.staging.download(
        msg, t, live=msg.task_id in live, stored=stored.outputs.get((msg.task_id, name)),
        agent=st.agent_of(t.site_id), site_name=st.registry.site_name(t.site_id),
        peer=peer, inline_limit=st.limits.max_inline_bytes))
