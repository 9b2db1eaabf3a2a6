"""Hostile and mistaken input: a clear error, the controller keeps serving, the store is unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import tidewater
from tidewater import ParamSpec, proto

from .procs import cluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

MAX_FRAME = 64 * 1024


def hello(token: str, version: int = proto.PROTO_VERSION) -> bytes:
    return proto.encode(proto.Hello(role="client", proto_version=version, token=token))


async def test_bad_input_gets_clear_errors_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "fakehome"
    home.mkdir()
    canary = home / "canary"
    canary.write_text("still here")
    async with cluster(tmp_path) as c:
        c.env["HOME"] = str(home)
        await c.start_controller("--max-frame-bytes", str(MAX_FRAME),
                                 "--max-tasks-per-submit", "5", "--max-params-bytes", "2048")
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "greet", "echo hello {name}")
            await client.add_app("hpc", "count", "seq {n}",
                                 params=[ParamSpec(name="n", type="int")])
            await c.start_pilot(site_token, pilot_id="p1", cores=1)
            before = c.snapshot()

            # Unknown app, missing and unknown parameters, mistyped parameter.
            with pytest.raises(tidewater.AppError, match="unknown app 'nope' on site 'hpc'"):
                await client.submit("nope", site="hpc")
            with pytest.raises(tidewater.ParamError, match="needs parameter 'name'"):
                await client.submit("greet", site="hpc")
            with pytest.raises(tidewater.ParamError, match="has no parameter 'nmae'"):
                await client.submit("greet", site="hpc", params={"nmae": "x"})
            with pytest.raises(tidewater.ParamError, match="'n' must be int, got '; rm -rf ~'"):
                await client.submit("count", site="hpc", params={"n": "; rm -rf ~"})
            with pytest.raises(tidewater.NotFound, match="no site named 'elsewhere'"):
                await client.submit("greet", site="elsewhere", params={"name": "x"})
            with pytest.raises(tidewater.InvalidRequest, match="workdir '../../etc'"):
                await client.submit("greet", site="hpc", params={"name": "x"},
                                    workdir="../../etc")
            # One bad task in a batch refuses the whole batch, naming it.
            specs = [tidewater.TaskSpec(app="greet", site="hpc", params={"name": "ok"}),
                     tidewater.TaskSpec(app="greet", site="hpc", params={})]
            with pytest.raises(tidewater.ParamError, match="task 1: app 'greet' needs"):
                await client.submit_many(specs)

            # Limits: parameters too large, too many tasks in one Submit frame.
            with pytest.raises(tidewater.LimitExceeded, match="the limit is 2048"):
                await client.submit("greet", site="hpc", params={"name": "x" * 3000})

            # Raw frames: malformed, mistyped, text, too many tasks, oversized.
            async with ws_connect(c.url + "/ws", max_size=None) as ws:
                await ws.send(hello(token))
                assert isinstance(proto.to_client_decoder.decode(await ws.recv()),
                                  proto.Welcome)
                await ws.send(b"\xc1\xff not msgpack")
                err = proto.to_client_decoder.decode(await ws.recv())
                assert isinstance(err, proto.Error) and err.code == "bad_frame"
                await ws.send(msgspec.msgpack.encode({"op": "submit", "req_id": 7,
                                                      "tasks": "lots"}))
                err = proto.to_client_decoder.decode(await ws.recv())
                assert isinstance(err, proto.Error)
                assert (err.req_id, err.code) == (7, "bad_frame")
                assert "tasks" in err.message
                await ws.send(msgspec.msgpack.encode({"op": "launch_missiles", "req_id": 8}))
                err = proto.to_client_decoder.decode(await ws.recv())
                assert isinstance(err, proto.Error) and err.req_id == 8
                six = [proto.TaskSpec(app="greet", site="hpc", params={"name": "n"})] * 6
                await ws.send(proto.encode(proto.Submit(req_id=10, tasks=six)))
                err = proto.to_client_decoder.decode(await ws.recv())
                assert isinstance(err, proto.Error) and err.code == "limit"
                assert "6 tasks in one Submit; the limit is 5" in err.message
                await ws.send("a text frame")
                err = proto.to_client_decoder.decode(await ws.recv())
                assert isinstance(err, proto.Error) and "text frames" in err.message
                # The same connection still serves well-formed requests.
                await ws.send(proto.encode(proto.ListSites(req_id=9)))
                ok = proto.to_client_decoder.decode(await ws.recv())
                assert isinstance(ok, proto.SiteList) and [s.name for s in ok.sites] == ["hpc"]
                # An oversized frame closes this connection with 1009 and a reason.
                await ws.send(b"\x00" * (MAX_FRAME + 1))
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

            # Wrong token, wrong protocol version, a first frame that is not Hello.
            async with ws_connect(c.url + "/ws") as ws:
                await ws.send(hello("twu_not-a-real-token"))
                rej = proto.to_client_decoder.decode(await ws.recv())
                assert isinstance(rej, proto.Reject) and rej.reason == "invalid token"
            with pytest.raises(tidewater.AuthError, match="invalid token"):
                async with tidewater.connect(c.url, token="twu_wrong"):
                    pass
            async with ws_connect(c.url + "/ws") as ws:
                await ws.send(hello(token, version=99))
                rej = proto.to_client_decoder.decode(await ws.recv())
                assert isinstance(rej, proto.Reject) and rej.code == "version"
                assert "version 99 is not supported" in rej.reason
            async with ws_connect(c.url + "/ws") as ws:
                await ws.send(proto.encode(proto.ListSites(req_id=1)))
                rej = proto.to_client_decoder.decode(await ws.recv())
                assert isinstance(rej, proto.Reject) and "Hello" in rej.reason

            # None of that changed anything.
            assert c.snapshot() == before

            # The controller kept serving the original client throughout, and a
            # parameter full of shell metacharacters arrives verbatim, as one argument.
            # The client splits a large batch to the controller's limit by itself.
            batch = await client.submit_many(
                [tidewater.TaskSpec(app="greet", site="hpc", params={"name": str(i)})
                 for i in range(12)])
            assert [i.stdout_tail for i in await client.wait(batch, timeout=30)] == [
                f"hello {i}\n" for i in range(12)]
            nasty = "; rm -rf ~ && echo pwned $(whoami) `id` 'q' \"d\" \n|"
            task = await client.submit("greet", site="hpc", params={"name": nasty})
            info = await task.result(timeout=30)
            assert info.state == "JOB_FINISHED"
            assert info.stdout_tail == f"hello {nasty}\n"
    assert canary.read_text() == "still here"
    assert os.listdir(home) == ["canary"]
