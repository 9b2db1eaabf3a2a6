"""The dashboard's listener in a real controller process: TLS, exact live counts, a clean stop.

* With TLS on, the dashboard serves ``https://`` with the controller's own
  certificate, and the session cookie is marked ``Secure``.
* A burst of tasks moves the live counts to exactly what the store holds,
  in far fewer pushes than there were transitions, also on a page opened
  while the tasks run.
* A controller stopped with SIGTERM while a live socket is open closes it
  and exits 0.
* A closed page and a logout leave no watch, connection or session behind.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

import tidewater
from tidewater.config import ControllerConfig
from tidewater.controller.app import serve
from tidewater.controller.dashboard.sessions import COOKIE
from tidewater.controller.users import add_user
from tidewater.tls import client_context

from .procs import cluster, free_port, until
from .test_tls import dev_cert

pytestmark = pytest.mark.integration


async def next_push(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=20)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return dict(json.loads(msg.data))


async def test_dashboard_serves_tls_with_the_controllers_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEWATER_CA_FILE", raising=False)
    certs = await dev_cert(tmp_path / "tls")
    async with cluster(tmp_path) as c:
        port = free_port()
        c.url = f"wss://127.0.0.1:{c.port}"
        ctl = await c.start_controller("--tls-cert", str(certs / "server.pem"),
                                       "--tls-key", str(certs / "server.key"),
                                       "--dashboard-port", str(port),
                                       ready="dashboard listening on")
        assert any(f"dashboard listening on https://127.0.0.1:{port}" in ln
                   for ln in ctl.lines), ctl.log()
        token = await c.add_user("alice")
        ctx = await anyio.to_thread.run_sync(client_context, certs / "ca.pem")
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(f"https://127.0.0.1:{port}", cookie_jar=jar) as s:
            async with s.post("/login", json={"token": token}, ssl=ctx) as r:
                assert r.status == 200
                morsel = r.cookies[COOKIE]
                assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Strict"
            async with s.get("/api/me", ssl=ctx) as r:
                assert (await r.json())["user"] == "alice"
            async with s.ws_connect("/api/live", ssl=ctx) as ws:
                assert (await next_push(ws))["total"] == 0
            # Plain http to the TLS port gets nowhere; nor does a client without the CA.
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{port}/api/me"):
                    pass
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with s.get("/api/me", ssl=ssl.create_default_context()):
                    pass


async def test_live_counts_are_exact_after_a_burst_and_a_stop_closes_the_socket(
        tmp_path: Path) -> None:
    n = 300
    async with cluster(tmp_path) as c:
        port = free_port()
        ctl = await c.start_controller("--dashboard-port", str(port),
                                       ready="dashboard listening on")
        token = await c.add_user("alice")
        jar = aiohttp.CookieJar(unsafe=True)
        async with (
            tidewater.connect(c.url, token=token) as tw,
            aiohttp.ClientSession(f"http://127.0.0.1:{port}", cookie_jar=jar) as s,
        ):
            _s, site_token = await tw.add_site("hpc")
            await tw.add_app("hpc", "true", "true")
            await c.start_pilot(site_token, pilot_id="p1", cores=2, prefetch=4)
            async with s.post("/login", json={"token": token}) as r:
                assert r.status == 200
            async with s.ws_connect("/api/live") as ws:
                first = await next_push(ws)
                assert first["total"] == 0 and first["health"]["hpc"]["health"] == "up"
                tasks = await tw.submit_many(
                    [tidewater.TaskSpec(app="true", site="hpc") for _ in range(n)])
                pushes = 0
                last = first
                # A second page opens while the tasks run: its counts are read as they
                # change, and end exact too.
                async with s.ws_connect("/api/live") as late:
                    while last["by_state"]["JOB_FINISHED"] < n:
                        last = await next_push(ws)
                        pushes += 1
                    assert last["total"] == n
                    assert {k: v for k, v in last["by_state"].items() if v} == {
                        "JOB_FINISHED": n}
                    seen = await next_push(late)
                    while seen["by_state"]["JOB_FINISHED"] < n:
                        seen = await next_push(late)
                    assert {k: v for k, v in seen["by_state"].items() if v} == {
                        "JOB_FINISHED": n}
                stored = await tw.count()
                assert dict(stored.by_state) == {"JOB_FINISHED": n}
                # Each task went through four transitions or more; pushes were coalesced.
                assert pushes < n, pushes
                assert {t.state for t in await tw.wait(tasks, timeout=30)} == {"JOB_FINISHED"}

                # SIGTERM with the socket open: it is closed, and the controller exits 0.
                ctl.proc.terminate()
                with anyio.fail_after(15):
                    msg = await ws.receive()
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                        aiohttp.WSMsgType.CLOSING), msg
                    assert await ctl.proc.wait() == 0, ctl.log()


async def test_a_closed_page_and_a_logout_leave_nothing_behind(tmp_path: Path) -> None:
    """The dashboard costs nothing once no one looks: no watch, no connection, no session."""
    db = str(tmp_path / "tw.db")
    async with serve(ControllerConfig(db=db, port=0, dashboard_port=0)) as srv:
        svc = srv.controller
        assert srv.dashboard_url.startswith("http://127.0.0.1:")
        token = await add_user(db, "alice")
        jar = aiohttp.CookieJar(unsafe=True)

        def watches() -> int:
            return sum(len(w) for w in svc.state.notify.watchers.values())

        async with aiohttp.ClientSession(srv.dashboard_url, cookie_jar=jar) as s:
            async with s.post("/login", json={"token": token}) as r:
                assert r.status == 200
            assert len(svc.peers) == 1 and len(svc.state.tokens.sessions) == 1
            async with s.ws_connect("/api/live") as ws:
                assert (await next_push(ws))["total"] == 0
                assert watches() == 1

            async def unwatched() -> bool:
                return watches() == 0

            await until(unwatched, timeout=10, what="the closed page's watch to end")
            async with s.post("/logout") as r:
                assert r.status == 200
            assert svc.peers == {} and svc.state.tokens.sessions == {}
