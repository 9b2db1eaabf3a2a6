"""A task's life after it ended: retry, resubmit, its event history and its logs. Pure.

Handlers of :class:`~.state.ControllerState` like those of :mod:`.requests`:
the driver (:mod:`.service`) reads what each names from the store, then
calls it with no await between, and executes the :class:`~.effects.Effects`
it returns (replies leave from the commit callback).

**Retry** brings FAILED tasks back under the same ids, each as a new attempt
(the attempt number goes on, the automatic retries start again from 0). The
first event of each says so (``data``: ``retry`` = ``"user"``, or
``"parent"`` for a child brought back with its parent), and is the only way
out of a final state (:data:`tidewater.states.RETRY`). KILLED tasks are left
alone: a cancel is the user's decision (resubmit runs it again as a new task).
A child that failed *because its parent failed* (``parent task N failed``)
waits for the parent again: retried with it, and so on down. A task is left
FAILED -- not retried, not counted -- when it would fail again at once: one of
its parents is FAILED or KILLED and not retried too, or an input refers to a
finished parent's output that was never resolved (it failed before).

**Resubmit** submits a new task (new id) with the stored spec of each named
task, whatever its state, through the ordinary Submit path: the same checks,
the same idempotency, the same reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import proto as P
from ..errors import InvalidRequest, NotFound
from ..states import FINAL
from ..states import TaskState as S
from . import access
from .effects import Effects, Send
from .model import LiveTask, Principal
from .staging import needs_agent, workdir_of
from .store.base import TaskQuery
from .tasks import id_ranges, initial_path, routes_of

if TYPE_CHECKING:
    from .state import ControllerState

MAX_CASCADE = 100_000
"""Most tasks one retry may bring back, children included."""

EVENT_SCAN = 20
"""A ListEvents reads at most this many committed events per event it may return
(when not listing by ids): its cost is bounded by its limit whatever the filter."""

LOG_FILES = {False: "stdout.txt", True: "stderr.txt"}
"""A task's output files in its work directory (``tidewater.pilot.runner.STDOUT``/``STDERR``)."""


def parent_failure(t: LiveTask) -> int | None:
    """The parent a FAILED task failed because of (None: it failed on its own)."""
    prefix = "parent task "
    if t.state != S.FAILED or not t.error.startswith(prefix) or not t.error.endswith(" failed"):
        return None
    num = t.error[len(prefix):-len(" failed")]
    return int(num) if num.isdigit() else None


# ---------------------------------------------------------------------- retry


@dataclass
class RetryRead:
    """What the driver read for a Retry: the tasks named or matched, their failed
    descendants, and the stored states and inline data the handler needs."""

    roots: list[LiveTask] = field(default_factory=list)
    children: list[LiveTask] = field(default_factory=list)
    states: dict[int, S] = field(default_factory=dict)
    """Stored states of the parents of ``roots`` and ``children`` (those read)."""
    inline: dict[int, dict[str, bytes]] = field(default_factory=dict)
    """Inline inputs of ``roots`` and ``children``, by task and path."""
    more: bool = False


def retry_query(st: ControllerState, who: Principal, msg: P.Retry) -> tuple[TaskQuery, int] | None:
    """The FAILED tasks a Retry by filter means, and how many at most (None: none can
    match, the filter's states leave FAILED out). Raises InvalidRequest, NotFound."""
    from .requests import task_query

    f = msg.filter or P.TaskFilter()
    q = task_query(st, who, f)
    if q.states and S.FAILED.value not in q.states:
        return None
    limit = max(1, min(msg.limit, st.limits.max_query_limit))
    return TaskQuery(owner_id=q.owner_id, site_ids=q.site_ids, states=(S.FAILED.value,),
                     app=q.app, ids=q.ids, tags=q.tags, since=q.since, until=q.until), limit


def check_retry_ids(st: ControllerState, who: Principal, ids: list[int],
                    stored: Iterable[LiveTask]) -> list[LiveTask]:
    """``who``'s stored tasks among ``ids``. Raises NotFound naming the first id that is
    neither live nor stored for ``who`` (another user's, or none): nothing changes."""
    found = {t.id: t for t in stored if who.site_id is None or t.site_id == who.site_id}
    for i in ids:
        if i not in found and st.tasks.owned(who, i) is None:
            raise NotFound(f"no task with id {i}")
    return [found[i] for i in dict.fromkeys(ids) if i in found]


