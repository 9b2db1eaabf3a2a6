"""Client side of a Tidewater websocket, shared by the client and the pilot.

:func:`open_link` connects, sends ``Hello`` and waits for ``Welcome``;
:class:`Link` sends and receives raw frames. websockets' exceptions are
translated here into :class:`ConnectionClosed` (the controller closed on
purpose), :class:`ConnectionBroken` (refused, reset, timed out) and
:class:`AuthError` (``Reject`` at handshake), and never escape this module.

:func:`backoff` and :func:`is_retryable` are the pure reconnect policy.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed as WsClosed,
)
from websockets.exceptions import (
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidURI,
)

from . import proto as P
from .errors import AuthError, ConfigError, ConnectionBroken, ConnectionClosed, TidewaterError


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
    """Whether reconnecting may help after ``exc``. A refused token or version never will."""
    if isinstance(exc, AuthError | ConfigError):
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
) -> tuple[Link, P.Welcome]:
    """Connect, greet, and return the link with the controller's Welcome.

    Raises :class:`AuthError` if the controller rejects the Hello,
    :class:`ConnectionBroken` if it cannot be reached in ``timeout``.
    """
    target = ws_url(url)
    ws: ClientConnection | None = None
    try:
        with anyio.fail_after(timeout):
            ws = await connect(
                target, max_size=max_size, compression=None, ping_interval=ping_interval,
                ping_timeout=ping_timeout, open_timeout=None, close_timeout=2,
                user_agent_header="tidewater",
            )
            link = Link(ws)
            await link.send(hello)
            reply: Any = P.to_client_decoder.decode(await link.recv())
    except TimeoutError:
        if ws is not None:
            await Link(ws).aclose()
        raise ConnectionBroken(f"no answer from {target} within {timeout:g}s") from None
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
