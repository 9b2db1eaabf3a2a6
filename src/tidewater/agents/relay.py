"""The site agent's relay: pilots on compute nodes that cannot reach the controller
connect to the agent on the login node, which carries their bytes to the controller.

A pilot started with ``--relay HOST:PORT`` opens its TCP connection to the
relay and asks for the controller with an HTTP ``CONNECT host:port`` request
(as through an HTTP proxy; :func:`tidewater.transport.open_link` sends it and
hands the socket to websockets); the relay checks that
``host:port`` is one of the agent's own controller URLs, opens a TCP
connection to it, answers ``200`` and from then on copies bytes both ways.
The pilot's TLS handshake (server name and certificate check against the
controller's host name), its websocket handshake and its token all travel
inside those bytes, end to end: the relay never holds a key, never sees a
token or a frame, and keeps no state, so a restarted agent simply lets the
pilots reconnect (their outboxes resend what was not acknowledged).

Why ``CONNECT`` rather than a relay to one fixed address: with several
controller URLs (a standby sharing the leader's store), a pilot walks its list
and verifies each controller's certificate against the name it dialled; the
request names that controller, so the relay reaches the one the pilot means,
and a refusal there reaches the pilot as a failed attempt that moves it on,
exactly as without the relay. Only the agent's controllers can be asked for:
the relay is no open proxy from the compute network.

Bounds: at most ``max_connections`` relayed connections at once (more are
answered ``503`` and closed), ``connect_timeout`` for reading the request and
for reaching the controller, and a request head of at most
:data:`MAX_REQUEST_BYTES`. When one side shuts down its writing half, the
other is told (``send_eof``) and the connection stays open the other way
until that side is done too, or for ``linger`` seconds at most.

:func:`targets` and :func:`parse_connect` are pure (addresses are parsed by
:func:`tidewater.transport.parse_address`); :class:`Relay` is the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from ..errors import ConfigError, TidewaterError
from ..transport import controller_urls, format_address, parse_address

log = logging.getLogger("tidewater.agent.relay")

MAX_REQUEST_BYTES = 8192
"""The longest CONNECT request head the relay reads (websockets sends about 100 bytes)."""


class RelayRefused(TidewaterError):
    """A relayed connection the relay will not carry: ``status`` and ``reason`` go back to
    the pilot as the HTTP answer to its CONNECT request."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- pure


def targets(urls: str | Sequence[str]) -> list[tuple[str, int]]:
    """Where the controllers of ``urls`` listen: (lower-case host, port), in the URLs' order.

    The port defaults to 80 for ``ws://`` and 443 for ``wss://``. Raises
    :class:`ConfigError` as :func:`~tidewater.transport.controller_urls` does.
    """
    out: list[tuple[str, int]] = []
    for url in controller_urls(urls):
        u = urlsplit(url)
        where = ((u.hostname or "").lower(), u.port or (443 if u.scheme == "wss" else 80))
        if where not in out:
            out.append(where)
    return out


def parse_connect(head: bytes, allowed: Sequence[tuple[str, int]]) -> tuple[str, int]:
    """The controller a ``CONNECT host:port HTTP/1.1`` request head asks for.

    ``head`` is everything up to and including the blank line. Raises
    :class:`RelayRefused` (400 for a request that is not a CONNECT, 403 for a
    host and port that are not one of ``allowed``).
    """
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
        raise RelayRefused(400, "Bad Request: this relay carries only CONNECT requests "
                                "from Tidewater pilots (tidewater pilot --relay)")
    try:
        host, port = parse_address(parts[1], "target")
    except ConfigError:
        raise RelayRefused(400, f"Bad Request: bad target {parts[1]!r}") from None
    where = (host.lower(), port)
    if where not in allowed:
        raise RelayRefused(403, f"Forbidden: {format_address(*where)} is not a controller "
                                "of this site")
    return where


# --------------------------------------------------------------------------- driver


