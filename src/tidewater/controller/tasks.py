"""The task table: live tasks, their parents, and every transition with its cascade. Pure.

Every task that is not final lives here; a final one leaves once its final
row is committed (:meth:`TaskTable.finished`). A change of state goes
through :meth:`TaskTable.transition`, which checks the path against the one
table in :mod:`tidewater.states`, allocates event ids, and returns the
writes (event rows, then the task's row) with a :class:`~.effects.Touched`
for what follows the commit. A parent's final transition moves its waiting
children in the same call -- READY when the last parent finished, FAILED or
KILLED (naming the parent) when one failed or was killed, and so on down --
so the whole cascade is committed, and announced, together.

Nothing here knows pilots or the dispatcher: when an attempt ends, the
facade (:mod:`.state`) frees its pilot first, then asks this table for the
task's side of it. No await, no clock (``now`` is an argument), no store.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import msgspec

from .. import proto as P
from .. import states
from ..errors import InvalidRequest
from ..states import TaskState as S
from .effects import Touched
from .model import Event, LiveTask, Principal
from .staging import needs_agent, resolve, workdir_of
from .store import schema
from .store.base import Write

log = logging.getLogger("tidewater.controller")

MAX_SHARED_TEXTS = 100_000
MAX_RECENT_KEYS = 10_000

Change = tuple[list[Write], list[Touched]]
"""The writes of one change and the transitions (with their cascade) they commit."""


class TaskTable:
    """Live tasks by id, parent -> children links, event ids and recent Submit keys."""

    def __init__(self, max_inline_bytes: int) -> None:
        self.max_inline_bytes = max_inline_bytes
        self.live: dict[int, LiveTask] = {}
        # Live parent -> children waiting for it.
        self.children: dict[int, list[int]] = {}
        self.next_task = 1
        self.next_event = 1
        # Idempotency keys of recent Submits -> (first id, count): one Submit's ids
        # are always consecutive, so a range is all there is to keep.
        self.recent_keys: OrderedDict[tuple[int, str], tuple[int, int]] = OrderedDict()
        self._shared: dict[str, str] = {}
        self.counters: dict[str, int] = {
            "tasks_submitted": 0, "tasks_finished": 0, "tasks_failed": 0,
            "tasks_killed": 0, "tasks_retried": 0, "stale_reports": 0,
            "tasks_retried_by_user": 0,
        }
        self.by_site: dict[int, dict[S, int]] = {}
        """Site id -> state -> live tasks in it now (never a final state: see ``ended``)."""
        self.ended: dict[int, dict[S, int]] = {}
        """Site id -> final state -> tasks that reached it since the controller started.

        Both are kept as tasks move (a few dict operations per transition) so
        that a scrape reads them as they are instead of walking every live task.
        """

    # ------------------------------------------------------------------ loading

    def load(self, next_task: int, next_event: int, live: list[LiveTask],
             parents: list[tuple[int, int]], now: float) -> Change:
        """Take the store's live tasks; rebuild parent links; move any orphaned child on."""
        self.next_task, self.next_event = next_task, next_event
        prev: LiveTask | None = None
        for t in live:
            self.share_texts(t, prev)
            self.live[t.id] = t
            self._count(t.site_id, t.state, 1)
            prev = t
        for child, parent in parents:
            p = self.live.get(parent)
            c = self.live.get(child)
            if c is not None and p is not None and p.state not in states.FINAL:
                c.waiting += 1
                self.children.setdefault(parent, []).append(child)
        # A parent's finish moves its children in the same commit, so none should be
        # left waiting on nothing; should one be, it goes on now rather than never.
        writes: list[Write] = []
        touched: list[Touched] = []
        for t in live:
            if t.state == S.AWAITING_PARENTS and t.waiting == 0:
                w, tt = self.transition(t, [S.READY, S.STAGED_IN], now)
                writes += w
                touched += tt
        return writes, touched

    def share(self, text: str) -> str:
        """One copy of each distinct text (bounded), for the live tasks to share.

        For what repeats across tasks (app names, tags, environments); see
        :meth:`share_texts`.
        """
        shared = self._shared.get(text)
        if shared is not None:
            return shared
        if len(self._shared) < MAX_SHARED_TEXTS:
            self._shared[text] = text
        return text

    def share_texts(self, t: LiveTask, prev: LiveTask | None = None) -> None:
        """Make ``t`` hold one copy of the texts that repeat between tasks.

        App names, tags, environments and launch options go through
        :meth:`share`; parameters and argv, often unique, are shared only when
        equal to those of ``prev`` (the task before it in the same Submit, or
        in id order when loading), which catches a batch of tasks of one app
        without keeping unique texts alive in :meth:`share`'s table.
        """
        t.app, t.tags_j = self.share(t.app), self.share(t.tags_j)
        if t.env_j != "{}":
            t.env_j = self.share(t.env_j)
        if t.extra_j:
            t.extra_j = self.share(t.extra_j)
        if prev is not None:
            if t.params_j == prev.params_j:
                t.params_j = prev.params_j
            if t.argv_j == prev.argv_j:
                t.argv_j = prev.argv_j

    # ------------------------------------------------------------------ reading

    def owned(self, who: Principal, task_id: int) -> LiveTask | None:
        """``who``'s live task ``task_id`` (None if not live or not theirs)."""
        t = self.live.get(task_id)
        if t is None or t.owner_id != who.user_id:
            return None
        if who.site_id is not None and t.site_id != who.site_id:
            return None
        return t

    def _count(self, site_id: int, state: S, n: int) -> None:
        counts = self.by_site.get(site_id)
        if counts is None:
            counts = self.by_site[site_id] = {}
        counts[state] = counts.get(state, 0) + n

    def move(self, t: LiveTask, site_id: int) -> None:
        """Put a live task on another site (routed again), its count with it."""
        self._count(t.site_id, t.state, -1)
        t.site_id = site_id
        self._count(site_id, t.state, 1)

    def prior_submission(self, owner: int, key: str) -> tuple[int, int] | None:
        return self.recent_keys.get((owner, key))

    def remember_key(self, owner: int, key: str, span: tuple[int, int]) -> None:
        self.recent_keys[(owner, key)] = span
        while len(self.recent_keys) > MAX_RECENT_KEYS:
            self.recent_keys.popitem(last=False)

    # ------------------------------------------------------------------ transitions

    def transition(self, t: LiveTask, path: list[S], now: float,
                   data: dict[str, Any] | None = None, *, retry: bool = False) -> Change:
        """Move ``t`` along ``path``; the writes and touched tasks, its cascade included.

        ``retry``: the first step is a user's retry out of FAILED
        (:data:`tidewater.states.RETRY`). Raises
        :class:`~tidewater.errors.IllegalTransition` (nothing changed) if the
        path is not in the state table.
        """
        writes, touched = self._step(t, path, now, data, retry=retry)
        writes.append(schema.update_task(t))
        return writes, touched

    def _step(self, t: LiveTask, path: list[S], now: float,
              data: dict[str, Any] | None = None, *, retry: bool = False) -> Change:
        """The event rows of ``path`` and the cascade, without the task's own row."""
        steps = states.check_path(t.state, path, retry=retry)
        payload = data or {}
        text = schema.json_text(payload) if payload else None
        events: list[Event] = []
        writes: list[Write] = []
        for src, dst in steps:
            e = Event(self.next_event, src.value, dst.value, now, payload)
            self.next_event += 1
            writes.append(schema.insert_event(t.id, e, text))
            events.append(e)
        old, new = t.state, path[-1]
        t.state = new
        counts = self.by_site.get(t.site_id)
        if counts is None:
            counts = self.by_site[t.site_id] = {}
        if old is not S.CREATED and old not in states.FINAL:  # new, or back by a retry
            counts[old] = counts.get(old, 0) - 1
        if new in states.FINAL:
            counts = self.ended.get(t.site_id)
            if counts is None:
                counts = self.ended[t.site_id] = {}
        counts[new] = counts.get(new, 0) + 1
        cascade: Change = ([], [])
        if t.state in states.FINAL and t.id in self.children:
            cascade = self._release_children(t, now)
        return writes + cascade[0], [Touched(t, events, t.state), *cascade[1]]

    def _release_children(self, t: LiveTask, now: float) -> Change:
        """A parent reached a final state: move its waiting children in the same commit.

        Finished: a child whose last parent this was becomes READY (STAGED_IN
        when it has nothing for the agent to bring). Failed or killed: every
        waiting child fails or is killed, naming the parent, and so on down
        (the child's own final transition comes back here).
        """
        writes: list[Write] = []
        touched: list[Touched] = []
        for cid in self.children.pop(t.id, ()):
            c = self.live.get(cid)
            if c is None or c.state != S.AWAITING_PARENTS:
                continue
            if t.state == S.JOB_FINISHED:
                c.waiting -= 1
                try:
                    writes += self._resolve_refs(c, t)
                except InvalidRequest as exc:
                    c.error, c.finished_at = exc.message, now
                    w, tt = self.transition(c, [S.FAILED], now,
                                            {"parent": t.id, "reason": c.error})
                    writes += w
                    touched += tt
                    continue
                if c.waiting > 0:
                    if c.files and any(f.task == t.id for f in c.files):
                        writes.append(schema.update_task(c))
                    continue
                w, tt = self.transition(c, initial_path(c.files), now, {"parent": t.id})
            else:
                verb = "failed" if t.state == S.FAILED else "was killed"
                c.error, c.finished_at = f"parent task {t.id} {verb}", now
                w, tt = self.transition(c, [t.state], now, {"parent": t.id, "reason": c.error})
            writes += w
            touched += tt
        return writes, touched

    def _resolve_refs(self, c: LiveTask, parent: LiveTask) -> list[Write]:
        """Make ``c``'s inputs that name ``parent``'s outputs concrete. Raises InvalidRequest."""
        if not c.files or not any(f.task == parent.id for f in c.files):
            return []
        writes: list[Write] = []
        files = []
        for f in c.files:
            if f.direction == "in" and f.task == parent.id and f.state == "pending" and not (
                f.url or f.site_path
            ):
                data = parent.out_data.get(f.output) if parent.out_data else None
                f, got = resolve(f, parent.files, data, parent_site=parent.site_id,
                                 site=c.site_id, parent_workdir=workdir_of(parent))
                if got is not None:
                    c.in_data = c.in_data or {}
                    c.in_data[f.path] = got
                    writes.append(schema.upsert_data(c.id, "in", f.path, got))
            files.append(f)
        c.files = files
        return writes

    # ------------------------------------------------------------------ creating

    def create(self, prepared: list[tuple[LiveTask, list[int]]], parents: list[list[int]],
               parent_state: dict[int, S], now: float) -> Change:
        """Give prepared tasks their ids and creating paths; the writes that store them."""
        writes: list[Write] = []
        touched: list[Touched] = []
        for (t, _refs), pids in zip(prepared, parents, strict=True):
            t.id = self.next_task
            self.next_task += 1
            path = states.submit_path()
            if pids:
                t.parent_ids = sorted(set(pids))
                path = self._wait_for_parents(t, pids, parent_state, now)
                writes += [schema.insert_parent(t.id, pid) for pid in set(pids)]
            if path[-1] == S.STAGED_IN and needs_agent(t.files, "in"):
                path = path[:-1]  # READY until the site's agent has brought the inputs
            if t.in_data:
                writes += [schema.upsert_data(t.id, "in", k, v) for k, v in t.in_data.items()]
            w, tt = self._step(t, path, now)
            writes.append(schema.insert_task(t))  # in the state the path ends in
            writes += w
            writes += [schema.insert_tag(k, v, t.id, t.owner_id) for k, v in t.tags.items()]
            self.live[t.id] = t
            touched += tt
        self.counters["tasks_submitted"] += len(prepared)
        return writes, touched

    def _wait_for_parents(self, t: LiveTask, parents: list[int], state: dict[int, S],
                          now: float) -> list[S]:
        """The creating path of a task with parents; registers it with the unfinished ones."""
        waiting: list[int] = []
        for pid in dict.fromkeys(parents):
            ps = state[pid]
            if ps == S.JOB_FINISHED:
                continue
            if ps in (S.FAILED, S.KILLED):
                verb = "failed" if ps == S.FAILED else "was killed"
                t.error, t.finished_at = f"parent task {pid} {verb}", now
                return [S.AWAITING_PARENTS, ps]
            waiting.append(pid)
        if not waiting:
            return [S.AWAITING_PARENTS, S.READY, S.STAGED_IN]
        t.waiting = len(waiting)
        for pid in waiting:
            self.children.setdefault(pid, []).append(t.id)
        return [S.AWAITING_PARENTS]

    def readmit(self, t: LiveTask, prev: LiveTask | None = None) -> None:
        """Take a FAILED task read from the store back into memory (a user's retry).

        Its outcome is cleared for the next attempt (the attempt number goes on;
        the automatic retries start again from 0); outputs are to be made again,
        inputs that failed to arrive are to be fetched again. The caller moves it
        on with :meth:`transition` (``retry=True``).
        """
        t.error, t.exit_code, t.result, t.exception = "", None, None, None
        t.started_at = t.finished_at = None
        t.stdout_tail = t.stderr_tail = ""
        t.retries, t.pilot, t.waiting, t.out_data = 0, "", 0, None
        if t.files:
            t.files = [
                msgspec.structs.replace(f, state="pending", size=None, sha256="", error="")
                if f.direction == "out" or f.state == "failed" else f
                for f in t.files]
        self.share_texts(t, prev)
        self.live[t.id] = t
        self.counters["tasks_retried_by_user"] += 1

    def wait_again(self, t: LiveTask, parents: list[int]) -> None:
        """``t`` (readmitted) waits for ``parents`` (live, not final) again."""
        t.waiting = len(parents)
        for pid in parents:
            self.children.setdefault(pid, []).append(t.id)

    # ------------------------------------------------------------------ attempts

    def fail_attempt(self, t: LiveTask, kind: S, now: float, why: str, *,
                     exit_code: int | None = None, give_up: bool = False) -> Change:
        """RUN_ERROR/RUN_TIMEOUT, then RESTART_READY or FAILED (its pilot already freed).

        ``give_up``: the app's handler chose to fail; no retry whatever remains.
        """
        path = states.failure_path(kind, retries=t.retries,
                                   max_retries=t.retries if give_up else t.max_retries)
        t.error = why
        t.exit_code = exit_code
        t.finished_at = now
        if path[-1] == S.RESTART_READY:
            t.retries += 1
            self.counters["tasks_retried"] += 1
        t.pilot = ""
        data: dict[str, Any] = {"attempt": t.attempt, "reason": why}
        if exit_code is not None:
            data["exit_code"] = exit_code
        return self.transition(t, path, now, data)

    def is_current(self, pilot_id: str, r: P.Report) -> LiveTask | None:
        """The task a pilot's report is about, if it is about the current attempt."""
        t = self.live.get(r.task_id)
        if (
            t is None or t.state in states.FINAL or t.pilot != pilot_id
            or t.attempt != r.attempt
        ):
            self.counters["stale_reports"] += 1
            log.debug("ignoring stale report %s from pilot %s", r, pilot_id)
            return None
        return t

    def started(self, t: LiveTask, pilot_id: str, now: float) -> Change:
        if t.state not in states.RUNNABLE:
            return [], []
        t.started_at = now
        return self.transition(t, [S.RUNNING], now, {"attempt": t.attempt, "pilot": pilot_id})

    def result_too_large(self, r: P.Report) -> str:
        if r.result is not None and len(r.result) > self.max_inline_bytes:
            return (f"the return value is {len(r.result)} bytes; the limit is "
                    f"{self.max_inline_bytes} (write large results to files)")
        return ""

    def succeeded(self, t: LiveTask, r: P.Report, now: float) -> tuple[Change, str]:
        """Record a successful run's outcome; ("" or why it failed after all).

        On success the task moves on (to RUN_DONE, or through to JOB_FINISHED
        when nothing is to be staged out); when a declared output is missing
        the caller fails the attempt with the reason returned (after the
        writes returned here, which record the outputs that did arrive).
        """
        t.exit_code, t.finished_at = r.exit_code, now
        t.stdout_tail, t.stderr_tail = r.stdout_tail, r.stderr_tail
        t.result = r.result
        writes: list[Write] = []
        missing = self._outputs_arrived(t, r.outputs, writes)
        if missing:
            return (writes, []), missing
        path = [S.RUN_DONE] if needs_agent(t.files, "out") else states.finish_path()
        w, tt = self.transition(t, path, now, {"exit_code": 0})
        return (writes + w, tt), ""

    def _outputs_arrived(self, t: LiveTask, found: list[P.OutputFile],
                         writes: list[Write]) -> str:
        """Record the outputs a pilot found after a successful run; say which are missing."""
        if not t.files:
            return ""
        by_path = {o.path: o for o in found}
        limit = self.max_inline_bytes
        missing: list[str] = []
        files = []
        for f in t.files:
            o = by_path.get(f.path)
            if f.direction != "out" or f.url or o is None:
                files.append(f)
                continue
            if o.size is None:
                missing.append(f.path)
            elif o.data is not None and len(o.data) == o.size <= limit:
                f = msgspec.structs.replace(f, state="inline", size=o.size, sha256=o.sha256)
                t.out_data = t.out_data or {}
                t.out_data[f.path] = o.data
                writes.append(schema.upsert_data(t.id, "out", f.path, o.data))
            else:
                f = msgspec.structs.replace(f, state="on_site", size=o.size, sha256=o.sha256)
            files.append(f)
        t.files = files
        if missing:
            return ("the task exited 0 but did not produce "
                    + ", ".join(f"output {m!r}" for m in missing))
        return ""

    def kill(self, t: LiveTask, now: float, why: str = "cancelled by user") -> Change:
        """KILLED (cancel), its pilot already freed and its queue entry dropped."""
        t.error = why
        t.pilot = ""
        t.exception = None  # killed, whatever an earlier attempt raised
        return self.transition(t, [S.KILLED], now, {"reason": "cancelled"})

    # ------------------------------------------------------------------ after commit

    def finished(self, t: LiveTask) -> bool:
        """A final state is committed: forget the task. False if it was already gone."""
        if self.live.pop(t.id, None) is None:
            return False
        key = {S.JOB_FINISHED: "tasks_finished", S.FAILED: "tasks_failed"}.get(
            t.state, "tasks_killed")
        self.counters[key] += 1
        return True

    def info(self, t: LiveTask, site_name: str) -> P.TaskInfo:
        return task_info(t, site_name)


