"""Several messages in one frame (``batches`` in Hello and Welcome), against a real controller."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from tidewater import proto as P

from .procs import cluster
from .raw import REPLY_TIMEOUT, client_hello, raw_peer

pytestmark = pytest.mark.integration


async def test_a_peer_that_reads_packed_frames_gets_them_and_may_send_them(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        hello = msgspec.structs.replace(client_hello(token), batches=True)
        async with raw_peer(c.url, hello) as (peer, welcome):
            assert isinstance(welcome, P.Welcome) and welcome.batches
            # Three requests in one frame are answered each, in order.
            reqs = [P.AddSite(req_id=1, name="a"), P.AddSite(req_id=2, name="b"),
                    P.ListSites(req_id=3)]
            await peer.ws.send(P.pack([P.encode(m) for m in reqs]))
            got: list[P.Msg] = []
            with anyio.fail_after(REPLY_TIMEOUT):
                while len(got) < 3:
                    data = await peer.ws.recv()
                    assert isinstance(data, bytes)
                    got += P.to_client_decoder.decode_all(data)
            # (A read is answered at once, a write once committed: by req_id, not in order.)
            assert sorted(getattr(m, "req_id", 0) for m in got) == [1, 2, 3]
            assert all(not isinstance(m, P.Error) for m in got)

            # One bad message refuses the whole frame: the good one before it is not run.
            bad = P.pack([P.encode(P.AddSite(req_id=4, name="c")),
                          msgspec.msgpack.encode({"op": "no_such_op", "req_id": 5})])
            (error,) = await peer.exchange(bad)
            assert isinstance(error, P.Error) and error.code == "bad_frame"
            reply = await peer.request(lambda r: P.ListSites(req_id=r))
            assert isinstance(reply, P.SiteList)
            assert sorted(s.name for s in reply.sites) == ["a", "b"]


async def test_a_peer_that_did_not_say_it_reads_them_gets_one_message_per_frame(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with raw_peer(c.url, client_hello(token)) as (peer, welcome):
            assert isinstance(welcome, P.Welcome)
            # Many answers queued at once still come one per frame (each a map).
            for i in range(50):
                await peer.ws.send(P.encode(P.Ping(time=float(i))))
            with anyio.fail_after(REPLY_TIMEOUT):
                for i in range(50):
                    data = await peer.ws.recv()
                    assert isinstance(data, bytes) and data[0] & 0xF0 == 0x80  # a fixmap
                    assert P.to_client_decoder.decode(data) == P.Ping(time=float(i))
