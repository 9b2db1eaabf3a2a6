"""Tokens end to end: least privilege, revocation and expiry close live connections,
rotation without restarts, admins, the audit trail, and secrets kept out of sight."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import Client

from .procs import PY, cluster, until, write_site

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]


async def refused(url: str, token: str) -> str:
    """The reason a new connection with ``token`` is refused ('' if it is accepted)."""
    try:
        async with Client(url, token, reconnect=False) as c:
            await c.sites()
    except tidewater.AuthError as exc:
        return exc.reason
    return ""


async def connection_dropped(client: Client) -> bool:
    try:
        await client.sites()
    except tidewater.TidewaterError:
        return True
    return False


async def test_revoked_and_expired_tokens_stop_working_and_close_their_connections(
    tmp_path: Path
) -> None:
    async with cluster(tmp_path) as c:
        ctl = await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as alice:
            info, second = await alice.create_token(name="laptop")
            assert second.startswith(f"twu_{info.id}.")
            short_info, short = await alice.create_token(name="short", expires_in=1.0)
            listed = await alice.tokens()
            assert {info.id, short_info.id} <= {t.id for t in listed}
            assert all(second not in repr(t) and short not in repr(t) for t in listed)

            async with Client(c.url, second, reconnect=False) as other, \
                    Client(c.url, short, reconnect=False) as brief:
                assert [s.name for s in await other.sites()] == []
                await alice.revoke_token(info.id)
                # Closed at once, and refused from now on.
                await until(lambda: connection_dropped(other), timeout=5,
                            what="the revoked token's connection to close")
                assert f"token {info.id} was revoked" in await refused(c.url, second)
                # The expiring one: closed within a heartbeat of its expiry (0.3 s here).
                await until(lambda: connection_dropped(brief), timeout=5,
                            what="the expired token's connection to close")
                assert "has expired" in await refused(c.url, short)

            # Unknown ids and wrong secrets get the same answer: nothing to probe.
            forged = second[: second.index(".") + 1] + "x" * 43
            assert await refused(c.url, forged) == "invalid token"
            assert await refused(c.url, "twu_0123456789abcdef.nope") == "invalid token"
            assert await refused(c.url, "garbage") == "invalid token"
            with pytest.raises(tidewater.NotFound):
                await alice.revoke_token("0123456789abcdef")
            assert (await alice.sites()) == []  # alice's own connection is untouched
        # Secrets never reach the log.
        assert all(s not in "\n".join(ctl.lines) for s in (token, second, short))


async def test_admins_manage_users_and_removal_closes_their_connections(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        root = await c.add_user("root")  # the first user, made by the server's owner: admin
        async with tidewater.connect(c.url, token=root) as admin:
            bob_token = await admin.add_user("bob")
            async with Client(c.url, bob_token, reconnect=False) as bob:
                with pytest.raises(tidewater.InvalidRequest, match="only an admin"):
                    await bob.add_user("mallory")
                with pytest.raises(tidewater.InvalidRequest, match="only an admin"):
                    await bob.audit(everyone=True)
                _site, site_token = await bob.add_site("bobsite")
                assert {u.name for u in await admin.users()} == {"root", "bob"}
                await admin.remove_user("bob")
                await until(lambda: connection_dropped(bob), timeout=5,
                            what="the removed user's connection to close")
            assert "removed" in await refused(c.url, bob_token)
            assert await refused(c.url, site_token)  # his site token went with him
            with pytest.raises(tidewater.InvalidRequest, match="already exists"):
                await admin.add_user("bob")


async def test_owner_removing_a_user_on_the_store_closes_their_connections(
    tmp_path: Path
) -> None:
    """Done at the command line on the store (no controller in the loop): within a heartbeat."""
    async with cluster(tmp_path) as c:
        await c.start_controller()
        await c.add_user("root")
        token = await c.add_user("carol")
        async with Client(c.url, token, reconnect=False) as carol:
            await carol.sites()
            r = await anyio.run_process([PY, "-m", "tidewater", "user", "remove", "carol",
                                         "--db", c.db])
            assert "removed" in r.stderr.decode()
            await until(lambda: connection_dropped(carol), timeout=5,
                        what="the removed user's connection to close")


async def test_agent_picks_up_a_rotated_site_token_without_restarting(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as alice:
            _site, old = await alice.add_site("laptop")
            site_dir = write_site(tmp_path / "site", name="laptop", scheduler="local",
                                  url=c.url, token=old, sections={
                                      "scheduler": {"state_dir": str(tmp_path / "jobs")}})
            agent = await c.start_agent(site_dir)
            new_info, new = await alice.create_token(site="laptop", name="rotated")
            (site_dir / "token").write_text(new + "\n")
            old_id = old[4:20]
            await alice.revoke_token(old_id)
            # The agent's connection closes; it reconnects with the file's new token.
            await agent.wait_for("connected to", count=2)
            assert "was revoked" in await refused(c.url, old)
            job = await alice.queue_submit("laptop", nodes=1)
            await alice.add_app("laptop", "hello", "echo hello")
            t = await alice.submit("hello", site="laptop")
            assert (await t.result()).stdout_tail == "hello\n"
            assert (await alice.queue())[0].id == job.id
            assert new_info.kind == "site"


async def test_audit_trail_records_who_did_what_from_where(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        ctl = await c.start_controller()
        token = await c.add_user("alice")
        other = await c.add_user("bob")
        async with tidewater.connect(c.url, token=token) as alice, \
                tidewater.connect(c.url, token=other) as bob:
            await alice.add_site("laptop")
            await alice.add_app("laptop", "hello", "echo {x}")
            info, secret = await alice.create_token(name="ci")
            tasks = await alice.submit_many(
                [tidewater.TaskSpec(app="hello", site="laptop", params={"x": "1"})] * 3)
            await alice.cancel([t.id for t in tasks])
            await alice.queue_submit("laptop", nodes=1)
            await alice.revoke_token(info.id)
            await bob.add_site("bobs")
            entries = await alice.audit()
            actions = [e.action for e in entries]
            assert actions == ["site.add", "app.add", "token.create", "task.submit",
                               "task.cancel", "job.add", "token.revoke"]
            assert {e.user for e in entries} == {"alice"}
            assert all(e.remote == "127.0.0.1" and e.token_id for e in entries)
            submit = entries[3]
            assert submit.object == f"{tasks[0].id}-{tasks[-1].id}" and '"count":3' in submit.detail
            assert entries[4].object == f"{tasks[0].id}-{tasks[-1].id}"
            # Bob's entries are his; neither sees a secret.
            assert [e.action for e in await bob.audit()] == ["site.add"]
            everything = await alice.audit(everyone=True)  # alice is the first user: admin
            assert {"user.add", "site.add"} <= {e.action for e in everything}
            text = repr(everything) + "\n".join(ctl.lines)
            assert secret not in text and token not in text and other not in text


async def test_a_client_flooding_requests_is_slowed_not_served(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller("--max-requests-per-second", "20")
        token = await c.add_user("alice")
        async with Client(c.url, token, reconnect=False) as alice:
            results = []
            async with anyio.create_task_group() as tg:
                async def one() -> None:
                    try:
                        await alice.sites()
                        results.append("ok")
                    except tidewater.LimitExceeded as exc:
                        results.append(str(exc))

                for _ in range(200):
                    tg.start_soon(one)
            limited = [r for r in results if r != "ok"]
            assert 30 <= results.count("ok") <= 60  # the 40-request burst, give or take
            assert limited and "requests per second" in limited[0]


async def test_metrics_are_for_admins_only(tmp_path: Path) -> None:
    import aiohttp

    async with cluster(tmp_path) as c:
        await c.start_controller()
        root = await c.add_user("root")
        alice = await c.add_user("alice")
        url = c.url.replace("ws://", "http://") + "/metrics"
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": f"Bearer {alice}"},
                            {"Authorization": "Bearer twu_0123456789abcdef.x"},
                            {"Authorization": root}):
                async with http.get(url, headers=headers) as r:
                    assert r.status == 404, headers
            async with http.get(url, headers={"Authorization": f"Bearer {root}"}) as r:
                assert r.status == 200 and "tidewater_live_tasks" in await r.text()
            async with http.get(url.replace("/metrics", "/health")) as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"


async def test_pilot_picks_up_a_rotated_token_from_its_file(tmp_path: Path) -> None:
    from .procs import HEARTBEAT, Proc

    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as alice:
            _site, old = await alice.add_site("laptop")
            await alice.add_app("laptop", "hello", "echo {x}")
            token_file = tmp_path / "pilot-token"
            token_file.write_text(old + "\n")
            proc = await anyio.open_process(
                [PY, "-m", "tidewater", "pilot", "--token-file", str(token_file), "--pilot-id",
                 "rot", "--workdir", str(tmp_path / "work"), "--heartbeat", str(HEARTBEAT)],
                env={**c.env, "TIDEWATER_TOKEN": ""}, stdout=None)
            pilot = Proc("pilot rot", proc, c.tg)
            c.pilots["rot"] = pilot
            await pilot.wait_for("pilot rot connected")
            _info, new = await alice.create_token(site="laptop", name="rotated")
            token_file.write_text(new + "\n")
            await alice.revoke_token(old[4:20])
            await pilot.wait_for("pilot rot connected", count=2)
            t = await alice.submit("hello", site="laptop", params={"x": "after rotation"})
            assert (await t.result()).stdout_tail == "after rotation\n"
