"""The dashboard's HTTP face: login, the JSON reads, the live counts socket, static files.

Served by the controller process on its own port (``tidewater server
--dashboard-port``): :meth:`Dashboard.app` is a separate aiohttp
application that :class:`~tidewater.controller.app.Server` listens with
beside the controller's own. Routes:

* ``GET /`` and ``/static/*`` -- the page (plain HTML, CSS, JavaScript; it
  holds no data until logged in);
* ``POST /login`` ``{"token": ...}`` -- a user token, authenticated like a
  websocket ``Hello``; sets the session cookie. ``POST /logout`` ends it;
* ``GET /api/me``, ``/api/overview``, ``/api/tasks``, ``/api/tasks/{id}``,
  ``/api/throughput``, ``/api/utilization`` -- JSON, each read made through
  the controller's driver as the session's user (:mod:`.link`);
* ``GET /api/live`` -- a websocket pushing the user's task counts by state
  and the sites' health when they change.

Everything under ``/api`` answers 401 without a live session. A task the
user does not have, theirs or nobody's, is the same 404. aiohttp's errors
stay in this module.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import msgspec
from aiohttp import WSMsgType, web

from ... import latency
from ... import proto as P
from ...errors import InvalidRequest, NotFound
from ..requests import PHASES_PAGE
from .link import SessionLink
from .sessions import COOKIE, TTL, Session, SessionBook
from .views import (
    STATES,
    LiveCounts,
    health_of,
    job_json,
    parse_list_query,
    series_json,
    site_json,
    task_detail,
    task_row,
    window_args,
)

if TYPE_CHECKING:
    from ..service import ControllerService

log = logging.getLogger("tidewater.controller.dashboard")

STATIC = Path(__file__).parent / "static"
PUSH_INTERVAL = 0.25
"""Least time between two pushes of one live socket: a burst of commits is one push."""
MAX_CHART_PAGES = 20
"""Pages of task phases (of ``PHASES_PAGE``) one chart reads at most."""
MAX_TOKEN_CHARS = 4096
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}



async def window_start(first_after: Callable[..., Awaitable[tuple[int, float] | None]],
                       since: float) -> int:
    """The id of the last task created before ``since`` (0: none), by binary search.

    ``first_after(after)`` is the (id, created_at) of the first task with an
    id above ``after`` (``first_after(0, newest=True)``: of the last task),
    None if there is none. Ids grow with creation time, so about log2(ids)
    single-task listings find where the window starts without reading the
    tasks before it: a chart costs the window's tasks, not the whole history.
    """
    last = await first_after(0, newest=True)
    if last is None or last[1] < since:
        return last[0] if last else 0
    # Tasks up to lo precede the window; the user has a task after hi, in the window.
    # (Task mid itself may precede it when hi drops to mid: the listing's own window
    # check leaves it out.)
    lo, hi = 0, last[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = await first_after(mid)
        if found is None:  # cannot be: the last task is after mid
            break
        if found[1] >= since:
            hi = mid
        else:
            lo = found[0]
    return lo


def _cross_origin(request: web.Request) -> bool:
    """Whether a browser sent this from a page of another origin (``Origin`` names it)."""
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != request.host


def _phases_msg(req_id: int, *, after_id: int, since: float) -> P.Msg:
    return P.ListPhases(req_id=req_id, after_id=after_id, since=since, limit=PHASES_PAGE)


class _Live:
    """One open live socket: set ``ended`` (with a ``reason``) to close it."""

    def __init__(self) -> None:
        self.ended = anyio.Event()
        self.reason = ""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status,
                             headers={"Cache-Control": "no-store"})


def _json(body: Any) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store"},
                             dumps=lambda o: msgspec.json.encode(o).decode())


class Dashboard:
    """Sessions, their connections to the driver, and the handlers.

    ``secure``: the listener serves TLS, so the cookie is marked ``Secure``.
    :meth:`close` ends every live socket (at shutdown).
    """

    def __init__(self, service: ControllerService, *, secure: bool = False, ttl: float = TTL) -> None:
        self.c = service
        self.secure = secure
        self.book = SessionBook(ttl)
        self.links: dict[str, SessionLink] = {}
        """Session id -> its connection to the driver."""
        self.sockets: dict[str, set[_Live]] = {}
        """Session id -> its open live sockets."""
        app = web.Application(middlewares=[self._headers], client_max_size=64 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/api/me", self._api(self.me))
        app.router.add_get("/api/overview", self._api(self.overview))
        app.router.add_get("/api/tasks", self._api(self.tasks))
        app.router.add_get("/api/tasks/{id}", self._api(self.task))
        app.router.add_get("/api/throughput", self._api(self.throughput))
        app.router.add_get("/api/utilization", self._api(self.utilization))
        app.router.add_get("/api/live", self.live)
        self.app = app

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        if not resp.prepared:
            resp.headers.update(HEADERS)
        return resp

    def _session(self, request: web.Request) -> tuple[Session, SessionLink] | None:
        now = time.time()
        for gone in self.book.expired(now):
            self._end(gone.id, "session expired")
        s = self.book.get(request.cookies.get(COOKIE), now)
        link = self.links.get(s.id) if s is not None else None
        if s is None or link is None or link.closed:
            return None
        return s, link

    def _api(self, read: Callable[[web.Request, SessionLink], Awaitable[Any]]) -> Handler:
        """A JSON read that needs a session; the driver's refusals as 400/404."""

        async def handler(request: web.Request) -> web.StreamResponse:
            found = self._session(request)
            if found is None:
                return _error(401, "not logged in")
            try:
                return _json(await read(request, found[1]))
            except NotFound as exc:
                return _error(404, exc.message)
            except InvalidRequest as exc:
                if exc.code == "closed":
                    return _error(401, exc.message)
                return _error(400, exc.message)
            except TimeoutError:
                return _error(503, "the controller did not answer in time; try again")

        return handler

    def _end(self, sid: str, reason: str) -> None:
        """End a session: its connection leaves the driver, its live sockets close."""
        self.book.close(sid)
        link = self.links.pop(sid, None)
        if link is not None:
            link.detach()
        for live in self.sockets.pop(sid, set()):
            # Closing from here would await: the socket's own handler ends it.
            live.reason = live.reason or reason
            live.ended.set()

    def _closed_by_controller(self, link: SessionLink, reason: str) -> None:
        for sid, other in list(self.links.items()):
            if other is link:
                self._end(sid, reason)

    def close(self) -> None:
        """End every session (the controller is stopping)."""
        for sid in list(self.links):
            self._end(sid, "controller shutting down")

    # ------------------------------------------------------------------ pages and login

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Exchange a user token for a session cookie. 401/403 with the reason, no cookie.

        Only a same-origin JSON post is taken: a page elsewhere cannot log the
        browser in to someone else's account (login CSRF).
        """
        if _cross_origin(request):
            return _error(403, "cross-origin login refused")
        if request.content_type != "application/json":
            return _error(415, 'send JSON: {"token": "..."}')
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'send JSON: {"token": "..."}')
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            return _error(400, "paste a user token")
        if len(token) > MAX_TOKEN_CHARS:
            return _error(401, "invalid token")
        try:
            who = await self.c.authenticate(token.strip(), request.remote or "")
        except InvalidRequest as exc:
            log.info("dashboard login refused from %s: %s", request.remote, exc.message)
            return _error(401, exc.message)
        if who.site_id is not None:
            return _error(403, "a site or pilot token cannot log in to the dashboard; use a "
                               "user token (`tidewater token create`)")
        if (previous := request.cookies.get(COOKIE)) is not None:
            self._end(previous, "logged in again")  # a fresh id for every login
        now = time.time()
        session, dropped = self.book.open(who, now)
        for old in dropped:
            self._end(old.id, "too many sessions")
        self.links[session.id] = SessionLink(self.c, who, self._closed_by_controller)
        log.info("dashboard login of %s from %s", who.user, request.remote)
        resp = _json({"user": who.user, "expires_at": session.expires_at})
        resp.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict",
                        secure=self.secure, path="/",
                        max_age=max(1, int(session.expires_at - now)))
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        sid = request.cookies.get(COOKIE)
        if sid:
            self._end(sid, "logged out")
        resp = _json({"ok": True})
        resp.del_cookie(COOKIE, path="/")
        return resp

    # ------------------------------------------------------------------ reads

    async def me(self, request: web.Request, link: SessionLink) -> Any:
        return {"user": link.who.user, "states": STATES}

    async def overview(self, request: web.Request, link: SessionLink) -> Any:
        sites = await link.ask(lambda r: P.ListSites(req_id=r), P.SiteList)
        jobs = await link.ask(lambda r: P.ListJobs(req_id=r, include_finished=True, limit=50),
                              P.JobList)
        return {"user": link.who.user, "now": time.time(),
                "sites": [site_json(s) for s in sites.sites],
                "jobs": [job_json(j) for j in jobs.jobs]}

    async def tasks(self, request: web.Request, link: SessionLink) -> Any:
        q = parse_list_query(request.query, request.query.getall("tag", []))
        got = await link.ask(lambda r: P.Query(req_id=r, filter=q.filter, limit=q.limit + 1,
                                               after_id=q.after), P.TaskList)
        rows = got.tasks[:q.limit]
        more = len(got.tasks) > q.limit or got.truncated
        return {"tasks": [task_row(t) for t in rows], "more": more,
                "next_after": rows[-1].id if rows and more else None}

    async def task(self, request: web.Request, link: SessionLink) -> Any:
        raw = request.match_info["id"]
        tid = int(raw) if raw.isdigit() and len(raw) < 19 else 0
        got = await link.ask(lambda r: P.Query(req_id=r, filter=P.TaskFilter(ids=[tid]),
                                               limit=1), P.TaskList) if tid else None
        if got is None or not got.tasks:
            raise NotFound(f"no task with id {raw[:20]}")
        # The driver found it among this user's tasks: its events are theirs to read.
        events = (await self.c.store.events_of([tid])).get(tid, [])
        return task_detail(got.tasks[0], events)

    async def _phases(self, link: SessionLink, since: float) -> tuple[list[P.TaskPhases], bool]:
        """The phases of the user's tasks created since ``since``; and whether it was cut short."""
        out: list[P.TaskPhases] = []
        after = await self._before(link, since)
        for _ in range(MAX_CHART_PAGES):
            r = await link.ask(functools.partial(_phases_msg, after_id=after, since=since),
                               P.PhaseList)
            out.extend(r.tasks)
            following = r.next_after or (r.tasks[-1].id if r.tasks else after)
            if not r.more or following <= after:
                return out, False
            after = following
        return out, True

    async def _before(self, link: SessionLink, since: float) -> int:
        """The id of the user's last task created before ``since`` (0: none)."""

        async def first_after(after: int, newest: bool = False) -> tuple[int, float] | None:
            got = await link.ask(lambda r: P.Query(req_id=r, after_id=after, limit=1,
                                                   newest=newest), P.TaskList)
            return (got.tasks[0].id, got.tasks[0].created_at) if got.tasks else None

        return await window_start(first_after, since)

    async def throughput(self, request: web.Request, link: SessionLink) -> Any:
        window, bin_s = window_args(request.query)
        now = time.time()
        rows, partial = await self._phases(link, now - window)
        series = latency.throughput(rows, bin_seconds=bin_s, start=now - window,
                                    cumulative=False)
        return {"bin": bin_s, "start": now - window, "now": now, "partial": partial,
                "series": series_json(series)}

    async def utilization(self, request: web.Request, link: SessionLink) -> Any:
        window, bin_s = window_args(request.query)
        now = time.time()
        rows, partial = await self._phases(link, now - window)
        sites = await link.ask(lambda r: P.ListSites(req_id=r), P.SiteList)
        capacity = {s.name: float(s.cores) for s in sites.sites if s.cores}
        series = latency.utilization(rows, now=now, bin_seconds=bin_s, start=now - window,
                                     unit="cores")
        return {"bin": bin_s, "start": now - window, "now": now, "partial": partial,
                "unit": "cores", "capacity": capacity, "series": series_json(series)}

    # ------------------------------------------------------------------ live counts

    async def live(self, request: web.Request) -> web.StreamResponse:
        """The live socket: counts by state and site health, pushed when they change.

        Driven by a watch on the user's tasks (committed events), coalesced to
        at most one push per ``PUSH_INTERVAL``. Nothing runs for it while no
        socket is open.
        """
        found = self._session(request)
        if found is None:
            return _error(401, "not logged in")
        if _cross_origin(request):
            return _error(403, "cross-origin websocket refused")
        session, link = found
        ws = web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        live = _Live()
        self.sockets.setdefault(session.id, set()).add(live)
        try:
            await self._feed(ws, link, live.ended)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            log.debug("live socket ended: %s", exc)
        except InvalidRequest as exc:  # the session ended under it
            live.reason = live.reason or exc.message
        except TimeoutError:
            log.warning("live socket of %s closed: the controller did not answer in time",
                        link.who.user)
        finally:
            self.sockets.get(session.id, set()).discard(live)
            with anyio.move_on_after(2, shield=True):
                await ws.close(code=4003 if live.reason else 1000,
                               message=live.reason.encode()[:120])
        return ws

    async def _feed(self, ws: web.WebSocketResponse, link: SessionLink,
                    ended: anyio.Event) -> None:
        counts = LiveCounts()
        wake = anyio.Event()

        def feed(events: list[P.TaskEvent]) -> None:
            counts.apply(events)
            wake.set()

        async def recount() -> None:
            mark = counts.reading()
            counts.read(mark, await self._count(link))

        watch_id = await link.watch(P.TaskFilter(), feed)
        try:
            for _ in range(3):  # a read during which events arrive is read again
                await recount()
                if counts.exact:
                    break
            beat = self.c.t.heartbeat_interval
            health: dict[str, Any] | None = None
            sent = -1
            async with anyio.create_task_group() as tg:

                async def reader() -> None:
                    async for m in ws:
                        if m.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                            break
                    tg.cancel_scope.cancel()

                async def until_ended() -> None:
                    await ended.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(reader)
                tg.start_soon(until_ended)
                tried = time.monotonic()
                while True:
                    if not counts.exact and time.monotonic() - tried >= beat:
                        # Busy so far: try again for an exact base, once a beat at most.
                        tried = time.monotonic()
                        await recount()
                    sites = await link.ask(lambda r: P.ListSites(req_id=r), P.SiteList)
                    now_health = health_of(sites.sites)
                    if counts.version != sent or now_health != health:
                        sent, health = counts.version, now_health
                        await ws.send_str(msgspec.json.encode(
                            {"type": "counts", **counts.json(), "health": health,
                             "time": time.time()}).decode())
                    await anyio.sleep(PUSH_INTERVAL)  # coalesce: a burst is one push
                    # Woken by the next committed event; health is looked at each beat too.
                    with anyio.move_on_after(beat):
                        await wake.wait()
                    wake = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True):
                await link.unwatch(watch_id)

    async def _count(self, link: SessionLink) -> dict[str, int]:
        """The user's tasks by state, through the driver."""
        got = await link.ask(lambda r: P.CountTasks(req_id=r), P.TaskCounts)
        return dict(got.by_state)
