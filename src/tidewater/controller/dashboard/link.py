"""A dashboard session as a client connection of the controller, in process.

Every read the dashboard makes goes through :meth:`ControllerService.on_client`
exactly as a websocket client's request does, with the session's
:class:`~tidewater.controller.model.Principal`: the same handlers, the same
owner scoping, the same refusals. :class:`SessionLink` is the connection
(:class:`~tidewater.controller.service.Peer`): it is registered with the
service for as long as the session lives, so the service's token checks
apply to it too -- revoking the token, or removing its user, closes it like
any other connection of that token (and so ends the session).

Replies are matched to requests by ``req_id``; ``Events`` frames of a watch
go to the feed that opened it. Ids of these connections are negative, so
they never meet the websocket listener's (which count up from 1).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ... import proto as P
from ...errors import InvalidRequest
from ..model import Principal

if TYPE_CHECKING:
    from ..service import ControllerService

log = logging.getLogger("tidewater.controller.dashboard")

_link_ids = itertools.count(-1, -1)

R = TypeVar("R", bound=P.Msg)
Feed = Callable[[list[P.TaskEvent]], None]


class _Pending:
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: P.Msg | None = None


class SessionLink:
    """One dashboard session's connection to the controller's driver.

    ``on_close`` is called (once) when the controller closes it: the
    token was revoked or expired, or its user removed.
    """

    def __init__(self, service: ControllerService, who: Principal,
                 on_close: Callable[[SessionLink, str], None]) -> None:
        self.id = next(_link_ids)
        self.service = service
        self.who = who
        self._on_close = on_close
        self._req_ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._opening: dict[int, Feed] = {}
        self._feeds: dict[int, Feed] = {}
        self.closed = False
        service.connected(who, self)

    # ------------------------------------------------------------------ Peer

    def send(self, msg: P.Msg) -> None:
        """A frame from the controller: a reply, a watch's events, or an error."""
        if isinstance(msg, P.Events):
            feed = self._feeds.get(msg.watch_id)
            if feed is not None:
                feed(msg.events)
            return
        if isinstance(msg, P.Watching) and msg.req_id in self._opening:
            # Bound before any event can follow: events leave only after a later commit.
            self._feeds[msg.watch_id] = self._opening.pop(msg.req_id)
        req_id = getattr(msg, "req_id", None)
        pending = self._pending.get(req_id) if isinstance(req_id, int) else None
        if pending is not None and pending.reply is None:
            pending.reply = msg
            pending.done.set()

    def close(self, code: int, reason: str) -> None:
        """The controller ends this connection (its token is no longer good)."""
        if not self.closed:
            log.info("dashboard session of %s closed: %s", self.who.user, reason)
            self.detach()
            self._on_close(self, reason)

    def detach(self) -> None:
        """Leave the controller: watches and waits of this session end. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.service.on_client_gone(self.who, self)
        self.service.disconnected(self.who, self)
        self._feeds.clear()
        for p in self._pending.values():
            p.done.set()

    # ------------------------------------------------------------------ requests

    async def ask(self, make: Callable[[int], P.Msg], reply: type[R]) -> R:
        """Send the request ``make(req_id)`` through the driver; its reply of type ``reply``.

        Raises InvalidRequest (and NotFound, ...) as the driver refuses it,
        or with code "closed" if the session's connection was closed, and
        TimeoutError if no reply comes within ``Timeouts.request``. Cancel-safe.
        """
        if self.closed:
            raise InvalidRequest("this session has ended; log in again", "closed")
        req_id = next(self._req_ids)
        pending = self._pending[req_id] = _Pending()
        try:
            with anyio.fail_after(self.service.t.request):
                await self.service.on_client(self.who, self, make(req_id))
                await pending.done.wait()
        finally:
            del self._pending[req_id]
            self._opening.pop(req_id, None)
        got: Any = pending.reply
        if isinstance(got, P.Error):
            raise InvalidRequest(got.message, got.code)
        if not isinstance(got, reply):
            raise InvalidRequest("this session has ended; log in again", "closed")
        return got

    async def watch(self, flt: P.TaskFilter, feed: Feed) -> int:
        """Open a watch whose committed events go to ``feed``; its id. Raises as :meth:`ask`."""

        def make(req_id: int) -> P.Msg:
            self._opening[req_id] = feed
            return P.Watch(req_id=req_id, filter=flt)

        got = await self.ask(make, P.Watching)
        return got.watch_id

    async def unwatch(self, watch_id: int) -> None:
        """Close a watch opened by :meth:`watch` (nothing if the session has ended)."""
        self._feeds.pop(watch_id, None)
        if self.closed:
            return
        try:
            await self.ask(lambda r: P.Unwatch(req_id=r, watch_id=watch_id), P.Done)
        except InvalidRequest:
            pass  # already gone with the session
