"""A watch subscription of the async client: the controller's pushed task events as an
async iterator, resumed after a reconnect from the last event it delivered."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from . import proto as P
from .config import Timeouts
from .errors import ConnectionBroken, TidewaterError, from_code
from .proto import TaskEvent
from .transport import Session


class Pending(Protocol):
    """A request in flight (the client's ``_Request``): what a watch reads of it."""

    req_id: int
    done: anyio.Event
    reply: Any


class WatchHost(Protocol):
    """What a watch uses of its :class:`tidewater.Client`: the open requests and watches
    (which the reconnect loop sends again), the link's state and the timeouts."""

    t: Timeouts
    _pending: dict[int, Any]
    _watches: dict[int, Watcher]
    _failure: BaseException | None
    _session: Session

    async def _open(self, build: Callable[[int], P.Msg],
                    on_reply: Callable[[Any], bool] | None) -> Pending: ...

    async def _request(self, build: Callable[[int], P.Msg], *,
                       timeout: float | None = None,
                       on_reply: Callable[[Any], bool] | None = None) -> Any: ...


class Watcher:
    """An async iterator of :class:`TaskEvent` for one watch subscription."""

    def __init__(self, client: WatchHost, f: P.TaskFilter, since_event: int) -> None:
        self.client = client
        self.filter = f
        self.last_event = since_event  # newest event delivered (replays are deduplicated)
        self.resume_from = since_event
        self.req_id = 0
        self.watch_id = 0
        self._events: deque[TaskEvent] = deque()
        self._arrived = anyio.Event()
        self._closed: BaseException | None = None
        self._started = False

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        c = self.client

        def on_reply(msg: Any) -> bool:
            if isinstance(msg, P.Watching):
                c._watches.pop(self.watch_id, None)
                self.watch_id = msg.watch_id
                # Resume point if the link breaks before any event arrives.
                self.resume_from = max(self.resume_from, msg.start_event)
                c._watches[msg.watch_id] = self
                self._arrived.set()
            return True

        def build(i: int) -> P.Msg:
            self.req_id = i
            return P.Watch(req_id=i, filter=self.filter, since_event=self.last_event)

        # The request stays registered so the reconnect loop re-subscribes it.
        req = await c._open(build, lambda m: on_reply(m) and False)
        with anyio.fail_after(c.t.request):
            while not self.watch_id:
                if req.done.is_set() and isinstance(req.reply, P.Error):
                    c._pending.pop(req.req_id, None)
                    raise from_code(req.reply.code, req.reply.message)
                if c._failure is not None:
                    raise ConnectionBroken(f"connection failed: {c._failure}")
                await wait_either(req.done, self._arrived)
                self._arrived = anyio.Event() if not self._events else self._arrived

    def _push(self, events: list[TaskEvent]) -> None:
        for e in events:
            if e.id > self.last_event:
                self._events.append(e)
                self.last_event = e.id
        self._arrived.set()

    def _close(self, exc: BaseException) -> None:
        self._closed = exc
        self._arrived.set()

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> TaskEvent:
        await self._start()
        while not self._events:
            if self._closed is not None:
                raise StopAsyncIteration
            await self._arrived.wait()
            self._arrived = anyio.Event()
        return self._events.popleft()

    async def __aenter__(self) -> Watcher:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        c = self.client
        c._pending.pop(self.req_id, None)
        c._watches.pop(self.watch_id, None)
        self._closed = self._closed or StopAsyncIteration()
        self._arrived.set()
        if self.watch_id and c._session.link is not None and c._failure is None:
            with anyio.move_on_after(c.t.close, shield=True):
                try:
                    await c._request(lambda i: P.Unwatch(req_id=i, watch_id=self.watch_id))
                except TidewaterError:
                    pass


async def wait_either(a: anyio.Event, b: anyio.Event) -> None:
    """Return when either event is set."""
    async with anyio.create_task_group() as tg:
        async def one(ev: anyio.Event) -> None:
            await ev.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(one, a)
        tg.start_soon(one, b)