def task_info(t: LiveTask, site_name: str) -> P.TaskInfo:
    """A task as the client sees it (live or read back from the store)."""
    return P.TaskInfo(
        id=t.id, app=t.app, site=site_name, state=t.state.value,
        params=t.params, tags=t.tags, priority=t.priority, attempt=t.attempt,
        retries=t.retries, max_retries=t.max_retries, exit_code=t.exit_code,
        error=t.error, stdout_tail=t.stdout_tail, stderr_tail=t.stderr_tail,
        created_at=t.created_at, started_at=t.started_at, finished_at=t.finished_at,
        pilot=t.pilot, workdir=t.workdir, result=t.result, files=t.files or [],
        routes=routes_of(t), exception=t.exception, parents=t.parent_ids or [],
    )


RAISED_LIMITS = {"type": 512, "name": 64, "names": 32, "message": 4096, "traceback": 8192}
"""What the controller keeps of a function's exception as a pilot reports it (characters,
and names of built-ins): a worker bounds it already; a pilot may be anything."""


def bounded_exception(e: P.RemoteError | None) -> P.RemoteError | None:
    """``e`` cut to :data:`RAISED_LIMITS` (the start of the type and message, the end of
    the traceback, the first names); None for None."""
    if e is None:
        return None
    lim = RAISED_LIMITS
    names = [n[:lim["name"]] for n in e.builtins[:lim["names"]]]
    tb = e.traceback if len(e.traceback) <= lim["traceback"] else e.traceback[-lim["traceback"]:]
    if (len(e.type) <= lim["type"] and names == e.builtins
            and len(e.message) <= lim["message"] and tb is e.traceback):
        return e
    return P.RemoteError(type=e.type[:lim["type"]], builtins=names,
                         message=e.message[:lim["message"]], traceback=tb)


def add_route(t: LiveTask, route: P.Route) -> None:
    """Record a routing of ``t`` in its stored launch options (``extra_j``)."""
    extra = t.extra
    extra["routes"] = [*extra.get("routes", []), msgspec.to_builtins(route)]
    t.extra_j = msgspec.json.encode(extra).decode()


def routes_of(t: LiveTask) -> list[P.Route]:
    """The routings recorded on a task (``extra_j``'s ``routes``), first first."""
    if '"routes"' not in t.extra_j:  # most tasks: no decode
        return []
    return msgspec.convert(t.extra.get("routes", []), list[P.Route])


def initial_path(files: list[P.FileInfo] | None) -> list[S]:
    """From AWAITING_PARENTS (or CREATED): READY, and STAGED_IN unless the agent has inputs."""
    return [S.READY] if needs_agent(files, "in") else [S.READY, S.STAGED_IN]


def id_ranges(ids: Iterable[int]) -> str:
    """``1-3,7`` for [1, 2, 3, 7]: an audit entry stays short for a big cancel."""
    out: list[tuple[int, int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)
