"""Client side of a Tidewater websocket, shared by the client and the pilot.

:func:`open_link` connects, sends ``Hello`` and waits for ``Welcome``;
:class:`Link` sends and receives raw frames. websockets' exceptions are
translated here into :class:`ConnectionClosed` (the controller closed on
purpose), :class:`ConnectionBroken` (refused, reset, timed out),
:class:`TLSError` (the server's certificate did not verify, or only one side
speaks TLS) and :class:`AuthError` (``Reject`` at handshake), and never
escape this module. ``wss://`` URLs are verified against a CA file or the
system trust store (:func:`tidewater.tls.client_context`).

:func:`backoff` and :func:`is_retryable` are the pure reconnect policy.
"""

from __future__ import annotations

import os
import random
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import msgspec
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
    *, initial: float = 0.05, factor: float = 2.0, cap: float = 5.0, jitter: float = 0.5,
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


def _closed(exc: WsClosed) -> TidewaterError:
    rcvd = exc.rcvd
    why = f"{rcvd.code} {rcvd.reason}".strip() if rcvd is not None else "no close frame"
    if isinstance(exc, ConnectionClosedOK) or (rcvd is not None and rcvd.code >= 4000):
        return ConnectionClosed(f"the controller closed the connection ({why})")
    return ConnectionBroken(f"connection to the controller broke ({why})")


async def open_link(
    url: str, hello: P.Hello, *, timeout: float, max_size: int = 64 * 1024 * 1024,
    ping_interval: float | None = 20.0, ping_timeout: float | None = 20.0,
    ssl_context: ssl.SSLContext | None = None, ca_file: str | os.PathLike[str] | None = None,
) -> tuple[Link, P.Welcome]:
    """Connect, greet, and return the link with the controller's Welcome.

    A ``wss://`` URL is verified with ``ssl_context`` if given, else against
    ``ca_file`` alone, else against the system trust store (hostname checked
    in every case); both are ignored for ``ws://``.

    Raises :class:`AuthError` if the controller rejects the Hello,
    :class:`TLSError` if its certificate does not verify or only one side
    speaks TLS, :class:`ConfigError` for a bad URL or CA file,
    :class:`ConnectionBroken` if it cannot be reached in ``timeout``.
    """
    target = ws_url(url)
    deadline = anyio.current_time() + timeout
    tls: dict[str, Any] = {}
    if target.startswith("wss://"):
        tls["ssl"] = ssl_context or await anyio.to_thread.run_sync(client_context, ca_file)
    ws: ClientConnection | None = None
    try:
        with anyio.fail_after(timeout):
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
    except InvalidMessage as exc:
        # A TLS server hangs up on a plain HTTP request: tell that from a server that died.
        if target.startswith("ws://"):
            with anyio.move_on_after(deadline - anyio.current_time()):
                if await _speaks_tls(target):
                    raise TLSError(target, "the controller serves TLS: use a wss:// URL "
                                           "(with --ca-file if its CA is not in the system "
                                           "trust store)") from None
        raise ConnectionBroken(f"cannot connect to {target}: {exc}") from None
    except (OSError, InvalidHandshake) as exc:
        raise ConnectionBroken(f"cannot connect to {target}: {exc}") from None
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
