"""The async client's requests on a task's life after submit: retry, resubmit, events, logs.

Mixed into :class:`tidewater.client.Client` (which supplies the connection:
``_request``, the results it holds, ``tasks``); kept apart so the client
module stays one concept. See ``docs/tasks.md`` for when to retry and when to
resubmit.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from . import proto as P
from .errors import InvalidRequest, NotFound, TidewaterError
from .progress import Notice
from .proto import TaskEvent, TaskInfo
from .states import FINAL


class Task(Protocol):
    """A task handle (:class:`tidewater.client.Task`): what these methods read of it."""

    @property
    def id(self) -> int: ...

LOG_PIECE = 1 << 20
"""Bytes asked for per read of a log (the controller may send fewer)."""


class TaskLifecycle:
    """Retry, resubmit, the event history and the logs of tasks (see the module docstring)."""

    if TYPE_CHECKING:
        _results: dict[int, TaskInfo]
        _pushed: set[int]
        on_notice: Callable[[Notice], None]

        async def _request(self, build: Callable[[int], P.Msg], *,
                           timeout: float | None = None,
                           on_reply: Callable[[Any], bool] | None = None) -> Any: ...

        async def tasks(self, *, ids: Sequence[int] = (), limit: int = 1000
                        ) -> list[TaskInfo]: ...

    async def retry(
        self, tasks: Iterable[Task | int] = (), *, state: str | Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None, site: str | None = None,
        app: str | None = None, since: float | None = None, until: float | None = None,
    ) -> list[int]:
        """Run FAILED tasks again under the same ids; the ids sent back to run.

        Give tasks (or ids), or filters (``tags``, ``site``, ``app``, creation time
        ``since``/``until``; ``state`` must name FAILED if given). Each retried task
        is a new attempt (``TaskInfo.attempt`` goes on; its automatic retries start
        again from 0) and its event trail says it was retried by you. Children
        that failed because a retried task failed wait for it again and are in
        the ids returned. Tasks in any other state (KILLED included: resubmit
        those) are left alone and not returned. Raises NotFound for an id that is
        not one of your tasks (nothing is retried then), InvalidRequest for tasks
        and filters together, or neither. Cancel-safe only before the request is
        sent.
        """
        wanted = [t if isinstance(t, int) else t.id for t in tasks]
        states = [state] if isinstance(state, str) else list(state or [])
        filtered = bool(states or tags or site or app or since is not None
                        or until is not None)
        if wanted and filtered:
            raise InvalidRequest("retry: give tasks or filters, not both")
        if not wanted and not filtered:
            raise InvalidRequest("retry: name the tasks, or filters (state='FAILED' retries "
                                 "every failed task)")
        out: list[int] = []
        if wanted:
            r: P.Retried = await self._request(lambda i: P.Retry(req_id=i, ids=wanted))
            out = [*r.ids, *r.waiting]
        else:
            f = P.TaskFilter(states=states, tags=dict(tags or {}), site=site, app=app,
                             since=since, until=until)
            after = 0
            while True:
                r = await self._request(functools.partial(_retry_msg, filter=f, after_id=after))
                out += [*r.ids, *r.waiting]
                if not r.more or r.next_after <= after:
                    break
                after = r.next_after
        for tid in out:  # final no more: a wait asks again
            self._results.pop(tid, None)
            self._pushed.discard(tid)
        return sorted(out)

    async def _resubmit(self, tasks: Iterable[Task | int]) -> list[int]:
        """The ids of the new tasks :meth:`tidewater.client.Client.resubmit` makes."""
        ids = [t if isinstance(t, int) else t.id for t in tasks]
        key = uuid.uuid4().hex
        r: P.Submitted = await self._request(lambda i: P.Resubmit(req_id=i, ids=ids, key=key))
        return list(r.ids)

    async def events(
        self, task: Task | int | None = None, *, since_event: int = 0, limit: int = 1000,
        ids: Sequence[int] = (), state: str | Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None, site: str | None = None,
        app: str | None = None,
    ) -> list[TaskEvent]:
        """Committed events (state transitions) after ``since_event``, oldest first, at
        most ``limit``: of ``task`` (or ``ids``), or of the tasks matching the filters
        (``state``: the state an event moves to). Pass the last id you got as
        ``since_event`` for the next page. Each request's cost is bounded by its
        limit. Raises NotFound for a task that is not yours."""
        if task is not None:
            ids = [task if isinstance(task, int) else task.id, *ids]
        states = [state] if isinstance(state, str) else list(state or [])
        f = P.TaskFilter(ids=list(ids), states=states, tags=dict(tags or {}), site=site,
                         app=app)
        out: list[TaskEvent] = []
        since = since_event
        while len(out) < limit:
            r: P.EventList = await self._request(functools.partial(
                _events_msg, filter=f, since_event=since, limit=limit - len(out)))
            out += r.events
            if not r.more or r.next_event <= since:
                break
            since = r.next_event
        return out[:limit]

    async def logs(self, task: Task | int, *, stderr: bool = False, offset: int = 0) -> bytes:
        """The whole of a task's stdout (``stderr=True``: stderr) from ``offset`` on, read
        from its work directory on its site through the site's agent.

        A task that ran but has no such file (a function task that printed
        nothing, a work directory removed) gives what the pilot last reported of
        it (``TaskInfo.stdout_tail``/``stderr_tail``), and says so through
        ``on_notice``. Raises NotFound (not your task), InvalidRequest with code
        ``not_ready`` (the task has not run yet) or ``unavailable`` (the site's
        agent is not connected).
        """
        tid = task if isinstance(task, int) else task.id
        info = await self._info(tid)
        try:
            return b"".join([p async for p in self._log_pieces(tid, stderr, offset,
                                                                check=offset == 0)])
        except NotFound:
            return self._tail_instead(info, stderr, offset)

    async def follow_logs(self, task: Task | int, *, stderr: bool = False, offset: int = 0,
                          interval: float = 0.5) -> AsyncGenerator[bytes, None]:
        """Yield a task's stdout (or stderr) as it grows, then the rest once it is final.

        While the task is not final its output is read again from where the last
        read ended every ``interval`` seconds (nothing is read before it starts);
        when it is final, what is left is read and the iterator ends. Raises as
        :meth:`logs`, except that a task that has not run yet is waited for.
        """
        tid = task if isinstance(task, int) else task.id
        while True:
            info = await self._info(tid)
            final = info.state in FINAL
            if info.attempt > 0:
                try:
                    async for piece in self._log_pieces(tid, stderr, offset, check=False):
                        offset += len(piece)
                        yield piece
                except NotFound:
                    if final:
                        rest = self._tail_instead(info, stderr, offset)
                        if rest:
                            yield rest
                        return
                except InvalidRequest as exc:
                    if exc.code != "not_ready":
                        raise
            if final:
                return
            await anyio.sleep(interval)

    async def _info(self, tid: int) -> TaskInfo:
        found = await self.tasks(ids=[tid], limit=1)
        if not found:
            raise NotFound(f"no task with id {tid}")
        return found[0]

    def _tail_instead(self, info: TaskInfo, stderr: bool, offset: int) -> bytes:
        name = "stderr" if stderr else "stdout"
        self.on_notice(Notice(
            f"task {info.id} has no {name}.txt on its site (a function task that printed "
            f"nothing, or its work directory was removed): this is the end of its {name} "
            "as the pilot reported it", False))
        tail = (info.stderr_tail if stderr else info.stdout_tail).encode()
        return tail[offset:]

    async def _log_pieces(self, tid: int, stderr: bool, offset: int, *, check: bool
                          ) -> AsyncIterator[bytes]:
        """Read the log from ``offset`` to its current end, a piece at a time. ``check``:
        compare the SHA-256 of what was read with the site's (a whole file, read once)."""
        h = hashlib.sha256()
        while True:
            r: P.FileData = await self._request(functools.partial(
                _log_msg, task_id=tid, stderr=stderr, offset=offset))
            if r.offset != offset:
                raise TidewaterError(f"log of task {tid}: asked for offset {offset}, "
                                     f"got {r.offset}")
            if r.data:
                h.update(r.data)
                offset += len(r.data)
                yield r.data
            if not r.data or offset >= r.size:
                if check and r.sha256 and r.sha256 != h.hexdigest():
                    raise TidewaterError(f"log of task {tid}: SHA-256 mismatch (the file "
                                         "changed while it was read?)")
                return


def _retry_msg(req_id: int, *, filter: P.TaskFilter, after_id: int) -> P.Msg:
    return P.Retry(req_id=req_id, filter=filter, after_id=after_id)


def _events_msg(req_id: int, *, filter: P.TaskFilter, since_event: int, limit: int) -> P.Msg:
    return P.ListEvents(req_id=req_id, filter=filter, since_event=since_event, limit=limit)


def _log_msg(req_id: int, *, task_id: int, stderr: bool, offset: int) -> P.Msg:
    return P.ReadLog(req_id=req_id, task_id=task_id, stderr=stderr, offset=offset,
                     length=LOG_PIECE)
