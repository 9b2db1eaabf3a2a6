"""Client side of a Tidewater websocket, shared by the client, the pilot and the agent.

:func:`open_link` connects, sends ``Hello`` and waits for ``Welcome``;
:class:`Link` sends and receives raw frames. websockets' exceptions are
translated here into :class:`ConnectionClosed` (the controller closed on
purpose), :class:`ConnectionBroken` (refused, reset, timed out),
:class:`TLSError` (the server's certificate did not verify, or only one side
speaks TLS) and :class:`AuthError` (``Reject`` at handshake), and never
escape this module. ``wss://`` URLs are verified against a CA file or the
system trust store (:func:`tidewater.tls.client_context`).

:func:`backoff` and :func:`is_retryable` are the pure reconnect policy.

:class:`Outbox` is the pure half of a peer's durability: state-changing frames
are numbered, kept until the controller's cumulative ``Ack(seq)`` and sent
again, in order, after every reconnect. :class:`Session` is the thin driver
every role runs: connect, resend, read, send and ping under one task group,
and after a break back off and connect again. What differs per role (its
Hello, what it does with each frame, what it does once welcomed, what it has
to send) is plugged in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import msgspec
from anyio.abc import TaskStatus
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed as WsClosed,
)
from websockets.exceptions import (
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidMessage,
    InvalidURI,
)

from . import proto as P
from .config import RECONNECT_CAP, RECONNECT_JITTER, Timeouts
from .errors import (
    AuthError,
    ConfigError,
    ConnectionBroken,
    ConnectionClosed,
    TidewaterError,
    TLSError,
)
from .tls import client_context


def backoff(
    *, initial: float = 0.05, factor: float = 2.0, cap: float = RECONNECT_CAP,
    jitter: float = RECONNECT_JITTER,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Delays before successive reconnect attempts: grows by ``factor`` to ``cap``.

    Each delay is spread by +/- ``jitter`` (a fraction) so that many peers
    cut off at once do not come back in lockstep. Start a new generator
    after a success to reset it.
    """
    r = rng or random.Random()
    delay = initial
    while True:
        yield max(0.0, delay * (1 + jitter * (2 * r.random() - 1)))
        delay = min(cap, delay * factor)


def is_retryable(exc: BaseException) -> bool:
    """Whether reconnecting may help after ``exc``. A refused token or certificate never will."""
    if isinstance(exc, AuthError | ConfigError | TLSError):
        return False
    return isinstance(exc, ConnectionBroken | ConnectionClosed | OSError | TimeoutError)


def ws_url(url: str) -> str:
    """Accept ``ws://host:port``, ``wss://…`` (or http/https) with or without ``/ws``."""
    url = url.strip().rstrip("/")
    if url.startswith("http://"):
        url = "ws://" + url[7:]
    elif url.startswith("https://"):
        url = "wss://" + url[8:]
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"controller URL {url!r} must start with ws:// or wss://")
    return url if url.endswith("/ws") else url + "/ws"


