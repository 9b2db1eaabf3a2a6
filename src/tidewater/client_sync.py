"""The synchronous face of :class:`~tidewater.client.Client`, for scripts and notebooks.

``with tidewater.connect_sync(url, token=...) as client: client.submit(...)``
runs an async :class:`~tidewater.client.Client` on an event loop in a
background thread (an anyio blocking portal); every call blocks until its
coroutine is done. :class:`RemoteExecutor` is a
:class:`concurrent.futures.Executor` whose calls run as function tasks.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import proto as P
from .client import Client, Task
from .latency import LatencyRow, Series
from .proto import TaskEvent, TaskInfo, TaskSpec


class SyncTask:
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
        return self._client._call(self._task.value, timeout=timeout)

    def output(self, name: str, *, timeout: float | None = None) -> bytes:
        return self._client._call(self._task.output, name, timeout=timeout)  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        return bool(self._client._call(self._task.cancel))


class RemoteExecutor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` whose calls run as function tasks on a site.

    ``executor.submit("integrate", x)`` runs the site's function app
    ``integrate`` with ``x`` and returns a Future of its return value; ``map``
    comes with it. A task that fails sets the Future's exception to
    :class:`TaskFailed`. Made by :meth:`SyncClient.executor`.
    """

    def __init__(self, client: SyncClient, site: str, **task_options: Any) -> None:
        self._client = client
        self._site = site
        self._options = task_options
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._shutdown = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """``fn``: the name of a function app on the site."""
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        if not isinstance(fn, str):
            raise TypeError("submit() takes the name of a function app on the site, "
                            f"not {type(fn).__name__} (code is never shipped to a site)")
        portal = self._client._portal
        assert portal is not None, "use the executor inside `with connect_sync(...)`"
        future: concurrent.futures.Future[Any] = portal.start_task_soon(
            self._run, fn, args, kwargs)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    async def _run(self, app: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        task = await self._client._async.submit(app, site=self._site, args=args, kwargs=kwargs,
                                                **self._options)
        return await task.value()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        pending = list(self._futures)
        if cancel_futures:
            for f in pending:
                f.cancel()
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

    def __enter__(self) -> SyncClient:
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
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
        assert self._portal is not None, "use `with connect_sync(...) as client`"
        return self._portal.call(lambda: fn(*args, **kwargs))

    def submit(self, app: str, **kwargs: Any) -> SyncTask:
        return SyncTask(self, self._call(self._async.submit, app, **kwargs))

    def submit_many(self, specs: Iterable[TaskSpec]) -> list[SyncTask]:
        return [SyncTask(self, t) for t in self._call(self._async.submit_many, list(specs))]

    def wait(self, tasks: Iterable[SyncTask | int], **kwargs: Any) -> list[TaskInfo]:
        ids = [t.id if isinstance(t, SyncTask) else t for t in tasks]
        return self._call(self._async.wait, ids, **kwargs)  # type: ignore[no-any-return]

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

    def add_site(self, name: str) -> tuple[P.SiteInfo, str]:
        return self._call(self._async.add_site, name)  # type: ignore[no-any-return]

    def queue_submit(self, site: str, **kwargs: Any) -> P.BatchJobInfo:
        return self._call(self._async.queue_submit, site, **kwargs)  # type: ignore[no-any-return]

    def queue(self, **kwargs: Any) -> list[P.BatchJobInfo]:
        return self._call(self._async.queue, **kwargs)  # type: ignore[no-any-return]

    def queue_cancel(self, job_id: int) -> None:
        self._call(self._async.queue_cancel, job_id)

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
