"""The edge client's async API (the sync facade is :mod:`tidewater.client_sync`).

::

    async with tidewater.connect(url, token=token) as client:
        task = await client.submit("hello", site="laptop", params={"name": "world"})
        info = await task.result()            # TaskInfo: state, exit code, output tails
        async for event in client.watch(tags={"run": "42"}):
            ...

The client keeps one websocket and reconnects by itself with backoff.
Requests in flight when the link breaks are sent again on the new link:
``Submit`` carries an idempotency key so a resend never creates tasks twice,
``Wait`` asks again for what has not come back, and watches resume from the
last event they delivered.

Results come back without asking: a submit sets ``Submit.wait``, and the
controller pushes each task's final ``TaskInfo`` to this connection under
the submit's request id as it is committed, so ``Task.result()`` on a task
this client submitted sends nothing (one round trip in all). A ``Wait`` is
sent only for tasks the client did not submit on this connection.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec
from anyio.abc import TaskStatus

from . import codec
from . import proto as P
from .client_admin import Administration
from .client_lifecycle import TaskLifecycle
from .client_reports import Reports
from .client_specs import InputSource, inputs_of, outputs_of, route_fields
from .client_watch import Watcher as Watcher
from .client_watch import wait_either
from .config import Timeouts
from .errors import (
    ConfigError,
    ConnectionBroken,
    InvalidRequest,
    TaskFailed,
    TidewaterError,
    from_code,
    remote_failure,
)
from .progress import Notice, waiting_notices
from .proto import TaskInfo, TaskSpec
from .states import FINAL, TaskState
from .transport import Link, LinkOptions, Session

log = logging.getLogger("tidewater.client")

T = TypeVar("T")
ParamValue = str | int | float | bool


@dataclass
class _Request:
    msg: P.Msg
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: Any = None
    on_reply: Callable[[Any], bool] | None = None  # for multi-reply requests; True when done
    req_id: int = 0


class Task:
    """A handle on a submitted task."""

    def __init__(self, client: Client, task_id: int) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"<Task {self.id}>"

    async def result(self, *, timeout: float | None = None, check: bool = False) -> TaskInfo:
        """Wait until the task is final and return its :class:`TaskInfo`.

        With ``check=True`` a task that did not reach JOB_FINISHED raises
        :class:`TaskFailed`. Raises TimeoutError after ``timeout`` seconds.
        Cancel-safe.
        """
        (info,) = await self.client.wait([self], timeout=timeout, check=check)
        return info

    async def value(self, *, timeout: float | None = None) -> Any:
        """Wait for a function task and return what its function returned (decoded).

        Raises :class:`TaskFailed` if the task did not finish; when its function
        raised, that TaskFailed is also an instance of the nearest built-in
        exception class the remote one derives from (``except ValueError:``
        catches a remote ``math.sqrt(-1.0)``), with the remote traceback in
        ``remote_traceback`` (see :func:`task_failure`). Cancel-safe.
        """
        info = await self.result(timeout=timeout, check=True)
        return codec.decode(info.result) if info.result is not None else None

    async def output(self, name: str, *, timeout: float | None = None) -> bytes:
        """Wait for the task to finish and return the bytes of its output ``name``.

        For outputs of any size; to write a large one to disk use
        :meth:`Client.download`. Raises :class:`TaskFailed` if the task did not finish.
        """
        await self.result(timeout=timeout, check=True)
        return await self.client.read_output(self, name)

    def done(self) -> bool:
        """Whether this client has seen the task reach a final state (no request is sent).

        True once :meth:`result` would return at once; a retry makes it False again.
        """
        return self.id in self.client._results

    async def cancel(self) -> bool:
        """Cancel the task; False if it had already ended."""
        return bool(await self.client.cancel([self.id]))

    async def info(self) -> TaskInfo:
        """The task as the controller has it now."""
        found = await self.client.tasks(ids=[self.id])
        return found[0]



def task_failure(info: TaskInfo) -> TaskFailed:
    """The exception for a task that did not finish: a FAILED function task whose
    function raised gets ``Remote<Builtin>`` (:func:`tidewater.errors.remote_failure`),
    every other one a plain :class:`TaskFailed`."""
    raised = info.exception if info.state == TaskState.FAILED else None
    if raised is None:
        return TaskFailed(info.id, info.state, info.exit_code, info.error)
    return remote_failure(info.id, info.state, info.exit_code, info.error,
                          remote_type=raised.type, builtin_names=raised.builtins,
                          remote_message=raised.message, remote_traceback=raised.traceback)


class Client(Administration, Reports, TaskLifecycle):
    """An async connection to a controller. Use ``async with``.

    A ``wss://`` controller is verified against ``ca_file`` (default
    ``TIDEWATER_CA_FILE``, else the system trust store); entering raises
    :class:`~tidewater.TLSError` when its certificate does not verify.
    """

    def __init__(
        self, url: str | Sequence[str] | None = None, token: str | None = None, *,
        name: str = "client",
        timeouts: Timeouts | None = None, reconnect: bool = True,
        ca_file: str | os.PathLike[str] | None = None,
        on_notice: Callable[[Notice], None] | None = None,
    ) -> None:
        # Several controllers (a list, or commas): the client follows whichever leads.
        if not url or not token:
            # What is not given: the environment, else the user's profile (tidewater.profiles).
            from .profiles import connection

            found_url, found_token, found_ca = connection(None, None, None)
            url, token = url or found_url, token or found_token
            ca_file = ca_file or found_ca
        self.url = url or ""
        self.token = token or ""
        # A wss:// controller is verified against this CA alone, else the system trust store.
        self.ca_file = os.fspath(ca_file) if ca_file else os.environ.get("TIDEWATER_CA_FILE", "")
        if not self.url:
            raise ConfigError("no controller URL: pass url=, set TIDEWATER_URL or run "
                              "`tidewater login`")
        if not self.token:
            raise ConfigError("no token: pass token=, set TIDEWATER_TOKEN or run "
                              "`tidewater login`")
        self.name = name
        self.t = timeouts or Timeouts()
        self.on_notice = on_notice or _log_notice
        """Told what a submit should know (a site with nothing connected) and, every
        ``timeouts.progress`` seconds of a wait, what the tasks are waiting for."""
        self.reconnect = reconnect
        self.welcome: P.Welcome | None = None
        self._pending: dict[int, _Request] = {}
        self._next_req = 1
        self._results: dict[int, TaskInfo] = {}
        self._pushed: set[int] = set()
        """Tasks whose final TaskInfo the controller pushes unasked (submit-and-wait)."""
        self._result_hooks: set[Callable[[TaskInfo | None], None]] = set()
        """Told of every final TaskInfo that arrives (None: the client failed)."""
        self._watches: dict[int, Watcher] = {}  # server watch id -> watcher
        self._failure: BaseException | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._session = Session(
            self.url, role="client", hello=self._hello, decoder=P.to_client_decoder,
            on_message=self._received, on_welcome=self._welcomed, timeouts=self.t, log=log,
            persistent=False, reconnect=reconnect,
            options=LinkOptions(ca_file=self.ca_file or None),
        )

    # ------------------------------------------------------------------ life

    async def __aenter__(self) -> Client:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._run)
        except BaseException:
            # The group's own scope is cancelled, so exiting it cannot block;
            # a shield scope cannot wrap it (it would straddle the group's scope).
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._session.run(task_status=task_status)
        except TidewaterError as exc:
            self._fail(exc)
            if self.welcome is None:
                raise  # the first connection failed: entering the client says why

    def _hello(self) -> P.Hello:
        return P.Hello(role="client", proto_version=P.PROTO_VERSION, batches=True, token=self.token,
                       name=self.name)

    async def _welcomed(self, link: Link, welcome: P.Welcome) -> None:
        """Send again what was asked and not answered, in the form a resend takes."""
        self.welcome = welcome
        for req_id, req in list(self._pending.items()):
            await link.send(self._resend_form(req_id, req))

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        for req in self._pending.values():
            req.done.set()
        for hook in list(self._result_hooks):
            hook(None)
        for w in self._watches.values():
            w._close(exc)

    def _resend_form(self, req_id: int, req: _Request) -> P.Msg:
        msg = req.msg
        if isinstance(msg, P.Submit):
            return msgspec.structs.replace(msg, resend=True)
        if isinstance(msg, P.Wait):
            left = [i for i in msg.ids if i not in self._results]
            return P.Wait(req_id=req_id, ids=left)
        if isinstance(msg, P.Watch):
            w = next((w for w in self._watches.values() if w.req_id == req_id), None)
            if w is not None:
                since = max(w.last_event, w.resume_from)
                return P.Watch(req_id=req_id, filter=msg.filter, since_event=since)
        return msg

    def _received(self, msg: Any) -> None:
        if isinstance(msg, P.Events):
            w = self._watches.get(msg.watch_id)
            if w is not None:
                w._push(msg.events)
            return
        if isinstance(msg, P.Ping):
            return
        req_id = getattr(msg, "req_id", 0)
        req = self._pending.get(req_id)
        if req is None:
            if isinstance(msg, P.Error):
                log.warning("controller error: %s: %s", msg.code, msg.message)
            return
        if req.on_reply is not None and not isinstance(msg, P.Error):
            if not req.on_reply(msg):
                return
        req.reply = msg
        del self._pending[req_id]
        req.done.set()

    # ------------------------------------------------------------------ requests

    def _take_results(self, infos: Iterable[TaskInfo]) -> None:
        """Keep the final ones and tell whoever waits on them."""
        for info in infos:
            if info.state in FINAL:
                self._results[info.id] = info
                self._pushed.discard(info.id)
                for hook in list(self._result_hooks):
                    hook(info)

    def _new_id(self) -> int:
        rid = self._next_req
        self._next_req += 1
        return rid

    async def _request(
        self, build: Callable[[int], P.Msg], *, timeout: float | None = None,
        on_reply: Callable[[Any], bool] | None = None,
    ) -> Any:
        req = await self._open(build, on_reply)
        try:
            with anyio.fail_after(timeout):
                await req.done.wait()
        finally:
            self._pending.pop(req.req_id, None)
        if req.reply is None:
            raise ConnectionBroken(f"connection to the controller failed: {self._failure}")
        if isinstance(req.reply, P.Error):
            raise from_code(req.reply.code, req.reply.message)
        return req.reply

    # ------------------------------------------------------------------ tasks

    async def submit(
        self, app: str, *, site: str | Sequence[str],
        params: Mapping[str, ParamValue] | None = None, policy: str = "",
        tags: Mapping[str, str] | None = None, priority: int = 0, cores: int = 1,
        gpus: int = 0, timeout: float | None = None, max_retries: int = 3,
        env: Mapping[str, str] | None = None, workdir: str | None = None,
        resources: P.Resources | None = None, wall_time: float | None = None,
        parents: Sequence[Task | int] = (),
        args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
        inputs: Mapping[str, InputSource] | Iterable[P.Input] = (),
        outputs: Mapping[str, str] | Iterable[str | P.Output] = (),
    ) -> Task:
        """Submit one task; returns once the controller has stored it.

        ``resources`` (nodes, ranks, threads, GPUs per rank, packing) replaces
        ``cores``/``gpus``; ``wall_time`` is the run-time estimate in seconds
        a batch job must still have left for the task to start in it.
        ``parents`` must all finish first (AWAITING_PARENTS until then); if one
        fails or is killed, so is this task, with the parent named as the reason.
        ``args``/``kwargs`` are the call of a function app (msgpack, numpy arrays
        included); ``await task.value()`` gives what it returned. Raises
        ``tidewater.codec.CodecError`` for an argument that cannot be encoded.

        ``inputs`` maps a path in the task's work directory to its source: a URL
        (``file://``, ``sftp://user@host/path``, ``globus://ENDPOINT/path``, fetched
        by the site's agent before the task runs), ``bytes`` (inline, small), or
        ``(parent_task, "output name")`` (that task becomes a parent).
        ``outputs`` names what the task leaves behind: a list of paths (small
        ones come back inline: :meth:`Task.output`, :meth:`download`), or a
        mapping path -> URL the site's agent sends it to after the run.

        ``site`` is a site's name, a list of names, or ``"any"`` (every site of
        yours that has the app): the controller then routes the task to one of
        them by ``policy`` (``earliest-start``, the default; ``shortest-backlog``;
        ``round-robin``) and records why in :attr:`TaskInfo.routes`. Raises
        InvalidRequest for an unknown policy, or a listed site without the app.
        """
        spec = TaskSpec(
            app=app, **route_fields(site, policy), params=dict(params or {}),
            tags=dict(tags or {}),
            priority=priority, resources=resources or P.Resources(cores=cores, gpus=gpus),
            timeout=timeout, max_retries=max_retries, env=dict(env or {}), workdir=workdir,
            wall_time=wall_time, parents=[p.id if isinstance(p, Task) else p for p in parents],
            args=codec.encode_call(tuple(args), dict(kwargs or {})) if args or kwargs else b"",
            inputs=inputs_of(inputs), outputs=outputs_of(outputs),
        )
        (task,) = await self.submit_many([spec])
        return task

    async def read_output(self, task: Task | int, name: str) -> bytes:
        """The whole of a finished task's output ``name``, in memory (see :meth:`download`)."""
        return b"".join([chunk async for chunk in self._fetch(task, name)])

    async def download(self, task: Task | int, name: str, dest: str | os.PathLike[str]) -> Path:
        """Write a finished task's output ``name`` to ``dest`` (a file, or a directory to
        put it in); returns the path written.

        Small outputs come from the controller; larger ones kept on the site
        are read through the site's agent in 1 MiB pieces. The file appears
        only once complete, and its SHA-256 is checked against the site's.
        """
        target = anyio.Path(dest)
        if await target.is_dir():
            target = target / Path(name).name
        tmp = target.with_name(f".tw-partial-{uuid.uuid4().hex[:8]}-{target.name}")
        try:
            async with await anyio.open_file(tmp, "wb") as f:
                async for chunk in self._fetch(task, name):
                    await f.write(chunk)
            await tmp.replace(target)
        finally:
            await tmp.unlink(missing_ok=True)
        return Path(target)

    async def _fetch(self, task: Task | int, name: str) -> AsyncIterator[bytes]:
        tid = task.id if isinstance(task, Task) else task
        offset, h = 0, hashlib.sha256()
        while True:
            build = functools.partial(_download_msg, task_id=tid, path=name, offset=offset)
            r: P.FileData = await self._request(build)
            if r.offset != offset:
                raise TidewaterError(f"download of {name!r}: asked for offset {offset}, "
                                     f"got {r.offset}")
            yield r.data
            h.update(r.data)
            offset += len(r.data)
            if offset >= r.size or not r.data:
                if offset != r.size:
                    raise TidewaterError(f"download of {name!r}: got {offset} of {r.size} "
                                         "bytes (the file changed on the site?)")
                if r.sha256 and r.sha256 != h.hexdigest():
                    raise TidewaterError(f"download of {name!r}: SHA-256 mismatch")
                return

    async def submit_many(
        self, specs: Iterable[TaskSpec], *, progress: Callable[[int], None] | None = None,
        push_results: bool = True,
    ) -> list[Task]:
        """Submit many tasks in batches; every returned task is stored.

        Batches are pipelined (several in flight). If the controller refuses a
        batch (bad app, missing parameter) the error names the task; batches
        before it were stored. With ``push_results`` (the default) the
        controller pushes each task's result to this client as it finishes, so
        :meth:`Task.result`, :meth:`wait` and :meth:`as_completed` send nothing
        more; pass False for work this client will not wait for.
        """
        specs = list(specs)
        limit = (self.welcome.max_tasks_per_submit if self.welcome else 0) or 1000
        size = min(limit, 1000)
        budget = (self.welcome.max_frame_bytes if self.welcome else 8 << 20) // 2
        batches = [run for i in range(0, len(specs), size)
                   for run in P.chunk_by_size(specs[i : i + size], P.payload, budget)]
        offsets = [sum(len(b) for b in batches[:k]) for k in range(len(batches))]
        results: list[list[int]] = [[] for _ in batches]
        errors: list[BaseException] = []
        warned: set[str] = set()
        sem = anyio.Semaphore(4)

        async def one(k: int, batch: list[TaskSpec]) -> None:
            async with sem:
                if errors:
                    return
                key = uuid.uuid4().hex
                try:
                    r = await self._submit_batch(batch, key, push_results)
                except TidewaterError as exc:
                    errors.append(_renumber(exc, offsets[k]))
                    return
                results[k] = list(r.ids)
                for w in r.warnings:
                    if w not in warned:
                        warned.add(w)
                        self.on_notice(Notice(w, True))
                if progress is not None:
                    progress(len(r.ids))

        async with anyio.create_task_group() as tg:
            for k, batch in enumerate(batches):
                tg.start_soon(one, k, batch)
        if errors:
            raise errors[0]
        return [Task(self, tid) for ids in results for tid in ids]

    async def _submit_batch(self, batch: list[TaskSpec], key: str, push: bool) -> P.Submitted:
        """One Submit; with ``push`` its request stays open for the pushed Results."""
        if not push:
            r: P.Submitted = await self._request(
                lambda i: P.Submit(req_id=i, tasks=batch, key=key))
            return r
        submitted = anyio.Event()
        box: dict[str, Any] = {}
        left: set[int] = set()

        def on_reply(msg: Any) -> bool:
            if isinstance(msg, P.Submitted):
                if "reply" not in box:
                    box["reply"] = msg
                    left.update(i for i in msg.ids if i not in self._results)
                    self._pushed.update(left)
                    submitted.set()
                return not left
            if isinstance(msg, P.Results):
                self._take_results(msg.tasks)
                left.difference_update(i.id for i in msg.tasks if i.state in FINAL)
                return "reply" in box and not left
            return True

        req = await self._open(lambda i: P.Submit(req_id=i, tasks=batch, key=key, wait=True),
                               on_reply)
        try:
            await wait_either(submitted, req.done)
        except BaseException:
            self._pending.pop(req.req_id, None)
            raise
        if "reply" in box:
            return box["reply"]  # type: ignore[no-any-return]
        self._pending.pop(req.req_id, None)
        if isinstance(req.reply, P.Error):
            raise from_code(req.reply.code, req.reply.message)
        raise ConnectionBroken(f"connection to the controller failed: {self._failure}")

    async def resubmit(self, tasks: Iterable[Task | int]) -> list[Task]:
        """Submit a new task (a new id) with the spec of each of ``tasks``, in any state.

        The copy has the original's app, site (or routing), parameters, tags,
        resources, inputs, outputs and parents, and nothing else of it (to run a
        FAILED task again under its own id, :meth:`retry` it). Raises NotFound
        for an id that is not one of your tasks (nothing is submitted then).
        """
        return [Task(self, i) for i in await self._resubmit(tasks)]

    async def cancel(self, ids: Iterable[int | Task]) -> list[int]:
        """Cancel tasks; returns the ids that were still running or waiting."""
        wanted = [i.id if isinstance(i, Task) else int(i) for i in ids]
        r = await self._request(lambda i: P.Cancel(req_id=i, ids=wanted))
        return list(r.ids)

    async def tasks(
        self, *, ids: Sequence[int] = (), state: str | Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None, site: str | None = None,
        app: str | None = None, limit: int = 1000, after_id: int = 0, newest: bool = False,
        since: float | None = None, until: float | None = None,
    ) -> list[TaskInfo]:
        """List tasks matching every given filter, oldest first.

        At most ``limit``: the oldest ones after ``after_id`` (for paging), or
        with ``newest=True`` the most recent ones (as many as fit in one reply
        when their function results are large). ``since``/``until`` (seconds
        since the epoch): only tasks created at or after / before that time.
        """
        states = [state] if isinstance(state, str) else list(state or [])
        f = P.TaskFilter(ids=list(ids), states=states, tags=dict(tags or {}), site=site, app=app,
                         since=since, until=until)
        out: list[TaskInfo] = []
        while True:
            r: P.TaskList = await self._request(functools.partial(
                _query_msg, filter=f, limit=limit - len(out), after_id=after_id, newest=newest))
            out.extend(r.tasks)
            if not r.truncated or newest or not r.tasks or len(out) >= limit:
                return out
            after_id = r.tasks[-1].id

    async def count(
        self, *, ids: Sequence[int] = (), state: str | Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None, site: str | None = None,
        app: str | None = None, since: float | None = None, until: float | None = None,
    ) -> P.TaskCounts:
        """How many tasks match every given filter: ``by_state``, ``by_site`` (then by
        state) and ``total``, as the controller has stored them. ``since``/``until``
        (seconds since the epoch): only tasks created at or after / before that time.

        Raises InvalidRequest for an unknown state, NotFound for an unknown site.
        Cost: the controller reads every matching task's index entry (about a
        second per million on SQLite; a time window reads only the window's), so
        call it for a summary, not per task.
        """
        states = [state] if isinstance(state, str) else list(state or [])
        f = P.TaskFilter(ids=list(ids), states=states, tags=dict(tags or {}), site=site, app=app,
                         since=since, until=until)
        r: P.TaskCounts = await self._request(lambda i: P.CountTasks(req_id=i, filter=f))
        return r

    async def wait(
        self, tasks: Iterable[Task | int], *, timeout: float | None = None, check: bool = False
    ) -> list[TaskInfo]:
        """Wait for every task to be final; results in the order given."""
        ids = [t.id if isinstance(t, Task) else int(t) for t in tasks]
        async for _ in self.as_completed(ids, timeout=timeout):
            pass
        out = [self._results[i] for i in ids]
        if check:
            for info in out:
                if info.state != TaskState.JOB_FINISHED:
                    raise task_failure(info)
        return out

    async def as_completed(
        self, tasks: Iterable[Task | int], *, timeout: float | None = None
    ) -> AsyncIterator[TaskInfo]:
        """Yield each task's final :class:`TaskInfo` as soon as it is final.

        Raises TimeoutError if ``timeout`` seconds pass first.
        """
        ids = list(dict.fromkeys(t.id if isinstance(t, Task) else int(t) for t in tasks))
        started = anyio.current_time()
        deadline = None if timeout is None else started + timeout
        notice_at = started + self.t.progress
        ready: deque[TaskInfo] = deque(self._results[i] for i in ids if i in self._results)
        left = {i for i in ids if i not in self._results}
        box = {"arrived": anyio.Event()}

        def hook(info: TaskInfo | None) -> None:
            if info is None or info.id in left:
                if info is not None:
                    left.discard(info.id)
                    ready.append(info)
                box["arrived"].set()

        asked = sorted(i for i in left if i not in self._pushed)  # the rest come unasked

        def on_reply(msg: Any) -> bool:
            if isinstance(msg, P.Results):
                self._take_results(msg.tasks)
            return all(i in self._results for i in asked)

        self._result_hooks.add(hook)
        req = None
        try:
            if asked:
                req = await self._open(lambda i: P.Wait(req_id=i, ids=asked), on_reply)
            while True:
                while ready:
                    yield ready.popleft()
                if not left:
                    return
                if req is not None and req.done.is_set():
                    if isinstance(req.reply, P.Error):
                        raise from_code(req.reply.code, req.reply.message)
                    if self._failure is None:  # all it asked came; the rest is pushed
                        self._pending.pop(req.req_id, None)
                        req = None
                if self._failure is not None:
                    raise ConnectionBroken(f"connection failed: {self._failure}")
                now = anyio.current_time()
                if deadline is not None and now >= deadline:
                    raise TimeoutError
                if now >= notice_at:
                    await self._notice_waiting(left, now - started)
                    notice_at = anyio.current_time() + self.t.progress
                    continue
                until = notice_at if deadline is None else min(deadline, notice_at)
                with anyio.move_on_after(until - now):
                    await (box["arrived"].wait() if req is None
                           else wait_either(box["arrived"], req.done))
                    box["arrived"] = anyio.Event()
        finally:
            self._result_hooks.discard(hook)
            if req is not None:
                self._pending.pop(req.req_id, None)

    async def _notice_waiting(self, left: set[int], waited: float) -> None:
        """Say what the tasks in ``left`` wait for (best effort: a failed read says nothing)."""
        sample = sorted(left)[:1000]
        try:
            with anyio.fail_after(self.t.request):
                infos = await self.tasks(ids=sample, limit=len(sample))
                sites = await self.sites()
        except (TidewaterError, TimeoutError) as exc:
            log.debug("could not read what the tasks wait for: %s", exc)
            return
        self._take_results(infos)  # a result that was never pushed is taken here too
        infos = [i for i in infos if i.id in left]
        for n in waiting_notices(len(left), infos, sites, waited):
            self.on_notice(n)

    async def _open(
        self, build: Callable[[int], P.Msg], on_reply: Callable[[Any], bool] | None
    ) -> _Request:
        """Register a request and send it; the caller pops it from ``_pending`` when done."""
        if self._failure is not None:
            raise ConnectionBroken(f"the client is closed: {self._failure}")
        req_id = self._new_id()
        msg = build(req_id)
        try:
            frame = P.encode(msg)  # what cannot be sent is refused before it is queued
        except (UnicodeEncodeError, OverflowError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"the request cannot be encoded: {exc}") from None
        req = _Request(msg, on_reply=on_reply, req_id=req_id)
        self._pending[req_id] = req
        link = self._session.link
        if link is not None:
            try:
                await link.send_raw(frame)
            except TidewaterError:
                pass  # the reconnect loop resends it
        return req

    def watch(
        self, *, tags: Mapping[str, str] | None = None, ids: Sequence[int] = (),
        states: Sequence[str] = (), site: str | None = None, app: str | None = None,
        since_event: int = 0,
    ) -> Watcher:
        """Live task events, pushed by the controller as they are committed.

        ``async for event in client.watch(tags={"run": "42"})``. Pass
        ``since_event`` to replay committed history after that event id
        first. Use ``async with`` (or ``aclose()``) to end the subscription.
        """
        f = P.TaskFilter(ids=list(ids), states=list(states), tags=dict(tags or {}), site=site,
                         app=app)
        return Watcher(self, f, since_event)


