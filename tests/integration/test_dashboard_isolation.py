"""The dashboard shows a user only their own sites, jobs and tasks; nothing without a session.

A real controller process serves the dashboard on its own port; two users log
in over real HTTP. Every endpoint is tried with Bob's session against Alice's
objects (empty lists, and for her task the very 404 a missing task gets),
with no session, with a forged cookie, after logout and after the token is
revoked; a site token and a wrong token cannot log in.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import tidewater
from tidewater.controller.dashboard.sessions import COOKIE

from .procs import cluster, free_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

ENDPOINTS = ["/api/me", "/api/overview", "/api/tasks", "/api/tasks?state=FAILED",
             "/api/tasks/1", "/api/throughput", "/api/utilization"]


@asynccontextmanager
async def browser_session(base: str) -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: keep cookies of an IP-address host (127.0.0.1), as a browser does.
    async with aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def login(s: aiohttp.ClientSession, token: str) -> tuple[int, dict[str, Any]]:
    async with s.post("/login", json={"token": token}) as r:
        return r.status, await r.json()


async def get(s: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with s.get(path) as r:
        return r.status, await r.json()


async def with_cookie(base: str, value: str, path: str = "/api/me") -> tuple[int, Any]:
    """GET ``path`` presenting exactly this session cookie value, and nothing else."""
    async with (aiohttp.ClientSession(base, cookie_jar=aiohttp.DummyCookieJar()) as s,
                s.get(path, headers={"Cookie": f"{COOKIE}={value}"}) as r):
        return r.status, await r.json()


async def first_push(s: aiohttp.ClientSession) -> dict[str, Any]:
    async with s.ws_connect("/api/live") as ws:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return dict(json.loads(msg.data))


async def test_each_user_sees_only_their_own(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        port = free_port()
        await c.start_controller("--dashboard-port", str(port), ready="dashboard listening on")
        base = f"http://127.0.0.1:{port}"
        token_a = await c.add_user("alice")
        token_b = await c.add_user("bob")
        async with tidewater.connect(c.url, token=token_a) as alice:
            _s, site_token = await alice.add_site("beamline")
            await alice.add_app("beamline", "fail", "sh -c {cmd}")
            job = await alice.queue_submit("beamline", nodes=1, wall_time_min=5)
            await c.start_pilot(site_token, pilot_id="pa", cores=1)
            secret = await alice.submit("fail", site="beamline", max_retries=0,
                                        params={"cmd": "echo secret-stderr >&2; exit 3"},
                                        tags={"run": "1"})
            info = await secret.result(timeout=30)
            assert info.state == "FAILED"

        async with browser_session(base) as anon:
            # Nothing is readable without a session, nor with a forged cookie.
            for path in ENDPOINTS:
                assert await get(anon, path) == (401, {"error": "not logged in"}), path
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await first_push(anon)
            assert refused.value.status == 401
            assert await with_cookie(base, "forged-session-id", "/api/overview") == (
                401, {"error": "not logged in"})

            # A wrong token and a site token cannot log in; no cookie is set.
            status, body = await login(anon, "tw_user_nope")
            assert (status, body) == (401, {"error": "invalid token"})
            status, body = await login(anon, site_token)
            assert status == 403 and "site or pilot token cannot log in" in body["error"]
            assert all(k.key != COOKIE for k in anon.cookie_jar)
            # Nor can a page of another origin log the browser in, or open its live socket.
            async with anon.post("/login", json={"token": token_a},
                                 headers={"Origin": "http://evil.example"}) as r:
                assert r.status == 403 and COOKIE not in r.cookies
            async with anon.post("/login", data=json.dumps({"token": token_a}),
                                 headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 415 and COOKIE not in r.cookies

        async with browser_session(base) as a_s, browser_session(base) as b_s:
            assert (await login(a_s, token_a))[0] == 200
            assert (await login(b_s, token_b))[0] == 200
            cookie = next(k for k in a_s.cookie_jar if k.key == COOKIE)
            assert cookie["httponly"] and cookie["samesite"] == "Strict"

            # Alice sees hers.
            _st, ov = await get(a_s, "/api/overview")
            assert [s["name"] for s in ov["sites"]] == ["beamline"]
            assert [j["id"] for j in ov["jobs"]] == [job.id]
            _st, listed = await get(a_s, "/api/tasks?tag=run=1&state=FAILED")
            assert [t["id"] for t in listed["tasks"]] == [secret.id]
            status, page = await get(a_s, f"/api/tasks/{secret.id}")
            assert status == 200 and "secret-stderr" in page["stderr_tail"]
            assert (await first_push(a_s))["by_state"]["FAILED"] == 1
            _st, tp = await get(a_s, "/api/utilization")
            assert list(tp["series"]) == ["beamline"]

            # Bob sees none of it, on any endpoint.
            status, me = await get(b_s, "/api/me")
            assert status == 200 and me["user"] == "bob"
            _st, ov = await get(b_s, "/api/overview")
            assert ov["sites"] == [] and ov["jobs"] == []
            for q in ("", "?state=FAILED", "?tag=run=1", "?app=fail"):
                assert await get(b_s, f"/api/tasks{q}") == (
                    200, {"tasks": [], "more": False, "next_after": None}), q
            assert await get(b_s, "/api/tasks?site=beamline") == (
                404, {"error": "no site named 'beamline'"})
            missing = secret.id + 1000
            assert await get(b_s, f"/api/tasks/{secret.id}") == (
                404, {"error": f"no task with id {secret.id}"})
            assert await get(b_s, f"/api/tasks/{missing}") == (
                404, {"error": f"no task with id {missing}"})
            for path in ("/api/throughput", "/api/utilization"):
                _st, chart = await get(b_s, path)
                assert chart["series"] == {}, path
            push = await first_push(b_s)
            assert push["total"] == 0 and push["health"] == {}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await b_s.ws_connect("/api/live", headers={"Origin": "http://evil.example"})
            assert refused.value.status == 403

            # Logging out ends the session: the same cookie no longer reads anything.
            b_cookie = next(k for k in b_s.cookie_jar if k.key == COOKIE).value
            async with b_s.post("/logout") as r:
                assert r.status == 200
            assert await with_cookie(base, b_cookie) == (401, {"error": "not logged in"})

            # Logging in again gives a new session id; the old one no longer reads anything.
            old_a = next(k for k in a_s.cookie_jar if k.key == COOKIE).value
            assert (await login(a_s, token_a))[0] == 200
            new_a = next(k for k in a_s.cookie_jar if k.key == COOKIE).value
            assert new_a != old_a
            assert await with_cookie(base, old_a) == (401, {"error": "not logged in"})
            assert (await with_cookie(base, new_a))[0] == 200

            # Revoking Alice's token ends her session too (the controller closes it).
            async with tidewater.connect(c.url, token=token_a) as alice:
                (first,) = [t for t in await alice.tokens() if t.name == "first token"]
                fresh = await alice.create_token(name="fresh")
                async with tidewater.connect(c.url, token=fresh[1]) as alice2:
                    await alice2.revoke_token(first.id)
            status, _ = await get(a_s, "/api/me")
            assert status == 401
            assert await login(a_s, token_a) == (401, {"error": f"token {first.id} was revoked"})
