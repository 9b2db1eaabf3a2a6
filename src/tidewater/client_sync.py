"""The synchronous face of :class:`~tidewater.client.Client`, for scripts and notebooks.

``with tidewater.connect_sync(url, token=...) as client: client.submit(...)``
runs an async :class:`~tidewater.client.Client` on an event loop in a
background thread (an anyio blocking portal); every call blocks until its
coroutine is done. :class:`RemoteExecutor` is a
:class:`concurrent.futures.Executor` whose calls run as function tasks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast

from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import proto as P
from .client import Client, Task
from .errors import ConnectionBroken, TidewaterError
from .latency import LatencyRow, Series
from .proto import TaskEvent, TaskInfo, TaskSpec


class SyncTask:
    """A handle on a submitted task, blocking (see :class:`tidewater.client.Task`)."""

    def __init__(self, client: SyncClient, task: Task) -> None:
        self._client = client
        self._task = task
        self.id = task.id

    def __repr__(self) -> str:
        return f"<Task {self.id}>"

    def result(self, *, timeout: float | None = None, check: bool = False) -> TaskInfo:
        info: TaskInfo = self._client._call(self._task.result, timeout=timeout, check=check)
        return info

    def value(self, *, timeout: float | None = None) -> Any:
        """What the function returned; raises as :meth:`tidewater.client.Task.value` (a
        function's ValueError is caught by ``except ValueError``)."""
        return self._client._call(self._task.value, timeout=timeout)

    def output(self, name: str, *, timeout: float | None = None) -> bytes:
        return self._client._call(self._task.output, name, timeout=timeout)  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        return bool(self._client._call(self._task.cancel))

    def info(self) -> TaskInfo:
        """The task as the controller has it now."""
        info: TaskInfo = self._client._call(self._task.info)
        return info

    def done(self) -> bool:
        """Whether this client has seen the task reach a final state (sends nothing)."""
        return self._task.done()


_Outcome = tuple[bool, Any]  # (True, value) or (False, exception)


class RemoteFuture(concurrent.futures.Future[Any]):
    """The future of one :class:`RemoteExecutor` call: a function task on a site.

    ``task_id`` (and ``task``, its :class:`SyncTask`) name the task once the
    controller has accepted it; both are None before (submission is
    asynchronous, as in Globus Compute's executor); :meth:`submitted` waits
    for them. ``running()`` is True from acceptance until the task ends: the
    call is in the controller's hands (queued or running on a pilot), as a
    :class:`~concurrent.futures.ProcessPoolExecutor` call is running once it
    is in the call queue.

    :meth:`cancel` asks the controller to kill the task, queued or running,
    and returns True only when the controller confirms that it killed it (the
    task is then KILLED, and its process on the pilot is killed when the pilot
    hears of it); False when the call had already ended. A call cancelled
    before it was sent is never sent. Cancelled futures notify
    ``concurrent.futures.wait``/``as_completed`` like any other.
    """

    def __init__(self, executor: RemoteExecutor) -> None:
        super().__init__()
        self._executor = executor
        self.task_id: int | None = None
        self.task: SyncTask | None = None
        self._settled = threading.Event()  # the submission ended: accepted, refused or never sent
        self._lock = threading.RLock()  # RLock: a done callback may call cancel() again
        self._sending = False
        self._cancelling = False
        self._held: _Outcome | None = None  # an outcome that came while a cancel was asked

    def __repr__(self) -> str:
        state = ("cancelled" if self.cancelled() else "finished" if self.done()
                 else "running" if self.running() else "pending")
        return f"<RemoteFuture at {id(self):#x} task={self.task_id} state={state}>"

    def running(self) -> bool:
        """True while the task is with the controller: accepted and not ended."""
        return self.task_id is not None and not self.done()

    def submitted(self, timeout: float | None = None) -> SyncTask:
        """Wait until the controller has accepted the call; its task.

        Raises the submission's error (an unknown app, bad arguments, a lost
        connection), :class:`concurrent.futures.CancelledError` if the call was
        cancelled before it was sent, TimeoutError after ``timeout`` seconds.
        """
        if not self._settled.wait(timeout):
            raise TimeoutError(f"the call was not accepted within {timeout} s")
        if self.task is not None:
            return self.task
        if self.cancelled():
            raise concurrent.futures.CancelledError
        exc = self.exception(timeout=0)
        assert exc is not None
        raise exc

    def cancel(self) -> bool:
        """Cancel the call; True if it was never sent or the controller killed its task.

        Blocks for the controller's answer (and for a submission in flight to
        be accepted first). Called on the client's event-loop thread (where
        done callbacks run), it cannot wait for the controller: a call already
        sent is then left alone and False returned.
        """
        if self._cancel_unsent():
            return True
        with self._lock:
            if self.done():
                return self.cancelled()
        return self._executor._cancel([self]) == [self]

    def _cancel_unsent(self) -> bool:
        """Cancel a call that is not being sent yet (it never will be); False otherwise."""
        with self._lock:
            if self.done() or self._sending or not super().cancel():
                return False
            self._settled.set()
            self.set_running_or_notify_cancel()  # tells wait()/as_completed() at once
            return True

    # The executor's side. ------------------------------------------------------------

    def _begin(self) -> bool:
        """Before sending: False (and waiters told) if the call was cancelled first."""
        with self._lock:
            if self.cancelled():  # by _cancel_unsent, which told the waiters
                return False
            self._sending = True
            return True

    def _accepted(self, task: SyncTask) -> None:
        self.task_id = task.id
        self.task = task
        self._settled.set()

    def _settle(self, outcome: _Outcome) -> None:
        """The call's outcome: the future's, unless a cancel is being asked (then held)."""
        self._settled.set()
        with self._lock:
            if self.done():
                return
            if self._cancelling:
                self._held = outcome
                return
        self._apply(outcome)

    def _apply(self, outcome: _Outcome) -> None:
        ok, what = outcome
        try:
            if ok:
                self.set_result(what)
            else:
                self.set_exception(what)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile

    def _ask_cancel(self) -> bool:
        """Mark a cancel in progress; False if the future is already done."""
        with self._lock:
            if self.done():
                return False
            self._cancelling = True
            return True

    def _end_cancel(self, killed: bool) -> bool:
        """After the controller answered: cancelled (True) or the held outcome applied."""
        with self._lock:
            self._cancelling = False
            held, self._held = self._held, None
            if killed and super().cancel():
                self.set_running_or_notify_cancel()  # tells wait()/as_completed()
                return True
        if held is not None:
            self._apply(held)
        return False


class RemoteExecutor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` whose calls run as function tasks on a site.

    ``executor.submit("integrate", x)`` runs the site's function app
    ``integrate`` with ``x`` and returns a :class:`RemoteFuture` of its return
    value; ``map`` comes with it, and ``concurrent.futures.wait`` and
    ``as_completed`` work on its futures. A task that fails sets the future's
    exception to :class:`TaskFailed` (a function's ``ValueError`` is caught by
    ``except ValueError``); a submission the controller refuses sets it to that
    refusal. ``future.cancel()`` kills the remote task, queued or running (see
    :class:`RemoteFuture`); ``shutdown(cancel_futures=True)`` kills every call
    not yet ended, in one request. Made by :meth:`SyncClient.executor`.
    """

    def __init__(self, client: SyncClient, site: str, **task_options: Any) -> None:
        self._client = client
        self._site = site
        self._options = task_options
        self._futures: set[RemoteFuture] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> RemoteFuture:
        """``fn``: the name of a function app on the site. Returns at once; the call is
        sent in the background (its future's ``task_id`` is set once it is accepted).

        Raises RuntimeError after :meth:`shutdown` or outside ``with connect_sync(...)``,
        TypeError when ``fn`` is not a name."""
        if not isinstance(fn, str):
            raise TypeError("submit() takes the name of a function app on the site, "
                            f"not {type(fn).__name__} (code is never shipped to a site)")
        portal = self._client._portal
        if portal is None:
            raise RuntimeError("use the executor inside `with connect_sync(...)`")
        future = RemoteFuture(self)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            self._futures.add(future)
        future.add_done_callback(self._forget)
        try:
            portal.start_task_soon(self._run, future, fn, args, kwargs)
        except RuntimeError:  # the portal closed meanwhile
            self._forget(future)
            raise
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    async def _run(self, future: RemoteFuture, app: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> None:
        if not future._begin():
            return
        outcome: _Outcome = (False, ConnectionBroken("the client closed before the call ended"))
        try:
            task = await self._client._async.submit(app, site=self._site, args=args,
                                                    kwargs=kwargs, **self._options)
            future._accepted(SyncTask(self._client, task))
            outcome = (True, await task.value())
        except Exception as exc:
            outcome = (False, exc)
        finally:  # also when the client closes under it: the future never hangs
            future._settle(outcome)

    def _cancel(self, futures: list[RemoteFuture]) -> list[RemoteFuture]:
        """Kill the tasks of ``futures`` in one request; those the controller killed
        (now cancelled). Waits for submissions in flight to be accepted first."""
        if self._client._on_loop_thread():
            # A done callback on the client's loop cannot wait for the controller.
            return []
        asking = [f for f in futures if f._ask_cancel()]
        deadline = self._client._async.t.request
        ids: list[int] = []
        for f in asking:
            f._settled.wait(deadline)
            if f.task_id is not None:
                ids.append(f.task_id)
        killed: set[int] = set()
        if ids:
            try:
                killed = set(self._client._call(self._client._async.cancel, ids))
            except (TidewaterError, RuntimeError):  # RuntimeError: the client is closed
                killed = set()  # not confirmed: the calls go on, their futures too
        return [f for f in asking if f._end_cancel(f.task_id in killed)]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions. ``cancel_futures``: cancel every call not yet ended
        (unsent ones are not sent, the controller kills the others). ``wait``:
        block until every future is done."""
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            unsent = [f for f in pending if f._cancel_unsent()]
            self._cancel([f for f in pending if f not in unsent])
        if wait:
            concurrent.futures.wait(pending)


class SyncClient(AbstractContextManager["SyncClient"]):
    """The same API, blocking, for notebooks and plain scripts.

    ``with tidewater.connect_sync(url, token=...) as client: client.submit(...)``.
    The async client runs on an event loop in a background thread.
    """

    def __init__(self, url: str | Sequence[str] | None = None, token: str | None = None,
                 **kwargs: Any) -> None:
        self._async = Client(url, token, **kwargs)
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._client_cm: AbstractContextManager[Client] | None = None
        self._loop_thread: int | None = None

    def __enter__(self) -> SyncClient:
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            self._loop_thread = self._portal.call(threading.get_ident)
            self._client_cm = self._portal.wrap_async_context_manager(self._async)
            self._client_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._client_cm is not None:
                self._client_cm.__exit__(None, None, None)
        finally:
            if self._portal_cm is not None:
                self._portal_cm.__exit__(None, None, None)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._portal_or_fail().call(lambda: fn(*args, **kwargs))

    def _portal_or_fail(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeError("use the client inside `with connect_sync(...) as client`")
        return self._portal

    def _on_loop_thread(self) -> bool:
        """Whether this is the client's event-loop thread (a done callback runs there)."""
        return threading.get_ident() == self._loop_thread

    # ------------------------------------------------------------------ sites, apps, tokens

    def sites(self) -> list[P.SiteInfo]:
        """Your sites."""
        return self._call(self._async.sites)  # type: ignore[no-any-return]

    def apps(self, site: str | None = None) -> list[P.AppInfo]:
        """The apps of ``site`` (default: of every site of yours; none for a name that is
        not one of your sites)."""
        return self._call(self._async.apps, site)  # type: ignore[no-any-return]

    def create_token(self, *, site: str | None = None, name: str = "",
                     expires_in: float | None = None) -> tuple[P.TokenInfo, str]:
        """Mint a user token (or a site token with ``site``); the secret is shown only now."""
        return self._call(self._async.create_token, site=site, name=name,  # type: ignore[no-any-return]
                          expires_in=expires_in)

    def tokens(self, *, include_revoked: bool = False) -> list[P.TokenInfo]:
        """Your tokens, by id (never the secret)."""
        return self._call(self._async.tokens, include_revoked=include_revoked)  # type: ignore[no-any-return]

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token; connections using it close at once."""
        self._call(self._async.revoke_token, token_id)

    def add_user(self, name: str, *, admin: bool = False,
                 expires_in: float | None = None) -> str:
        """Admins: create a user; returns their token (shown only now)."""
        return self._call(self._async.add_user, name, admin=admin,  # type: ignore[no-any-return]
                          expires_in=expires_in)

    def remove_user(self, name: str) -> None:
        """Admins: remove a user (tokens revoked, connections closed, data kept)."""
        self._call(self._async.remove_user, name)

    def users(self) -> list[P.UserInfo]:
        return self._call(self._async.users)  # type: ignore[no-any-return]

    def audit(self, *, limit: int = 100, everyone: bool = False) -> list[P.AuditEntry]:
        """Your audit trail (admins: everyone's), oldest first."""
        return self._call(self._async.audit, limit=limit, everyone=everyone)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ tasks

    def submit(self, app: str, **kwargs: Any) -> SyncTask:
        return SyncTask(self, self._call(self._async.submit, app, **kwargs))

    def submit_many(self, specs: Iterable[TaskSpec]) -> list[SyncTask]:
        return [SyncTask(self, t) for t in self._call(self._async.submit_many, list(specs))]

    def wait(self, tasks: Iterable[SyncTask | int], **kwargs: Any) -> list[TaskInfo]:
        ids = [t.id if isinstance(t, SyncTask) else t for t in tasks]
        return self._call(self._async.wait, ids, **kwargs)  # type: ignore[no-any-return]

    def as_completed(self, tasks: Iterable[SyncTask | int], *,
                     timeout: float | None = None) -> Iterator[TaskInfo]:
        """Each task's final :class:`TaskInfo` as soon as it is final (the async
        :meth:`~tidewater.client.Client.as_completed`, blocking).

        ``timeout`` bounds the whole iteration: TimeoutError is raised when it
        passes before every task is final. Leaving the loop early stops waiting.
        """
        ids = [t.id if isinstance(t, SyncTask) else int(t) for t in tasks]
        completed = cast(AsyncGenerator[TaskInfo, None],
                         self._async.as_completed(ids, timeout=timeout))
        try:
            while True:
                try:
                    info: TaskInfo = self._call(completed.__anext__)
                except StopAsyncIteration:
                    return
                yield info
        finally:
            with contextlib.suppress(RuntimeError):  # the client closed first
                self._call(completed.aclose)

    def tasks(self, **kwargs: Any) -> list[TaskInfo]:
        return self._call(self._async.tasks, **kwargs)  # type: ignore[no-any-return]

    def count(self, **kwargs: Any) -> P.TaskCounts:
        """How many tasks match (see :meth:`tidewater.Client.count`)."""
        return self._call(self._async.count, **kwargs)  # type: ignore[no-any-return]

    def phases(self, **kwargs: Any) -> list[P.TaskPhases]:
        return self._call(self._async.phases, **kwargs)  # type: ignore[no-any-return]

    def latency_report(self, **kwargs: Any) -> list[LatencyRow]:
        return self._call(self._async.latency_report, **kwargs)  # type: ignore[no-any-return]

    def throughput_report(self, **kwargs: Any) -> dict[str, Series]:
        return self._call(self._async.throughput_report, **kwargs)  # type: ignore[no-any-return]

    def utilization_report(self, **kwargs: Any) -> dict[str, Series]:
        return self._call(self._async.utilization_report, **kwargs)  # type: ignore[no-any-return]

    def cancel(self, ids: Iterable[int]) -> list[int]:
        return self._call(self._async.cancel, list(ids))  # type: ignore[no-any-return]

    def retry(self, tasks: Iterable[SyncTask | int] = (), **filters: Any) -> list[int]:
        """Run FAILED tasks again under the same ids (see :meth:`Client.retry`)."""
        ids = [t.id if isinstance(t, SyncTask) else t for t in tasks]
        return self._call(self._async.retry, ids, **filters)  # type: ignore[no-any-return]

    def resubmit(self, tasks: Iterable[SyncTask | int]) -> list[SyncTask]:
        """New tasks with the specs of ``tasks`` (see :meth:`Client.resubmit`)."""
        ids = [t.id if isinstance(t, SyncTask) else t for t in tasks]
        return [SyncTask(self, t) for t in self._call(self._async.resubmit, ids)]

    def events(self, task: SyncTask | int | None = None, **kwargs: Any) -> list[TaskEvent]:
        """Committed events, a bounded page (see :meth:`Client.events`)."""
        tid = task.id if isinstance(task, SyncTask) else task
        return self._call(self._async.events, tid, **kwargs)  # type: ignore[no-any-return]

    def logs(self, task: SyncTask | int, **kwargs: Any) -> bytes:
        """A task's whole stdout or stderr (see :meth:`Client.logs`)."""
        tid = task.id if isinstance(task, SyncTask) else task
        return self._call(self._async.logs, tid, **kwargs)  # type: ignore[no-any-return]

    def follow_logs(self, task: SyncTask | int, **kwargs: Any) -> Iterator[bytes]:
        """Blocking iterator of a task's output as it grows (see :meth:`Client.follow_logs`)."""
        tid = task.id if isinstance(task, SyncTask) else task
        it = self._async.follow_logs(tid, **kwargs)
        try:
            while True:
                try:
                    yield self._call(it.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            self._call(it.aclose)

    def add_site(self, name: str) -> tuple[P.SiteInfo, str]:
        return self._call(self._async.add_site, name)  # type: ignore[no-any-return]

    def queue_submit(self, site: str, **kwargs: Any) -> P.BatchJobInfo:
        return self._call(self._async.queue_submit, site, **kwargs)  # type: ignore[no-any-return]

    def queue(self, **kwargs: Any) -> list[P.BatchJobInfo]:
        return self._call(self._async.queue, **kwargs)  # type: ignore[no-any-return]

    def queue_cancel(self, job_id: int) -> None:
        self._call(self._async.queue_cancel, job_id)

    def read_output(self, task: SyncTask | int, name: str) -> bytes:
        """The whole of a finished task's output ``name``, in memory (see :meth:`download`)."""
        tid = task.id if isinstance(task, SyncTask) else task
        return self._call(self._async.read_output, tid, name)  # type: ignore[no-any-return]

    def download(self, task: SyncTask | int, name: str, dest: str | os.PathLike[str]) -> Path:
        tid = task.id if isinstance(task, SyncTask) else task
        return self._call(self._async.download, tid, name, dest)  # type: ignore[no-any-return]

    def executor(self, site: str, **task_options: Any) -> RemoteExecutor:
        """A concurrent.futures Executor running the site's function apps (see RemoteExecutor)."""
        return RemoteExecutor(self, site, **task_options)

    def add_app(self, site: str, name: str, command: str = "", **kwargs: Any) -> P.AppInfo:
        return self._call(self._async.add_app, site, name, command, **kwargs)  # type: ignore[no-any-return]

    def watch(self, **kwargs: Any) -> Iterator[TaskEvent]:
        """Blocking iterator of events (stops when the client closes)."""
        assert self._portal is not None
        watcher = self._async.watch(**kwargs)
        self._call(watcher._start)
        try:
            while True:
                try:
                    yield self._call(watcher.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            self._call(watcher.aclose)


def connect_sync(
    url: str | Sequence[str] | None = None, token: str | None = None, *,
    ca_file: str | os.PathLike[str] | None = None, **kwargs: Any,
) -> SyncClient:
    """A :class:`SyncClient` for ``with``; arguments as :func:`connect`."""
    return SyncClient(url, token, ca_file=ca_file, **kwargs)