def retry(st: ControllerState, who: Principal, peer: int, msg: P.Retry, read: RetryRead,
          now: float) -> Effects:
    """Send the FAILED tasks of ``read`` back to run (module docstring). Never raises
    for a task it cannot retry: that one is left as it is and not counted."""
    candidates: dict[int, LiveTask] = {}
    for t in [*read.roots, *read.children]:
        # One already back in memory (retried meanwhile) is not FAILED in the store's sense.
        if t.state == S.FAILED and t.id not in st.tasks.live:
            candidates.setdefault(t.id, t)
    chosen = dict(candidates)
    while True:  # drop whatever would fail again at once, until nothing changes
        dropped = [t.id for t in chosen.values() if _blocked(st, t, chosen, read.states)]
        if not dropped:
            break
        for i in dropped:
            del chosen[i]
    roots = {t.id for t in read.roots}
    fx = Effects()
    retried: list[int] = []
    waiting: list[int] = []
    prev: LiveTask | None = None
    for tid in sorted(chosen):  # a parent's id is below its children's
        t = chosen[tid]
        st.tasks.readmit(t, prev)
        prev = t
        if read.inline.get(tid):
            t.in_data = read.inline[tid]
        wait_for = [p for p in t.parent_ids or () if p in chosen or (
            (lt := st.tasks.live.get(p)) is not None and lt.state not in FINAL)]
        if wait_for:
            st.tasks.wait_again(t, wait_for)
            path = [S.AWAITING_PARENTS]
        elif needs_agent(t.files, "in") or t.attempt == 0:
            path = initial_path(t.files)
        else:
            path = [S.RESTART_READY]
        data: dict[str, Any]
        if tid in roots:
            data = {"reason": f"retried by {who.user}", "retry": "user"}
            retried.append(tid)
        else:
            cause = parent_failure(t)
            data = {"reason": f"parent task {cause} retried", "retry": "parent",
                    "parent": cause}
            waiting.append(tid)
        if '"routes"' in t.extra_j and routes_of(t):
            st.routed.setdefault(t.site_id, set()).add(tid)
        w, tt = st.tasks.transition(t, path, now, data, retry=True)
        fx.writes += w
        fx.after += tt
    if retried or waiting:
        fx.writes.append(access.audit(who, "task.retry", id_ranges([*retried, *waiting]), now,
                                      count=len(retried) + len(waiting)))
    fx.after.append(Send(peer, P.Retried(
        req_id=msg.req_id, ids=retried, waiting=waiting, more=read.more,
        next_after=read.roots[-1].id if read.roots else msg.after_id)))
    return fx


def _blocked(st: ControllerState, t: LiveTask, chosen: dict[int, LiveTask],
             stored: dict[int, S]) -> bool:
    """``t`` would fail again at once: a parent failed or was killed and is not coming
    back, or an input names a finished parent's output never resolved."""
    for p in t.parent_ids or ():
        if p in chosen:
            continue
        live = st.tasks.live.get(p)
        state = live.state if live is not None else stored.get(p)
        if state is None or state in (S.FAILED, S.KILLED):
            return True
        if state == S.JOB_FINISHED and any(
                f.direction == "in" and f.task == p and f.state == "pending"
                and not (f.url or f.site_path) for f in t.files or ()):
            return True
    return False


# ---------------------------------------------------------------------- resubmit


def spec_of(t: LiveTask, site: str, inline: dict[str, bytes]) -> P.TaskSpec:
    """The spec ``t`` was submitted with, as far as the store keeps it (its inputs as
    given: URLs, inline bytes, or references to a parent's output)."""
    extra = t.extra
    res = P.Resources(cores=t.cores, gpus=t.gpus, **{
        k: int(extra[k]) for k in ("num_nodes", "ranks_per_node", "threads_per_rank",
                                   "gpus_per_rank", "node_packing_count") if k in extra})
    inputs, outputs = [], []
    for f in t.files or ():
        if f.direction == "out":
            outputs.append(P.Output(path=f.path, url=f.url))
        elif f.task:
            inputs.append(P.Input(path=f.path, task=f.task, output=f.output,
                                  sha256=f.expect_sha256))
        elif f.url:
            inputs.append(P.Input(path=f.path, url=f.url, sha256=f.expect_sha256))
        else:
            inputs.append(P.Input(path=f.path, data=inline.get(f.path, b"")))
    where: dict[str, object] = {"site": site}
    routes = routes_of(t) if '"routes"' in t.extra_j else []
    if routes:
        first = routes[0]
        where = {"site": "any", "sites": [c.site for c in first.candidates],
                 "policy": first.policy}
    parents = [p for p in t.parent_ids or () if not any(x.task == p for x in inputs)]
    return P.TaskSpec(
        app=t.app, params=t.params, tags=t.tags, priority=t.priority, resources=res,
        timeout=t.timeout, max_retries=t.max_retries, env=t.env, workdir=t.workdir or None,
        wall_time=t.wall_time, parents=parents, args=t.args or b"", inputs=inputs,
        outputs=outputs, **where)  # type: ignore[arg-type]