def _renumber(exc: TidewaterError, offset: int) -> TidewaterError:
    """Make 'task 3: ...' in a batch error point at the index in the caller's list."""
    msg = getattr(exc, "message", None)
    if offset and isinstance(msg, str) and msg.startswith("task "):
        num, _, rest = msg[5:].partition(":")
        if num.isdigit():
            return type(exc)(f"task {int(num) + offset}:{rest}", getattr(exc, "code", None))
    return exc


def _log_notice(n: Notice) -> None:
    (log.warning if n.trouble else log.info)("%s", n.text)


def connect(
    url: str | Sequence[str] | None = None, token: str | None = None, *,
    ca_file: str | os.PathLike[str] | None = None, **kwargs: Any,
) -> Client:
    """A :class:`Client` for ``async with``.

    URL, token and CA file default to ``TIDEWATER_URL``, ``TIDEWATER_TOKEN``
    and ``TIDEWATER_CA_FILE``, else to the user's profile (``tidewater login``,
    :mod:`tidewater.profiles`). ``url`` may name a leader and its standbys (a
    list, or URLs separated by commas): the client uses the first that
    answers and moves on when it goes. A ``wss://`` controller's certificate is
    verified against ``ca_file`` (else the system trust store); entering the
    client raises :class:`~tidewater.TLSError` if it does not verify.
    """
    return Client(url, token, ca_file=ca_file, **kwargs)


# ---------------------------------------------------------------------- sync facade


def _query_msg(req_id: int, *, filter: P.TaskFilter, limit: int, after_id: int,
               newest: bool) -> P.Msg:
    return P.Query(req_id=req_id, filter=filter, limit=limit, after_id=after_id, newest=newest)


def _download_msg(req_id: int, *, task_id: int, path: str, offset: int) -> P.Msg:
    return P.Download(req_id=req_id, task_id=task_id, path=path, offset=offset, length=1 << 20)
