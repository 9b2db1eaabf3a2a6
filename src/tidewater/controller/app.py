"""The controller's network face: an aiohttp app with one websocket endpoint.

``GET /ws`` speaks the protocol of :mod:`tidewater.proto` (role chosen by
the first frame, ``Hello``); ``GET /health`` and ``GET /metrics`` answer in
JSON and Prometheus text. aiohttp's errors stay in this module.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import msgspec
from aiohttp import WSMsgType, web
from anyio.abc import TaskStatus

from .. import proto as P
from ..config import ControllerConfig
from ..errors import CannotListen, InvalidRequest, LeadershipLost, bind_reason
from ..tls import check_listen, server_context
from .dashboard import dashboard_listener
from .metrics import BYTES_IN, BYTES_OUT, CONTENT_TYPE, IN, OPEN, OUT
from .model import Principal
from .service import ControllerService
from .store.base import redact
from .store.leader import Lead, fence, leadership

log = logging.getLogger("tidewater.controller.app")

_peer_ids = itertools.count(1)
_any_decoder: P.Decoder[Any] = P.Decoder(Any)


class WsPeer:
    """Outgoing side of one websocket: a queue drained by one sender task.

    ``send`` never blocks. A peer that lets more than ``limit`` frames pile
    up is disconnected rather than buffered without bound. For a peer that
    reads them (``batches``), every message queued when the sender wakes
    goes out in as few frames as :func:`~tidewater.proto.packed` makes (one
    write each) instead of one frame each; the first frame (Welcome or
    Reject) always goes alone. Frames and bytes in and out are added to
    ``tally`` (its role's in :class:`~.metrics.Frames`).
    """

    def __init__(self, ws: web.WebSocketResponse, limit: int, batches: bool = False,
                 tally: list[int] | None = None) -> None:
        self.id = next(_peer_ids)
        self._ws = ws
        self._limit = limit
        self.batches = batches
        self.tally = tally if tally is not None else [0, 0, 0, 0, 0]
        self._queue: deque[bytes] = deque()
        self._wake = anyio.Event()
        self._closing: tuple[int, str] | None = None
        self.reading = anyio.CancelScope()
        """Around the handling of this peer's frames; :meth:`hang_up` cancels it."""
        self.hung_up: tuple[int, str] | None = None

    def hang_up(self, code: int, reason: str) -> None:
        """Stop reading; then (:meth:`close`) send what is queued and close with ``code``.

        The close starts only once reading has stopped, so that aiohttp's
        close handshake reads the peer's close frame before the socket
        closes: a socket closed with the peer's frames unread is reset, and
        the peer may never hear why.
        """
        if self.hung_up is None:
            self.hung_up = (code, reason)
            self.reading.cancel()

    def send(self, msg: P.Msg) -> None:
        if self._closing is not None:
            return
        self._queue.append(P.encode(msg))
        if len(self._queue) > self._limit:
            self._queue.clear()
            self.close(1008, f"peer too slow: more than {self._limit} frames unread")
        self._wake.set()

    def detach(self) -> None:
        """The connection is over: drop what is queued and anything sent later."""
        self._closing = self._closing or (1000, "")
        self._queue.clear()

    def close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = (code, reason)
            self._wake.set()

    async def sender(self, scope: anyio.CancelScope) -> None:
        ws = self._ws
        tally = self.tally
        sent = False
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if self.batches and len(self._queue) > 1 and sent:
                    frames = list(self._queue)
                    self._queue.clear()
                    for frame in P.packed(frames):
                        tally[OUT] += 1
                        tally[BYTES_OUT] += len(frame)
                        await ws.send_bytes(frame)
                while self._queue:
                    frame = self._queue.popleft()
                    tally[OUT] += 1
                    tally[BYTES_OUT] += len(frame)
                    await ws.send_bytes(frame)
                    sent = True
                if self._closing is not None:
                    code, reason = self._closing
                    with anyio.move_on_after(2, shield=True):
                        await ws.close(code=code, message=reason.encode()[:120])
                    return
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            log.debug("send failed on peer %d: %s", self.id, exc)
        finally:
            scope.cancel()


def _req_id_of(data: bytes) -> int:
    """Best-effort req_id of a frame that failed validation (0 if none)."""
    try:
        obj = _any_decoder.decode(data)
    except msgspec.DecodeError:
        return 0
    if isinstance(obj, dict):
        rid = obj.get("req_id")
        if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63:
            return rid
    return 0


class ControllerApp:
    def __init__(self, controller: ControllerService) -> None:
        self.c = controller
        self.app = web.Application(client_max_size=controller.limits.max_frame_bytes)
        self.app.router.add_get("/ws", self.ws_handler)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/metrics", self.metrics)
        self.peers: set[WsPeer] = set()
        self.closing: tuple[int, str] | None = None
        """Set when the controller goes away: new connections are refused, frames dropped."""
        self._busy = 0
        self._change = anyio.Event()
        """Set (and replaced) whenever a frame's handling ends or a connection ends."""

    def stop_reading(self, code: int, reason: str) -> None:
        """Refuse new connections and leave every frame from now on unhandled (unacknowledged).

        Peers send what was not acknowledged again to whichever controller
        serves next, so nothing is lost by dropping it here.
        """
        if self.closing is None:
            self.closing = (code, reason)

    def _changed(self) -> None:
        change, self._change = self._change, anyio.Event()
        change.set()

    async def handlers_idle(self) -> None:
        """Wait until no frame is being handled (after :meth:`stop_reading`: for good)."""
        while self._busy:
            await self._change.wait()

    def close_all(self, code: int, reason: str) -> int:
        """Stop reading and close every connection with ``code`` and ``reason``: how many.

        What is already queued to a peer (acknowledgements of committed
        work) is sent before its close frame.
        """
        self.stop_reading(code, reason)
        for peer in self.peers:
            peer.hang_up(code, reason)
        return len(self.peers)

    async def connections_closed(self) -> None:
        """Wait until every connection has ended."""
        while self.peers:
            await self._change.wait()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "server_id": self.c.server_id,
                                  "proto_version": P.PROTO_VERSION})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text, for admins only (``Authorization: Bearer <admin token>``).

        The counters span every user, so a user who is not an admin, like a
        caller without a token, gets "not found".
        """
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            who = await self.c.authenticate(token.strip(), request.remote or "")
        except InvalidRequest:
            who = None
        if scheme.lower() != "bearer" or who is None or not who.is_admin:
            raise web.HTTPNotFound(text="not found\n")
        body = await self.c.render_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        if self.closing is not None:
            raise web.HTTPServiceUnavailable(text=f"{self.closing[1]}\n")
        limits = self.c.limits
        ws = web.WebSocketResponse(max_msg_size=limits.max_frame_bytes, compress=False,
                                   autoping=True)
        await ws.prepare(request)
        hello: P.Hello | None = None
        with anyio.move_on_after(self.c.t.connect):
            first = await ws.receive()
            if first.type == WSMsgType.BINARY:
                try:
                    hello = P.hello_decoder.decode(first.data)
                except msgspec.MsgspecError as exc:
                    await self._reject(ws, f"the first frame must be a Hello: {exc}", "bad_frame")
                    return ws
        if hello is None:
            await self._reject(ws, "expected a binary Hello frame first", "bad_frame")
            return ws
        if hello.proto_version != P.PROTO_VERSION:
            await self._reject(
                ws,
                f"protocol version {hello.proto_version} is not supported; this controller "
                f"speaks version {P.PROTO_VERSION} (upgrade the older side)",
                "version",
            )
            return ws
        remote = request.remote or "?"
        try:
            who = await self.c.authenticate(hello.token, remote)
        except InvalidRequest as exc:
            await self._reject(ws, exc.message, exc.code)
            return ws
        if hello.role == "client" and who.site_id is not None:
            await self._reject(ws, "a site or pilot token cannot be used by a client; use a "
                               "user token", "auth")
            return ws
        tally = self.c.metrics.frames.tally(hello.role)
        tally[IN] += 1  # the Hello
        tally[BYTES_IN] += len(first.data)
        peer = WsPeer(ws, limits.outgoing_queue, batches=hello.batches, tally=tally)
        if self.closing is not None:
            peer.hang_up(*self.closing)
        self.c.connected(who, peer)
        self.peers.add(peer)
        tally[OPEN] += 1
        try:
            await self._session(ws, who, peer, hello, remote)
        finally:
            tally[OPEN] -= 1
            self.peers.discard(peer)
            self._changed()
        return ws

    async def _session(self, ws: web.WebSocketResponse, who: Principal, peer: WsPeer,
                       hello: P.Hello, remote: str) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.sender, tg.cancel_scope)
            try:
                with peer.reading:
                    if hello.role == "client":
                        peer.send(self._welcome(who))
                        log.info("client %s (%s) connected from %s", who.user, hello.name,
                                 remote)
                        await self._client_loop(ws, who, peer)
                    elif hello.role == "agent":
                        await self._agent_session(ws, who, peer, hello)
                    else:
                        await self._pilot_session(ws, who, peer, hello)
            finally:
                if hello.role == "client":
                    self.c.on_client_gone(who, peer)
                self.c.disconnected(who, peer)
                if peer.hung_up is not None:
                    # The sender sends what is queued and the close frame, then ends the group.
                    peer.close(*peer.hung_up)
                else:
                    peer.detach()
                    tg.cancel_scope.cancel()

    def _welcome(self, who: Principal, site: str = "") -> P.Welcome:
        return P.Welcome(
            proto_version=P.PROTO_VERSION, server_id=self.c.server_id, user=who.user,
            site=site, heartbeat_interval=self.c.t.heartbeat_interval,
            lease_timeout=self.c.t.lease_timeout,
            max_frame_bytes=self.c.limits.max_frame_bytes,
            max_tasks_per_submit=self.c.limits.max_tasks_per_submit,
            max_inline_bytes=self.c.limits.max_inline_bytes, batches=True,
        )

    async def _reject(self, ws: web.WebSocketResponse, reason: str, code: str) -> None:
        log.info("connection rejected: %s", reason)
        with anyio.move_on_after(2, shield=True):
            try:
                await ws.send_bytes(P.encode(P.Reject(reason=reason, code=code)))
                await ws.close(code=4003 if code == "auth" else 4002, message=reason.encode()[:120])
            except (ConnectionError, RuntimeError):
                pass

    async def _frames(
        self, ws: web.WebSocketResponse, peer: WsPeer
    ) -> AsyncIterator[bytes]:
        tally = peer.tally
        async for m in ws:
            if m.type == WSMsgType.BINARY:
                tally[IN] += 1
                tally[BYTES_IN] += len(m.data)
                yield m.data
            elif m.type == WSMsgType.TEXT:
                tally[IN] += 1
                peer.send(P.Error(req_id=0, code="bad_frame",
                                  message="text frames are refused: send msgpack in binary frames"))
            elif m.type == WSMsgType.ERROR:
                log.info("websocket error from peer %d: %s", peer.id, ws.exception())
                return

    async def _serve(
        self, ws: web.WebSocketResponse, peer: WsPeer, decoder: P.Decoder[Any],
        handle: Callable[[Any], Awaitable[None]], rate: RateLimit | None = None,
        stop: type | None = None,
    ) -> bool:
        """Decode each frame and hand it to ``handle``, with the one error policy of every role.

        A frame that does not decode, or that ``handle`` refuses with
        InvalidRequest, gets an Error naming its req_id; any other exception
        is logged and answered with Error("internal"), and the connection goes
        on. Returns True when a frame of type ``stop`` (a pilot's Bye) ended it.
        """
        async for data in self._frames(ws, peer):
            try:
                msgs = decoder.decode_all(data)
            except msgspec.MsgspecError as exc:
                peer.send(P.Error(req_id=_req_id_of(data), code="bad_frame",
                                  message=f"malformed frame: {exc}"))
                continue
            for msg in msgs:
                req_id = getattr(msg, "req_id", 0)
                if rate is not None and not rate.take(time.monotonic()):
                    peer.send(P.Error(req_id=req_id, code="limit", message=(
                        f"more than {rate.rate:g} requests per second on this "
                        "connection: this one was dropped; slow down (batch with submit_many)")))
                    continue
                if self.closing is not None:
                    break  # going away: the peer sends it again to whoever serves next
                if stop is not None and isinstance(msg, stop):
                    return True
                self._busy += 1
                try:
                    await handle(msg)
                except InvalidRequest as exc:
                    peer.send(P.Error(req_id=req_id, code=exc.code, message=exc.message))
                except Exception:
                    log.exception("internal error handling %s", type(msg).__name__)
                    peer.send(P.Error(req_id=req_id, code="internal",
                                      message="internal controller error; see the controller log"))
                finally:
                    self._busy -= 1
                    self._changed()
        return False

    async def _client_loop(self, ws: web.WebSocketResponse, who: Principal, peer: WsPeer) -> None:
        c = self.c
        await self._serve(ws, peer, P.client_decoder, lambda msg: c.on_client(who, peer, msg),
                          rate=RateLimit(c.limits.requests_per_second))

    async def _pilot_session(
        self, ws: web.WebSocketResponse, who: Principal, peer: WsPeer, hello: P.Hello
    ) -> None:
        c = self.c
        try:
            rec = c.on_pilot_hello(who, peer, hello, self._welcome(who))
        except InvalidRequest as exc:
            peer.send(P.Reject(reason=exc.message, code=exc.code))
            peer.close(4002, exc.message)
            await peer_wait_closed(ws)
            return

        async def handle(msg: Any) -> None:
            match msg:
                case P.Ping():
                    peer.send(P.Ping(time=msg.time))
                case P.Hello():
                    raise InvalidRequest("already greeted: Hello is only the first frame")
                case _:
                    await c.on_pilot(rec, msg)

        bye = False
        try:
            bye = await self._serve(ws, peer, P.pilot_decoder, handle, stop=P.Bye)
        finally:
            c.on_pilot_gone(rec, peer, bye=bye)

    async def _agent_session(
        self, ws: web.WebSocketResponse, who: Principal, peer: WsPeer, hello: P.Hello
    ) -> None:
        c = self.c
        site = c.state.registry.sites.get(who.site_id) if who.site_id is not None else None
        try:
            welcome = self._welcome(who, site.name if site else "")
            if site is not None:
                welcome = msgspec.structs.replace(welcome,
                                                  site_tag=site_tag(site.id, site.created_at))
            site_id = await c.on_agent_hello(who, peer, hello, welcome)
        except InvalidRequest as exc:
            peer.send(P.Reject(reason=exc.message, code=exc.code))
            peer.close(4002, exc.message)
            await peer_wait_closed(ws)
            return
        try:
            await self._serve(ws, peer, P.agent_decoder,
                              lambda msg: c.on_agent(site_id, peer, msg))
        finally:
            c.on_agent_gone(site_id, peer)


class RateLimit:
    """A token bucket: ``rate`` per second on average, bursts of two seconds' worth. Pure."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, 2 * rate)
        self.tokens = self.capacity
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def site_tag(site_id: int, created_at: float) -> str:
    """Stable for a site of this store; differs for a same-named site of another store."""
    return hashlib.sha256(f"{site_id}:{created_at!r}".encode()).hexdigest()[:6]


async def peer_wait_closed(ws: web.WebSocketResponse) -> None:
    with anyio.move_on_after(2):
        async for _ in ws:
            pass


SHUTDOWN = (1012, "controller shutting down")
"""How a controller that stops on purpose closes every connection (1012: service restart;
peers treat it as retryable and reconnect, to the next URL or to the restarted controller)."""
CLEANUP_SHARE = 0.2
"""Of ``Timeouts.close``, what the listener's cleanup may take after a graceful shutdown."""
DEPOSED = (1012, "controller lost the leader's lock")
"""How a controller that lost its leadership closes every connection."""


class Server:
    """A controller and its HTTP listener. ``await tg.start(server.run)`` -> url.

    With ``config.tls_cert``/``tls_key`` the listener serves TLS and the url is
    ``wss://``. ``run`` raises :class:`ConfigError` before listening when the
    certificate cannot be loaded, or when it would serve plaintext on a
    non-loopback host without ``config.allow_plaintext``.

    Before it opens the store or listens, ``run`` takes the store's leader
    lock (:mod:`.store.leader`), waiting as a standby while another
    controller holds it. If the lock is lost, it closes every connection and
    drops the writes not yet committed at once, and raises
    :class:`~tidewater.errors.LeadershipLost`. :meth:`stop` shuts down
    gracefully: ``run`` then returns.
    """

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.controller = ControllerService(config)
        self.port = config.port
        self.url = ""
        self.dashboard_url = ""
        """``http(s)://host:port`` of the dashboard while it listens (``config.dashboard_port``)."""
        self.leading = False
        self._stop = anyio.Event()

    def stop(self) -> None:
        """Shut down gracefully (see :meth:`shutdown`); ``run`` returns when done."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        check_listen(self.config)
        ssl_context = None
        if self.config.tls_cert:
            ssl_context = await anyio.to_thread.run_sync(
                server_context, self.config.tls_cert, self.config.tls_key)
        t = self.config.timeouts

        def waiting(where: str) -> None:
            log.info("standby: waiting for the leader's lock on %s", where)

        async with leadership(self.config.db or ":memory:", check=t.leader_check,
                              waiting=waiting) as lead:
            self.leading = True
            fence(self.controller.store, lead)
            web_app = ControllerApp(self.controller)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._guard, lead, web_app)
                await tg.start(self.controller.run)
                # Handlers still running when the listener is torn down get a fifth of
                # the close bound; a graceful shutdown has closed them all by then.
                runner = web.AppRunner(web_app.app, handle_signals=False, access_log=None,
                                       shutdown_timeout=t.close * CLEANUP_SHARE)
                await runner.setup()
                try:
                    site = web.TCPSite(runner, self.config.host, self.config.port,
                                       reuse_address=True, ssl_context=ssl_context,
                                       backlog=self.config.limits.listen_backlog)
                    try:
                        await site.start()
                    except OSError as exc:
                        raise CannotListen("the controller", self.config.host, self.config.port,
                                           bind_reason(exc), "--port") from None
                    addr: Any = runner.addresses[0]
                    self.port = int(addr[1])
                    host = self.config.host
                    shown = f"[{host}]" if ":" in host else host
                    scheme = "wss" if ssl_context is not None else "ws"
                    self.url = f"{scheme}://{shown}:{self.port}"
                    log.info("controller listening on %s (store %s)", self.url,
                             redact(self.config.db or ":memory:"))
                    async with dashboard_listener(self.controller, self.config,
                                                  ssl_context) as self.dashboard_url:
                        task_status.started(self.url)
                        await self._stop.wait()
                        await self.shutdown(site, web_app)
                finally:
                    with anyio.move_on_after(t.close, shield=True):
                        await runner.cleanup()
                    tg.cancel_scope.cancel()
        log.info("controller stopped")

    async def _guard(self, lead: Lead, web_app: ControllerApp) -> None:
        """Stop serving the moment the leader's lock may be lost: never two leaders."""
        try:
            await lead.watch()
        except LeadershipLost as exc:
            dropped = self.controller.abandon()
            closed = web_app.close_all(*DEPOSED)
            log.error("%s; closing %d connections, dropped %d writes not yet committed "
                      "(their senders will send them again to the new leader)",
                      exc, closed, dropped)
            # Nothing is served any more; let the close frames reach the peers (so they
            # move on at once) before the listener's cleanup tears the sockets down.
            with anyio.move_on_after(self.config.timeouts.leader_check, shield=True):
                await web_app.connections_closed()
            raise

    async def shutdown(self, site: web.BaseSite, web_app: ControllerApp) -> None:
        """Stop gracefully, within most of ``Timeouts.close``: nothing acknowledged is lost.

        Stops listening and handling frames (those unhandled were not
        acknowledged: their senders send them again), lets the writes already
        queued commit (so their acknowledgements go out), then closes every
        connection with :data:`SHUTDOWN`, a code peers retry on.
        """
        t = self.config.timeouts
        bound = t.close * (1 - CLEANUP_SHARE)
        await site.stop()
        web_app.stop_reading(*SHUTDOWN)
        # No new assignment: one committed after the peers are closed would reach its
        # pilot only through the next controller's reconciliation.
        self.controller.dispatching = False
        log.info("shutting down: stopped listening and reading; %d connections open",
                 len(web_app.peers))
        with anyio.move_on_after(bound) as scope:
            await web_app.handlers_idle()
            before = self.controller.store.ops_committed
            await self.controller.store.commit([])
            log.info("shutting down: every queued write is committed (%d just now)",
                     self.controller.store.ops_committed - before - 1)
            closed = web_app.close_all(*SHUTDOWN)
            await web_app.connections_closed()
            log.info("shutting down: closed %d connections (%d %s)", closed, *SHUTDOWN)
        if scope.cancelled_caught:
            web_app.close_all(*SHUTDOWN)
            log.warning("shutting down: not done within %gs; ending the %d connections left",
                        bound, len(web_app.peers))


@asynccontextmanager
async def serve(config: ControllerConfig) -> AsyncIterator[Server]:
    """Run a controller in the background of the calling task; yields the Server."""
    server = Server(config)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()

