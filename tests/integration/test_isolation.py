"""User B can neither see nor touch user A's sites, apps or tasks: "not found", never "forbidden"."""

from __future__ import annotations

from pathlib import Path

import pytest

import tidewater

from .procs import cluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]


async def test_users_are_isolated(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token_a = await c.add_user("alice")
        token_b = await c.add_user("bob")
        async with (
            tidewater.connect(c.url, token=token_a) as alice,
            tidewater.connect(c.url, token=token_b) as bob,
        ):
            _s, site_a = await alice.add_site("beamline")
            await alice.add_app("beamline", "nap", "sleep {s}")
            await c.start_pilot(site_a, pilot_id="pa", cores=1)
            async with alice.watch(states=["RUNNING"]) as running:
                secret = await alice.submit("nap", site="beamline", params={"s": "30"},
                                            tags={"run": "1"})
                assert (await running.__anext__()).task_id == secret.id
            before = c.rows("SELECT id, state FROM tasks")

            with pytest.raises(tidewater.NotFound, match=f"no task with id {secret.id}"):
                async with bob.watch(ids=[secret.id]):
                    pass
            async with bob.watch(tags={"run": "1"}) as bob_by_tag, bob.watch() as bob_all:
                # Bob cannot list, fetch, wait for, cancel or watch Alice's task.
                assert await bob.tasks() == []
                assert await bob.tasks(ids=[secret.id]) == []
                assert await bob.tasks(tags={"run": "1"}) == []
                with pytest.raises(tidewater.NotFound, match=f"no task with id {secret.id}"):
                    await bob.wait([secret.id], timeout=5)
                with pytest.raises(tidewater.NotFound, match=f"no task with id {secret.id}"):
                    await bob.cancel([secret.id])
                # Nor her site or apps: they do not exist for him.
                assert await bob.sites() == []
                assert await bob.apps() == []
                with pytest.raises(tidewater.NotFound, match="no site named 'beamline'"):
                    await bob.submit("nap", site="beamline", params={"s": "0"})
                with pytest.raises(tidewater.NotFound, match="no site named 'beamline'"):
                    await bob.add_app("beamline", "evil", "rm -rf {x}")
                with pytest.raises(tidewater.NotFound, match="no site named 'beamline'"):
                    await bob.tasks(site="beamline")
                # His pilot cannot join her site with his own token.
                with pytest.raises(RuntimeError, match="no site named 'beamline'"):
                    await c.start_pilot(token_b, pilot_id="pb", site="beamline")
                assert c.rows("SELECT id, state FROM tasks") == before

                # Alice's task changes state; Bob's watches hear nothing of it. Then Bob
                # runs a task of his own (same site name, his namespace): the first event
                # his unfiltered watch delivers is his own.
                assert await alice.cancel([secret.id]) == [secret.id]
                assert (await secret.result(timeout=10)).state == "KILLED"
                _s, site_b = await bob.add_site("beamline")
                await bob.add_app("beamline", "nap", "sleep {s}")
                await c.start_pilot(site_b, pilot_id="pb2", cores=1)
                mine = await bob.submit("nap", site="beamline", params={"s": "0"})
                first = await bob_all.__anext__()
                assert first.task_id == mine.id
                assert (await mine.result(timeout=20)).state == "JOB_FINISHED"
                assert not bob_by_tag._events
            assert [t.id for t in await bob.tasks()] == [mine.id]
            assert [t.id for t in await alice.tasks()] == [secret.id]
            assert [s.name for s in await alice.sites()] == ["beamline"]
            # Bob's site token cannot act as a client at all.
            with pytest.raises(tidewater.AuthError, match="site or pilot token cannot be used"):
                async with tidewater.connect(c.url, token=site_b):
                    pass