class Relay:
    """Listens on ``host:port`` and carries each pilot's connection to a controller of ``urls``.

    ``await tg.start(relay.run)`` returns once it listens (:attr:`port` is then
    the port bound, useful with port 0). Connections in flight when it is
    cancelled are cut, which the pilots take as a lost link.
    """

    def __init__(
        self, host: str, port: int, urls: str | Sequence[str], *, max_connections: int = 256,
        connect_timeout: float = 10.0, linger: float = 30.0,
    ) -> None:
        if max_connections < 1:
            raise ConfigError("relay.max_connections must be at least 1")
        if connect_timeout <= 0:
            raise ConfigError("relay.connect_timeout must be more than 0")
        self.host = host
        self.port = port
        self.allowed = targets(urls)
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.linger = linger
        self.active = 0
        """Connections being relayed now."""
        self.relayed = 0
        """Connections carried to a controller since start."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Raises :class:`ConfigError` when the address cannot be
        bound (in use, not an address of this host). Cancel-safe."""
        try:
            listener = await anyio.create_tcp_listener(local_host=self.host,
                                                       local_port=self.port)
        except OSError as exc:
            raise ConfigError(f"the relay cannot listen on "
                              f"{format_address(self.host, self.port)}: {exc}") from None
        async with listener:
            self.port = int(listener.extra(SocketAttribute.local_port))
            log.info("relay listening on %s for pilots, to %s", format_address(
                self.host, self.port), ", ".join(format_address(*t) for t in self.allowed))
            task_status.started()
            await listener.serve(self._serve)

    async def _serve(self, pilot: SocketStream) -> None:
        async with pilot:
            peer = _peer(pilot)
            if self.active >= self.max_connections:
                log.info("relay: refused %s: %d connections relayed already (max_connections)",
                         peer, self.active)
                await _answer(pilot, 503, "Service Unavailable: the relay is full")
                return
            self.active += 1
            try:
                await self._relay(pilot, peer)
            finally:
                self.active -= 1

    async def _relay(self, pilot: SocketStream, peer: str) -> None:
        try:
            with anyio.fail_after(self.connect_timeout):
                head, rest = await _read_head(pilot)
                host, port = parse_connect(head, self.allowed)
                try:
                    controller = await anyio.connect_tcp(host, port)
                except OSError as exc:
                    raise RelayRefused(502, f"Bad Gateway: cannot reach "
                                            f"{format_address(host, port)}: {exc}") from None
        except TimeoutError:
            log.info("relay: gave up on %s after %gs (no request, or the controller did not "
                     "answer)", peer, self.connect_timeout)
            await _answer(pilot, 504, "Gateway Timeout")
            return
        except RelayRefused as exc:
            log.info("relay: refused %s: %s", peer, exc)
            await _answer(pilot, exc.status, exc.reason)
            return
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            log.info("relay: %s went away before asking for a controller (%s)", peer,
                     exc.__class__.__name__)
            return
        async with controller:
            self.relayed += 1
            to = format_address(host, port)
            log.debug("relay: %s -> %s open", peer, to)
            broke: BaseException | None = None
            try:
                await pilot.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    await controller.send(rest)
                async with anyio.create_task_group() as tg:

                    async def one_way(src: SocketStream, dst: SocketStream) -> None:
                        await _pump(src, dst)
                        # Half closed: the other way may still carry the last words,
                        # but a peer that never closes must not hold a slot for ever.
                        tg.cancel_scope.deadline = min(tg.cancel_scope.deadline,
                                                       anyio.current_time() + self.linger)

                    tg.start_soon(one_way, pilot, controller)
                    tg.start_soon(one_way, controller, pilot)
            except* (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as group:
                broke = group.exceptions[0]
            if broke is not None:
                log.info("relay: %s -> %s broke: %r", peer, to, broke)
            else:
                log.debug("relay: %s -> %s closed", peer, to)


async def _read_head(stream: SocketStream) -> tuple[bytes, bytes]:
    """The request head up to its blank line, and whatever came after it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_REQUEST_BYTES:
            raise RelayRefused(431, "Request Header Fields Too Large")
        buf += await stream.receive(MAX_REQUEST_BYTES)
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


async def _pump(src: SocketStream, dst: SocketStream) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends; then end ``dst``'s writing half."""
    async for chunk in src:
        await dst.send(chunk)
    try:
        await dst.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass  # that side is gone altogether: nothing left to tell it


async def _answer(stream: SocketStream, status: int, reason: str) -> None:
    """An HTTP answer to a CONNECT that will not be carried; best effort."""
    with anyio.move_on_after(1, shield=True):
        try:
            await stream.send(f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n"
                              "Connection: close\r\n\r\n".encode("latin-1", "replace"))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass


def _peer(stream: SocketStream) -> str:
    try:
        where = stream.extra(SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return "?"
    return where if isinstance(where, str) else format_address(str(where[0]), int(where[1]))