def controller_urls(value: str | Sequence[str]) -> list[str]:
    """The controller URLs a peer may use, in order: a comma-separated string or a list.

    Each is checked and normalised by :func:`ws_url`; duplicates are dropped.
    Raises :class:`ConfigError` for an empty list or a URL that is not ws(s)://.
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    urls: list[str] = []
    for part in parts:
        if part.strip():
            url = ws_url(part)
            if url not in urls:
                urls.append(url)
    if not urls:
        raise ConfigError("no controller URL given (one, or several separated by commas)")
    return urls


def parse_address(value: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) -> (host, port).

    Raises :class:`ConfigError` naming ``what`` and the value when the port is
    missing or not in 1-65535, or the host is empty.
    """
    text = value.strip()
    hint = f"{what} {value!r} must be HOST:PORT (e.g. 0.0.0.0:7700, login01:7700, [::]:7700)"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(hint)
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(hint)
    if not host:
        raise ConfigError(hint)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{hint}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address` (brackets around an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _RelayAnswer(Exception):
    """The relay answered CONNECT with something other than 200."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}".strip() if status else reason)
        self.status = status
        self.reason = reason


async def _tunnel(relay: tuple[str, int], target: str) -> socket.socket:
    """A TCP socket to a site agent's relay that it has joined to ``target``'s host and port.

    The request is an HTTP ``CONNECT``; nothing else is sent, so TLS and the
    websocket handshake that follow on the socket are between the peer and
    the controller. Raises OSError when the relay cannot be reached or hangs
    up, :class:`_RelayAnswer` when it refuses. Cancel-safe (the socket is
    closed). The caller bounds the time.
    """
    where = urlsplit(target)
    port = where.port or (443 if where.scheme == "wss" else 80)
    hostport = format_address(where.hostname or "", port)
    # The socket is handed to websockets' asyncio client, so asyncio's own socket calls.
    loop = asyncio.get_running_loop()
    addresses = await anyio.getaddrinfo(*relay, type=socket.SOCK_STREAM)
    failure: OSError = OSError(f"{format_address(*relay)} has no address")
    for family, kind, proto, _name, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except OSError as exc:
                failure = exc
                sock.close()
                continue
            request = f"CONNECT {hostport} HTTP/1.1\r\nHost: {hostport}\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            head = b""
            # Byte by byte up to the blank line: what follows belongs to TLS or websockets
            # (the relay sends nothing more until the controller speaks; do not rely on it).
            while not head.endswith(b"\r\n\r\n"):
                byte = await loop.sock_recv(sock, 1)
                if not byte:
                    raise ConnectionResetError("the relay closed the connection before "
                                               "answering")
                head += byte
                if len(head) > 8192:
                    raise _RelayAnswer(0, "the relay's answer is too long: is it a "
                                          "Tidewater relay?")
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise _RelayAnswer(0, f"not an HTTP answer ({status_line[:80]!r}): is it a "
                                      "Tidewater relay?")
            if parts[1] != "200":
                raise _RelayAnswer(int(parts[1]), parts[2] if len(parts) > 2 else "")
            return sock
        except BaseException:
            sock.close()
            raise
    raise failure


class Rotation:
    """Which controller URL to try next, and whether a whole round has failed. Pure.

    Several controllers share one store and only the leader listens, so a
    peer walks the list: each failed attempt moves to the next URL at once,
    and only a whole round of failures (every URL tried since the last
    success) calls for a backoff delay. A link that is lost after it was
    welcomed moves on too: the controller it was talking to may be gone for
    good, and a standby may be leading now.
    """

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ConfigError("no controller URL given")
        self.urls = list(urls)
        self.index = 0
        self._failed = 0

    @property
    def current(self) -> str:
        return self.urls[self.index]

    def failed(self) -> bool:
        """The current URL could not be reached: move on. True when a whole round failed."""
        self.index = (self.index + 1) % len(self.urls)
        self._failed += 1
        if self._failed >= len(self.urls):
            self._failed = 0
            return True
        return False

    def connected(self) -> None:
        """The current URL welcomed us: a new round starts here."""
        self._failed = 0

    def lost(self) -> None:
        """A welcomed link ended: try the next URL first (the same one, if it is alone)."""
        self.index = (self.index + 1) % len(self.urls)
        self._failed = 0


class Link:
    """One open websocket to the controller."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def send(self, msg: P.Msg) -> None:
        await self.send_raw(P.encode(msg))

    async def recv_within(self, silence: float) -> bytes:
        """The next frame; ConnectionBroken if the controller says nothing for ``silence`` s.

        The controller answers every heartbeat, so a whole lease of silence means
        the link is dead even if TCP has not noticed. Cancel-safe.
        """
        try:
            with anyio.fail_after(silence):
                return await self.recv()
        except TimeoutError:
            raise ConnectionBroken(f"no word from the controller for {silence:g}s") from None

    async def send_raw(self, data: bytes) -> None:
        try:
            await self._ws.send(data)
        except WsClosed as exc:
            raise _closed(exc) from None
        except OSError as exc:
            raise ConnectionBroken(f"send failed: {exc}") from None

    async def recv(self) -> bytes:
        try:
            data = await self._ws.recv()
        except WsClosed as exc:
            raise _closed(exc) from None
        except OSError as exc:
            raise ConnectionBroken(f"receive failed: {exc}") from None
        if isinstance(data, str):
            raise ConnectionBroken("the controller sent a text frame")
        return data

    async def aclose(self) -> None:
        with anyio.move_on_after(2, shield=True):
            await self._ws.close()


CLOSED_ON_PURPOSE = frozenset({1012, 1013})
"""Close codes of a controller that goes away on purpose and asks peers to come back
(1012 service restart: shutting down or no longer leading; 1013 try again later)."""


def _closed(exc: WsClosed) -> TidewaterError:
    rcvd = exc.rcvd
    why = f"{rcvd.code} {rcvd.reason}".strip() if rcvd is not None else "no close frame"
    if isinstance(exc, ConnectionClosedOK) or (rcvd is not None and (
            rcvd.code >= 4000 or rcvd.code in CLOSED_ON_PURPOSE)):
        return ConnectionClosed(f"the controller closed the connection ({why})")
    return ConnectionBroken(f"connection to the controller broke ({why})")


async def open_link(
    url: str, hello: P.Hello, *, timeout: float, max_size: int = 64 * 1024 * 1024,
    ping_interval: float | None = 20.0, ping_timeout: float | None = 20.0,
    ssl_context: ssl.SSLContext | None = None, ca_file: str | os.PathLike[str] | None = None,
    relay: str | None = None,
) -> tuple[Link, P.Welcome]:
    """Connect, greet, and return the link with the controller's Welcome.

    A ``wss://`` URL is verified with ``ssl_context`` if given, else against
    ``ca_file`` alone, else against the system trust store (hostname checked
    in every case); both are ignored for ``ws://``.

    ``relay`` (``HOST:PORT``, a site agent's relay, see
    :mod:`tidewater.agents.relay`): the TCP connection goes there and asks it
    (HTTP CONNECT) for the controller of ``url``; TLS, the Host header, the
    certificate check and the Hello still go to that controller, end to end.

    Raises :class:`AuthError` if the controller rejects the Hello,
    :class:`TLSError` if its certificate does not verify or only one side
    speaks TLS, :class:`ConfigError` for a bad URL or CA file, or a relay that
    refuses to carry the connection to this controller,
    :class:`ConnectionBroken` if it (or the relay) cannot be reached in ``timeout``.
    """
    target = ws_url(url)
    deadline = anyio.current_time() + timeout
    tls: dict[str, Any] = {}
    if target.startswith("wss://"):
        tls["ssl"] = ssl_context or await anyio.to_thread.run_sync(client_context, ca_file)
    relay_at = parse_address(relay, "relay") if relay else None
    ws: ClientConnection | None = None
    try:
        with anyio.fail_after(timeout):
            if relay_at is not None:
                # The socket goes to the relay; websockets then runs TLS (server name
                # and certificate check) and its handshake with the URL's host over it.
                tls["sock"] = await _tunnel(relay_at, target)
            ws = await connect(
                target, max_size=max_size, compression=None, ping_interval=ping_interval,
                ping_timeout=ping_timeout, open_timeout=None, close_timeout=2,
                user_agent_header="tidewater", **tls,
            )
            link = Link(ws)
            await link.send(hello)
            reply: Any = P.to_client_decoder.decode(await link.recv())
    except TimeoutError:
        if ws is not None:
            await Link(ws).aclose()
        raise ConnectionBroken(f"no answer from {target} within {timeout:g}s") from None
    except ssl.SSLCertVerificationError as exc:
        raise TLSError(target, _unverified(exc, ca_file if ssl_context is None else None)) from None
    except ssl.SSLError as exc:
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            # Cut off mid-handshake: a restarting or overloaded server, worth a retry.
            raise ConnectionBroken(f"{target} closed the connection during the TLS "
                                   f"handshake: {exc}") from None
        raise TLSError(target, f"the TLS handshake failed ({exc.reason or exc}); is the "
                               "controller serving TLS? A plaintext controller takes a ws:// "
                               "URL") from None
    except _RelayAnswer as exc:
        if exc.status in (400, 403):  # asked for what this relay never carries: final
            raise ConfigError(f"the relay {relay} will not carry a connection to {target}: "
                              f"{exc}; is the relay this site's agent, and does its "
                              "site.controller list this URL?") from None
        raise ConnectionBroken(f"the relay {relay} could not connect to {target}: "
                               f"{exc}") from None
    except InvalidMessage as exc:
        # A TLS server hangs up on a plain HTTP request: tell that from a server that died.
        if target.startswith("ws://") and not relay:  # through a relay it is not reachable
            with anyio.move_on_after(deadline - anyio.current_time()):
                if await _speaks_tls(target):
                    raise TLSError(target, "the controller serves TLS: use a wss:// URL "
                                           "(with --ca-file if its CA is not in the system "
                                           "trust store)") from None
        raise ConnectionBroken(f"cannot connect to {target}: {exc}") from None
    except (OSError, InvalidHandshake) as exc:
        via = f" through the relay {relay}" if relay else ""
        raise ConnectionBroken(f"cannot connect to {target}{via}: {exc}") from None
    except InvalidURI as exc:
        raise ConfigError(f"bad controller URL {url!r}: {exc}") from None
    except msgspec.MsgspecError as exc:
        await link.aclose()
        raise ConnectionBroken(f"unexpected handshake reply from {target}: {exc}") from None
    except ConnectionClosed as exc:
        raise ConnectionBroken(str(exc)) from None
    if isinstance(reply, P.Reject):
        await link.aclose()
        if reply.code in ("auth", "version", "bad_frame"):
            raise AuthError(reply.reason)
        raise ConfigError(reply.reason)
    if not isinstance(reply, P.Welcome):
        await link.aclose()
        raise ConnectionBroken(f"expected Welcome, got {type(reply).__name__}")
    return link, reply


async def _speaks_tls(target: str) -> bool:
    """Whether the server at ``target`` completes a TLS handshake (nothing is sent after it).

    A diagnosis only, so the certificate is not checked. Cancel-safe.
    """
    where = urlsplit(target)
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        stream = await anyio.connect_tcp(where.hostname or "", where.port or 80,
                                         ssl_context=probe, tls_standard_compatible=False)
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream):
        return False
    with anyio.move_on_after(1, shield=True):
        await stream.aclose()
    return True


def _unverified(exc: ssl.SSLCertVerificationError,
                ca_file: str | os.PathLike[str] | None) -> str:
    """What to tell the user when the server's certificate did not verify."""
    why = exc.verify_message or exc.reason or str(exc)
    against = f"the CA file {os.fspath(ca_file)}" if ca_file else "the system trust store"
    msg = f"the server's certificate could not be verified against {against} ({why}); "
    if "hostname mismatch" in why.lower() or "ip address mismatch" in why.lower():
        return msg + ("connect by a name the certificate lists, or remake it with "
                      "`tidewater dev-cert DIR --host NAME`")
    return msg + ("pass the CA certificate that signed it with --ca-file FILE (or "
                  "TIDEWATER_CA_FILE, or ca_file in the site's settings.toml)")


# --------------------------------------------------------------------------- sessions


class Outbox:
    """State-changing frames of one peer, numbered and kept until acknowledged.

    Pure: no await, no clock. ``keep`` gives the next sequence number to the
    frame it builds and holds the encoded bytes; ``ack(seq)`` drops every
    frame up to and including ``seq`` (the controller acknowledges after its
    commit, in order, so an Ack covers everything before it); ``resend``
    lists what is still held, oldest first, for the next connection. Numbers
    keep growing across reconnects: a peer's seq never goes back.
    """

    def __init__(self) -> None:
        self.seq = 0
        """The last number given out (0: none yet)."""
        self._frames: OrderedDict[int, bytes] = OrderedDict()

    def keep(self, build: Callable[[int], P.Msg]) -> bytes:
        """Encode ``build(next seq)``, hold it until acknowledged, and return its bytes.

        Raises what encoding raises; then nothing is held and no number is used.
        """
        frame = P.encode(build(self.seq + 1))
        self.seq += 1
        self._frames[self.seq] = frame
        return frame

    def ack(self, seq: int) -> list[int]:
        """Forget every frame numbered ``seq`` or less; the numbers forgotten, in order.

        Idempotent: an old or repeated Ack forgets nothing more.
        """
        done = [s for s in self._frames if s <= seq]
        for s in done:
            del self._frames[s]
        return done

    def resend(self) -> list[bytes]:
        """What a new connection must send first: every unacknowledged frame, in order."""
        return list(self._frames.values())

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, seq: object) -> bool:
        return seq in self._frames


@dataclass(frozen=True)
class LinkOptions:
    """How :class:`Session` opens its websocket (see :func:`open_link`)."""

    max_size: int = 64 * 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    ca_file: str | None = None
    relay: str | None = None
    """``HOST:PORT`` of a site agent's relay to connect through (pilots on compute nodes
    that cannot reach the controller: ``tidewater pilot --relay``); None: directly."""


class Session:
    """One peer's connection to the controller, opened again after every break.

    ``await tg.start(session.run)`` returns once the first connection is
    welcomed. Each connection: ``hello()`` is built afresh (a pilot's credit
    and held tasks change, a rotated token is read again), the outbox is sent
    again in order, ``on_welcome(link, welcome)`` runs (a client re-sends its
    pending requests), then three tasks share one task group: the reader
    (decodes with ``decoder``, applies ``Ack`` to the outbox, hands every
    message to ``on_message``), the sender (after each :meth:`wake`, sends
    what ``outgoing()`` returns) and, with ``heartbeat``, the pinger. With a
    heartbeat the reader also treats a whole lease of silence as a broken
    link, since the controller answers every heartbeat. Whichever fails ends
    the connection; the session backs off (:func:`backoff`) and connects
    again while :func:`is_retryable` says it may help.

    ``url`` may name several controllers (a comma-separated string or a
    list, see :func:`controller_urls`): a failed attempt moves to the next
    one at once, the backoff delay applies after a whole round, and a lost
    link tries the next one first (:class:`Rotation`). Raises
    :class:`ConfigError` at once for a URL that is not ws(s)://.

    ``persistent`` peers (pilot, agent) retry their very first connection
    too and log a refusal before raising it; others (a client) raise at once
    if the first attempt fails, so the caller hears why. With ``reconnect``
    False the first break is raised instead of retried.

    ``on_message`` and ``outgoing`` are called from the session's tasks and
    must not block; an exception from them ends the connection (a
    :class:`TidewaterError`, then retried) or the session (anything else).
    """

    def __init__(
        self, url: str | Sequence[str], *, role: str, hello: Callable[[], P.Hello],
        decoder: P.Decoder[Any],
        on_message: Callable[[Any], None], timeouts: Timeouts, log: logging.Logger,
        on_welcome: Callable[[Link, P.Welcome], Awaitable[None]] | None = None,
        outgoing: Callable[[], list[bytes]] | None = None,
        heartbeat: Callable[[], P.Msg] | None = None, heartbeat_interval: float | None = None,
        outbox: Outbox | None = None, persistent: bool = True, reconnect: bool = True,
        options: LinkOptions = LinkOptions(),
    ) -> None:
        self.rotation = Rotation(controller_urls(url))
        self.role = role
        self.outbox = outbox if outbox is not None else Outbox()
        self.link: Link | None = None
        """The open link, None between connections."""
        self._hello = hello
        self._decoder = decoder
        self._on_message = on_message
        self._on_welcome = on_welcome
        self._outgoing = outgoing
        self._heartbeat = heartbeat
        self._heartbeat_interval = heartbeat_interval
        self._t = timeouts
        self._log = log
        self._persistent = persistent
        self._reconnect = reconnect
        self._options = options
        self._wake = anyio.Event()
        self._stopping = False
        self._welcomed = False
        self._batches = False
        """The controller of the current link reads packed frames (Welcome.batches)."""

    @property
    def url(self) -> str:
        """The controller URL in use (or tried next)."""
        return self.rotation.current

    def wake(self) -> None:
        """Have the sender call ``outgoing()`` (now if connected, else after reconnecting)."""
        self._wake.set()

    def stop(self) -> None:
        """Connect no more once the current link ends (and do not call its end a loss)."""
        self._stopping = True

    async def aclose(self) -> None:
        """:meth:`stop` and hang up the current link; :meth:`run` then returns. Cancel-safe."""
        self.stop()
        if self.link is not None:
            await self.link.aclose()

    async def send_quietly(self, msg: P.Msg) -> None:
        """Best effort, for goodbyes: a broken or missing link is ignored. Cancel-safe."""
        link = self.link
        if link is not None:
            with anyio.move_on_after(self._t.close, shield=True):
                try:
                    await link.send(msg)
                except TidewaterError:
                    pass

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Stay connected until :meth:`stop`; reports started once first welcomed.

        Raises what connecting raised when retrying cannot help
        (:class:`AuthError`, :class:`TLSError`, :class:`ConfigError`), the
        first failure of a non-persistent session, and the first break
        without ``reconnect``. Cancel-safe: the link is closed and the outbox
        keeps everything not yet acknowledged.
        """
        delays = backoff()
        rotation = self.rotation
        failures: list[str] = []  # of this round, for the message when all of them failed
        while not self._stopping:
            url = rotation.current
            try:
                link, welcome = await open_link(
                    url, self._hello(), timeout=self._t.connect,
                    max_size=self._options.max_size, ping_interval=self._options.ping_interval,
                    ping_timeout=self._options.ping_timeout, ca_file=self._options.ca_file,
                    relay=self._options.relay,
                )
            except Exception as exc:
                retryable = is_retryable(exc)
                once = (not self._welcomed and not self._persistent) or not self._reconnect
                round_over = rotation.failed()
                failures.append(str(exc))
                # Every URL is tried once before a failure is final or a delay is due.
                if not retryable or (once and round_over):
                    if self._persistent:
                        self._log.error("%s refused: %s", self.role, exc)
                    if retryable and len(failures) > 1:
                        raise ConnectionBroken("no controller answered: "
                                               + "; ".join(failures)) from exc
                    raise
                if round_over:
                    failures.clear()
                if not round_over:
                    self._log.info("cannot reach the controller at %s (%s); trying %s",
                                   url, exc, rotation.current)
                    continue
                delay = next(delays)
                self._log.info("cannot reach the controller at %s (%s); retrying in %.2fs",
                               url, exc, delay)
                await anyio.sleep(delay)
                continue
            delays = backoff()
            failures.clear()
            rotation.connected()
            lost = await self._connected(link, welcome, task_status)
            if lost is not None and not self._reconnect:
                raise lost
            rotation.lost()

    async def _connected(
        self, link: Link, welcome: P.Welcome, task_status: TaskStatus[None]
    ) -> TidewaterError | None:
        """Serve one connection until it ends; what ended it (None: cancelled or stopped)."""
        lost: TidewaterError | None = None
        self.link = link
        self._batches = welcome.batches
        try:
            resend = self.outbox.resend()
            for frame in P.packed(resend) if self._batches else resend:
                await link.send_raw(frame)
            if self._on_welcome is not None:
                await self._on_welcome(link, welcome)
            if not self._welcomed:
                self._welcomed = True
                task_status.started()
            interval = self._heartbeat_interval or welcome.heartbeat_interval
            # The controller answers every heartbeat: a whole lease of silence is a dead link.
            silence = max(welcome.lease_timeout, 3 * interval) if self._heartbeat else None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._sender, link)
                if self._heartbeat is not None:
                    tg.start_soon(self._pinger, link, interval, self._heartbeat)
                await self._reader(link, silence)
        except* TidewaterError as group:
            lost = _first(group)
            if not self._stopping:
                self._log.warning("%s lost the controller: %s", self.role, lost)
        finally:
            self.link = None
            await link.aclose()
        return None if self._stopping else lost

    async def _reader(self, link: Link, silence: float | None) -> None:
        while True:
            data = await (link.recv() if silence is None else link.recv_within(silence))
            try:
                msgs = self._decoder.decode_all(data)
            except msgspec.MsgspecError as exc:
                self._log.warning("ignoring a frame the %s cannot decode: %s", self.role, exc)
                continue
            for msg in msgs:
                if isinstance(msg, P.Ack):
                    self.outbox.ack(msg.seq)
                self._on_message(msg)

    async def _sender(self, link: Link) -> None:
        if self._outgoing is None:
            return
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            # Everything to keep is numbered and held before the first await: frames
            # the link fails to carry now go out again on the next one.
            frames = self._outgoing()
            for frame in P.packed(frames) if self._batches else frames:
                await link.send_raw(frame)

    async def _pinger(self, link: Link, interval: float, beat: Callable[[], P.Msg]) -> None:
        while True:
            await anyio.sleep(interval)
            await link.send(beat())


def _first(group: BaseExceptionGroup[TidewaterError]) -> TidewaterError:
    """The first error of a (possibly nested) group: the one worth telling the user."""
    exc: TidewaterError | BaseExceptionGroup[TidewaterError] = group.exceptions[0]
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