def resubmit_msg(st: ControllerState, who: Principal, msg: P.Resubmit, tasks: list[LiveTask],
                 inline: dict[int, dict[str, bytes]]) -> P.Submit:
    """The Submit that resubmits ``msg.ids`` (``tasks``: those of ``who``, as stored).

    Raises NotFound (nothing changed) for an id that is not ``who``'s task, and
    InvalidRequest for none at all.
    """
    if not msg.ids:
        raise InvalidRequest("resubmit: name at least one task")
    found = check_retry_ids(st, who, list(msg.ids), tasks)
    by_id = {t.id: t for t in found}
    specs = []
    for i in dict.fromkeys(msg.ids):
        t = by_id.get(i)
        if t is None:  # live and not yet stored: its first commit is on the way
            raise InvalidRequest(f"task {i} is being stored; try again", "retry")
        specs.append(spec_of(t, st.registry.site_name(t.site_id), inline.get(i, {})))
    return P.Submit(req_id=msg.req_id, tasks=specs, key=msg.key, resend=bool(msg.key))


# ---------------------------------------------------------------------- events


def events_request(st: ControllerState, who: Principal, msg: P.ListEvents
                   ) -> tuple[TaskQuery, int, int | None]:
    """(query, limit, the last event id to read) of a ListEvents. Raises InvalidRequest
    (a negative ``since_event``, an unknown state) or NotFound (an unknown site)."""
    from .requests import task_query

    if msg.since_event < 0:
        raise InvalidRequest("since_event must be >= 0")
    # States name the events' ``to_state`` (as for a watch), not the tasks' state now.
    q = dataclasses.replace(task_query(st, who, msg.filter), states=())
    limit = max(1, min(msg.limit, st.limits.max_query_limit))
    if q.ids:
        return q, limit, None  # each task's events read from its own index
    committed = st.notify.committed_event
    return q, limit, min(committed, msg.since_event + limit * EVENT_SCAN)


def events_reply(st: ControllerState, peer: int, msg: P.ListEvents, events: list[P.TaskEvent],
                 limit: int, upto: int | None) -> Effects:
    """The EventList: ``next_event`` is the last event read (or the end of the range
    read), ``more`` whether events after it may match."""
    wanted = set(msg.filter.states)
    full = len(events) >= limit
    shown = [e for e in events if not wanted or e.to_state in wanted]
    if full:
        nxt = events[-1].id
    elif upto is not None:
        nxt = max(upto, msg.since_event)
    else:
        nxt = events[-1].id if events else msg.since_event
    more = full or (upto is not None and upto < st.notify.committed_event)
    return Effects(out=[Send(peer, P.EventList(req_id=msg.req_id, events=shown,
                                               next_event=nxt, more=more))])


# ---------------------------------------------------------------------- logs


def read_log(st: ControllerState, peer: int, msg: P.ReadLog, t: LiveTask) -> Effects:
    """Relay a read of ``t``'s stdout or stderr to its site's agent (answered by FileData).

    Raises InvalidRequest: a bad range, a task that has not run yet (code
    ``not_ready``), a site whose agent is not connected (``unavailable``).
    """
    if msg.offset < 0 or msg.length <= 0:
        raise InvalidRequest("offset must be >= 0 and length > 0")
    if t.attempt == 0 and t.started_at is None:
        raise InvalidRequest(f"task {t.id} has not run (it is {t.state.value}): it has no "
                             "output yet", "not_ready")
    agent = st.agent_of(t.site_id)
    if agent is None:
        raise InvalidRequest(f"task {t.id}'s output is on site "
                             f"{st.registry.site_name(t.site_id)!r}, whose agent is not "
                             "connected (`tidewater site start`)", "unavailable")
    path = f"{workdir_of(t)}/{LOG_FILES[msg.stderr]}"
    length = min(msg.length, st.limits.max_inline_bytes)
    return Effects(out=st.staging.relay_read(agent, peer, msg.req_id, path, msg.offset,
                                             length))
