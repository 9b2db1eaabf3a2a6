"""The site agent's relay over real sockets, in one process: a TLS controller, the relay
on loopback, and links opened through it the way a pilot opens them.

What the relay carries is TLS from end to end (the token never crosses it in
the clear); it carries connections to its site's controllers only; a
controller that is down, a full relay and a silent peer get an answer that
says so; a half-closed connection still carries the other way. The
namespace tests (tests/chaos/test_relay.py) run the same relay inside a real
agent, with pilots that cannot reach the controller at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from tidewater import proto as P
from tidewater.agents import relay as relay_mod
from tidewater.agents.relay import Relay
from tidewater.config import ControllerConfig
from tidewater.controller.app import serve
from tidewater.controller.users import add_user
from tidewater.errors import ConfigError, ConnectionBroken
from tidewater.tls import issue_dev_cert, write_dev_cert
from tidewater.transport import open_link

from .procs import until

pytestmark = pytest.mark.integration


@asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[str]:
    """The relay serving in the background; yields the address pilots dial."""
    async with anyio.create_task_group() as tg:
        await tg.start(relay.run)
        try:
            yield f"127.0.0.1:{relay.port}"
        finally:
            tg.cancel_scope.cancel()


async def read_answer(stream: SocketStream) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += await stream.receive()
    return buf


def hello(token: str) -> P.Hello:
    return P.Hello(role="client", proto_version=P.PROTO_VERSION, token=token, name="relay-test")


async def test_a_link_through_the_relay_is_tls_from_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_dev_cert(tmp_path, issue_dev_cert(["localhost"], now=dt.datetime.now(dt.UTC)))
    cfg = ControllerConfig(db=str(tmp_path / "tw.db"), port=0,
                           tls_cert=str(tmp_path / "server.pem"),
                           tls_key=str(tmp_path / "server.key"))
    carried: list[bytes] = []
    pump = relay_mod._pump

    async def recording_pump(src: SocketStream, dst: SocketStream) -> None:
        class Tap:
            async def send(self, data: bytes) -> None:
                carried.append(data)
                await dst.send(data)

            async def send_eof(self) -> None:
                await dst.send_eof()

        await pump(src, Tap())  # type: ignore[arg-type]

    monkeypatch.setattr(relay_mod, "_pump", recording_pump)
    async with serve(cfg) as srv:
        port = int(srv.url.rsplit(":", 1)[1].split("/")[0])
        url = f"wss://localhost:{port}"  # verified against the name "localhost"
        token = await add_user(cfg.db, "alice")
        relay = Relay("127.0.0.1", 0, [url, f"wss://127.0.0.1:{port}"])
        async with running(relay) as via:
            link, welcome = await open_link(url, hello(token), timeout=10, relay=via,
                                            ca_file=tmp_path / "ca.pem")
            await link.aclose()
            assert welcome.proto_version == P.PROTO_VERSION
            assert relay.relayed == 1
            # A certificate that does not name the host dialled is refused through the
            # relay as it is directly: the relay cannot stand in for the controller.
            with pytest.raises(Exception, match="mismatch"):
                await open_link(f"wss://127.0.0.1:{port}", hello(token), timeout=10,
                                relay=via, ca_file=tmp_path / "ca.pem")
    # Everything the relay carried was TLS records: neither the token nor the websocket
    # handshake in the clear.
    everything = b"".join(carried)
    assert everything and token.encode() not in everything
    assert b"Upgrade" not in everything and b"websocket" not in everything.lower()
    assert carried[0][:1] == b"\x16"  # a TLS handshake record opens the tunnel


async def test_the_relay_carries_connections_to_its_sites_controllers_only(
    tmp_path: Path,
) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        other = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        tg.start_soon(listener.serve, lambda s: s.aclose())
        relay = Relay("127.0.0.1", 0, "ws://127.0.0.1:1")
        async with running(relay) as via:
            # Another host or port: a configuration mistake, not worth retrying.
            with pytest.raises(ConfigError, match="403 Forbidden.*not a controller"):
                await open_link(f"ws://127.0.0.1:{other}", hello("t"), timeout=5, relay=via)
            # The site's controller is down: a break, retried like a refused connection.
            with pytest.raises(ConnectionBroken, match="502 Bad Gateway"):
                await open_link("ws://127.0.0.1:1", hello("t"), timeout=5, relay=via)
            # No relay there at all: a break too, naming the relay.
            with pytest.raises(ConnectionBroken, match="through the relay 127.0.0.1:1"):
                await open_link("ws://127.0.0.1:1", hello("t"), timeout=5, relay="127.0.0.1:1")
            # Something that is not a CONNECT request.
            stream = await anyio.connect_tcp("127.0.0.1", relay.port)
            async with stream:
                await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_answer(stream)).startswith(b"HTTP/1.1 400 ")
        assert relay.relayed == 0
        tg.cancel_scope.cancel()


async def test_a_full_relay_and_a_silent_pilot_are_answered() -> None:
    async def serve_one(s: SocketStream) -> None:
        async with s:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        tg.start_soon(listener.serve, serve_one)
        relay = Relay("127.0.0.1", 0, f"ws://127.0.0.1:{port}", max_connections=1,
                      connect_timeout=0.5, linger=0.5)
        async with running(relay) as via:
            held = await anyio.connect_tcp("127.0.0.1", relay.port)
            await held.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            assert (await read_answer(held)).startswith(b"HTTP/1.1 200 ")
            with pytest.raises(ConnectionBroken, match="503 Service Unavailable"):
                await open_link(f"ws://127.0.0.1:{port}", hello("t"), timeout=5, relay=via)
            # Gone: the controller's side is given ``linger`` to finish, then the slot is free.
            await held.aclose()

            async def freed() -> bool:
                return relay.active == 0

            await until(freed, timeout=5, what="the relay to free the slot")
            # A connection that never says what it wants is answered and closed.
            silent = await anyio.connect_tcp("127.0.0.1", relay.port)
            async with silent:
                with anyio.fail_after(5):
                    assert (await read_answer(silent)).startswith(b"HTTP/1.1 504 ")
        tg.cancel_scope.cancel()


async def test_a_half_closed_connection_still_carries_the_answer() -> None:
    async def count_then_answer(s: SocketStream) -> None:
        async with s:
            n = 0
            async for chunk in s:  # until the pilot's side is shut
                n += len(chunk)
            await s.send(f"got {n} bytes".encode())

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        tg.start_soon(listener.serve, count_then_answer)
        relay = Relay("127.0.0.1", 0, f"ws://127.0.0.1:{port}")
        async with running(relay):
            stream = await anyio.connect_tcp("127.0.0.1", relay.port)
            async with stream:
                await stream.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
                assert (await read_answer(stream)).startswith(b"HTTP/1.1 200 ")
                await stream.send(b"x" * 200_000)
                await stream.send_eof()
                answer = b""
                with anyio.fail_after(5):
                    async for chunk in stream:
                        answer += chunk
            assert answer == b"got 200000 bytes"
        tg.cancel_scope.cancel()



async def test_a_relay_address_in_use_is_refused_with_the_reason() -> None:
    first = Relay("127.0.0.1", 0, "ws://127.0.0.1:1")
    async with running(first):
        second = Relay("127.0.0.1", first.port, "ws://127.0.0.1:1")
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await second.run()
