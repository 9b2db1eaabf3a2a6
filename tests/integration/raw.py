"""Raw websocket peers and store snapshots for hostile-input and isolation tests.

A :class:`RawPeer` sends exactly the frames a test gives it and decodes
exactly what comes back, so a test sees every Error, Reject and close as
the controller made it (the library client would retry or translate).
"""

from __future__ import annotations

import itertools
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tidewater import proto as P

from .procs import Cluster

# What the controller sends each role.
REPLY_DECODERS: dict[str, P.Decoder[Any]] = {
    "client": P.to_client_decoder,
    "pilot": P.to_pilot_decoder,
    "agent": P.to_agent_decoder,
}
# Times no peer sends: a Ping with one of them marks "everything before it is answered".
_sentinels = itertools.count(1)
REPLY_TIMEOUT = 10.0


class RawPeer:
    """One websocket after a Hello: send frames, read decoded replies."""

    def __init__(self, ws: ClientConnection, role: str) -> None:
        self.ws = ws
        self.role = role
        self._next_req = itertools.count(1_000_000)
        self._unread: deque[P.Msg] = deque()
        self.seen: list[P.Msg] = []
        """Every message received that was not the reply a call waited for."""

    async def recv(self) -> P.Msg:
        """The next message (a peer whose Hello said ``batches`` may get several per frame)."""
        if not self._unread:
            with anyio.fail_after(REPLY_TIMEOUT):
                data = await self.ws.recv()
            assert isinstance(data, bytes), f"the controller sent a text frame: {data!r}"
            self._unread.extend(REPLY_DECODERS[self.role].decode_all(data))
        return self._unread.popleft()

    async def request(self, build: Callable[[int], P.Msg]) -> P.Msg:
        """Send ``build(req_id)``; return the reply carrying that req_id (Error included)."""
        req_id = next(self._next_req)
        await self.ws.send(P.encode(build(req_id)))
        while True:
            msg = await self.recv()
            if getattr(msg, "req_id", None) == req_id:
                return msg
            self.seen.append(msg)

    async def exchange(self, frame: bytes | str) -> list[P.Msg]:
        """Send ``frame``, then a Ping; everything received before that Ping's echo.

        Replies the controller sends straight away (Error for a bad frame, answers
        that need no commit) arrive before the echo.
        """
        mark = -1e9 - next(_sentinels)
        await self.ws.send(frame)
        await self.ws.send(P.encode(P.Ping(time=mark)))
        got: list[P.Msg] = []
        while True:
            msg = await self.recv()
            if isinstance(msg, P.Ping) and msg.time == mark:
                return got
            got.append(msg)


@asynccontextmanager
async def raw_peer(url: str, hello: P.Hello) -> AsyncIterator[tuple[RawPeer, P.Msg]]:
    """Connect, send ``hello``; yields the peer and the controller's first answer."""
    # A short close timeout: a controller that died mid-test never answers the close.
    async with ws_connect(url + "/ws", max_size=None, open_timeout=REPLY_TIMEOUT,
                          close_timeout=1) as ws:
        await ws.send(P.encode(hello))
        peer = RawPeer(ws, hello.role)
        yield peer, await peer.recv()


def client_hello(token: str) -> P.Hello:
    return P.Hello(role="client", proto_version=P.PROTO_VERSION, token=token, name="raw")


def pilot_hello(token: str, pilot_id: str, **kw: Any) -> P.Hello:
    return P.Hello(role="pilot", proto_version=P.PROTO_VERSION, token=token, pilot_id=pilot_id,
                   hostname="fuzzhost", cores=kw.pop("cores", 1), **kw)


def agent_hello(token: str, **kw: Any) -> P.Hello:
    return P.Hello(role="agent", proto_version=P.PROTO_VERSION, token=token, **kw)


async def health(c: Cluster, timeout: float = 5) -> dict[str, Any]:
    """``GET /health`` of the cluster's controller; OSError if it does not answer."""
    def get() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{c.port}/health", timeout=timeout) as r:
            return r.read()

    return msgspec.json.decode(await anyio.to_thread.run_sync(get))


# Who owns each row, for a snapshot that leaves one user's rows out.
OWNER_SQL = {
    "sites": "owner_id",
    "apps": "(SELECT owner_id FROM sites s WHERE s.id = apps.site_id)",
    "tasks": "owner_id",
    "events": "(SELECT owner_id FROM tasks t WHERE t.id = events.task_id)",
    "task_tags": "(SELECT owner_id FROM tasks t WHERE t.id = task_tags.task_id)",
    "task_parents": "(SELECT owner_id FROM tasks t WHERE t.id = task_parents.child)",
    "submissions": "owner_id",
    "batch_jobs": "owner_id",
    "pilots": "owner_id",
    "tokens": "user_id",
    "audit": "user_id",
}


def snapshot(c: Cluster, *, leave_out: tuple[int, ...] = ()) -> dict[str, list[Any]]:
    """Every row of every table of the store (the audit trail too), in a stable order.

    Rows owned by the users ``leave_out`` are left out (tables whose owner is
    unknown here are taken whole, so a new table is compared too).
    """
    tables = c.tables()
    out: dict[str, list[Any]] = {}
    for t in sorted(tables):
        where = ""
        if leave_out and t in OWNER_SQL:
            ids = ", ".join(str(int(u)) for u in leave_out)
            where = f" WHERE coalesce({OWNER_SQL[t]}, -1) NOT IN ({ids})"
        out[t] = sorted(c.rows(f"SELECT * FROM {t}{where}"), key=repr)
    return out


def user_id(c: Cluster, name: str) -> int:
    (row,) = c.rows("SELECT id FROM users WHERE name = ?", (name,))
    return int(row[0])
